"""Review cards over real HTTP: approve, edit, reject, permissions, idempotency, races."""

from __future__ import annotations

import threading
import time

import pytest

from replyloop.bot import cards
from bot_support import *  # noqa: F401,F403  (fixtures and constants)
from bot_support import GROUP_MEMBER, OUTSIDER, REVIEW


def blocks_text(blocks) -> str:
    out = []
    for b in blocks:
        if isinstance(b.get("text"), dict):
            out.append(b["text"]["text"])
        for el in b.get("elements", []):
            if isinstance(el.get("text"), str):
                out.append(el["text"])
            elif isinstance(el.get("text"), dict):
                out.append(el["text"]["text"])
    return "\n".join(out)


def test_review_card_shows_question_draft_category_model_and_verdict(env):
    draft_id, call = env.post_card(question="退款多久到账？", draft="我们保证退款，马上到账。", category="退换货政策")
    assert call.params["channel"] == REVIEW
    text = blocks_text(call.params["blocks"])
    assert "退款多久到账？" in text
    assert "我们*~保证退款~*，*~马上~*到账。" in text  # offending phrases highlighted
    assert "退换货政策" in text and "external" in text and "block" in text
    assert "Never promise a refund." in text and "按政策为您申请退款" in text
    actions = [b for b in call.params["blocks"] if b["type"] == "actions"][0]
    assert [e["action_id"] for e in actions["elements"]] == [cards.EDIT, cards.REJECT]  # no Approve on a block
    row = env.store.get_draft(draft_id)
    assert (row["slack_channel"], row["slack_ts"]) == (REVIEW, call.response["ts"])


def test_approve_stores_sample_and_updates_card(env):
    draft_id, card = env.post_card()
    resp = env.sim.click(card, "approve", user="USUP1")
    assert resp.status == 200
    [update] = env.fake.wait_for("chat.update")
    review = env.wait_review(draft_id)
    assert (review["decision"], review["reviewer"]) == ("approve", "USUP1")
    [sample] = env.store.samples()
    assert (sample["prompt"], sample["response"], sample["source"], sample["approved_by"]) == (
        "我的订单什么时候到？", "您的订单预计三天内送达。", "review", "USUP1")
    assert update.params["ts"] == card.response["ts"] and update.params["channel"] == REVIEW
    text = blocks_text(update.params["blocks"])
    shown = cards.when(review["created_at"], env.config.file.scheduler.timezone)  # in the workspace's zone
    assert shown.startswith("Dec ") and f"Approved by <@USUP1> at {shown}" in text
    assert not any(b["type"] == "actions" for b in update.params["blocks"])


def test_ack_comes_before_slow_slack_calls(env):
    """Listeners ack first: with chat.update taking 1.5 s, the click is answered long before it."""
    draft_id, card = env.post_card()
    env.fake.delay("chat.update", 1.5)
    started = time.monotonic()
    resp = env.sim.click(card, "approve", user="USUP1")
    acked = time.monotonic() - started
    assert resp.status == 200
    assert not env.fake.calls_to("chat.update")
    env.fake.wait_for("chat.update")
    assert acked < 1.0 < time.monotonic() - started


def test_group_member_is_a_supervisor(env):
    draft_id, card = env.post_card()
    env.sim.click(card, "approve", user=GROUP_MEMBER)
    assert env.wait_review(draft_id)["reviewer"] == GROUP_MEMBER
    assert env.fake.wait_for("usergroups.users.list")[0].params["usergroup"] == "S0SUPERVISORS"


def test_non_supervisor_gets_ephemeral_and_nothing_changes(env):
    draft_id, card = env.post_card()
    for action in ("approve", "edit", "reject"):
        assert env.sim.click(card, action, user=OUTSIDER).status == 200
    notes = env.fake.wait_for("chat.postEphemeral", 3)
    assert {n.params["user"] for n in notes} == {OUTSIDER}
    assert all("Only supervisors" in n.params["text"] for n in notes)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert not env.fake.calls_to("chat.update") and not env.fake.calls_to("views.open")


