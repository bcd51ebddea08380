"""Fixtures for the training tests: one tiny Llama per session, small fast configs.

Imported by tests/test_training_*.py (``from training_fixtures import *``).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "replyloop" / "samples" / "cs_samples.csv"

FAST = dict(batch_size=4, max_seq_length=96, max_steps=12, eval_steps=4, save_steps=4, learning_rate=0.02,
            lora_dropout=0.1, eval_ratio=0.1, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])


def sample_rows() -> list[dict]:
    with SAMPLES.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    import torch

    from replyloop.training.tiny import build_tiny_base

    torch.set_num_threads(1)
    rows = sample_rows()
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base",
                           [r["prompt"] for r in rows] + [r["response"] for r in rows])


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(SAMPLES, folder / "metadata.csv")
    return folder


def make_cfg(root: Path, base: Path, **values):
    from replyloop.training.config import make_train_config

    merged = {**FAST, "base_model": str(base), "train_data_dir": "data", "output_dir": "out/adapter", **values}
    return make_train_config(root=root, **merged)


@pytest.fixture
def cfg_factory(tmp_path, tiny_base, data_dir):
    return lambda **values: make_cfg(tmp_path, tiny_base, **values)


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, tiny_base) -> Path:
    """An adapter trained once per session (12 steps on the sample set)."""
    from replyloop.training.recipe import run_training

    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    shutil.copy(SAMPLES, root / "data" / "metadata.csv")
    return run_training(make_cfg(root, tiny_base), progress=lambda e: None).output_dir


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
