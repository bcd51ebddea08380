"""/retrain, App Home and request security over real HTTP."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bot_support import *  # noqa: F401,F403
from bot_support import (APP_TOKEN, BOT_TOKEN, INTAKE_TOKEN, OUTSIDER, SIGNING_SECRET, close_env, make_env,
                         seed_models)


def response_texts(env, n):
    return [c.params["text"] for c in env.fake.wait_for("response_url", n)]


def test_retrain_status(env):
    seed_models(env.store)
    _, card = env.post_card()
    env.sim.click(card, "approve", user="USUP1")
    env.wait_review(1)
    resp = env.sim.command("/retrain", "", user=OUTSIDER)
    assert (resp.status, resp.body) == (200, "")
    env.sim.command("/retrain", "status", user="USUP1")
    first, second = response_texts(env, 2)
    assert first == second
    assert "*Approved samples since the last training:* 1 (threshold 50)" in first
    assert "*Running:* run #1 (scheduler), step 12/30, loss 1.2345" in first
    assert "*Champion:* `cs-lora-0001` (id 1) — consistency 0.812, share above threshold 0.700, gate passed" in first
    assert "*Canary:* `cs-lora-0002` (id 2), 10% of conversations — not evaluated yet" in first
    assert ("*Canary trial:* 0/50 reviews, day 0.0 of 7: approval without edit n/a vs champion n/a over 0 canary"
            " review(s) (0/0 vs 0/0); consistency gate not evaluated. Next: waiting for reviews.") in first


def test_retrain_history_and_unknown(env):
    seed_models(env.store)
    env.sim.command("/retrain", "history", user=OUTSIDER)
    env.sim.command("/retrain", "sideways", user=OUTSIDER)
    texts = response_texts(env, 2)  # replies may arrive in either order
    [history] = [t for t in texts if t.startswith("*Recent training runs*")]
    [unknown] = [t for t in texts if t is not history]
    lines = history.splitlines()
    assert lines[0] == "*Recent training runs*"
    assert lines[1].startswith("• #2 succeeded (slack, <@USUP1>) started ") and lines[1].endswith(
        ", loss 0.5000 → `cs-lora-0002`")
    assert lines[2].startswith("• #1 running (scheduler) started ")
    assert unknown.startswith("Unknown option `sideways`. Usage:")


def test_retrain_now_supervisor_only(env):
    env.sim.command("/retrain", "now", user=OUTSIDER, channel="C0OPS")
    [refused] = response_texts(env, 1)
    assert refused == "Only supervisors can start a retrain."
    assert env.pipeline.calls == []
    env.sim.command("/retrain", "now", user="USUP2", channel="C0OPS")
    started = env.fake.wait_for("response_url", 2)[1]
    assert started.params["response_type"] == "in_channel"
    assert started.params["text"].startswith("<@USUP2> started a retrain.")
    [done] = env.fake.wait_for("chat.postMessage")
    assert (done.params["channel"], done.params["text"]) == (
        "C0OPS", "Pipeline finished: training done, evaluation done, gate passed.")
    assert env.pipeline.calls == [{"trigger": "slack", "requested_by": "USUP2"}]


def test_retrain_now_without_pipeline(env):
    env.bot.start_pipeline = None
    env.sim.command("/retrain", "now", user="USUP1")
    [text] = response_texts(env, 1)
    assert text.startswith("The retrain pipeline is not configured")


def test_app_home_publishes_queue_approvals_and_models(env):
    seed_models(env.store)
    d1, card = env.post_card()
    env.add_draft(question="q2", draft="a2", conversation="c2")
    env.sim.click(card, "approve", user="USUP1")
    env.wait_review(d1)
    assert env.sim.home_opened("USUP1").status == 200
    [publish] = env.fake.wait_for("views.publish")
    assert publish.params["user_id"] == "USUP1"
    view = publish.params["view"]
    texts = {b.get("block_id"): b["text"]["text"] for b in view["blocks"] if b.get("block_id")}
    assert view["type"] == "home"
    assert texts["queue"] == "*Review queue:* 1 draft(s) waiting"
    assert "• <@USUP1>: 1 approved, 0 edited, 0 rejected" in texts["approvals"]
    assert "*Champion:* `cs-lora-0001` (id 1) — consistency 0.812" in texts["models"]
    assert "*Canary:* `cs-lora-0002`" in texts["models"]


def test_bad_signature_and_stale_timestamp_are_401(env):
    _, card = env.post_card()
    payload = env.sim.block_action(card, "approve", "USUP1")
    assert env.sim.post_payload(payload, secret="not-the-secret").status == 401
    assert env.sim.post_payload(payload, signature="v0=deadbeef").status == 401
    assert env.sim.post_payload(payload, timestamp=int(time.time()) - 6 * 60).status == 401
    assert env.sim.post_slack("payload=%7B%7D", "application/x-www-form-urlencoded",
                              signature="").status == 401
    time.sleep(0.3)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert env.sim.post_payload(payload).status == 200
    env.wait_review(1)


def test_future_timestamp_is_401_and_stores_nothing(env):
    _, card = env.post_card()
    payload = env.sim.block_action(card, "approve", "USUP1")
    assert env.sim.post_payload(payload, timestamp=int(time.time()) + 6 * 60).status == 401
    time.sleep(0.3)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert env.fake.calls_to("chat.update") == [] and env.fake.calls_to("chat.postEphemeral") == []


def test_replayed_approve_request_is_one_decision(env):
    """The exact same signed request twice (a replay inside the 5 minutes): both answer 200, the
    second only tells the clicker it was already approved; one review, one sample, one audit row."""
    from urllib.parse import urlencode

    draft_id, card = env.post_card()
    body = urlencode({"payload": json.dumps(env.sim.block_action(card, "approve", "USUP1"), ensure_ascii=False)})
    headers = {"Content-Type": "application/x-www-form-urlencoded", **env.sim.signed_headers(body)}
    assert env.sim.request("POST", "/slack/events", body, headers).status == 200
    env.wait_review(draft_id)
    assert env.sim.request("POST", "/slack/events", body, headers).status == 200
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["user"] == "USUP1"
    assert note.params["text"].startswith(f"Draft #{draft_id} was already approved by <@USUP1> at ")
    time.sleep(0.3)
    assert env.store.scalar("SELECT count(*) FROM reviews WHERE draft_id = ?", (draft_id,)) == 1
    assert env.store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == 1
    assert env.store.scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'review.%'") == 1


def test_malformed_slack_payloads_do_not_change_anything(env):
    _, card = env.post_card()
    resp = env.sim.post_slack("payload=%7Bnot-json", "application/x-www-form-urlencoded")
    assert resp.status == 400 and resp.json()["error"].startswith("malformed payload")
    bad = env.sim.block_action(card, "approve", "USUP1")
    bad["actions"][0]["value"] = "not-a-number"
    assert env.sim.post_payload(bad).status == 200
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["text"] == "button value 'not-a-number' is not a draft id"
    unknown = env.sim.block_action(card, "approve", "USUP1")
    unknown["actions"][0]["value"] = "999"
    env.sim.post_payload(unknown)
    assert env.fake.wait_for("chat.postEphemeral", 2)[1].params["text"] == "Draft #999: draft 999 not found"
    assert env.sim.request("POST", "/slack/events", b"\xff", {"Content-Type": "text/plain"}).status in (400, 401)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0


def test_tokens_never_appear_in_logs(workspace, caplog):
    caplog.set_level(logging.DEBUG)
    env = make_env(workspace)
    try:
        _, card = env.post_card()
        env.sim.click(card, "approve", user="USUP1")
        env.fake.wait_for("chat.update")
        env.sim.intake({"conversation_id": "c", "question": "q", "draft": "a"}, INTAKE_TOKEN)
        env.sim.intake({"conversation_id": "c"}, "wrong-" + INTAKE_TOKEN)
        env.sim.command("/retrain", "", user="USUP1")
        env.fake.wait_for("response_url")
        env.fake.wait_for("chat.postMessage", 2)
        env.bot.client.api_call("auth.test")
        # anything our loggers would print with a token in it (an exception message, say) is redacted
        logging.getLogger("bot.bolt").error("failed with %s and %s", BOT_TOKEN, "xoxb-other-token-42")
    finally:
        close_env(env)
    text = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    assert "Sending a request" in text  # slack_sdk's debug logs were on
    assert "failed with [redacted] and [redacted]" in text
    assert "xoxb-other" not in text
    for secret in (BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, INTAKE_TOKEN):
        assert secret not in text


def test_serve_refuses_to_start_without_secrets(workspace):
    from replyloop.bot.server import serve
    from replyloop.config import Secrets
    from replyloop.errors import ConfigError

    config, store = workspace
    none = Secrets(slack_bot_token="xoxb-1", slack_app_token=None, slack_signing_secret=None, intake_token=None)
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET is not set"):
        serve(config, store, none, http=True)
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN is not set"):
        serve(config, store, none, http=False)
