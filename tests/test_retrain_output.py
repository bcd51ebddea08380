"""What `replyloop retrain` shows: the trainer's progress on a terminal, and a failing trainer's
own error lines in the CLI and in the Slack message (real trainer subprocesses, real pty, the
local fake Slack). The plain lines off a terminal are checked by tests/test_first_model.py."""

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from replyloop.bot.fake_slack import FakeSlack
from helpers import cli_subprocess
from pipeline_fixtures import make_workspace, tiny_base_dir  # noqa: F401
from replyloop.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def run_on_a_terminal(argv: list[str], cwd, env: dict, timeout: float = 900) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin/stdout/stderr; returns (exit code, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_retrain_now_on_a_terminal_shows_a_progress_bar_and_the_log_path(replyloop_home, tiny_base_dir):
    make_workspace(replyloop_home, tiny_base_dir, steps=8)
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    code, out = run_on_a_terminal([sys.executable, "-m", "replyloop", "retrain", "--now"], replyloop_home, env)
    assert code == 0, out
    log_path = replyloop_home / "runs" / "run-1" / "train.log"
    assert f"Training run #1; log: {log_path}" in out
    assert "\x1b[" in out  # drawn with terminal control sequences, redrawn in place
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out).replace("\r", "\n")  # each redraw on its own line
    bar = re.findall(r"^train \S+ (\d+)/8 loss (\d+\.\d{4}) (\d+) tok/s \d+:\d\d:\d\d ETA (\d+:\d\d:\d\d)", text, re.M)
    assert bar and bar[-1][0] == "8" and bar[-1][3] == "0:00:00", text
    assert not re.search(r"^step \d+/8  loss", text, re.M)  # the plain lines are for logs, not terminals
    assert "is now the champion" in out


def test_a_failing_trainer_s_error_lines_reach_the_cli_and_slack(replyloop_home, tiny_base_dir):
    with FakeSlack() as slack:
        make_workspace(replyloop_home, tiny_base_dir, slack={"api_base_url": slack.base_url,
                                                             "review_channel": "C0REVIEW"})
        train_yaml = replyloop_home / "train.yaml"
        train_yaml.write_text(train_yaml.read_text().replace("batch_size: 8", "batch_size: 5000"), encoding="utf-8")
        result = cli_subprocess("retrain", "--now", "--post", cwd=replyloop_home,
                                env={"SLACK_BOT_TOKEN": "xoxb-test"})
        assert result.returncode == 1, result.stdout + result.stderr
        line = "Retrain run #1 failed: training exited with code 1: Error: dataset is smaller than one batch: "
        assert re.search(re.escape(line) + r"\d+ training sample\(s\)", result.stdout), result.stdout
        assert "batch_size is 5000" in result.stdout and "The champion is unchanged." in result.stdout
        log_path = replyloop_home / "runs" / "run-1" / "train.log"
        assert f"(full log: {log_path})" in result.stdout
        posts = [c.params["text"] for c in slack.wait_for("chat.postMessage", count=2)]
    assert posts[0].startswith(":hourglass_flowing_sand: Retrain run #1 started")
    assert posts[-1].startswith(":x: " + line) and "batch_size is 5000" in posts[-1]
    assert f"```\n(full log: {log_path})\n```" in posts[-1]


def test_a_trainer_that_crashes_with_a_traceback_shows_the_exception(workspace):
    """A trainer that dies of an uncaught exception (no `Error:` line): the message names the
    exception from the end of its traceback, not only the exit code."""
    config, store = workspace
    base = config.root / "base"
    base.mkdir()
    (base / "config.json").write_text("{}", encoding="utf-8")
    config.train_config_path.write_text("base_model: base\n", encoding="utf-8")
    crash = config.root / "crash.py"
    crash.write_text("print('loading the model')\n"
                     "def load():\n    raise RuntimeError('CUDA out of memory. Tried to allocate 20.00 GiB')\n"
                     "load()\n", encoding="utf-8")
    config.file.training.command = "{python} %s" % crash
    from replyloop.store import SampleIn

    store.add_samples([SampleIn(f"问题{i}", f"回答{i}", "物流查询") for i in range(6)])
    messages = []
    result = run_pipeline(config, store, notify=messages.append)
    assert result.status == "failed"
    first = result.message.splitlines()[0]
    assert first == "training exited with code 1: RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert f'File "{crash}", line 3, in load' in result.message  # the frame it died in
    assert "RuntimeError: CUDA out of memory" in messages[-1] and "loading the model" not in messages[-1]
