"""Drift alarms on seeded databases: the champion's approval rate against its own baseline, the
blocked-draft share, the review queue's age; the no-alarm case; the daily job posting to Slack."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from bot_support import point_config_at_fake
from replyloop.bot.fake_slack import FakeSlack
from replyloop import timeutil
from replyloop.config import load_config
from replyloop.drift import check_drift


def seed(store, baseline=(400, 0.8), recent=(100, 0.8), blocked=0.05, pending_hours=1.0, pending=3):
    """A champion with ``baseline`` then ``recent`` reviews (count, approval-without-edit rate),
    drafts of which ``blocked`` were blocked, and ``pending`` undecided drafts, the oldest
    ``pending_hours`` old."""
    now = timeutil.now()
    iso = lambda t: t.isoformat(timespec="seconds")  # noqa: E731
    with store.transaction() as db:
        db.execute("INSERT INTO models (id, name, base_model, status, promoted_at, created_at)"
                   " VALUES (1, 'cs-lora-0007', 'tiny', 'champion', ?, ?)", (iso(now), iso(now)))
        n = 0
        for count, rate in (baseline, recent):
            approved = round(count * rate)
            for i in range(count):
                n += 1
                at = iso(now - dt.timedelta(days=30) + dt.timedelta(minutes=n))
                db.execute("INSERT INTO questions (id, conversation_id, text, source, created_at)"
                           " VALUES (?, ?, '问题', 'http', ?)", (n, f"c{n}", at))
                is_blocked = (n % round(1 / blocked) == 0) if blocked else False
                violations = json.dumps([{"rule": "full-compensation", "severity": "block"}]) if is_blocked else "[]"
                db.execute("INSERT INTO drafts (id, question_id, model_id, text, verdict, violations, created_at)"
                           " VALUES (?, ?, 1, '草稿', ?, ?, ?)", (n, n, "block" if is_blocked else "pass", violations, at))
                decision = "approve" if i < approved else "edit"
                db.execute("INSERT INTO reviews (draft_id, decision, reviewer, final_text, created_at)"
                           " VALUES (?, ?, 'USUP1', '终稿', ?)", (n, decision, at))
        for j in range(pending):
            n += 1
            at = iso(now - dt.timedelta(hours=pending_hours) + dt.timedelta(seconds=j))
            db.execute("INSERT INTO questions (id, conversation_id, text, source, created_at)"
                       " VALUES (?, ?, '问题', 'http', ?)", (n, f"c{n}", at))
            db.execute("INSERT INTO drafts (id, question_id, model_id, text, created_at) VALUES (?, ?, 1, '草稿', ?)",
                       (n, n, at))
    return n


def statuses(config, store):
    return {c.name: c.status for c in check_drift(config, store).checks}


def test_no_alarm_on_a_steady_champion(workspace):
    config, store = workspace
    seed(store)
    report = check_drift(config, store)
    assert {c.name: c.status for c in report.checks} == {
        "approval-rate": "ok", "blocked-share": "ok", "review-queue": "ok"}
    assert report.alarms == []


def test_approval_rate_falling_below_its_own_baseline(workspace):
    config, store = workspace
    seed(store, recent=(100, 0.6))
    [alarm] = check_drift(config, store).alarms
    assert alarm.name == "approval-rate"
    assert alarm.measured == "champion *cs-lora-0007* approved without edit 60% of its last 100 reviews (60/100)"
    assert alarm.against.startswith("against 80% over its 400 earlier reviews (320/400); difference -20 points,"
                                    " 95% CI [")
    assert alarm.against.endswith("alarm when worse by more than 5 points (drift.rate_margin)")
    assert "`/retrain now`" in alarm.action and "`replyloop models rollback`" in alarm.action


def test_a_small_dip_within_the_interval_is_no_alarm_and_the_threshold_is_configurable(workspace):
    config, store = workspace
    seed(store, recent=(100, 0.74))
    assert statuses(config, store)["approval-rate"] == "ok"  # -6 points, but the interval reaches above -5
    config.file.drift.confidence = 0.0  # compare the measured rates
    assert statuses(config, store)["approval-rate"] == "alarm"
    config.file.drift.rate_margin = 0.1
    assert statuses(config, store)["approval-rate"] == "ok"


def test_too_little_history_is_skipped_not_alarmed(workspace):
    config, store = workspace
    seed(store, baseline=(30, 0.9), recent=(100, 0.3))
    check = next(c for c in check_drift(config, store).checks if c.name == "approval-rate")
    assert (check.status, check.measured) == ("skipped", "champion cs-lora-0007 has 130 reviews")


def test_blocked_share_past_its_limit(workspace):
    config, store = workspace
    seed(store, blocked=0.25)
    [alarm] = check_drift(config, store).alarms
    assert alarm.name == "blocked-share"
    assert alarm.measured == ("25% of the last 200 drafts were blocked by a policy rule (50); most often"
                              " full-compensation (50)")
    assert alarm.against == "limit 20% (drift.max_blocked_share)"
    config.file.drift.max_blocked_share = 0.3
    assert check_drift(config, store).alarms == []


def test_oldest_pending_review_past_its_limit(workspace):
    config, store = workspace
    last = seed(store, pending_hours=30.0, pending=4)
    [alarm] = check_drift(config, store).alarms
    assert alarm.name == "review-queue"
    assert alarm.measured == f"the oldest pending review (draft #{last - 3}) is 30.0 hours old; 4 drafts are waiting"
    assert alarm.against == "limit 24 hours (drift.max_pending_hours)"
    assert "`GET /health`" in alarm.action
    config.file.drift.max_pending_hours = 48
    assert check_drift(config, store).alarms == []


def test_daily_job_posts_each_alarm_to_the_review_channel(workspace, monkeypatch):
    from replyloop.bot import jobs

    config, store = workspace
    seed(store, recent=(100, 0.5), pending_hours=30.0)
    fake = FakeSlack().start()
    try:
        point_config_at_fake(config, fake)
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-0000-test-bot-token")
        assert jobs.drift_job(str(config.source)) == "approval-rate: alarm, blocked-share: ok, review-queue: alarm"
        posts = fake.wait_for("chat.postMessage", 2)
        assert [p.params["channel"] for p in posts] == ["C0REVIEW", "C0REVIEW"]
        assert posts[0].params["text"].startswith(":rotating_light: *Drift alarm — champion approval rate*:"
                                                  " champion *cs-lora-0007* approved without edit 50%")
        assert posts[1].params["text"].startswith(":rotating_light: *Drift alarm — review queue*: the oldest")
        scheduler = jobs.build_scheduler(load_config(config.source), start=False)
        try:
            job = scheduler.get_job(jobs.DRIFT_JOB)
            assert (job.next_run_time.hour, job.next_run_time.minute) == (9, 30)
        finally:
            scheduler.shutdown(wait=False)
    finally:
        fake.stop()


def test_cli_drift_exit_code(workspace):
    config, store = workspace
    seed(store, blocked=0.5)
    out = subprocess.run([sys.executable, "-m", "replyloop", "drift", "--json", "--config", str(config.source)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    got = json.loads(out.stdout)
    assert [(c["name"], c["status"]) for c in got["checks"]] == [
        ("approval-rate", "ok"), ("blocked-share", "alarm"), ("review-queue", "ok")]
