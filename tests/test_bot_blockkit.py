"""Block Kit limits: the fake Slack refuses what Slack refuses, and every card, modal and App Home
the bot builds stays within the limits with every field at its maximum."""

from __future__ import annotations

import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from replyloop.bot import cards
from replyloop.bot.fake_slack import FakeSlack, block_kit_errors, view_errors
from bot_support import *  # noqa: F401,F403
from bot_support import BOT_TOKEN, REVIEW


def test_fake_slack_refuses_blocks_and_views_over_the_limits():
    with FakeSlack() as fake:
        client = WebClient(token=BOT_TOKEN, base_url=fake.base_url)
        ok = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3000}}]
        client.chat_postMessage(channel=REVIEW, text="t", blocks=ok)
        with pytest.raises(SlackApiError) as exc:
            client.chat_postMessage(channel=REVIEW, text="t",
                                    blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])
        assert exc.value.response["error"] == "invalid_blocks"
        assert exc.value.response["errors"] == ["blocks[0].text.text: must be less than 3001 characters (is 3001)"]
        with pytest.raises(SlackApiError) as exc:
            client.chat_update(channel=REVIEW, ts="1.1", text="t",
                               blocks=[{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}])
        assert exc.value.response["error"] == "invalid_blocks"
        with pytest.raises(SlackApiError) as exc:
            client.views_open(trigger_id="1.1.x", view={"type": "modal", "title": {"type": "plain_text", "text": "t" * 25},
                                                        "blocks": []})
        assert exc.value.response["error"] == "invalid_arguments"
        assert [c.method for c in fake.calls] == ["chat.postMessage", "chat.postMessage:invalid",
                                                  "chat.update:invalid", "views.open:invalid"]
    assert block_kit_errors([{"type": "context", "elements": [{"type": "mrkdwn", "text": "a"}] * 11}])
    assert block_kit_errors([{"type": "divider"}] * 51) and not block_kit_errors([{"type": "divider"}] * 100, "home")
    assert block_kit_errors([{"type": "actions", "elements": [{"type": "button", "action_id": "a", "value": "1",
                                                               "text": {"type": "plain_text", "text": "b" * 76}}]}])
    modal = {"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": [
        {"type": "input", "block_id": "r", "label": {"type": "plain_text", "text": "Reply"},
         "element": {"type": "plain_text_input", "action_id": "t", "max_length": 3001}}]}
    assert view_errors(modal) == ["view.blocks[0].element.max_length: must be between 1 and 3000"]
    assert view_errors({**modal, "private_metadata": "m" * 3001})


def _long_draft(env, n: int) -> int:
    """A draft with every field at (or past) the intake maximum, full of characters that grow when
    escaped, and a policy violation every few characters."""
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest

    question = ("退款&<>" * 1000)[:4000]
    draft = ("马上&<保证退款>" * 1000)[:4000]
    [res] = ingest(env.config, env.store, [QuestionIn("c" * 2000 + str(n), question, "类" * 500, draft)],
                   source="http", checker=env.bot.checker)
    return res.draft_id


def _no_invalid(fake) -> None:
    assert not [c for c in fake.calls if c.method.endswith(":invalid")], [
        (c.method, c.response) for c in fake.calls if c.method.endswith(":invalid")]


