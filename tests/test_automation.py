"""Earned automation per intent on a seeded database: 60 clean approvals earn it, mixed reviews do
not; complex questions always go to review; an audit failure revokes it (with a Slack message);
automatic approvals are delivered but never trained on; `replyloop automation list|pin|unpin`."""

from __future__ import annotations

import pytest

from bot_support import SUPERVISORS, close_env, make_env, wait_until
from delivery_support import WEBHOOK_SECRET, Receiver
from helpers import cli
from replyloop import outbox
from replyloop.automation import AUTO_REVIEWER, Automation, audit_bucket
from replyloop.dataio import QuestionIn
from replyloop.intake import store_questions

PASS = lambda text: {"verdict": "pass", "violations": []}  # noqa: E731
SHIP = "物流查询"
REFUND = "退款"
SHIP_REPLY = "您好，您的订单已发货，预计三天内送达，请留意物流信息。"
REFUND_REPLY = "您好，退款将在三个工作日内原路退回。"


def seed(store, n_ship=60, refund=(40, 20)):
    """60 clean approvals of 物流查询; 退款 with approvals and edits mixed."""
    asks = [QuestionIn(f"s-{i}", f"我的订单 {i} 什么时候到？", SHIP, SHIP_REPLY) for i in range(n_ship)]
    asks += [QuestionIn(f"r-{i}", f"退款 {i} 什么时候到账？", REFUND, REFUND_REPLY) for i in range(sum(refund))]
    results = store_questions(store, asks, "http", checker=PASS)
    with store.transaction():
        for i, r in enumerate(results):
            if i < n_ship or i < n_ship + refund[0]:
                store.decide(r.draft_id, "approve", SUPERVISORS[i % 2])
            else:
                store.decide(r.draft_id, "edit", SUPERVISORS[0], final_text=f"{REFUND_REPLY}（编辑 {i}）")


def new_draft(store, question, category=SHIP, draft=SHIP_REPLY, conversation=None, verdict=PASS):
    [r] = store_questions(store, [QuestionIn(conversation or f"new-{question}", question, category, draft)], "http",
                          checker=verdict)
    return r.draft_id


@pytest.fixture(scope="module")
def encoder():
    from replyloop.evaluation.embeddings import Encoder

    return Encoder()  # the bundled MiniLM, loaded once for the module


@pytest.fixture
def auto(workspace, encoder):
    config, store = workspace
    config.file.automation.enabled = True
    seed(store)
    encoder.store = store  # embeddings cached in this test's database, as in production
    return config, store, Automation(config, store, encoder)


def test_sixty_clean_approvals_earn_automation_mixed_reviews_do_not(auto):
    config, store, automation = auto
    ship, refund = automation.status(SHIP), automation.status(REFUND)
    assert (ship.reviews, ship.approved, ship.earned, ship.state) == (60, 60, True, "automatic")
    assert ship.lower >= 0.9
    assert (refund.reviews, refund.approved, refund.earned, refund.state) == (60, 40, False, "manual")
    assert automation.status("unknown").state == "manual"

    # below min_reviews the same clean record is not enough
    config.file.automation.min_reviews = 61
    assert automation.status(SHIP).state == "manual"
    config.file.automation.min_reviews = 50

    routes = {}
    for i in range(30):
        draft_id = new_draft(store, f"我的订单 {100 + i} 什么时候到？")
        routes[draft_id] = automation.route(draft_id)
    kinds = [r.decision for r in routes.values()]
    audited = [d for d, r in routes.items() if r.decision == "audit"]
    assert set(kinds) == {"auto", "audit"}
    assert audited == [d for d in routes if audit_bucket(d, store.get_draft(d)["question"]) < 0.1]  # by hash
    refund_draft = new_draft(store, "退款 7 什么时候到账？", REFUND, REFUND_REPLY)
    assert automation.route(refund_draft).decision == "review"
    assert automation.route(refund_draft).reason == "intent 退款 is manual"

    auto_ids = [d for d, r in routes.items() if r.decision == "auto"]
    for d in auto_ids:
        draft = store.get_draft(d)
        assert (draft["decision"], draft["reviewer"]) == ("approve", AUTO_REVIEWER)
    for d in audited:
        assert store.get_draft(d)["review_id"] is None  # waits for a person
    assert automation.route(auto_ids[0]).decision == "auto"  # routed once: the same answer again
    assert store.scalar("SELECT count(*) FROM reviews WHERE automated = 1") == len(auto_ids)


