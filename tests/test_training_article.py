"""Issue 13, part 1: the published customer-service config (the lora-scripts article's
``configs/cs_lora.yaml``) runs unchanged with ``replyloop train --config configs/cs_lora.yaml``
from the project root, with the article's layout, its prompts CSV and a (tiny) Llama at
``./models/llama-2-7b-chat-hf``."""

import csv
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import cli, cli_subprocess
from training_fixtures import SAMPLES, sample_rows, tiny_base  # noqa: F401

# The article's YAML, byte for byte (the issue quotes it).
ARTICLE_YAML = """\
# configs/cs_lora.yaml
train_data_dir: "./data/ecommerce_cs"
metadata_path: "./data/ecommerce_cs/prompts.csv"
base_model: "./models/llama-2-7b-chat-hf"
task_type: "text-generation"
lora_rank: 8
target_modules: ["q_proj", "v_proj"]
batch_size: 4
epochs: 20
learning_rate: 1e-4
max_seq_length: 512
output_dir: "./output/ecommerce_cs_lora"
save_steps: 100
logging_dir: "./output/ecommerce_cs_lora/logs"
"""

# 26 pairs: 3 held out (eval_ratio 0.1), 23 train = 6 batches of 4 an epoch; 20 epochs = 120 steps.
N_PAIRS = 26
STEPS = 120


def article_project(root: Path, base: Path) -> Path:
    """The article's project root: configs/, data/ecommerce_cs/prompts.csv (prompt,response with
    the instruction inside the prompt), models/llama-2-7b-chat-hf."""
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "cs_lora.yaml").write_text(ARTICLE_YAML, encoding="utf-8")
    data = root / "data" / "ecommerce_cs"
    data.mkdir(parents=True)
    with (data / "prompts.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "response"])
        for row in sample_rows()[:N_PAIRS]:
            writer.writerow([f"客户问：{row['prompt']}", row["response"]])
    shutil.copytree(base, root / "models" / "llama-2-7b-chat-hf")
    return root


def progress_steps(stdout: str) -> list[int]:
    return [json.loads(line.split(" ", 1)[1])["step"] for line in stdout.splitlines()
            if line.startswith("replyloop-progress ") and '"loss"' in line]


DEPLOY = textwrap.dedent("""\
    # The article's deployment: load the base, then the adapter by its relative path.
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("./models/llama-2-7b-chat-hf")
    model = AutoModelForCausalLM.from_pretrained("./models/llama-2-7b-chat-hf")
    model = PeftModel.from_pretrained(model, sys.argv[1])
    inputs = tokenizer("客户问：收不到验证码怎么办？", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    print(json.dumps({"r": model.peft_config["default"].r,
                      "modules": sorted(model.peft_config["default"].target_modules),
                      "new_tokens": out.shape[1] - inputs["input_ids"].shape[1]}))
""")


@pytest.mark.slow
def test_the_articles_config_trains_unchanged_and_resumes_from_checkpoint_100(tmp_path, tiny_base, monkeypatch,
                                                                                capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = article_project(tmp_path / "project", tiny_base)
    env = {"OMP_NUM_THREADS": "1"}
    first = cli_subprocess("train", "--config", "configs/cs_lora.yaml", cwd=root, env=env)
    assert first.returncode == 0, first.stderr
    assert progress_steps(first.stdout) == list(range(1, STEPS + 1))
    out = root / "output" / "ecommerce_cs_lora"
    assert first.stdout.splitlines()[-1].startswith(f"Wrote {out}: {STEPS} steps")
    assert "Note:" not in first.stderr  # one CSV, checkpoints on: nothing to warn about

    # HF Trainer's layout: the adapter at the top, checkpoint-100 beside it, TensorBoard logs inside
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "checkpoint-100",
            "logs"} <= {p.name for p in out.iterdir()}
    ckpt = out / "checkpoint-100"
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt",
            "state.json"} <= {p.name for p in ckpt.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["task_type"] == "CAUSAL_LM"
    assert manifest["lora"]["lora_rank"] == 8 and manifest["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert manifest["dataset"]["path"] == str(root / "data" / "ecommerce_cs" / "prompts.csv")
    assert manifest["dataset"]["other_csv"] == []

    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, STEPS + 1))

    # the article's deployment snippet, run from the project root, on the output and on the checkpoint
    import runpy

    for adapter in ("./output/ecommerce_cs_lora", "./output/ecommerce_cs_lora/checkpoint-100"):
        (root / "deploy.py").write_text(DEPLOY, encoding="utf-8")
        monkeypatch.chdir(root)
        monkeypatch.setattr(sys, "argv", ["deploy.py", adapter])
        runpy.run_path("deploy.py", run_name="__main__")
        assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
            "r": 8, "modules": ["q_proj", "v_proj"], "new_tokens": 8}

    # the same config, plus the article's resume line: continues from step 100 to the same result
    yaml_text = ARTICLE_YAML + 'resume_from_checkpoint: "./output/ecommerce_cs_lora/checkpoint-100"\n'
    (root / "configs" / "cs_lora_resume.yaml").write_text(yaml_text, encoding="utf-8")
    resumed = cli("train", "--config", "configs/cs_lora_resume.yaml")  # in-process, from the project root
    assert resumed.exit_code == 0, resumed.output
    assert progress_steps(resumed.stdout) == list(range(101, STEPS + 1))
    assert "save_steps is 100 and this run ends at step 120: it writes no further checkpoint" in resumed.stderr
    again = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert again["resumed_from"] == str(ckpt)
    for key in ("steps", "train_loss", "eval_loss", "best_step", "train_tokens"):
        assert again["metrics"][key] == pytest.approx(manifest["metrics"][key], abs=1e-6), key
    assert (out / "checkpoint-100" / "state.json").exists()  # still there to resume from again
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    assert sorted({e.step for e in events.Scalars("train/loss")}) == list(range(1, STEPS + 1))
