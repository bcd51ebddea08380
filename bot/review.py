"""Review flow: post cards, and what Approve / Edit / Reject do around the listener's ``ack()``.

A decision is durable before Slack hears "200": the listener calls ``decide_click`` /
``decide_edit`` / ``decide_reject`` (the supervisor check and ``Store.decide``, one short SQLite
transaction: review, sample, audit row), then ``ack()``, then hands the slow Slack calls
(``finish``: ``chat.update`` of the card, ephemeral notices) to the bot's work pool. A crash
between the commit and the card update leaves a decided card with buttons; ``fix_lost_card_updates``
(the sweep of ``replyloop serve``) replaces them after a restart.

Decisions go through ``Store.decide`` (one decision per draft, race-free): a double click, a
Slack retry or a second supervisor gets an ephemeral "already approved by ..." and nothing
changes. Only supervisors may act; anyone else gets an ephemeral message.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError

from replyloop.bot import cards
from replyloop.bot.slackclient import slack_error
from replyloop import timeutil
from replyloop.errors import NotFoundError, ReplyloopError
from replyloop.intake import check_text
from replyloop.store import BUSY_TIMEOUT_S, Decision, Store

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

NOT_SUPERVISOR = "Only supervisors can review drafts. Ask an admin to add you to `slack.supervisors`."

# -- the decision writer ---------------------------------------------------------------------


class DecisionWriter:
    """Group commit of the decisions of every listener thread: the decisions that arrive while
    one transaction commits are written together in the next. ``decide`` returns once its
    decision is committed, so the listener acknowledges only what is stored.

    No thread of its own: the first caller that finds no commit in progress commits everything
    pending (its own decision included) on its own thread and connection, while the callers
    arriving meanwhile wait for the next turn, in which one of them commits them all. Alone, a
    click commits on its own thread (no hand-over to a writer thread and back: under load each
    hand-over waits for the GIL); in a burst, one short transaction per batch instead of 32
    threads queueing on SQLite's lock. Each decision runs in a savepoint, so a refused one
    (blocked, not found, a failing decision hook) leaves nothing behind and the others go on."""

    MAX_BATCH = 64

    def __init__(self, store: Store):
        self.store = store
        self._closed = False
        self._pending: list = []               # (future, args, kwargs), oldest first
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()   # held by the thread committing a batch

    def decide(self, draft_id: int, decision: str, reviewer: str, final_text: str | None = None,
               reason: str | None = None) -> Decision:
        """``Store.decide``, committed when it returns (its errors are raised here). After
        ``close``, or when the database is stuck past its busy timeout, it raises RuntimeError /
        TimeoutError: the listener then answers 500 instead of acknowledging."""
        if self._closed:
            raise RuntimeError("the decision writer is closed (the bot is shutting down)")
        future: Future = Future()
        with self._pending_lock:
            self._pending.append((future, (draft_id, decision, reviewer), {"final_text": final_text, "reason": reason}))
        deadline = time.monotonic() + BUSY_TIMEOUT_S + 5
        while not future.done():
            if not self._commit_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the decision was not committed in time (the database is busy)")
            try:
                if not future.done():  # the previous batch did not include it: commit what waits
                    with self._pending_lock:
                        batch, self._pending = self._pending[:self.MAX_BATCH], self._pending[self.MAX_BATCH:]
                    self._write(batch)
            finally:
                self._commit_lock.release()
        return future.result()

    def _write(self, batch: list) -> None:
        done = []
        try:
            with self.store.transaction() as db:
                for future, args, kwargs in batch:
                    db.conn.execute("SAVEPOINT decision")
                    try:  # a refused decision (blocked, not found) writes nothing: the others go on
                        result = self.store.decide(*args, **kwargs)
                    except ReplyloopError as exc:
                        db.conn.execute("ROLLBACK TO decision")
                        done.append((future, None, exc))
                    else:
                        done.append((future, result, None))
                    db.conn.execute("RELEASE decision")
        except BaseException as exc:  # the database failed: nothing of the batch is stored
            for future, _, _ in batch:
                future.set_exception(exc)
            return
        for future, result, exc in done:  # only after the commit
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Refuse new decisions; the ones being committed finish."""
        self._closed = True
        if self._commit_lock.acquire(timeout=10):
            self._commit_lock.release()


# -- cards ---------------------------------------------------------------------------------


