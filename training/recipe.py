"""LoRA supervised fine-tuning, one recipe: ``__init__`` -> ``setup`` -> ``train`` ->
``save_checkpoint`` / ``save_output`` -> ``cleanup`` (the shape of torchtune's single-device
recipes), run by ``run_training(cfg)``.

The loop is ours rather than HF ``Trainer`` so that packing, resume and progress are under
our control. Device placement, mixed precision and DDP go through ``accelerate.Accelerator``,
so ``accelerate launch -m replyloop train --config X`` runs the same code on several GPUs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from replyloop.errors import ConfigError, TrainingError
from replyloop.training import checkpointing as ckpt
from replyloop.training.config import TrainConfig
from replyloop.training.data import (DatasetTooSmallError, Example, collate_packed, collate_padded, epoch_batches,
                           examples_fingerprint, load_records, records_fingerprint, split_eval, tokenize_records)
from replyloop.training.prompting import resolve_format

Progress = Callable[[dict], None]
Notice = Callable[[str], None]


class BaseModelNotFoundError(TrainingError):
    """The base model directory does not exist"""


class TruncationWarning(UserWarning):
    """Many training samples are longer than max_seq_length"""


class UnknownTargetModulesError(ConfigError):
    """target_modules names modules the model does not have"""


class DeviceUnavailableError(TrainingError):
    """The requested device or precision needs CUDA, which this machine lacks"""


class NoChampionError(TrainingError):
    """init_adapter: champion, but the registry has no champion model"""


class AdapterMismatchError(ConfigError):
    """lora_rank / target_modules disagree with the init_adapter the run continues from"""


def _report_line(text: str) -> None:
    """A one-line report for the person running the trainer (stderr, beside the progress lines)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def stderr_notice(text: str) -> None:
    """Default for run notes: ``Note: ...`` on stderr (beside the progress lines on stdout)."""
    sys.stderr.write(f"Note: {text}\n")
    sys.stderr.flush()


@dataclass
class TrainResult:
    output_dir: Path
    manifest: dict


# -- small pure helpers --------------------------------------------------------------------------

def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lora_module_names(model) -> list[str]:
    """Names (last component) of the Linear layers LoRA can wrap, lm_head excluded."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name and not name.endswith("lm_head"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def token_loss_sum(logits, labels):
    """Summed next-token cross-entropy over labelled positions (fp32)."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=-100, reduction="sum")


