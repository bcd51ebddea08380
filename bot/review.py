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

Languages (issue 22): the channel's card and its update are in the workspace's language
(``i18n.workspace()``); modals, their validation errors and ephemeral notices in the acting
user's. A notice decided before the ack is rendered after it (``Outcome.notice`` is a function),
so the user's language (a ``users.info`` lookup) never delays an ack.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from slack_sdk.errors import SlackApiError

from replyloop.bot import cards
from replyloop.bot.slackclient import slack_error
from replyloop import i18n, timeutil
from replyloop.errors import NotFoundError, ReplyloopError
from replyloop.i18n import N_, _
from replyloop.intake import check_text
from replyloop.store import BUSY_TIMEOUT_S, BlockedDraftError, Decision, Store

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

NOT_SUPERVISOR = N_("Only supervisors can review drafts. Ask an admin to add you to `slack.supervisors`.")


def not_supervisor_text() -> str:
    """The refusal a non-supervisor reads, in their language."""
    return _(NOT_SUPERVISOR)

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
            for future, _args, _kwargs in batch:
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
        with i18n.workspace():  # the review channel reads the workspace's language
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
        with i18n.workspace():  # the channel's card, whoever clicked
            text, blocks = cards.decided_card(draft, timezone_of(bot))
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


def timezone_of(bot: "Bot") -> str:
    """The zone the times on cards and notices are shown in (``scheduler.timezone``)."""
    return bot.config.file.scheduler.timezone


def ephemeral(bot: "Bot", channel: str | None, user: str, text: str) -> None:
    if channel:
        bot.client.chat_postEphemeral(channel=channel, user=user, text=text)
    else:  # no channel known (a modal from App Home): a DM
        bot.client.chat_postMessage(channel=user, text=text)


# -- helpers -------------------------------------------------------------------------------


MAX_ID = 2**63 - 1  # SQLite's largest integer


class BadButton(NotFoundError):
    """A button whose value is not a draft id (a forged or garbled click)."""

    def __init__(self, value):
        self.value = str(value)[:40]
        super().__init__(f"button value {self.value!r} is not a draft id")

    def text(self) -> str:
        return _("button value {value} is not a draft id").format(value=repr(self.value))


def _action_draft_id(action: dict) -> int:
    try:
        value = int(action.get("value", ""))
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value <= MAX_ID:
        raise BadButton(action.get("value"))
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
    # an ephemeral message instead of a card update: rendered after the ack, in the user's language
    notice: Callable[[], str] | None = None


def _record(bot: "Bot", draft_id: int, decision: str, user: str, channel: str | None, ts: str | None,
            final_text: str | None = None, reason: str | None = None) -> Outcome:
    """Store the decision (one transaction) or say why not. Database errors propagate: the
    listener then answers 500 instead of acknowledging what is not stored."""
    try:
        writer = bot.decisions or bot.store  # the same call, committed when it returns
        result = writer.decide(draft_id, decision, user, final_text=final_text, reason=reason)
    except ReplyloopError as exc:  # BlockedDraftError, NotFoundError included
        return Outcome(user, channel, ts, draft_id, notice=partial(refusal_text, draft_id, exc))
    return Outcome(user, channel, ts, draft_id, created=result.created)


def refusal_text(draft_id: int, exc: ReplyloopError) -> str:
    """Why a decision was refused, in the reader's language."""
    if isinstance(exc, BlockedDraftError):
        return _("Draft #{draft_id}: This draft breaks a blocking policy rule: edit it before approving").format(
            draft_id=draft_id)
    if isinstance(exc, NotFoundError):
        return _("Draft #{draft_id}: draft {draft_id} not found").format(draft_id=draft_id)
    return _("Draft #{draft_id}: {error}").format(draft_id=draft_id, error=exc)


def finish(bot: "Bot", outcome: Outcome) -> None:
    """After the ack: update the card, or tell the user why nothing changed (ephemeral)."""
    if outcome.notice:
        ephemeral(bot, outcome.channel, outcome.user, outcome.notice())
        return
    draft = bot.store.get_draft(outcome.draft_id)
    if not outcome.created:
        ephemeral(bot, outcome.channel, outcome.user, cards.already_decided_text(draft, timezone_of(bot)))
        return
    update_card(bot, draft, outcome.channel, outcome.ts)
    if bot.automation is not None:  # deliver21: an audit that revoked automation is announced
        from replyloop.bot.delivery import post_automation_notices
        post_automation_notices(bot)