def post_card(bot: "Bot", draft_id: int) -> str | None:
    """Post the review card of a draft to the review channel (once); returns its ts. A draft that
    earned automation is approved instead (no card; ``bot.delivery.automatic``)."""
    from replyloop.bot.delivery import automatic  # deliver21

    if automatic(bot, draft_id):
        return None
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
            log.warning("posting the card of draft %s failed: %s", draft_id, slack_error(exc),
                        extra={"draft_id": draft_id})
    return posted


def update_card(bot: "Bot", draft: dict, channel: str | None = None, ts: str | None = None) -> None:
    """Replace the card's buttons with the decision, then record that it is done."""
    channel = draft.get("slack_channel") or channel
    ts = draft.get("slack_ts") or ts
    if channel and ts:
        text, blocks = cards.decided_card(draft)
        bot.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
    if draft.get("review_id"):
        bot.store.mark_card_updated(draft["review_id"])


# Slack errors that no retry of chat.update will change: stop trying that card
FINAL_UPDATE_ERRORS = {"message_not_found", "cant_update_message", "channel_not_found", "is_archived",
                       "not_in_channel", "invalid_blocks", "msg_too_long", "edit_window_closed"}
LOST_UPDATE_AFTER_S = 120.0  # a decision of this process whose card is older than this was not updated


def fix_lost_card_updates(bot: "Bot", limit: int = 200) -> int:
    """Update the cards of decisions whose card update never happened: decided before this bot
    started (a crash between the decision's commit and ``chat.update``) or more than
    ``LOST_UPDATE_AFTER_S`` ago (Slack was down). Returns how many cards were updated."""
    recent = (timeutil.now() - dt.timedelta(seconds=LOST_UPDATE_AFTER_S)).isoformat(timespec="microseconds")
    fixed = 0
    for draft_id in bot.store.decided_without_card_update(max(bot.started_at, recent), limit):
        draft = bot.store.get_draft(draft_id)
        try:
            update_card(bot, draft)
            fixed += 1
        except SlackApiError as exc:
            error = slack_error(exc)
            log.warning("updating the decided card of draft %s failed: %s", draft_id, error, extra={"draft_id": draft_id})
            if error in FINAL_UPDATE_ERRORS:
                bot.store.mark_card_updated(draft["review_id"])
    return fixed


def ephemeral(bot: "Bot", channel: str | None, user: str, text: str) -> None:
    if channel:
        bot.client.chat_postEphemeral(channel=channel, user=user, text=text)
    else:  # no channel known (a modal from App Home): a DM
        bot.client.chat_postMessage(channel=user, text=text)


# -- helpers -------------------------------------------------------------------------------


MAX_ID = 2**63 - 1  # SQLite's largest integer


def _action_draft_id(action: dict) -> int:
    try:
        value = int(action.get("value", ""))
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value <= MAX_ID:
        raise NotFoundError(f"button value {str(action.get('value'))[:40]!r} is not a draft id")
    return value


def _container(body: dict) -> tuple[str | None, str | None]:
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    return channel, container.get("message_ts") or (body.get("message") or {}).get("ts")


@dataclass(frozen=True)
class Outcome:
    """What a click or a submission decided before its ack, for the slow part after it."""

    user: str
    channel: str | None
    ts: str | None
    draft_id: int | None = None
    created: bool = False
    notice: str | None = None  # an ephemeral message instead of a card update


def _record(bot: "Bot", draft_id: int, decision: str, user: str, channel: str | None, ts: str | None,
            final_text: str | None = None, reason: str | None = None) -> Outcome:
    """Store the decision (one transaction) or say why not. Database errors propagate: the
    listener then answers 500 instead of acknowledging what is not stored."""
    try:
        writer = bot.decisions or bot.store  # the same call, committed when it returns
        result = writer.decide(draft_id, decision, user, final_text=final_text, reason=reason)
    except ReplyloopError as exc:  # BlockedDraftError, NotFoundError included
        return Outcome(user, channel, ts, draft_id, notice=f"Draft #{draft_id}: {exc}")
    return Outcome(user, channel, ts, draft_id, created=result.created)


