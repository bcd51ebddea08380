"""Resume checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

Each checkpoint is a directory ``<output_dir>/checkpoint-<step>/`` (where HF Trainer and
lora-scripts configs put them), written under a temporary name and renamed when complete, so
a killed run leaves either a whole checkpoint or none. It holds a LoRA adapter that
``PeftModel.from_pretrained`` loads (``adapter_config.json``, ``adapter_model.safetensors``: the
weights at that step) plus what resuming needs: ``trainable.pt`` (the same weights, by
parameter name), ``best.pt``, ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and ``state.json``
(progress, config, data, run id). The last ``keep`` checkpoints of a run are kept, after the
run too; a fresh run's first checkpoint replaces those of earlier runs. Resuming with a
config that differs from the checkpoint's warns field by field; a checkpoint also records what
it trained on (``data``: the store snapshot, fingerprints of the records and of the tokenised
examples), and resuming on other data is an error.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from replyloop.errors import TrainingError

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
_NAME = re.compile(r"checkpoint-(\d+)")
# Changing these between runs does not change what the resumed run computes.
HARMLESS = {"resume_from_checkpoint", "logging_dir", "save_steps", "keep_checkpoints", "generated_from"}


class ResumeMismatchWarning(UserWarning):
    """The config differs from the one the checkpoint was made with."""


class ResumeDataError(TrainingError):
    """The training data differ from the data the checkpoint was trained on"""


@dataclass
class TrainingProgress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of this epoch already consumed
    train_tokens: int = 0  # label tokens trained on
    seen_tokens: int = 0  # all non-padding tokens processed
    best_eval_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one
    last_loss: float | None = None
    stopped_early: bool = False

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "TrainingProgress":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    """The trainable parameters (the LoRA weights), detached copies on CPU."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise TrainingError(f"checkpoint does not fit the model: {len(missing)} unknown parameter(s), e.g. {missing[0]}")
    import torch

    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def save_checkpoint(root: Path, *, model, optimizer, scheduler, progress: TrainingProgress,
                    best_state: dict | None, config: dict, keep: int = 2, data: dict | None = None,
                    run_id: str | None = None) -> Path:
    """Write ``root/checkpoint-<step>/`` atomically; then keep the last ``keep`` checkpoints of
    run ``run_id`` and remove those of other (earlier) runs."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{progress.step}"
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    try:
        model.save_pretrained(str(tmp))  # a loadable adapter: PeftModel.from_pretrained(base, tmp)
        _save(trainable_state(model), tmp / "trainable.pt")
        if best_state is not None:
            _save(best_state, tmp / "best.pt")
        _save(optimizer.state_dict(), tmp / "optimizer.pt")
        _save(scheduler.state_dict(), tmp / "scheduler.pt")
        _save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"progress": progress.state_dict(), "config": config, "data": data, "run_id": run_id},
            ensure_ascii=False, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = list_checkpoints(root)
    ours = [p for p in found if _run_id(p) == run_id]
    for old in [p for p in found if p not in ours] + ours[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _run_id(path: Path) -> str | None:
    try:
        return read_state(path).get("run_id")
    except (TrainingError, ValueError, OSError):
        return None


def _save(obj, path: Path) -> None:
    """torch.save through a buffer: a failed write (disk full) raises the OSError itself, not
    torch's opaque ``PytorchStreamWriter`` RuntimeError. Checkpoints of LoRA states are small."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getbuffer())


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name (None for anything else)."""
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints in ``root`` (those with ``state.json``), by step."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (p / "state.json").exists()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    path: Path
    progress: TrainingProgress
    config: dict
    trainable: dict
    best: dict | None
    optimizer: dict
    scheduler: dict
    rng: dict
    data: dict | None = None  # None: made before checkpoints recorded their data


def read_state(path: Path) -> dict:
    """``state.json`` of a checkpoint (progress, config, data), without the tensors."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise TrainingError(f"{path}: not a training checkpoint (no state.json)")
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def load_checkpoint(path: Path) -> Checkpoint:
    import torch

    path = Path(path)
    meta = read_state(path)
    best = path / "best.pt"

    def load(name):
        return torch.load(path / name, map_location="cpu", weights_only=False)

    return Checkpoint(path=path, progress=TrainingProgress.from_state_dict(meta["progress"]),
                      config=meta["config"], trainable=load("trainable.pt"),
                      best=load("best.pt") if best.exists() else None,
                      optimizer=load("optimizer.pt"), scheduler=load("scheduler.pt"), rng=load("rng.pt"),
                      data=meta.get("data"))


def check_resume_data(saved: dict | None, current: dict, path: Path, config_differs: bool = False,
                      fresh: str = "start fresh without --resume") -> None:
    """Refuse to resume on data other than the checkpoint's: the restored batch position would
    index other batches. ``saved`` None (an older checkpoint) warns that it cannot be checked.
    Examples that tokenise differently are an error only when the config is the same (a changed
    ``max_seq_length`` or ``base_model`` was already warned about). ``fresh`` tells how to start
    fresh in the words the user used (``without --resume``, or the YAML key and its line)."""
    if saved is None:
        warnings.warn(f"resuming from {path.name}: the checkpoint does not record its training data, so "
                      f"replyloop cannot check that {current.get('source')} is unchanged", ResumeMismatchWarning,
                      stacklevel=3)
        return
    where = f"cannot resume from {path}"
    if saved.get("snapshot_hash") != current.get("snapshot_hash"):
        now = current.get("snapshot_hash")
        names = f"snapshot {now}" if now else f"{current.get('source')}"
        was = f"snapshot {saved.get('snapshot_hash')}" if saved.get("snapshot_hash") else saved.get("source")
        raise ResumeDataError(f"{where}: it trained on {was}, the config names {names}; resume with the "
                              f"checkpoint's data (remove snapshot from the config) or {fresh}")
    if saved.get("records_sha256") != current.get("records_sha256"):
        src = current.get("source")
        before = f" (was {saved['source']})" if saved.get("source") and saved.get("source") != src else ""
        raise ResumeDataError(f"{where}: the training data in {src}{before} changed since the checkpoint "
                              f"({saved.get('records', '?')} samples then, {current.get('records')} now); restore "
                              f"the file or {fresh}")
    if saved.get("examples_sha256") != current.get("examples_sha256") and not config_differs:
        raise ResumeDataError(f"{where}: the same samples from {current.get('source')} tokenise differently "
                              f"(the tokenizer in base_model changed?); {fresh}")


def config_differences(saved: dict, current: dict) -> list[str]:
    """One line per field that differs (fields that cannot change the result are skipped)."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        if key in HARMLESS:
            continue
        if saved.get(key) != current.get(key):
            lines.append(f"{key}: checkpoint has {saved.get(key)!r}, config has {current.get(key)!r}")
    return lines


def warn_config_mismatch(saved: dict, current: dict, path: Path) -> list[str]:
    diffs = config_differences(saved, current)
    for line in diffs:
        warnings.warn(f"resuming from {path.name} with a different config: {line}", ResumeMismatchWarning,
                      stacklevel=3)
    return diffs
