"""A workspace with the sample data, a tiny base model and a fast training config,
for the pipeline tests (real training subprocesses, real evaluation)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "replyloop" / "samples" / "cs_samples.csv"

TRAIN_YAML = """\
base_model: {base}
task_type: CAUSAL_LM
lora_rank: 8
lora_alpha: 16
lora_dropout: 0.0
target_modules: [q_proj, v_proj, gate_proj, up_proj, down_proj]
batch_size: 8
epochs: 1
max_steps: {steps}
learning_rate: 0.01
max_seq_length: 96
output_dir: unused
save_steps: 4
eval_steps: 4
eval_ratio: 0.1
dataset: store
"""


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    from replyloop.training.tiny import build_tiny_base

    with SAMPLES.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return build_tiny_base(tmp_path_factory.mktemp("pipeline-base") / "base",
                           [r["prompt"] for r in rows] + [r["response"] for r in rows])


def make_workspace(home: Path, base: Path, steps: int = 8, **sections):
    """replyloop.yaml + train.yaml + imported samples; returns (Config, Store)."""
    import yaml

    from replyloop.config import load_config, write_default_config
    from replyloop.dataio import read_samples
    from replyloop.store import Store

    path = write_default_config(home)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # tiny models draft near-noise: the gate here is about the mechanism, not the quality
    data["evaluation"].update({"floor": 0.0, "tolerance": 1.0, "category_margin": 1.0, "max_new_tokens": 16,
                               "chrf_floor": 0.0, "chrf_tolerance": 1.0, "chrf_category_margin": 1.0,
                               "batch_size": 32})
    data["scheduler"].update({"min_new_samples": 3, "min_interval_hours": 0, "canary_percent": 20})
    for section, values in sections.items():
        data[section].update(values)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (home / "train.yaml").write_text(TRAIN_YAML.format(base=base, steps=steps), encoding="utf-8")
    config = load_config(path)
    store = Store(config.db_path)
    store.add_samples(read_samples(SAMPLES))
    return config, store


def approve(store, n: int, start: int = 0, reviewer: str = "USUP1") -> None:
    for i in range(start, start + n):
        qid = store.add_question(f"请问订单{i}的电子面单在哪里查看？", f"conv-{i}", "物流查询", source="http")
        store.decide(store.add_draft(qid, "您好，请在订单详情页查看电子面单。", model_name="m"), "approve", reviewer)


def copy_workspace(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