def test_complex_questions_and_warnings_always_go_to_review(auto):
    config, store, automation = auto
    config.file.automation.audit_share = 0.0
    cases = {
        "我的订单 " + "很" * 200 + "久什么时候到？": "longer than 200 characters",
        "我的订单 5 什么时候到？能改地址吗？": "several questions",
        "我的订单 5 什么时候到？再不到我就投诉": "mentions 投诉",
        "My lawyer asks when order 5 arrives": "mentions lawyer",
        "你们的发票抬头可以改成公司名称吗": "unlike any approved question",
    }
    for question, why in cases.items():
        route = automation.route(new_draft(store, question))
        assert (route.decision, why in route.reason) == ("review", True), (question, route)
    far = automation.route(new_draft(store, "我的订单 9 什么时候到？", draft="好的。"))
    assert far.decision == "review" and "not close to an approved reply" in far.reason
    warned = new_draft(store, "我的订单 8 什么时候到？", conversation="warn-1",
                       verdict=lambda t: {"verdict": "warn", "violations": [{"rule": "x", "severity": "warn"}]})
    assert automation.route(warned).reason == "the policy check found something"
    assert automation.route(new_draft(store, "我的订单 8 什么时候到？")).decision == "auto"
    assert store.scalar("SELECT count(*) FROM reviews WHERE automated = 1") == 1


def test_automatic_approvals_are_delivered_but_never_trained_on(auto, monkeypatch):
    config, store, automation = auto
    config.file.automation.audit_share = 0.0
    with Receiver() as rx:
        opts = config.file.delivery
        opts.sources = {"http": ["webhook"]}
        opts.webhook.url, opts.webhook.allow_plain_http = rx.url, True
        outbox.install(store, config)
        samples_before = store.sample_count()
        draft_id = new_draft(store, "我的订单 200 什么时候到？")
        assert automation.route(draft_id).decision == "auto"
        sender = outbox.Sender(store, config, WEBHOOK_SECRET).start()
        try:
            [event_id] = rx.wait_for(1)
        finally:
            sender.close()
        body = rx.receipts[0].body
        assert (body["decision"], body["decided_by"], body["final_text"]) == ("auto_approve", AUTO_REVIEWER, SHIP_REPLY)
        assert store.sample_count() == samples_before  # no sample from an approval nobody saw
        snap = store.create_snapshot(0.0)
        assert snap.train == samples_before

        # an audited draft was seen by a person: its approval is a sample like any review
        config.file.automation.audit_share = 1.0
        audited = new_draft(store, "我的订单 201 什么时候到？", draft=SHIP_REPLY + "祝您生活愉快。")
        assert automation.route(audited).decision == "audit"
        store.decide(audited, "approve", SUPERVISORS[0])
        assert store.sample_count() == samples_before + 1


def test_an_audit_failure_revokes_automation_with_a_slack_message(workspace, encoder):
    config, store = workspace
    config.file.automation.enabled = True
    config.file.automation.audit_share = 1.0  # every would-be automatic draft is audited here
    seed(store)
    env = make_env((config, store))
    try:
        env.bot.automation._encoder = encoder
        from replyloop.bot import cards, review
        from replyloop.bot.fake_slack import Call

        draft_id = new_draft(store, "我的订单 300 什么时候到？")
        review.post_card(env.bot, draft_id)  # routed: audit, so the card is posted
        draft = store.get_draft(draft_id)
        assert draft["automation"] == "audit" and draft["slack_ts"]
        view = cards.edit_modal(draft, draft["slack_channel"], draft["slack_ts"])
        opened = Call("views.open", {"view": view}, {}, response={"view": {"id": "V1", "hash": "h"}})
        resp = env.sim.submit(opened, SUPERVISORS[0], {cards.REPLY_BLOCK: "您好，订单已发出，物流单号请在订单页查看。"})
        assert resp.status == 200
        wait_until(lambda: any("revoked" in (c.params.get("text") or "") for c in env.fake.calls_to("chat.postMessage")))
        [notice] = [c for c in env.fake.calls_to("chat.postMessage") if "revoked" in (c.params.get("text") or "")]
        assert SHIP in notice.params["text"] and "0/1" in notice.params["text"]
        automation = env.bot.automation
        assert automation.status(SHIP).state == "revoked"
        assert store.one("SELECT * FROM audit_log WHERE action = 'automation.revoke'")["entity_id"] == SHIP
        nxt = new_draft(store, "我的订单 301 什么时候到？")
        review.post_card(env.bot, nxt)
        assert store.get_draft(nxt)["automation"] == "review"  # every draft goes to a person again
        assert automation.pending_notices() == []  # posted once

        from replyloop.bot import status
        home = cards.home_view(status.home(store))
        assert any("revoked: 物流查询" in (b.get("text") or {}).get("text", "") for b in home["blocks"])

        # a supervisor allows it again from App Home (audit-logged under their id); an outsider cannot
        import json as _json
        env.bot.publish_home(SUPERVISORS[1])
        view = env.fake.calls_to("views.publish")[-1].params["view"]
        view = _json.loads(view) if isinstance(view, str) else view
        [button] = [b["accessory"] for b in view["blocks"] if b.get("accessory") and SHIP in b["accessory"]["value"]]
        assert button["text"]["text"] == "Allow"

        def click(user):
            return env.sim.post_payload({
                "type": "block_actions", "user": {"id": user}, "api_app_id": env.sim.app_id,
                "token": "legacy-verification-token", "container": {"type": "view", "view_id": "VHOME"},
                "trigger_id": "1.2.3", "team": {"id": env.sim.team_id}, "view": {"id": "VHOME", "type": "home"},
                "actions": [{**button, "block_id": "automation_0", "action_ts": "1.0"}]})
        from bot_support import OUTSIDER
        assert click(OUTSIDER).status == 200
        wait_until(lambda: any(c.params.get("channel") == OUTSIDER for c in env.fake.calls_to("chat.postMessage")))
        assert automation.status(SHIP).state == "revoked"
        publishes = len(env.fake.calls_to("views.publish"))
        assert click(SUPERVISORS[1]).status == 200
        wait_until(lambda: len(env.fake.calls_to("views.publish")) > publishes)  # App Home shown again
        assert automation.status(SHIP).state == "automatic"
        assert store.one("SELECT actor FROM audit_log WHERE action = 'automation.allow'")["actor"] == SUPERVISORS[1]
        # and from the CLI
        assert cli("automation", "pin", REFUND).output.startswith(f"{REFUND}: manual, pinned manual")
        listed = cli("automation", "list")
        assert f"{SHIP}: automatic" in listed.output and f"{REFUND}: manual, pinned manual" in listed.output
        assert cli("automation", "unpin", REFUND).output.startswith(f"{REFUND}: manual - 40/60")
        missing = cli("automation", "pin", "发票")
        assert (missing.exit_code, missing.output) == (
            2, "Error: intent '发票' not found: no question has that category (see `replyloop automation list`)\n")
        actions = [r["action"] for r in store.query("SELECT action FROM audit_log WHERE action LIKE 'automation.%'"
                                                    " ORDER BY id")]
        assert actions == ["automation.revoke", "automation.allow", "automation.pin", "automation.unpin"]
    finally:
        close_env(env)


