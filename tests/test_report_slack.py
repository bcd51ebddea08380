"""Posting the weekly report to the local fake Slack API (files upload v2 + chat.postMessage)."""

from __future__ import annotations

import re

import pytest

from replyloop.bot.fake_slack import FakeSlack
from helpers import cli
from test_report import NOW, WEEK, seed


def _point_config_at(config, slack: FakeSlack) -> None:
    """Set slack.api_base_url and the report channel in the workspace's replyloop.yaml."""
    text = config.source.read_text(encoding="utf-8")
    text = re.sub(r"api_base_url:.*", f"api_base_url: {slack.base_url}", text, count=1)
    text = re.sub(r"report_channel:.*", "report_channel: C0QUALITY", text, count=1)
    config.source.write_text(text, encoding="utf-8")


@pytest.fixture
def slack(workspace, monkeypatch):
    config, store = workspace
    seed(store)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    with FakeSlack() as fake:
        _point_config_at(config, fake)
        yield fake


def _check_post(slack: FakeSlack) -> None:
    (message,) = slack.wait_for("chat.postMessage")
    assert message.params["channel"] == "C0QUALITY"
    text = message.params["text"]
    assert text.startswith(f"*Weekly consistency report {WEEK}*")
    assert "Automation (approved without edit): *75.0%* of 20 reviews (+35.0 pp vs 2026-W47)" in text
    assert ("Champion consistency: *0.800* (+0.090 vs 2026-W47), chrF *0.300* (+0.090) :warning: the embedding"
            " model cannot read the references, chrF decides") in text
    assert "1 approved with a violation :warning:" in text
    assert "快递条码 → 电子面单 (2)" in text
    assert message.headers["authorization"] == "Bearer xoxb-test"
    asked = slack.wait_for("files.getUploadURLExternal", count=4)
    assert sorted(c.params["filename"] for c in asked) == sorted(
        f"{WEEK}-{n}.png" for n in ("automation", "consistency", "reviews", "violations"))
    uploads = slack.wait_for("upload", count=4)
    assert all(c.body[:8] == b"\x89PNG\r\n\x1a\n" for c in uploads)
    (complete,) = slack.wait_for("files.completeUploadExternal")
    assert complete.params["channel_id"] == "C0QUALITY"
    assert complete.params["initial_comment"] == f"Charts for {WEEK}"
    assert {f["id"] for f in complete.params["files"]} == {c.params["file_id"] for c in uploads}
    order = [c.method for c in slack.calls]
    assert order.index("chat.postMessage") < order.index("files.completeUploadExternal")


def test_post_weekly_report_function(workspace, slack, tmp_path):
    from replyloop.evaluation.report import build_weekly_report
    from replyloop.evaluation.report_slack import post_weekly_report
    from replyloop.config import load_config

    config, store = workspace
    config = load_config(config.source)
    report = build_weekly_report(config, store, week=WEEK, out=tmp_path / "r", now=NOW)
    result = post_weekly_report(config, report)
    assert result.channel == "C0QUALITY" and result.ts
    assert len(result.file_ids) == 4
    _check_post(slack)


def test_cli_post_hits_fake_slack_and_survives_a_rate_limit(workspace, slack, tmp_path):
    slack.fail_next("chat.postMessage", status=429, retry_after=0)
    result = cli("report", "weekly", "--week", WEEK, "--out", tmp_path / "r", "--post")
    assert result.exit_code == 0, result.output
    assert re.search(r"Posted to C0QUALITY \(ts [0-9.]+\) with 4 chart\(s\)", result.output)
    assert len(slack.calls_to("chat.postMessage:failed")) == 1
    _check_post(slack)


def test_post_errors_are_reported(workspace, slack, tmp_path, monkeypatch):
    slack.fail_next("chat.postMessage", error="channel_not_found")
    result = cli("report", "weekly", "--week", WEEK, "--out", tmp_path / "r", "--post")
    assert result.exit_code == 1
    assert "Error: Slack refused the weekly report for C0QUALITY: channel_not_found" in result.output
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    result = cli("report", "weekly", "--week", WEEK, "--out", tmp_path / "r", "--post")
    assert result.exit_code == 2
    assert "Error: SLACK_BOT_TOKEN is not set" in result.output
