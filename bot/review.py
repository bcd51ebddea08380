"""Review flow: post cards, and what Approve / Edit / Reject do after the listener's ``ack()``.

Decisions go through ``Store.decide`` (one decision per draft, race-free): a double click, a
Slack retry or a second supervisor gets an ephemeral "already approved by ..." and nothing
changes. Only supervisors may act; anyone else gets an ephemeral message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError

from bot import cards
from bot.slackclient import slack_error
from replyloop.errors import NotFoundError, ReplyloopError
from replyloop.intake import check_text

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger(__name__)

NOT_SUPERVISOR = "Only supervisors can review drafts. Ask an admin to add you to `slack.supervisors`."

# -- cards ---------------------------------------------------------------------------------


def post_card(bot: "Bot", draft_id: int) -> str | None:
    """Post the review card of a draft to the review channel (once); returns its ts."""
    with bot.posting_lock:
        if draft_id in bot.posting:
            return None
        bot.posting.add(draft_id)
    try:
        draft = bot.store.get_draft(draft_id)
        if draft["slack_ts"] or draft["review_id"]:
            return draft["slack_ts"]
        text, blocks = cards.review_card(draft)
        resp = bot.client.chat_postMessage(channel=bot.config.file.slack.review_channel, text=text, blocks=blocks)
        bot.store.set_draft_card(draft_id, resp["channel"], resp["ts"])
        return resp["ts"]
    finally:
        with bot.posting_lock:
            bot.posting.discard(draft_id)


def post_pending_cards(bot: "Bot", limit: int | None = None) -> int:
    """Post cards for undecided drafts that have none yet (imports, restarts). Returns how many."""
    ids = bot.store.pending_without_card(limit)
    posted = 0
    for draft_id in ids:
        try:
            if post_card(bot, draft_id):
                posted += 1
        except SlackApiError as exc:
            log.warning("posting the card of draft %s failed: %s", draft_id, slack_error(exc))
    return posted


def update_card(bot: "Bot", draft: dict, channel: str | None = None, ts: str | None = None) -> None:
    channel = draft.get("slack_channel") or channel
    ts = draft.get("slack_ts") or ts
    if not (channel and ts):
        return
    text, blocks = cards.decided_card(draft)
    bot.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)


def ephemeral(bot: "Bot", channel: str | None, user: str, text: str) -> None:
    if channel:
        bot.client.chat_postEphemeral(channel=channel, user=user, text=text)
    else:  # no channel known (a modal from App Home): a DM
        bot.client.chat_postMessage(channel=user, text=text)


# -- helpers -------------------------------------------------------------------------------


def _action_draft_id(action: dict) -> int:
    try:
        return int(action.get("value", ""))
    except (TypeError, ValueError):
        raise NotFoundError(f"button value {action.get('value')!r} is not a draft id") from None


def _container(body: dict) -> tuple[str | None, str | None]:
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    return channel, container.get("message_ts") or (body.get("message") or {}).get("ts")


def _decide(bot: "Bot", draft_id: int, decision: str, user: str, channel: str | None, ts: str | None,
            final_text: str | None = None, reason: str | None = None) -> None:
    """Record the decision and update the card, or tell the user why not (ephemeral)."""
    try:
        result = bot.store.decide(draft_id, decision, user, final_text=final_text, reason=reason)
    except ReplyloopError as exc:  # BlockedDraftError included
        ephemeral(bot, channel, user, f"Draft #{draft_id}: {exc}")
        return
    draft = bot.store.get_draft(draft_id)
    if not result.created:
        ephemeral(bot, channel, user, cards.already_decided_text(draft))
        return
    update_card(bot, draft, channel, ts)


def _guard(bot: "Bot", user: str, channel: str | None) -> bool:
    if bot.supervisors.is_supervisor(user):
        return True
    ephemeral(bot, channel, user, NOT_SUPERVISOR)
    return False


# -- listeners' work (after ack) -------------------------------------------------------------


def approve(bot: "Bot", body: dict, action: dict) -> None:
    user = body["user"]["id"]
    channel, ts = _container(body)
    if not _guard(bot, user, channel):
        return
    try:
        draft_id = _action_draft_id(action)
    except NotFoundError as exc:
        ephemeral(bot, channel, user, str(exc))
        return
    _decide(bot, draft_id, "approve", user, channel, ts)


def open_modal(bot: "Bot", body: dict, action: dict, kind: str) -> None:
    """Edit or Reject: open the modal (the trigger id is valid for 3 s, so this comes first)."""
    user = body["user"]["id"]
    channel, ts = _container(body)
    if not _guard(bot, user, channel):
        return
    try:
        draft = bot.store.get_draft(_action_draft_id(action))
    except NotFoundError as exc:
        ephemeral(bot, channel, user, str(exc))
        return
    if draft["review_id"]:
        ephemeral(bot, channel, user, cards.already_decided_text(draft))
        return
    view = cards.edit_modal(draft, channel, ts) if kind == "edit" else cards.reject_modal(draft, channel, ts)
    bot.client.views_open(trigger_id=body["trigger_id"], view=view)


def _view_value(view: dict, block: str, action: str) -> str:
    value = (((view.get("state") or {}).get("values") or {}).get(block) or {}).get(action) or {}
    return (value.get("value") or "").strip()


def validate_edit(bot: "Bot", view: dict) -> dict | None:
    """Checks done before the modal's ack: returns ``{block_id: message}`` errors or None."""
    text = _view_value(view, cards.REPLY_BLOCK, cards.REPLY_INPUT)
    if not text:
        return {cards.REPLY_BLOCK: "The reply is empty."}
    check = check_text(bot.checker, text)
    if check["verdict"] == "block":
        blocking = [v for v in check["violations"] if v.get("severity") == "block"] or check["violations"]
        parts = [f"{v.get('message') or v.get('rule')}" + (f" (“{v['match']}”)" if v.get("match") else "")
                 for v in blocking]
        return {cards.REPLY_BLOCK: ("Breaks a blocking policy rule: " + "; ".join(parts))[:1900]}
    return None


def submit_edit(bot: "Bot", body: dict, view: dict) -> None:
    user = body["user"]["id"]
    meta = cards.parse_metadata(view.get("private_metadata", ""))
    if not _guard(bot, user, meta.get("channel")):
        return
    text = _view_value(view, cards.REPLY_BLOCK, cards.REPLY_INPUT)
    _decide(bot, meta["draft_id"], "edit", user, meta.get("channel"), meta.get("ts"), final_text=text)


def submit_reject(bot: "Bot", body: dict, view: dict) -> None:
    user = body["user"]["id"]
    meta = cards.parse_metadata(view.get("private_metadata", ""))
    if not _guard(bot, user, meta.get("channel")):
        return
    reason = _view_value(view, cards.REASON_BLOCK, cards.REASON_INPUT) or None
    _decide(bot, meta["draft_id"], "reject", user, meta.get("channel"), meta.get("ts"), reason=reason)
