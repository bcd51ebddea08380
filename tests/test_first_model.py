"""README "Your first model", followed as written: its commands are read from the README and
run one by one as real `replyloop` subprocesses, from `replyloop init` to the first champion
and `replyloop draft`. The team's CSV is at the README's own path (``~/exports/team_faq.csv``,
with HOME pointing into the test's folder); the base model is a tiny local Llama saved with
``save_pretrained``, put where the README's ``base_model`` line points."""

import csv
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from first_model_fixtures import fluent_tiny_base

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "replyloop" / "samples" / "cs_samples.csv"


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def code_blocks(section: str) -> list[tuple[str, list[str]]]:
    """(language, non-empty lines) of each fenced block (bash drops the trailing comments itself)."""
    return [(lang, [ln for ln in body.splitlines() if ln.strip()])
            for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S)]


def replyloop_bin(tmp_path: Path) -> Path:
    """A folder holding `replyloop`: the installed console script, else a shim running this
    interpreter's `-m replyloop` (the worktree is on PYTHONPATH either way)."""
    installed = Path(sys.executable).with_name("replyloop")
    if installed.exists():
        return installed.parent
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "replyloop"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m replyloop "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return shim_dir


class Shell:
    """Runs README lines like a user's shell: `cd` changes the folder, the rest run in bash."""

    def __init__(self, cwd: Path, env: dict):
        self.cwd, self.env = cwd, env

    def run(self, line: str) -> subprocess.CompletedProcess:
        words = shlex.split(line, comments=True)
        if words[0] == "cd":
            self.cwd = (self.cwd / words[1]).resolve()
            assert self.cwd.is_dir(), line
            return subprocess.CompletedProcess(line, 0, "", "")
        return subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=1500)


def team_csv(path: Path) -> list[tuple[str, str]]:
    """The team's export: 8 approved pairs per category, with the lora-scripts columns."""
    with SAMPLES.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    per: dict[str, list] = {}
    for row in rows:
        per.setdefault(row["category"], []).append(row)
    picked = [r for group in per.values() for r in group[:8]]
    path.parent.mkdir(parents=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "response", "category"])
        writer.writerows([r["prompt"], r["response"], r["category"]] for r in picked)
    return [(r["prompt"], r["response"]) for r in picked]


def test_your_first_model_as_written(tmp_path):
    blocks = code_blocks(readme_section("Your first model"))
    assert [lang for lang, _ in blocks] == ["bash", "yaml", "bash"]
    setup, (yaml_line,), first_run = blocks[0][1], blocks[1][1], blocks[2][1]
    readme_model = yaml_line.split(":", 1)[1].split("#")[0].strip()

    home = tmp_path / "user"
    csv_path = Path(re.search(r"data import (\S+)", " ".join(setup)).group(1).replace("~", str(home)))
    pairs = team_csv(csv_path)
    model_dir = fluent_tiny_base(tmp_path / "models" / "tiny-llama", pairs)
    env = {k: v for k, v in os.environ.items() if k != "REPLYLOOP_HOME"}  # the README works by `cd`
    env.update(HOME=str(home), COLUMNS="300", PATH=f"{replyloop_bin(tmp_path)}{os.pathsep}{env.get('PATH', '')}")
    work = tmp_path / "projects"
    work.mkdir()
    shell = Shell(work, env)

    for line in setup:
        result = shell.run(line)
        assert result.returncode == 0, (line, result.stdout, result.stderr)
    assert f"Imported {len(pairs)} sample(s)" in result.stdout
    workspace = shell.cwd
    train_yaml = workspace / "train.yaml"
    text = train_yaml.read_text(encoding="utf-8")
    placeholder = [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("base_model:")]
    assert len(placeholder) == 1 and "CHANGE-ME: path to a local model directory" in text

    # before base_model is set: every retrain is an Error naming the key and the line, exit 2
    dry_run_line = next(ln for ln in first_run if "--dry-run" in ln)
    now_line = next(ln for ln in first_run if "--now" in ln)
    for line in (dry_run_line, now_line):
        refused = shell.run(line)
        assert refused.returncode == 2, (line, refused.stdout, refused.stderr)
        assert refused.stderr.startswith(f"Error: {train_yaml}:{placeholder[0]}: base_model is not set")
        assert "set base_model to a local model directory" in refused.stderr
    db = workspace / "replyloop.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM training_runs").fetchone() == (0,)

    # the README's edit: its base_model line, pointing at this machine's model directory
    edited = yaml_line.replace(readme_model, str(model_dir))
    train_yaml.write_text(re.sub(r"(?m)^base_model:.*$", lambda _: edited, text), encoding="utf-8")

    outputs = {}
    for line in first_run:
        result = shell.run(line)
        assert result.returncode == 0, (line, result.stdout, result.stderr)
        outputs[line] = result.stdout
    assert f"Training config: {train_yaml} (ok)" in outputs[dry_run_line]
    trained = outputs[now_line]
    log_path = workspace / "runs" / "run-1" / "train.log"
    assert f"Training run #1; log: {log_path}" in trained and log_path.exists()
    total = re.search(r"step 1/(\d+)  loss \d+\.\d+", trained).group(1)
    # off a terminal: plain lines (first step, every 10 s, last step), the held-out losses, no markup
    assert re.search(rf"^step {total}/{total}  loss \d+\.\d{{4}}  \d+ tokens/s  ETA 0:00:00$", trained, re.M)
    assert re.search(rf"^step {total}: held-out loss \d+\.\d{{4}} \(best ", trained, re.M)
    assert "\x1b[" not in trained and "```" not in trained and ":white_check_mark:" not in trained
    assert "passed the gate and is now the champion" in trained
    assert "no champion to compare with" in trained  # the first model: the floor and the rules alone
    champion = re.search(r"(rl-\d{8}-\d{6}-r1) passed the gate", trained).group(1)
    listing = outputs[next(ln for ln in first_run if "models list" in ln)]
    assert re.search(rf"{champion}\s.*champion", listing), listing
    draft = outputs[next(ln for ln in first_run if ln.startswith("replyloop draft"))]
    assert f"model 1 {champion}" in draft and draft.splitlines()[0].strip()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, status FROM training_runs").fetchall() == [(1, "succeeded")]