def test_double_click_and_retry_make_one_decision(env):
    draft_id, card = env.post_card()
    env.sim.click(card, "approve", user="USUP1")
    env.fake.wait_for("chat.update")
    env.sim.click(card, "approve", user="USUP1")                 # double click
    env.sim.click(card, "approve", user="USUP1", retry_num=1)    # Slack's retry of the same request
    notes = env.fake.wait_for("chat.postEphemeral", 2)
    review = env.wait_review(draft_id)
    for note in notes:
        assert note.params["text"] == (f"Draft #{draft_id} was already approved by <@USUP1> at "
                                       f"{cards.when(review['created_at'], 'Asia/Shanghai')}.")
    time.sleep(0.2)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 1
    assert env.store.scalar("SELECT count(*) FROM samples") == 1
    assert len(env.fake.calls_to("chat.update")) == 1
    assert env.store.scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'review.%'") == 1


def test_concurrent_clicks_by_two_supervisors_make_one_decision(env):
    draft_ids, cards_ = [], []
    for i in range(5):
        d, c = env.post_card(question=f"问题 {i}", draft=f"回答 {i}", conversation=f"c{i}")
        draft_ids.append(d)
        cards_.append(c)
    barrier = threading.Barrier(4)
    statuses = []

    def clicker(user, action):
        barrier.wait()
        for card in cards_:
            if action == "approve":
                statuses.append(env.sim.click(card, "approve", user=user).status)
            else:
                statuses.append(env.sim.post_payload(env.sim.block_action(card, "approve", user)).status)
        env.sim.close()

    threads = [threading.Thread(target=clicker, args=(u, "approve")) for u in ("USUP1", "USUP2", GROUP_MEMBER)]
    threads.append(threading.Thread(target=clicker, args=("USUP1", "raw")))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 20
    env.fake.wait_for("chat.update", 5)
    env.fake.wait_for("chat.postEphemeral", 15)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 5
    assert env.store.scalar("SELECT count(*) FROM samples") == 5
    time.sleep(0.2)
    assert len(env.fake.calls_to("chat.update")) == 5
    for note in env.fake.calls_to("chat.postEphemeral"):
        assert "was already approved by <@" in note.params["text"]


def test_blocked_draft_cannot_be_approved_unedited(env):
    draft_id, card = env.post_card(draft="我们保证退款。")
    with pytest.raises(LookupError):
        env.sim.block_action(card, "approve", "USUP1")
    env.sim.click(card, "approve", user="USUP1", value=str(draft_id))  # forged click
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert "breaks a blocking policy rule" in note.params["text"]
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0


def test_edit_clean_text_is_stored_as_sample(env):
    draft_id, card = env.post_card(draft="我们保证退款。")
    env.sim.click(card, "edit", user="USUP2")
    [opened] = env.fake.wait_for("views.open")
    view = opened.params["view"]
    assert view["callback_id"] == cards.EDIT_VIEW
    reply = [b for b in view["blocks"] if b.get("block_id") == cards.REPLY_BLOCK][0]
    assert reply["element"]["initial_value"] == "我们保证退款。"
    resp = env.sim.submit(opened, user="USUP2", values={cards.REPLY_BLOCK: "我们会按政策为您申请退款。"})
    assert resp.status == 200 and resp.body == ""
    review = env.wait_review(draft_id)
    assert (review["decision"], review["final_text"]) == ("edit", "我们会按政策为您申请退款。")
    [sample] = env.store.samples()
    assert sample["response"] == "我们会按政策为您申请退款。"
    [update] = env.fake.wait_for("chat.update")
    assert "Edited and approved by <@USUP2>" in blocks_text(update.params["blocks"])


