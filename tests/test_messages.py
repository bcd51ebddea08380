"""One message model: Slack gets mrkdwn, the terminal plain text (real `replyloop retrain`
subprocess with a trainer that fails at once, the local fake Slack)."""

from __future__ import annotations

import copy
import pickle

import yaml

from replyloop.bot.fake_slack import FakeSlack
from helpers import cli_subprocess
from replyloop.messages import bold, code_block, icon, message, to_plain


def test_a_message_renders_mrkdwn_and_plain_text_from_the_same_parts():
    msg = message(icon("x"), "Run #3: ", bold("rl-7"), " failed", code_block("Error: *.bin not found\nline 2"),
                  "The champion is unchanged.")
    assert msg == ":x: Run #3: *rl-7* failed\n```\nError: *.bin not found\nline 2\n```\nThe champion is unchanged."
    assert msg.plain == "Run #3: rl-7 failed\nError: *.bin not found\nline 2\nThe champion is unchanged."
    assert to_plain(msg) == msg.plain
    for again in (copy.deepcopy(msg), pickle.loads(pickle.dumps(msg))):
        assert again == msg and again.plain == msg.plain


def test_retrain_prints_plain_text_and_posts_mrkdwn(workspace):
    config, store = workspace
    from replyloop.store import SampleIn

    store.add_samples([SampleIn(f"问题{i}", f"回答{i}", "物流查询") for i in range(6)])
    base = config.root / "base"
    base.mkdir()
    (base / "config.json").write_text("{}", encoding="utf-8")
    config.train_config_path.write_text("base_model: base\n", encoding="utf-8")
    crash = config.root / "crash.py"
    crash.write_text("import sys\nprint('Error: no file matches target_modules *_proj* in base', file=sys.stderr)\n"
                     "sys.exit(1)\n", encoding="utf-8")
    with FakeSlack() as slack:
        path = config.root / "replyloop.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["training"]["command"] = "{python} %s" % crash
        data["slack"].update({"api_base_url": slack.base_url, "review_channel": "C0REVIEW"})
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        proc = cli_subprocess("retrain", "--now", "--post", cwd=config.root, env={"SLACK_BOT_TOKEN": "xoxb-test"})
        posts = [c.params["text"] for c in slack.wait_for("chat.postMessage", count=2)]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("Retrain run #1 started (cli): snapshot ")
    assert "Retrain run #1 failed: training exited with code 1: Error: no file matches target_modules *_proj*" in out
    assert "```" not in out and ":x:" not in out and ":hourglass_flowing_sand:" not in out
    assert out.rstrip().endswith("The champion is unchanged.")
    assert posts[0].startswith(":hourglass_flowing_sand: Retrain run #1 started")
    assert posts[-1].startswith(":x: Retrain run #1 failed: ") and "\n```\n" in posts[-1]