def test_weekly_report_splits_automation_and_canary_evidence_ignores_automatic_approvals(auto):
    from replyloop.evaluation.report import IsoWeek, collect_weekly_report, render_markdown, report_timezone
    from replyloop import timeutil
    from replyloop.registry import Registry

    config, store, automation = auto
    config.file.automation.audit_share = 0.0
    autos = [new_draft(store, f"我的订单 {400 + i} 什么时候到？") for i in range(4)]
    assert [automation.route(d).decision for d in autos] == ["auto"] * 4
    config.file.automation.audit_share = 1.0
    audited = new_draft(store, "我的订单 410 什么时候到？", draft=SHIP_REPLY + "谢谢。")
    assert automation.route(audited).decision == "audit"
    store.decide(audited, "reject", SUPERVISORS[0], reason="wrong")
    assert automation.check_revocation(SHIP).state == "revoked"  # (the bot's decision hook calls it)
    assert automation.check_revocation(SHIP) is None  # once

    report = collect_weekly_report(config, store, IsoWeek.containing(
        timeutil.now().astimezone(report_timezone(config)).date()))  # this week
    [ship] = [c for c in report.automation_split if c["category"] == SHIP]
    assert (ship["decided"], ship["human_approved"], ship["auto_approved"], ship["audited"],
            ship["audit_approved"], ship["revoked"]) == (65, 60, 4, 1, 0, True)
    low, high = ship["auto_share_ci"]
    assert low < 4 / 65 < high
    assert report.decisions[report.label].reviewed == 60 + 60 + 1  # people's decisions only
    text = render_markdown(report)
    assert "## Earned automation" in text
    assert f"| {SHIP} | 65 | 60 | 4 | 6.2% " in text and "| yes |" in text

    # the canary judge counts supervisors' reviews only
    with store.transaction() as db:
        db.execute("INSERT INTO models (name, base_model, status, created_at) VALUES ('m', 'b', 'champion', 'now')")
        model_id = db.execute("SELECT id FROM models WHERE name = 'm'").fetchone()[0]
        db.execute("UPDATE drafts SET model_id = ?", (model_id,))
    rates = Registry(store).review_rates(model_id)
    assert rates["reviews"] == 121 and rates["approved"] == 100


def test_an_automatic_approval_is_all_or_nothing(auto):
    """The route, the review and its delivery event are one transaction: a failure inside it
    (here: the event's hook) leaves the draft unrouted and undecided, and it goes to a person."""
    config, store, automation = auto
    config.file.automation.audit_share = 0.0

    def failing_hook(store_, draft, review):
        raise RuntimeError("disk full while writing the event")

    store.decision_hooks.append(failing_hook)
    draft_id = new_draft(store, "我的订单 500 什么时候到？")
    with pytest.raises(RuntimeError, match="disk full"):
        automation.route(draft_id)
    draft = store.get_draft(draft_id)
    assert (draft["automation"], draft["review_id"]) == (None, None)
    assert store.scalar("SELECT count(*) FROM reviews WHERE automated = 1") == 0
    store.decision_hooks.remove(failing_hook)
    assert automation.route(draft_id).decision == "auto"  # tried again later (the sweep posts or routes it)
