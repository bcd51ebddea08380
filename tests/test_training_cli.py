"""`replyloop train` end to end: a real subprocess killed mid-run, resumed with --resume,
progress lines, merge/export subcommands and config errors."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from helpers import cli, cli_subprocess
from training_fixtures import SAMPLES, make_cfg, tiny_base, trained_adapter  # noqa: F401

YAML = """\
base_model: {base}
train_data_dir: data
output_dir: out/adapter
batch_size: 4
max_seq_length: 96
max_steps: {steps}
eval_steps: 10
save_steps: 2
learning_rate: 0.02
lora_dropout: 0.1
target_modules: [q_proj, v_proj, gate_proj, up_proj, down_proj]
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_base):
    from replyloop.training.recipe import run_training

    steps = 60
    (tmp_path / "data").mkdir()
    shutil.copy(SAMPLES, tmp_path / "data" / "metadata.csv")
    config = tmp_path / "train.yaml"
    config.write_text(YAML.format(base=tiny_base, steps=steps), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "replyloop", "train", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    seen = 0
    for line in proc.stdout:
        assert line.startswith("replyloop-progress {")
        event = json.loads(line.split(" ", 1)[1])
        seen = event["step"]
        if seen >= 6:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and seen < steps
    assert not (tmp_path / "out" / "adapter" / "manifest.json").exists()
    assert list((tmp_path / "out" / "adapter").glob("checkpoint-*"))

    resumed = cli_subprocess("train", "--config", config, "--resume", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(x.split(" ", 1)[1]) for x in resumed.stdout.splitlines() if x.startswith("replyloop-progress")]
    assert lines[0]["step"] > 1 and lines[-1]["step"] == steps
    assert set(lines[0]) >= {"step", "total_steps", "loss", "tokens_per_s"}
    assert resumed.stdout.splitlines()[-1].startswith(f"Wrote {tmp_path / 'out' / 'adapter'}: {steps} steps")
    manifest = json.loads((tmp_path / "out" / "adapter" / "manifest.json").read_text(encoding="utf-8"))

    plain = run_training(make_cfg(tmp_path, tiny_base, output_dir="plain", max_steps=steps, eval_steps=10,
                                  save_steps=2), progress=lambda e: None)
    assert manifest["metrics"]["steps"] == plain.manifest["metrics"]["steps"] == steps
    assert manifest["metrics"]["train_loss"] == pytest.approx(plain.manifest["metrics"]["train_loss"], abs=1e-6)
    assert manifest["metrics"]["eval_loss"] == pytest.approx(plain.manifest["metrics"]["eval_loss"], abs=1e-6)


def test_merge_and_export_subcommands(trained_adapter, tmp_path):
    result = cli("train", "export", trained_adapter, "--out", tmp_path / "exp")
    assert result.exit_code == 0, result.output
    assert result.output == f"Exported adapter to {tmp_path / 'exp'}\n"
    result = cli("train", "merge", trained_adapter, "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "model.safetensors").exists()
    result = cli("train", "export", tmp_path / "nothing", "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'nothing'}: not an adapter directory (no adapter_config.json)\n"


def test_config_errors_are_reported_with_file_and_line(tmp_path, monkeypatch):
    config = tmp_path / "train.yaml"
    config.write_text("base_model: b\noutput_dir: o\ntrain_data_dir: d\nlora_rnk: 8\n", encoding="utf-8")
    result = cli("train", "--config", config)
    assert result.exit_code == 2
    assert result.output == f"Error: {config}:4: key 'lora_rnk': unknown key\n"
    result = cli("train")
    assert result.exit_code == 2 and "Example: replyloop train --config configs/cs_lora.yaml" in result.output
    config.write_text("base_model: missing\noutput_dir: o\ntrain_data_dir: .\n", encoding="utf-8")
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    result = cli("train", "--config", config)
    assert result.exit_code == 2
    assert result.output == (f"Error: {config}:1: base_model: missing does not exist (tried "
                             f"{tmp_path / 'project' / 'missing'}, {tmp_path / 'missing'}); a local model directory "
                             f"is needed, replyloop never downloads models\n"
                             # every problem at once: train_data_dir `.` is the project, without metadata.csv
                             f"{config}: metadata_path: metadata.csv does not exist "
                             f"({tmp_path / 'project' / 'metadata.csv'})\n")


STORE_YAML = YAML.replace("train_data_dir: data\n", "dataset: store\nstore_path: {store}\n")


@pytest.mark.slow
def test_killed_store_run_resumes_on_its_snapshot_despite_new_approvals(tmp_path, tiny_base, workspace):
    """SIGKILL mid-run, approvals arrive, ``--resume``: same snapshot, same result as a run that
    was never interrupted; a changed CSV on resume is refused naming the file."""
    from replyloop.dataio import read_samples
    from replyloop.training.recipe import run_training

    _, store = workspace
    store.add_samples(read_samples(SAMPLES))
    steps = 40
    config = tmp_path / "train.yaml"
    config.write_text(STORE_YAML.format(base=tiny_base, steps=steps, store=store.path), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "replyloop", "train", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    seen = 0
    for line in proc.stdout:
        seen = json.loads(line.split(" ", 1)[1])["step"]
        if seen >= 4:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and seen < steps
    snapshot = store.latest_snapshot()["hash"]
    for i in range(5):  # supervisors keep approving while the run is down
        qid = store.add_question(f"新问题{i}：快递一直没更新", "c-kill", "物流查询")
        store.decide(store.add_draft(qid, f"您好，我们已催促快递公司更新第{i}单的物流信息。"), "approve", "U1")

    resumed = cli_subprocess("train", "--config", config, "--resume", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((tmp_path / "out" / "adapter" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["snapshot_hash"] == snapshot and manifest["resumed_from"]
    assert store.scalar("SELECT count(*) FROM snapshots") == 1  # the resume took no new snapshot
    plain = run_training(make_cfg(tmp_path, tiny_base, dataset="store", train_data_dir=None, store_path=str(store.path),
                                  snapshot=snapshot, output_dir="plain", max_steps=steps, eval_steps=10, save_steps=2),
                         progress=lambda e: None)
    assert manifest["metrics"]["steps"] == plain.manifest["metrics"]["steps"] == steps
    assert manifest["metrics"]["train_loss"] == pytest.approx(plain.manifest["metrics"]["train_loss"], abs=1e-6)
    assert manifest["metrics"]["eval_loss"] == pytest.approx(plain.manifest["metrics"]["eval_loss"], abs=1e-6)


def test_resume_on_a_changed_csv_fails_naming_the_file(tmp_path, tiny_base, monkeypatch):
    from replyloop.training.recipe import run_training

    (tmp_path / "data").mkdir()
    meta = tmp_path / "data" / "metadata.csv"
    shutil.copy(SAMPLES, meta)
    config = tmp_path / "train.yaml"
    config.write_text(YAML.format(base=tiny_base, steps=6), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # output_dir out/adapter: relative to the directory the command runs in

    class Stop(Exception):
        pass

    def stop_at_3(event):
        if event.get("step") == 3 and "loss" in event:
            raise Stop()

    from replyloop.training.config import load_train_config

    with pytest.raises(Stop):
        run_training(load_train_config(config), progress=stop_at_3)
    text = meta.read_text(encoding="utf-8")
    meta.write_text(text.replace("\n", "\n改过的问题,改过的回答,物流查询,\n", 1), encoding="utf-8")  # one sample more
    result = cli("train", "--config", config, "--resume")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot resume from {tmp_path / 'out' / 'adapter' / 'checkpoint-2'}"
                                    f": the training data in {meta} changed since the checkpoint (180 samples then, "
                                    f"181 now)")