def finish(bot: "Bot", outcome: Outcome) -> None:
    """After the ack: update the card, or tell the user why nothing changed (ephemeral)."""
    if outcome.notice:
        ephemeral(bot, outcome.channel, outcome.user, outcome.notice)
        return
    draft = bot.store.get_draft(outcome.draft_id)
    if not outcome.created:
        ephemeral(bot, outcome.channel, outcome.user, cards.already_decided_text(draft))
        return
    update_card(bot, draft, outcome.channel, outcome.ts)
    if bot.automation is not None:  # deliver21: an audit that revoked automation is announced
        from replyloop.bot.delivery import post_automation_notices
        post_automation_notices(bot)


def _guard(bot: "Bot", user: str, channel: str | None) -> bool:
    if bot.supervisors.is_supervisor(user):
        return True
    ephemeral(bot, channel, user, NOT_SUPERVISOR)
    return False


# -- decisions (before the ack) and modals (after it) ------------------------------------------


def decide_click(bot: "Bot", body: dict, action: dict) -> Outcome:
    """Approve: the supervisor check and the decision, before ``ack()``."""
    user = (body.get("user") or {}).get("id")
    channel, ts = _container(body)
    if not bot.supervisors.is_supervisor(user):
        return Outcome(user, channel, ts, notice=NOT_SUPERVISOR)
    try:
        draft_id = _action_draft_id(action)
    except NotFoundError as exc:
        return Outcome(user, channel, ts, notice=str(exc))
    return _record(bot, draft_id, "approve", user, channel, ts)


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
    if len(text) > cards.MAX_INPUT:
        return {cards.REPLY_BLOCK: f"The reply is longer than {cards.MAX_INPUT} characters."}
    check = check_text(bot.checker, text)
    if check["verdict"] == "block":
        blocking = [v for v in check["violations"] if v.get("severity") == "block"] or check["violations"]
        parts = [f"{v.get('message') or v.get('rule')}" + (f" (“{v['match']}”)" if v.get("match") else "")
                 for v in blocking]
        return {cards.REPLY_BLOCK: cards.clip_plain("Breaks a blocking policy rule: " + "; ".join(parts),
                                                    cards.MAX_ERROR)}
    return None


def validate_reject(view: dict) -> dict | None:
    """The reason's length (the modal's ``max_length`` already stops it in Slack's client)."""
    if len(_view_value(view, cards.REASON_BLOCK, cards.REASON_INPUT)) > cards.MAX_INPUT:
        return {cards.REASON_BLOCK: f"The reason is longer than {cards.MAX_INPUT} characters."}
    return None


def _submission(bot: "Bot", body: dict, view: dict) -> tuple[str, dict | None]:
    user = (body.get("user") or {}).get("id")
    try:
        meta = cards.parse_metadata(view.get("private_metadata", ""))
    except ValueError:
        return user, None
    if not 0 < meta["draft_id"] <= MAX_ID:
        return user, None
    return user, meta


def _submitter(bot: "Bot", body: dict, view: dict) -> tuple[str, dict | None, Outcome | None]:
    """A modal submission's user and metadata, or the refusal (malformed form, not a supervisor)."""
    user, meta = _submission(bot, body, view)
    if meta is None:
        return user, None, Outcome(user, None, None, notice="This form is malformed (no draft id): nothing was changed.")
    if not bot.supervisors.is_supervisor(user):
        return user, meta, Outcome(user, meta.get("channel"), meta.get("ts"), notice=NOT_SUPERVISOR)
    return user, meta, None


def decide_edit(bot: "Bot", body: dict, view: dict) -> Outcome:
    """The edit modal's submission (already validated): the decision, before ``ack()``."""
    user, meta, refused = _submitter(bot, body, view)
    if refused is not None:
        return refused
    channel, ts = meta.get("channel"), meta.get("ts")
    text = _view_value(view, cards.REPLY_BLOCK, cards.REPLY_INPUT)
    return _record(bot, meta["draft_id"], "edit", user, channel, ts, final_text=text)


def decide_reject(bot: "Bot", body: dict, view: dict) -> Outcome:
    """The reject modal's submission: the decision, before ``ack()``."""
    user, meta, refused = _submitter(bot, body, view)
    if refused is not None:
        return refused
    channel, ts = meta.get("channel"), meta.get("ts")
    reason = _view_value(view, cards.REASON_BLOCK, cards.REASON_INPUT) or None
    return _record(bot, meta["draft_id"], "reject", user, channel, ts, reason=reason)
