"""Intake over real HTTP (POST /intake with a bearer token) and from the Slack intake channel."""

from __future__ import annotations

import json
import time

from bot_support import *  # noqa: F401,F403
from bot_support import INTAKE, INTAKE_TOKEN, REVIEW


def test_intake_with_draft_stores_checks_and_posts_card(env):
    resp = env.sim.intake({"conversation_id": "web-42", "question": "能退款吗？", "draft": "我们保证退款。",
                           "category": "退换货政策"}, INTAKE_TOKEN)
    assert resp.status == 201
    body = resp.json()
    assert body["ok"] and body["verdict"] == "block"
    draft = env.store.get_draft(body["draft_id"])
    assert (draft["question"], draft["conversation_id"], draft["category"], draft["model_name"]) == (
        "能退款吗？", "web-42", "退换货政策", "external")
    assert draft["violations"][0]["rule"] == "no-refund-promise"
    [card] = env.fake.wait_for("chat.postMessage")
    assert card.params["channel"] == REVIEW
    assert any(b.get("block_id") == f"review_{body['draft_id']}" for b in card.params["blocks"])


def test_intake_without_draft_uses_the_drafter(env_drafting):
    env = env_drafting
    resp = env.sim.intake({"conversation_id": 7, "question": "密码忘了怎么办"}, INTAKE_TOKEN)
    assert resp.status == 201, resp.body
    draft = env.store.get_draft(resp.json()["draft_id"])
    assert (draft["text"], draft["model_name"], draft["conversation_id"]) == (
        "您好，我们会尽快为您处理。", "canned-test-model", "7")
    assert env.bot.drafter.calls == [("密码忘了怎么办", "7")]
    env.fake.wait_for("chat.postMessage")


def test_intake_without_draft_and_without_drafter_is_refused(env):
    resp = env.sim.intake({"conversation_id": "c", "question": "q"}, INTAKE_TOKEN)
    assert resp.status == 400
    assert resp.json()["error"] == "'draft' is required: no drafting model is configured"
    assert env.store.scalar("SELECT count(*) FROM questions") == 0


def test_intake_rejects_missing_and_wrong_tokens(env):
    payload = {"conversation_id": "c", "question": "q", "draft": "a"}
    for token in (None, "wrong-token", ""):
        resp = env.sim.intake(payload, token)
        assert resp.status == 401
        assert resp.json() == {"ok": False, "error": "missing or wrong bearer token"}
    resp = env.sim.request("POST", "/intake", json.dumps(payload), {"Authorization": INTAKE_TOKEN})  # no "Bearer"
    assert resp.status == 401
    assert env.store.scalar("SELECT count(*) FROM questions") == 0


def test_intake_malformed_payloads_get_400_with_reason(env):
    cases = {
        b"{not json": "body is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)",
        b"[1, 2]": "body must be a JSON object {conversation_id, question, draft?, category?}",
        # the fields by the shared rules of replyloop.fields (also those of data import)
        b'{"question": "q"}': "empty conversation_id",
        b'{"conversation_id": "c", "question": "  "}': "empty question",
        b'{"conversation_id": "c", "question": "q", "draft": 5}': "draft must be a string, not a number",
        b'{"conversation_id": "c", "question": "q", "extra": 1}':
            "unknown field(s): extra (allowed: category, conversation_id, draft, question)",
        b"\xff\xfe": "body is not UTF-8",
    }
    for body, reason in cases.items():
        resp = env.sim.intake(body, INTAKE_TOKEN)
        assert (resp.status, resp.json()) == (400, {"ok": False, "error": reason}), body
    assert env.store.scalar("SELECT count(*) FROM questions") == 0
    assert env.sim.request("POST", "/nope", b"").status == 404


def test_health_reports_the_database_and_every_probe(env):
    health = env.sim.request("GET", "/health")
    assert (health.status, health.json()) == (200, {"ok": True, "mode": "http", "checks": {"database": "ok"},
                                                    "queue": 0, "running_runs": 0})
    env.post_card()
    env.server.probes["scheduler"] = lambda: (False, "the scheduler is not running")
    health = env.sim.request("GET", "/health")
    assert health.status == 503
    assert health.json()["checks"] == {"database": "ok", "scheduler": "error: the scheduler is not running"}
    assert health.json()["queue"] == 1
    env.server.probes["scheduler"] = lambda: 1 / 0  # a probe that raises counts as failed
    assert env.sim.request("GET", "/health").json()["checks"]["scheduler"] == "error: division by zero"


