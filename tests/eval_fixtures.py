"""Tiny real models for the evaluation, registry and drafting tests.

A tiny Llama from ``training.tiny.build_tiny_base`` and LoRA adapters trained by the real
trainer (``training.recipe.run_training``) on the sample snapshot's train split. The pairs
go to the trainer as a lora-scripts folder (``metadata.csv``), so the adapters' manifests
name no snapshot; the fixture records the snapshot the pairs came from, which evaluation
needs to find the held-out split.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

# the adapters' training knobs: small and fast, yet enough for the tests to tell them apart
# (padded batches: packing 16 samples into one row makes each CPU step about 4x slower here)
TRAIN = dict(lora_rank=16, lora_alpha=32, lora_dropout=0.0, batch_size=16, max_seq_length=160, packing=False,
             learning_rate=3e-3, lr_scheduler="constant", eval_ratio=0.0, eval_steps=1000, save_steps=1000,
             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def make_adapter(base_dir: Path, out_dir: Path, *, snapshot_hash: str | None = None,
                 pairs: list[tuple[str, str]] = (), steps: int = 0, lr: float = 3e-3, seed: int = 0) -> Path:
    """A LoRA adapter on the tiny base trained by ``run_training`` for ``steps`` on
    (prompt, response) pairs; ``steps=0``: learning rate 0, so the adapter stays as
    initialised (untrained). ``snapshot_hash`` is written into its manifest."""
    from replyloop.training.config import make_train_config
    from replyloop.training.recipe import run_training

    out_dir = Path(out_dir)
    data = out_dir.with_name(out_dir.name + ".data")
    data.mkdir(parents=True)
    with open(data / "metadata.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "response"])
        writer.writerows(pairs)
    cfg = make_train_config(root=data.parent, **{**TRAIN, "base_model": str(base_dir), "train_data_dir": str(data),
                                                  "output_dir": str(out_dir), "max_steps": max(steps, 1),
                                                  "learning_rate": lr if steps else 0.0, "seed": seed})
    run_training(cfg, progress=lambda event: None)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["snapshot_hash"] = snapshot_hash
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out_dir


# -- pytest fixtures (import them into a test module: `from eval_fixtures import tiny_models`) --

SAMPLES_CSV = Path(__file__).resolve().parent.parent / "replyloop" / "samples" / "cs_samples.csv"
PROMISE = "您好，我们承诺全额赔付。"


def sample_rows() -> list[dict]:
    with open(SAMPLES_CSV, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def load_samples(store) -> str:
    """Import the sample set into ``store`` and snapshot it (default share and seed); returns the hash."""
    from replyloop.dataio import read_samples

    store.add_samples(read_samples(SAMPLES_CSV))
    return store.create_snapshot(0.15, "replyloop").hash


class TinyModels:
    """A tiny base and three adapters trained on the sample snapshot's train split."""

    def __init__(self, root: Path):
        from replyloop.store import Store
        from replyloop.training.tiny import build_tiny_base

        rows = sample_rows()
        self.base = build_tiny_base(root / "base", [r["prompt"] for r in rows] + [r["response"] for r in rows]
                                    + [PROMISE], vocab_size=600)
        with Store(root / "snap.db") as store:
            self.snapshot_hash = load_samples(store)
            train = [(r["prompt"], r["response"]) for r in store.snapshot_samples(self.snapshot_hash, "train")]
        self.untrained = make_adapter(self.base, root / "untrained", snapshot_hash=self.snapshot_hash, pairs=train)
        self.trained = make_adapter(self.base, root / "trained", snapshot_hash=self.snapshot_hash,
                                    pairs=train, steps=60)
        self.promise = make_adapter(self.base, root / "promise", snapshot_hash=self.snapshot_hash,
                                    pairs=[(p, PROMISE + r) for p, r in train], steps=60, seed=1)

    def copy(self, name: str, dest: Path) -> Path:
        """A copy of an adapter directory (tests that delete adapters work on copies)."""
        import shutil

        return Path(shutil.copytree(getattr(self, name), dest))


_built: list[TinyModels] = []


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """Built once per session, even when several test modules import this fixture."""
    if not _built:
        _built.append(TinyModels(tmp_path_factory.mktemp("tiny-models")))
    return _built[0]