def test_every_field_at_its_maximum_stays_within_block_kit(env):
    from replyloop.bot import review

    fake = env.fake
    # the card of a 4,000-character question and draft with hundreds of violations
    blocked = _long_draft(env, 1)
    review.post_card(env.bot, blocked)
    [card] = fake.wait_for("chat.postMessage")
    _no_invalid(fake)
    assert env.store.get_draft(blocked)["slack_ts"] == card.response["ts"]

    # Edit: the modal opens; a 3,000-character edit is the decided card
    assert env.sim.click(card, "edit", "USUP1").status == 200
    [opened] = fake.wait_for("views.open")
    _no_invalid(fake)
    [reply] = [b for b in opened.params["view"]["blocks"] if b.get("block_id") == cards.REPLY_BLOCK]
    assert reply["element"]["max_length"] == 3000 and len(reply["element"]["initial_value"]) == 3000
    edited = ("已为您处理&<>" * 500)[:3000]
    assert env.sim.submit(opened, "USUP1", {cards.REPLY_BLOCK: edited}).status == 200
    [update] = fake.wait_for("chat.update")
    _no_invalid(fake)
    assert env.store.one("SELECT final_text FROM reviews")["final_text"] == edited
    assert not any(b["type"] == "actions" for b in update.params["blocks"])

    # Reject with a 3,000-character reason (each '&' is 5 characters once escaped)
    second = _long_draft(env, 2)
    review.post_card(env.bot, second)
    card2 = fake.wait_for("chat.postMessage", 2)[1]
    assert env.sim.click(card2, "reject", "USUP2").status == 200
    opened2 = fake.wait_for("views.open", 2)[1]
    [reason_block] = [b for b in opened2.params["view"]["blocks"] if b.get("block_id") == cards.REASON_BLOCK]
    assert reason_block["element"]["max_length"] == 3000
    too_long = env.sim.submit(opened2, "USUP2", {cards.REASON_BLOCK: "&" * 3001})
    assert too_long.status == 200 and too_long.json() == {
        "response_action": "errors", "errors": {cards.REASON_BLOCK: "The reason is longer than 3000 characters."}}
    assert env.store.scalar("SELECT count(*) FROM reviews WHERE draft_id = ?", (second,)) == 0
    assert env.sim.submit(opened2, "USUP2", {cards.REASON_BLOCK: "&" * 3000}).status == 200
    update2 = fake.wait_for("chat.update", 2)[1]
    _no_invalid(fake)
    assert update2.params["ts"] == card2.response["ts"]
    assert not any(b["type"] == "actions" for b in update2.params["blocks"])
    row = env.store.one("SELECT * FROM reviews WHERE draft_id = ?", (second,))
    assert row["reason"] == "&" * 3000  # stored whole, shown clipped
    deadline = time.monotonic() + 10
    while env.store.scalar("SELECT card_updated_at FROM reviews WHERE draft_id = ?", (second,)) is None:
        assert time.monotonic() < deadline, "the card update was not recorded"
        time.sleep(0.02)


def test_app_home_with_hundreds_of_supervisors_stays_within_block_kit(env):
    from replyloop.dataio import QuestionIn
    from replyloop.intake import ingest

    reviewers = [f"U{i:08d}" for i in range(3000)]
    results = ingest(env.config, env.store, [QuestionIn(f"h-{i}", f"问题 {i}", None, f"回复 {i}")
                                             for i in range(len(reviewers))], source="http")
    for r, user in zip(results, reviewers):
        env.store.decide(r.draft_id, "approve", user)
    env.bot.publish_home("USUP1")
    [home] = env.fake.wait_for("views.publish")
    _no_invalid(env.fake)
    blocks = home.params["view"]["blocks"]
    assert len(blocks) <= 100
    text = "\n".join(b["text"]["text"] for b in blocks if b["type"] == "section")
    assert all(f"<@{u}>: 1 approved" in text for u in reviewers)  # split over sections, none clipped

    # past Slack's 100 blocks the rest is counted
    many = {**{k: v for k, v in _home(env).items()},
            "approvals_this_week": [{"reviewer": f"U{i:08d}", "approved": 1, "edited": 0, "rejected": 0}
                                    for i in range(20000)]}
    view = cards.home_view(many)
    assert view_errors(view) == []
    text = "\n".join(b["text"]["text"] for b in view["blocks"] if b["type"] == "section")
    listed = sum(1 for line in text.splitlines() if line.startswith("• <@"))
    assert 5000 < listed < 20000
    assert f"… and {20000 - listed:,} more supervisor(s)" in text  # the locale's grouping


def _home(env) -> dict:
    from replyloop.bot import status

    return status.home(env.store)