def _guard(bot: "Bot", user: str, channel: str | None) -> bool:
    if bot.supervisors.is_supervisor(user):
        return True
    ephemeral(bot, channel, user, not_supervisor_text())
    return False


# -- decisions (before the ack) and modals (after it) ------------------------------------------


def decide_click(bot: "Bot", body: dict, action: dict) -> Outcome:
    """Approve: the supervisor check and the decision, before ``ack()``."""
    user = (body.get("user") or {}).get("id")
    channel, ts = _container(body)
    if not bot.supervisors.is_supervisor(user):
        return Outcome(user, channel, ts, notice=not_supervisor_text)
    try:
        draft_id = _action_draft_id(action)
    except BadButton as exc:
        return Outcome(user, channel, ts, notice=exc.text)
    return _record(bot, draft_id, "approve", user, channel, ts)


def open_modal(bot: "Bot", body: dict, action: dict, kind: str) -> None:
    """Edit or Reject: open the modal (the trigger id is valid for 3 s, so this comes first)."""
    user = body["user"]["id"]
    channel, ts = _container(body)
    if not _guard(bot, user, channel):
        return
    try:
        draft_id = _action_draft_id(action)
        draft = bot.store.get_draft(draft_id)
    except BadButton as exc:
        ephemeral(bot, channel, user, exc.text())
        return
    except NotFoundError as exc:
        ephemeral(bot, channel, user, refusal_text(draft_id, exc))
        return
    if draft["review_id"]:
        ephemeral(bot, channel, user, cards.already_decided_text(draft, timezone_of(bot)))
        return
    view = cards.edit_modal(draft, channel, ts) if kind == "edit" else cards.reject_modal(draft, channel, ts)
    bot.client.views_open(trigger_id=body["trigger_id"], view=view)


def _view_value(view: dict, block: str, action: str) -> str:
    value = (((view.get("state") or {}).get("values") or {}).get(block) or {}).get(action) or {}
    return (value.get("value") or "").strip()


def _modal_language(view: dict):
    """The language a modal was shown in (its private_metadata), for its errors: they ride on the
    ack, so the user's Slack locale is not looked up again then. Without one, the current language."""
    try:
        lang = cards.parse_metadata(view.get("private_metadata", "")).get("lang")
    except ValueError:
        lang = None
    if isinstance(lang, str) and i18n.normalize(lang):
        return i18n.language(lang)
    return nullcontext()  # (language(None) would resolve the current, maybe lazy, language now)


def validate_edit(bot: "Bot", view: dict) -> dict | None:
    """Checks done before the modal's ack: returns ``{block_id: message}`` errors or None."""
    with _modal_language(view):
        return _edit_errors(bot, view)


def _edit_errors(bot: "Bot", view: dict) -> dict | None:
    text = _view_value(view, cards.REPLY_BLOCK, cards.REPLY_INPUT)
    if not text:
        return {cards.REPLY_BLOCK: _("The reply is empty.")}
    if len(text) > cards.MAX_INPUT:
        return {cards.REPLY_BLOCK: _("The reply is longer than {limit} characters.").format(
            limit=cards.MAX_INPUT)}
    check = check_text(bot.checker, text)
    if check["verdict"] == "block":
        blocking = [v for v in check["violations"] if v.get("severity") == "block"] or check["violations"]
        parts = [f"{v.get('message') or v.get('rule')}"
                 + (_(" (“{match}”)").format(match=v["match"]) if v.get("match") else "") for v in blocking]
        return {cards.REPLY_BLOCK: cards.clip_plain(
            _("Breaks a blocking policy rule: {rules}").format(rules=_("; ").join(parts)), cards.MAX_ERROR)}
    return None


def validate_reject(view: dict) -> dict | None:
    """The reason's length (the modal's ``max_length`` already stops it in Slack's client)."""
    if len(_view_value(view, cards.REASON_BLOCK, cards.REASON_INPUT)) > cards.MAX_INPUT:
        with _modal_language(view):
            return {cards.REASON_BLOCK: _("The reason is longer than {limit} characters.").format(
                limit=cards.MAX_INPUT)}
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
        return user, None, Outcome(user, None, None, notice=malformed_text)
    if not bot.supervisors.is_supervisor(user):
        return user, meta, Outcome(user, meta.get("channel"), meta.get("ts"), notice=not_supervisor_text)
    return user, meta, None


def malformed_text() -> str:
    return _("This form is malformed (no draft id): nothing was changed.")


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