def test_intake_channel_message_becomes_a_question(env_drafting):
    env = env_drafting
    resp = env.sim.message(INTAKE, "快递三天了还没到", user="UCUSTOMER", ts="1700000000.000100")
    assert resp.status == 200
    [card] = env.fake.wait_for("chat.postMessage")
    [question] = env.store.query("SELECT * FROM questions")
    assert (question["text"], question["source"], question["conversation_id"]) == (
        "快递三天了还没到", "slack", f"slack:{INTAKE}:1700000000.000100")
    # Slack's retry of the same event, a message elsewhere and a bot message change nothing
    env.sim.message(INTAKE, "快递三天了还没到", user="UCUSTOMER", ts="1700000000.000100", retry_num=1)
    env.sim.message("C0OTHER", "这不是问题", user="UCUSTOMER")
    env.sim.event({"type": "message", "subtype": "bot_message", "bot_id": "B1", "channel": INTAKE,
                   "text": "bot says", "ts": "1700000001.000100"})
    time.sleep(0.5)
    assert env.store.scalar("SELECT count(*) FROM questions") == 1
    assert len(env.fake.calls_to("chat.postMessage")) == 1
    assert card.params["channel"] == REVIEW


def test_import_as_questions_then_serve_posts_cards(env, tmp_path):
    from helpers import cli

    from replyloop.bot.server import sweep

    csv = tmp_path / "q.csv"
    csv.write_text("conversation_id,question,category,draft\nc1,怎么退货,退换货政策,七天内可以无理由退货。\n"
                   "c2,发票怎么开,,\n", encoding="utf-8")
    result = cli("data", "import", str(csv), "--as-questions")
    assert result.exit_code == 0, result.output
    assert result.output == f"Imported 2 question(s) from {csv}\n"
    assert sweep(env.bot) == 1  # the one with a draft; the other waits for a drafter
    [card] = env.fake.wait_for("chat.postMessage")
    assert "怎么退货" in card.params["blocks"][1]["text"]["text"]


def test_serve_sweep_drafts_imported_questions_without_draft(env_drafting, tmp_path):
    from helpers import cli

    from replyloop.bot.server import sweep

    env = env_drafting
    csv = tmp_path / "q.csv"
    csv.write_text("conversation_id,question\nc1,怎么退货\nc2,发票怎么开\n", encoding="utf-8")
    assert cli("data", "import", str(csv), "--as-questions").exit_code == 0
    assert env.store.scalar("SELECT count(*) FROM drafts") == 0
    assert sweep(env.bot) == 2
    assert sweep(env.bot) == 0
    assert [q for q, _ in env.bot.drafter.calls] == ["怎么退货", "发票怎么开"]
    cards = env.fake.wait_for("chat.postMessage", 2)
    assert all("canned-test-model" in str(c.params["blocks"]) for c in cards)


def test_serve_loads_the_policy_rules_once_for_drafter_and_checker(workspace, monkeypatch):
    """The bot's checker shares the drafter's engine instead of building a second automaton."""
    import replyloop.evaluation.policy
    from replyloop import evaluation
    from replyloop.bot.app import create_bot
    from replyloop.bot.server import default_drafter
    from replyloop.config import Secrets

    loads = []
    real = evaluation.policy.load_policies
    monkeypatch.setattr(evaluation.policy, "load_policies", lambda *a, **k: loads.append(a) or real(*a, **k))
    config, store = workspace
    drafter = default_drafter(config, store)
    bot = create_bot(config, store, Secrets(slack_bot_token="xoxb-1", slack_app_token=None,
                                            slack_signing_secret="s", intake_token=None), drafter=drafter)
    assert bot.checker("我们承诺全额赔付")["verdict"] == "block"
    assert drafter.policy_engine is not None and len(loads) == 1