def library_versions() -> dict:
    import peft
    import torch
    import transformers

    import replyloop

    return {"replyloop": replyloop.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": sys.version.split()[0]}


def token_lengths_line(r: dict) -> str:
    """One line for the token-length report (a terminal shows it before the progress bar)."""
    from replyloop.i18n import _

    return _("token lengths of {samples} samples (prompt + reply): p50 {p50}, p95 {p95}, max {max}; max_seq_length "
             "{max_seq_length}: {truncated} truncated, {dropped} dropped").format(**r)


class ConsoleProgress:
    """A tqdm bar (tokens/s, loss, ETA) on a terminal; ``replyloop-progress {json}`` lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.bar = None

    def __call__(self, event: dict) -> None:
        if not self.tty:
            self.stream.write("replyloop-progress " + json.dumps(event, ensure_ascii=False) + "\n")
            self.stream.flush()
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.get("total_steps"), desc="train", unit="step", file=self.stream)
        if "eval_loss" in event:
            from replyloop.i18n import _

            self.bar.write(_("step {step}: held-out loss {loss}").format(step=event["step"],
                                                                        loss=f"{event['eval_loss']:.4f}"),
                           file=self.stream)
            return
        self.bar.update(event["step"] - self.bar.n)
        self.bar.set_postfix(loss=f"{event['loss']:.4f}", tok_s=f"{event['tokens_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the recipe ---------------------------------------------------------------------------------

class LoRAFinetuneRecipe:
    def __init__(self, cfg: TrainConfig, progress: Progress | None = None, notice: Notice | None = None):
        self.cfg = cfg
        self.output_dir = cfg.output_path
        self.checkpoint_dir = cfg.output_path  # output_dir/checkpoint-<step>/, as HF Trainer writes them
        self.batch_size = cfg.batch_size
        self.grad_accum = cfg.gradient_accumulation_steps
        self.packing = cfg.packing
        self.eval_steps = cfg.eval_steps
        self.save_steps = cfg.save_steps
        self.patience = cfg.early_stopping_patience
        self.seed = cfg.seed
        self._console = None
        if progress is None:
            self._console = ConsoleProgress()
            progress = self._console
        self._progress = progress
        self._notice = notice or stderr_notice
        self.notes: list[str] = []  # also in the manifest
        self.run_id = uuid.uuid4().hex  # a resumed run keeps its checkpoint's
        self.lora: dict = {}  # the LoRA actually trained (rank, alpha, dropout, modules)
        self.progress = ckpt.TrainingProgress()
        self.best_state: dict | None = None
        self.writer = None
        self.init_adapter: Path | None = None
        self._train_time = 0.0
        self._tokens_this_run = 0
        self._last_eval_step: int | None = None

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        transformers.utils.logging.disable_progress_bar()
        cfg = self.cfg
        cfg.check_paths()  # every missing input at once, before anything is loaded
        self.device, self.precision = self._setup_device(device=cfg.device, precision=cfg.precision,
                                                         quantization=cfg.quantization)
        base_path = self._resolve_base_model(cfg)
        self.init_adapter = self._resolve_init_adapter(cfg)
        if self.init_adapter is not None:
            self._check_init_adapter(cfg, self.init_adapter)
        # A resumed run trains on the data its checkpoint trained on: the checkpoint's snapshot
        # (not a new one with the samples approved since), and the same records, or an error.
        resume_path = self._resume_path(cfg)
        resume_state = ckpt.read_state(resume_path) if resume_path is not None else None
        saved_data = resume_state.get("data") if resume_state else None
        resume_snapshot = None
        if saved_data and cfg.dataset == "store" and cfg.snapshot is None:
            resume_snapshot = saved_data.get("snapshot_hash")
        self.records = load_records(cfg, snapshot=resume_snapshot)
        others = self.records.description.get("other_csv") or []
        if others:
            shown = ", ".join(Path(p).name for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            self.note(f"train_data_dir {cfg.path('train_data_dir')} holds {len(others)} other CSV file(s) that are "
                      f"not trained on: {shown}; only metadata_path {self.records.description['path']} is read")
        self.tokenizer = self._setup_tokenizer(base_path)
        self.prompt_format = resolve_format(self.tokenizer, cfg.prompt_template, cfg.system_prompt, where=cfg.where)
        examples, self.token_stats = tokenize_records(self.tokenizer, self.records.pairs, cfg.max_seq_length,
                                                      fmt=self.prompt_format)
        self.data_state = {"source": self.records.description.get("path"), "snapshot_hash": self.records.snapshot_hash,
                           "records": len(self.records.pairs),
                           "records_sha256": records_fingerprint(self.records.pairs),
                           "examples_sha256": examples_fingerprint(examples)}
        if resume_state is not None:
            diffs = ckpt.warn_config_mismatch(resume_state["config"], cfg.to_record(), resume_path)
            ckpt.check_resume_data(saved_data, self.data_state, resume_path, config_differs=bool(diffs),
                                   fresh=self._fresh_hint())
            self.run_id = resume_state.get("run_id") or self.run_id
        self.train_examples, self.eval_examples = self._setup_data(examples)

        from accelerate import Accelerator

        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[self.precision]
        self.accelerator = Accelerator(cpu=self.device == "cpu", mixed_precision=mixed)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self._report_token_lengths()

        torch.manual_seed(self.seed)  # LoRA init and dropout
        model = self._setup_model(base_path=base_path, init_adapter=self.init_adapter)
        self.lora = _lora_settings(model)
        self.compute_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        if self.compute_dtype == torch.float32 and self.precision in ("bf16", "fp16"):
            self.compute_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                      weight_decay=cfg.weight_decay)
        self.batches_per_epoch = len(self._epoch_batches(0))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.grad_accum)
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        total, warmup, schedule = self.total_steps, cfg.warmup_steps, cfg.lr_scheduler
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total=total, warmup=warmup, schedule=schedule))

        resume_rng = None
        if resume_path is not None:
            state = ckpt.load_checkpoint(resume_path)
            ckpt.load_trainable_state(model, state.trainable)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            self.progress = state.progress
            self.best_state = state.best
            resume_rng = state.rng
            self.resumed_from = resume_path
        else:
            self.resumed_from = None
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        if resume_rng is not None:
            ckpt.set_rng_state(resume_rng)
        self._note_checkpoints()
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(cfg.logging_path))

    def _setup_device(self, *, device: str, precision: str, quantization: str | None) -> tuple[str, str]:
        import torch

        cuda = torch.cuda.is_available()
        where = self.cfg.where
        if device == "cuda" and not cuda:
            raise DeviceUnavailableError(
                f"{where('device')}device: cuda was asked for, but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use device: cpu or auto")
        if quantization == "4bit":
            try:
                import bitsandbytes  # noqa: F401
                has_bnb = True
            except ImportError:
                has_bnb = False
            if not (cuda and has_bnb):
                raise DeviceUnavailableError(
                    f"{where('quantization')}quantization: 4bit: QLoRA needs CUDA and bitsandbytes "
                    f"(CUDA {'available' if cuda else 'not available'}, bitsandbytes "
                    f"{'installed' if has_bnb else 'not installed'}); remove quantization to train in full precision")
        resolved = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
        if precision in ("bf16", "fp16") and resolved != "cuda":
            raise DeviceUnavailableError(
                f"{where('precision')}precision: {precision} needs CUDA, which is not available here; "
                f"use precision: fp32 (or auto)")
        if precision == "auto":
            precision = "bf16" if resolved == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        return resolved, precision

    def _resolve_base_model(self, cfg: TrainConfig) -> Path:
        path = cfg.path("base_model")
        if not path.is_dir() or not (path / "config.json").exists():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise BaseModelNotFoundError(
                f"{cfg.where('base_model')}base_model: {path} {what} (a local model directory is needed; "
                f"replyloop never downloads models)")
        return path.resolve()

    def _resolve_init_adapter(self, cfg: TrainConfig) -> Path | None:
        if not cfg.init_adapter:
            return None
        if cfg.init_adapter != "champion":
            path = cfg.path("init_adapter")
            if not (path / "adapter_config.json").exists():
                raise TrainingError(f"{cfg.where('init_adapter')}init_adapter: {path} is not an adapter directory "
                                    f"(no adapter_config.json)")
            return path.resolve()
        from replyloop.store import Store

        from replyloop.training.data import _workspace

        ws = _workspace()
        store_path = cfg.path("store_path") or (ws.db_path if ws else None)
        if store_path is None or not Path(store_path).exists():
            raise NoChampionError(f"{cfg.where('init_adapter')}init_adapter: champion needs the store "
                                  f"(set store_path; {store_path or 'no workspace config found'})")
        with Store(store_path) as store:
            row = store.one("SELECT adapter_path FROM models WHERE status = 'champion' ORDER BY id DESC LIMIT 1")
        if row is None or not row["adapter_path"]:
            raise NoChampionError(f"{cfg.where('init_adapter')}init_adapter: champion, but {store_path} has no "
                                  f"champion model yet; remove init_adapter to train a fresh adapter")
        path = Path(row["adapter_path"]).expanduser()
        if not path.is_absolute():
            path = Path(store_path).resolve().parent / path
        if not (path / "adapter_config.json").exists():
            raise NoChampionError(f"the champion's adapter {path} is missing (no adapter_config.json)")
        return path.resolve()

    def _setup_tokenizer(self, base_path: Path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base_path))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _report_token_lengths(self) -> None:
        """The token-length distribution (one line to ``notice``), and a TruncationWarning when
        more than TRUNCATION_WARN_SHARE of the samples are cut or dropped."""
        if self.is_main:
            _report_line(token_lengths_line(self.token_stats.report()))  # a report, not a run note
        message = self.token_stats.warning()
        if message is not None:
            warnings.warn(f"{self.cfg.where('max_seq_length')}{message}", TruncationWarning, stacklevel=2)

    def _setup_data(self, examples: list[Example]) -> tuple[list[Example], list[Example]]:
        source = self.records.description.get("path", "")
        if not examples:
            why = " (every prompt is longer than max_seq_length)" if self.token_stats.dropped else ""
            raise DatasetTooSmallError(f"dataset is empty: no trainable samples in {source}{why}")
        train, held = split_eval(examples, self.cfg.eval_ratio, self.seed)
        if len(train) < self.batch_size:
            raise DatasetTooSmallError(
                f"dataset is smaller than one batch: {len(train)} training sample(s) "
                f"({len(held)} more held out) from {source}, batch_size is {self.batch_size}")
        return train, held

    def _setup_model(self, *, base_path: Path, init_adapter: Path | None):
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        self._refuse_registered_output()  # before hours of training, not only at save time
        options = model_load_options(device=self.device, precision=self.precision, packing=self.packing,
                                     flash_attn_available=_has_flash_attn())
        kwargs: dict = {"dtype": getattr(torch, options["dtype"]),
                        "attn_implementation": options["attn_implementation"]}
        if self.cfg.quantization == "4bit":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"])
        model = AutoModelForCausalLM.from_pretrained(str(base_path), **kwargs)
        self.flash = getattr(model.config, "_attn_implementation", "") == "flash_attention_2"
        model.config.use_cache = False
        if self.cfg.quantization == "4bit":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=self.cfg.gradient_checkpointing)
        elif self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if init_adapter is not None:
            return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        targets = self.cfg.target_modules
        if targets != "all-linear":
            available = lora_module_names(model)
            wanted = [targets] if isinstance(targets, str) else targets
            unknown = [t for t in wanted if t.rsplit(".", 1)[-1] not in available]
            if unknown:
                raise UnknownTargetModulesError(
                    f"{self.cfg.where('target_modules')}target_modules: {', '.join(unknown)} not in the model "
                    f"{base_path.name}; it has: {', '.join(available)}")
        lora = LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM", bias="none")
        return get_peft_model(model, lora)

    def _resume_path(self, cfg: TrainConfig) -> Path | None:
        value = cfg.resume_from_checkpoint
        if value is False or value is None:
            return None
        how = cfg.named("resume_from_checkpoint")
        if value is True:
            found = ckpt.latest_checkpoint(self.checkpoint_dir)
            if found is None:
                fix = "run without --resume" if how == "--resume" else "set it to false"
                raise TrainingError(f"{cfg.where('resume_from_checkpoint')}{how.split(' (')[0]}: no checkpoint "
                                    f"in {self.checkpoint_dir} yet (no checkpoint-<step> folder; {fix} to start "
                                    f"fresh)")
            return found
        path = cfg.path("resume_from_checkpoint")  # existence: checked by cfg.check_paths()
        if (path / "state.json").exists():
            return path
        found = ckpt.latest_checkpoint(path)  # a folder of checkpoints (an output_dir): its latest
        if found is None:
            have = ckpt.list_checkpoints(self.checkpoint_dir)
            listed = ", ".join(str(p) for p in have) if have else f"none in {self.checkpoint_dir}"
            raise TrainingError(f"{cfg.where('resume_from_checkpoint')}resume_from_checkpoint: {path} is not a "
                                f"checkpoint (no state.json) and holds none; checkpoints: {listed}")
        return found

    def _fresh_hint(self) -> str:
        """How to start fresh, in the words the user wrote."""
        how = self.cfg.named("resume_from_checkpoint")
        if how == "--resume":
            return "start fresh without --resume"
        return f"start fresh with resume_from_checkpoint: false ({how.split(' (', 1)[-1].rstrip(')')})" \
            if "(" in how else "start fresh with resume_from_checkpoint: false"

    def _check_init_adapter(self, cfg: TrainConfig, path: Path) -> None:
        """A config that continues an adapter must not ask for another shape: ``lora_rank``,
        ``lora_alpha`` and ``target_modules``, where the config sets them, must match the
        adapter's ``adapter_config.json`` (keys left out take the adapter's values)."""
        saved = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        problems = []
        checks = [("lora_rank", "r", cfg.lora_rank, saved.get("r")),
                  ("lora_alpha", "lora_alpha", cfg.lora_alpha, saved.get("lora_alpha"))]
        for key, name, mine, theirs in checks:
            if key in cfg.model_fields_set and theirs is not None and float(mine) != float(theirs):
                problems.append(f"{cfg.where(key)}{key}: {_num(mine)}, but init_adapter {path} was trained with "
                                f"{name}={_num(theirs)}; set {key}: {_num(theirs)} or remove {key} (a continued "
                                f"adapter keeps its shape), or remove init_adapter to train a new adapter")
        mine, theirs = cfg.target_modules, saved.get("target_modules")
        if "target_modules" in cfg.model_fields_set and isinstance(mine, list) and isinstance(theirs, list) \
                and {m.rsplit(".", 1)[-1] for m in mine} != {m.rsplit(".", 1)[-1] for m in theirs}:
            problems.append(f"{cfg.where('target_modules')}target_modules: [{', '.join(mine)}], but init_adapter "
                            f"{path} was trained on [{', '.join(sorted(theirs))}]; set target_modules to those or "
                            f"remove it, or remove init_adapter to train a new adapter")
        if problems:
            raise AdapterMismatchError("\n".join(problems))

    def note(self, text: str) -> None:
        """Something the user should know about this run (printed when it starts, kept in the manifest)."""
        self.notes.append(text)
        if getattr(self, "is_main", os.environ.get("RANK", "0") == "0"):  # before accelerate: torchrun's RANK
            self._notice(text)

    def _note_checkpoints(self) -> None:
        cfg, p = self.cfg, self.progress
        next_save = (p.step // self.save_steps + 1) * self.save_steps
        saves = next_save < self.total_steps
        if not saves:
            again = "from step 0" if p.step == 0 else f"from step {p.step}"
            self.note(f"{cfg.where('save_steps')}save_steps is {self.save_steps} and this run ends at step "
                      f"{self.total_steps}: it writes no{' further' if p.step else ''} checkpoint, so if it is "
                      f"interrupted it starts again {again}; set save_steps below {self.total_steps - p.step} "
                      f"to be able to resume")
        stale = [c for c in ckpt.list_checkpoints(self.checkpoint_dir) if ckpt._run_id(c) != self.run_id]
        if stale and self.resumed_from is None:
            names = ", ".join(c.name for c in stale)
            fate = ("its first checkpoint replaces them" if saves else "they are kept (this run writes none)")
            self.note(f"output_dir {self.checkpoint_dir} holds {names} from an earlier run; this run starts fresh "
                      f"and {fate} (set resume_from_checkpoint to continue from one instead)")

    # -- data --------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        lengths = [len(e) for e in self.train_examples]
        batches = epoch_batches(lengths, self.batch_size, self.seed, epoch, group_by_length=not self.packing)
        if self.world > 1:  # each rank its own share, all ranks the same number of batches
            per_rank = len(batches) // self.world
            batches = batches[self.rank::self.world][:per_rank]
        return batches

    def _collate(self, examples: list[Example]) -> dict:
        if self.packing:
            batch = collate_packed(examples, dtype=self.compute_dtype)
            if self.flash:  # flash-attention reads sample boundaries from position_ids
                batch.pop("attention_mask")
        else:
            batch = collate_padded(examples, self.tokenizer.pad_token_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    # -- training ----------------------------------------------------------------------------

    def _forward_loss_sum(self, model, batch: dict):
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits
        return token_loss_sum(logits, labels)

    def _train_step(self, group: list[list[int]]) -> tuple[float, int, int]:
        """One optimizer step over ``group`` micro-batches; loss is the mean over label tokens."""
        examples = [[self.train_examples[i] for i in batch] for batch in group]
        n_labels = sum(e.n_labels for batch in examples for e in batch)
        n_tokens = sum(len(e) for batch in examples for e in batch)
        total = 0.0
        for k, batch_examples in enumerate(examples):
            batch = self._collate(batch_examples)
            sync = k == len(examples) - 1
            ctx = contextlib.nullcontext() if sync or self.world == 1 else self.accelerator.no_sync(self.model)
            with ctx, self.accelerator.autocast():
                loss = self._forward_loss_sum(self.model, batch) / max(1, n_labels)
            self.accelerator.backward(loss)
            total += loss.item()
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, n_tokens, n_labels

    def evaluate(self) -> float | None:
        """Mean loss per label token on the held-out part."""
        import torch

        if not self.eval_examples:
            return None
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        loss_sum, n = 0.0, 0
        with torch.no_grad(), self.accelerator.autocast():
            for start in range(0, len(self.eval_examples), self.batch_size):
                chunk = self.eval_examples[start:start + self.batch_size]
                loss_sum += self._forward_loss_sum(model, self._collate(chunk)).item()
                n += sum(e.n_labels for e in chunk)
        model.train()
        return loss_sum / max(1, n)

    def _track_eval(self) -> None:
        from replyloop.training.checkpointing import trainable_state

        p = self.progress
        loss = self.evaluate()
        self._last_eval_step = p.step
        if loss is None:
            return
        if p.best_eval_loss is None or loss < p.best_eval_loss:
            p.best_eval_loss, p.best_step, p.bad_evals = loss, p.step, 0
            self.best_state = trainable_state(self.accelerator.unwrap_model(self.model))
        else:
            p.bad_evals += 1
            if self.patience and p.bad_evals >= self.patience:
                p.stopped_early = True
        self._emit({"step": p.step, "total_steps": self.total_steps, "eval_loss": round(loss, 6),
                    "best_eval_loss": round(p.best_eval_loss, 6), "best_step": p.best_step,
                    "stopped_early": p.stopped_early})
        if self.writer is not None:
            self.writer.add_scalar("eval/loss", loss, p.step)

    def train(self) -> None:
        p = self.progress
        self.model.train()
        batches = self._epoch_batches(p.epoch)
        start_step = p.step
        while p.step < self.total_steps and not p.stopped_early:
            if p.batch_in_epoch >= len(batches):
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                batches = self._epoch_batches(p.epoch)
            group = batches[p.batch_in_epoch:p.batch_in_epoch + self.grad_accum]
            t0 = time.perf_counter()
            loss, n_tokens, n_labels = self._train_step(group)
            self._train_time += time.perf_counter() - t0
            self._tokens_this_run += n_tokens
            p.batch_in_epoch += len(group)
            p.step += 1
            p.seen_tokens += n_tokens
            p.train_tokens += n_labels
            p.last_loss = loss
            tokens_per_s = self._tokens_this_run / self._train_time if self._train_time else 0.0
            lr = self.scheduler.get_last_lr()[0]
            eta = (self.total_steps - p.step) * self._train_time / max(1, p.step - start_step)
            self._emit({"step": p.step, "total_steps": self.total_steps, "loss": round(loss, 6),
                        "tokens_per_s": round(tokens_per_s, 1), "epoch": p.epoch, "lr": lr, "eta_s": round(eta, 1)})
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, p.step)
                self.writer.add_scalar("train/lr", lr, p.step)
                self.writer.add_scalar("train/tokens_per_s", tokens_per_s, p.step)
            if p.step % self.eval_steps == 0:
                self._track_eval()
            if p.step % self.save_steps == 0 and p.step < self.total_steps and not p.stopped_early:
                self.save_checkpoint()
        if self._last_eval_step != p.step:
            self._track_eval()
        if self.best_state is None:  # no held-out data: the last weights are the result
            from replyloop.training.checkpointing import trainable_state

            self.best_state = trainable_state(self.accelerator.unwrap_model(self.model))
            p.best_step = p.step

    def _emit(self, event: dict) -> None:
        if self.is_main and self._progress:
            self._progress(event)

    def save_checkpoint(self) -> Path | None:
        """A resume checkpoint (main process only), written atomically."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        try:
            return ckpt.save_checkpoint(
                self.checkpoint_dir, model=self.accelerator.unwrap_model(self.model), optimizer=self.optimizer,
                scheduler=self.scheduler, progress=self.progress, best_state=self.best_state,
                config=self.cfg.to_record(), keep=self.cfg.keep_checkpoints, data=self.data_state,
                run_id=self.run_id)
        except Exception as exc:
            if not _is_io_error(exc):
                raise
            raise SaveError(f"could not save a checkpoint in {self.checkpoint_dir}: {_os_error(exc)}") from exc

    # -- output ------------------------------------------------------------------------------

    def manifest(self) -> dict:
        from replyloop import timeutil

        p, stats = self.progress, self.token_stats
        return {
            "base_model": str(self._resolve_base_model(self.cfg)),
            "snapshot_hash": self.records.snapshot_hash,
            "prompt": self.prompt_format.to_record(),
            "dataset": {**self.records.description, "samples": stats.samples,
                        "train_samples": len(self.train_examples), "eval_samples": len(self.eval_examples)},
            "config": {**self.cfg.to_record(), **self.lora},  # what was trained (init_adapter: its shape)
            "lora": self.lora,
            "metrics": {
                "train_loss": p.last_loss, "eval_loss": p.best_eval_loss, "best_step": p.best_step,
                "steps": p.step, "train_tokens": p.train_tokens, "seen_tokens": p.seen_tokens,
                "truncated": stats.truncated, "dropped": stats.dropped, "stopped_early": p.stopped_early,
                "token_lengths": {k: v for k, v in stats.report().items() if k in ("p50", "p95", "max")},
                "tokens_per_s": round(self._tokens_this_run / self._train_time, 1) if self._train_time else None,
            },
            "versions": library_versions(),
            "created_at": timeutil.now_iso(),
            "init_adapter": str(self.init_adapter) if self.init_adapter else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "notes": self.notes,
        }

    def _refuse_registered_output(self) -> None:
        """A registered adapter is immutable: never replace a directory the registry points to."""
        from replyloop.registry import registered_refusal

        reason = registered_refusal(self.output_dir)
        if reason is not None:
            raise OutputRegisteredError(f"{self.cfg.where('output_dir')}output_dir: {reason}: "
                                        "set output_dir to a new directory (e.g. adapters/<date>)")

    def save_output(self) -> TrainResult:
        """The best adapter + manifest, assembled in a temp dir beside ``output_dir`` and renamed.
        The kept ``checkpoint-<step>/`` folders and a ``logging_dir`` inside ``output_dir`` are
        carried into the new one by hard links, so the swap loses neither. An existing ``output_dir`` is replaced, unless
        it is a registered adapter (an error)."""
        self.accelerator.wait_for_everyone()
        manifest = self.manifest()
        if not self.is_main:
            return TrainResult(self.output_dir, manifest)
        self._refuse_registered_output()
        if self.writer is not None:  # flush the events before they are linked into the new dir
            self.writer.close()
            self.writer = None
        model = self.accelerator.unwrap_model(self.model)
        ckpt.load_trainable_state(model, self.best_state)
        out = self.output_dir
        tmp = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            model.save_pretrained(str(tmp))
            (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
            if out.exists():
                _carry_over(out, tmp, self.cfg.logging_path)
                if _exchange(tmp, out):  # one atomic swap: out is never missing
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    old = out.with_name(f".{out.name}.old-{os.getpid()}")
                    out.rename(old)
                    tmp.rename(out)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if _is_io_error(exc):  # disk full, read-only or immutable directory
                raise SaveError(f"could not save the adapter to {out}: {_os_error(exc)}") from exc
            raise
        return TrainResult(out, manifest)

    def cleanup(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._console is not None:
            self._console.close()


class SaveError(TrainingError):
    """Could not save the training output"""


def _carry_over(old: Path, new: Path, logging_dir: Path) -> None:
    """Hard-link (copy where links fail) into ``new`` what of ``old`` must outlive the rename:
    its complete ``checkpoint-<step>/`` folders and a ``logging_dir`` inside it (TensorBoard
    events). Everything else in ``old`` (an older adapter, stray files) is replaced, as before."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    keep = [p.name for p in ckpt.list_checkpoints(old)]
    logs = Path(logging_dir).resolve()
    if logs == old:  # events written straight into output_dir
        keep += [p.name for p in old.glob("events.out.tfevents.*")]
    elif logs.is_relative_to(old):
        keep.append(logs.relative_to(old).parts[0])
    for name in dict.fromkeys(keep):
        entry = old / name
        if (new / name).exists() or not entry.exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / name, symlinks=True, copy_function=link)
        else:
            link(entry, new / name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system cannot (then the caller renames in two steps)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # EINVAL/ENOSYS (filesystem or kernel without it): fall back


def _num(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _lora_settings(model) -> dict:
    """The LoRA shape of a peft model, as config keys (what the manifest records as trained)."""
    config = next(iter(getattr(model, "peft_config", {}).values()), None)
    if config is None:
        return {}
    modules = config.target_modules
    modules = sorted(modules) if isinstance(modules, (set, list, tuple)) else modules
    return {"lora_rank": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": modules}


class OutputRegisteredError(TrainingError):
    """output_dir is a registered adapter, which training never replaces"""


def _is_io_error(exc: BaseException) -> bool:
    """An OSError, or safetensors' own error for a failed write (``I/O error: ... (os error N)``)."""
    if isinstance(exc, OSError):
        return True
    return type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc)


def _os_error(exc: BaseException) -> str:
    """``[Errno 27] File too large`` without the file name (the caller names the directory)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    text = str(exc) or exc.__class__.__name__
    return text.split("I/O error: ", 1)[-1]  # safetensors: "Error while serializing: I/O error: ..."


def model_load_options(*, device: str, precision: str, packing: bool, flash_attn_available: bool) -> dict:
    """``{"dtype": torch dtype name, "attn_implementation": ...}`` for loading the base model.

    The dtype is always explicit (transformers 5 defaults to the checkpoint's dtype, so a
    bf16-saved model would otherwise train in bf16 on a CPU with ``precision: fp32``): float32
    for fp32, else the precision's dtype. flash-attention-2 only runs in fp16/bf16 on CUDA, so
    it is asked for only there, with packing (it reads sample boundaries from ``position_ids``)
    and when ``flash_attn`` is installed; everything else uses sdpa with the 4-D block mask.
    ``precision`` is the resolved one (fp32, bf16 or fp16; never auto)."""
    dtypes = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    if precision not in dtypes:
        raise ValueError(f"precision {precision!r} is not resolved (expected one of {', '.join(dtypes)})")
    flash = device == "cuda" and precision in ("bf16", "fp16") and packing and flash_attn_available
    return {"dtype": dtypes[precision], "attn_implementation": "flash_attention_2" if flash else "sdpa"}


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def run_training(cfg: TrainConfig, progress: Progress | None = None, notice: Notice | None = None) -> TrainResult:
    """Train, keep the best adapter by held-out loss, write ``output_dir`` atomically.

    ``progress`` receives one dict per step (``step``, ``total_steps``, ``loss``,
    ``tokens_per_s``, ...) and per evaluation (``eval_loss``); ``None`` prints a progress bar on
    a terminal and ``replyloop-progress {json}`` lines otherwise. ``notice`` receives the run's
    notes (other CSVs not read, no checkpoint before the end, ...); ``None`` prints ``Note: ...``
    on stderr. The token-length distribution is printed on stderr at the start.
    """
    if cfg.objective != "sft":  # train18: DPO / KTO on top of init_adapter (training/preference.py)
        from replyloop.training.preference import run_preference_training

        return run_preference_training(cfg, progress=progress, notice=notice)
    return run_recipe(LoRAFinetuneRecipe(cfg, progress=progress, notice=notice))


def run_recipe(recipe: "LoRAFinetuneRecipe") -> TrainResult:
    """Set up, train and save ``recipe`` (SFT or a preference recipe), cleaning up in any case."""
    try:
        recipe.setup()
        recipe.train()
        return recipe.save_output()
    finally:
        recipe.cleanup()