def test_edit_with_blocking_violation_shows_modal_error_and_stores_nothing(env):
    draft_id, card = env.post_card()
    env.sim.click(card, "edit", user="USUP1")
    [opened] = env.fake.wait_for("views.open")
    resp = env.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: "放心，我们保证退款。"})
    assert resp.status == 200
    body = resp.json()
    assert body["response_action"] == "errors"
    assert body["errors"][cards.REPLY_BLOCK] == "Breaks a blocking policy rule: Never promise a refund. (“保证退款”)"
    resp = env.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: "   "})
    assert resp.json()["errors"][cards.REPLY_BLOCK] == "The reply is empty."
    time.sleep(0.2)
    assert env.store.scalar("SELECT count(*) FROM reviews") == 0
    assert env.store.scalar("SELECT count(*) FROM samples") == 0


def test_edit_with_real_policy_engine(workspace):
    """The same modal error with the policy helper's engine and the shipped policies."""
    from bot_support import close_env, make_env
    from replyloop.evaluation.policy import load_policies
    from replyloop.intake import policy_checker

    config, _ = workspace
    blocked = "不用担心，我们全额赔付。"
    assert load_policies(config.policies_dir).check(blocked).verdict == "block"
    e = make_env(workspace, checker=policy_checker(config))
    try:
        _, card = e.post_card()
        e.sim.click(card, "edit", user="USUP1")
        [opened] = e.fake.wait_for("views.open")
        body = e.sim.submit(opened, user="USUP1", values={cards.REPLY_BLOCK: blocked}).json()
        assert body["response_action"] == "errors"
        assert body["errors"][cards.REPLY_BLOCK].startswith("Breaks a blocking policy rule")
        assert e.store.scalar("SELECT count(*) FROM reviews") == 0
    finally:
        close_env(e)


def test_reject_with_reason(env):
    draft_id, card = env.post_card()
    env.sim.click(card, "reject", user="USUP1")
    [opened] = env.fake.wait_for("views.open")
    assert opened.params["view"]["callback_id"] == cards.REJECT_VIEW
    assert env.sim.submit(opened, user="USUP1", values={cards.REASON_BLOCK: "地址信息不对"}).status == 200
    review = env.wait_review(draft_id)
    assert (review["decision"], review["reason"], review["final_text"]) == ("reject", "地址信息不对", None)
    assert env.store.scalar("SELECT count(*) FROM samples") == 0
    [update] = env.fake.wait_for("chat.update")
    text = blocks_text(update.params["blocks"])
    assert "Rejected by <@USUP1>" in text and "地址信息不对" in text


def test_reject_without_reason_and_edit_after_decision(env):
    draft_id, card = env.post_card()
    env.sim.click(card, "reject", user="USUP1")
    [opened] = env.fake.wait_for("views.open")
    env.sim.submit(opened, user="USUP1", values={})
    assert env.wait_review(draft_id)["reason"] is None
    env.fake.wait_for("chat.update")
    env.sim.click(card, "edit", user="USUP2")  # the card was stale on this supervisor's screen
    [note] = env.fake.wait_for("chat.postEphemeral")
    assert note.params["text"].startswith(f"Draft #{draft_id} was already rejected by <@USUP1> at ")
    assert len(env.fake.calls_to("views.open")) == 1


def test_post_pending_cards_posts_each_once(env):
    from replyloop.bot import review

    ids = [env.add_draft(question=f"q{i}", draft=f"a{i}", conversation=f"c{i}") for i in range(3)]
    assert review.post_pending_cards(env.bot) == 3
    assert review.post_pending_cards(env.bot) == 0
    assert len(env.fake.calls_to("chat.postMessage")) == 3
    assert all(env.store.get_draft(i)["slack_ts"] for i in ids)


def test_card_posting_retries_rate_limit(env):
    env.fake.fail_next("chat.postMessage", status=429, retry_after=0)
    draft_id, call = env.post_card()
    assert len(env.fake.calls_to("chat.postMessage:failed")) == 1
    assert env.store.get_draft(draft_id)["slack_ts"] == call.response["ts"]
