"""Intake of customer questions: ``POST /intake`` (bearer token) and the Slack intake channel.

Both store first and draft afterwards (``replyloop.intake``): a 201 from ``/intake`` and Slack's
200 for a channel message both mean the question is stored. The channel's message is stored by
``store_message`` before bolt acknowledges the event, with its dedup key (channel and ts) in the
same transaction, so a Slack retry is spotted before any drafting; drafting and the card follow
on the bot's drafting queue (``after_store``), never on a listener thread.

Message subtypes: plain messages, ``file_share`` (a message with an attachment: its text plus a
note naming the files) and ``thread_broadcast`` (a thread reply also sent to the channel) are
customer questions. Every other subtype is ignored: ``bot_message`` and anything with a
``bot_id`` (bots, the app itself), ``message_changed`` / ``message_deleted`` (an edit or a
deletion of a message already taken in: the question keeps its first text), ``message_replied``
(a notice about a thread, not a message) and channel events (``channel_join``, ``channel_topic``,
``pinned_item``, ...), which carry no question.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replyloop.bot import review
from replyloop.bot.slackclient import slack_error
from replyloop import dataio, errors, fields
from replyloop.dataio import QuestionIn
from replyloop.errors import ReplyloopError
from replyloop.intake import (draft_question, held_channels, hold_question, ingest, release_held,
                              store_questions)

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024


@dataclass
class IntakeResponse:
    status: int
    body: dict


class IntakeError(ReplyloopError):
    """Malformed intake request"""


def authorized(expected: str | None, header: str | None) -> bool:
    """``Authorization: Bearer <REPLYLOOP_INTAKE_TOKEN>``, compared in constant time."""
    if not expected or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected.encode())


def _number(digits: str) -> int:
    """``json.loads``'s integers: one longer than the field rules allow becomes a stand-in just
    over the limit, so the error names the field (``int()`` refuses thousands of digits with a
    ValueError that names nothing, and is slow before that)."""
    if len(digits.lstrip("-")) > fields.MAX_INT_DIGITS:
        return 10 ** fields.MAX_INT_DIGITS
    return int(digits)


def parse(body: bytes) -> QuestionIn:
    """Validate an intake body: JSON here, every field by the shared rules (``replyloop.fields``:
    lengths, characters, types; unknown fields refused). Raises IntakeError, or FieldError naming
    the field."""
    try:
        data = json.loads(body.decode("utf-8"), parse_int=_number)
    except UnicodeDecodeError:
        raise IntakeError("body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise IntakeError(f"body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise IntakeError("body is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # anything else json refuses: still the client's error
        raise IntakeError(f"body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise IntakeError("body must be a JSON object {conversation_id, question, draft?, category?}")
    return dataio.question_from_mapping(data, strict=True)


def handle_http(bot: "Bot", headers: dict[str, str], body: bytes) -> IntakeResponse:
    """The whole ``POST /intake``: token, validation, draft + store, card in the background.
    Any validation error (ours or the store's field limits: ``DataFormatError``) is a 400
    naming the field, with nothing stored."""
    if not authorized(bot.secrets.intake_token, headers.get("authorization")):
        return IntakeResponse(401, {"ok": False, "error": "missing or wrong bearer token"})
    if len(body) > MAX_BODY:
        return IntakeResponse(413, {"ok": False, "error": f"body larger than {MAX_BODY} bytes"})
    try:
        question = parse(body)
    except (IntakeError, errors.DataFormatError) as exc:
        return IntakeResponse(400, {"ok": False, "error": str(exc)})
    if question.draft is None and bot.drafter is None:
        return IntakeResponse(400, {"ok": False, "error": "'draft' is required: no drafting model is configured"})
    try:
        [result] = ingest(bot.config, bot.store, [question], source="http", drafter=bot.drafter,
                          checker=bot.checker)
    except errors.DataFormatError as exc:  # a field limit of the shared validator
        return IntakeResponse(400, {"ok": False, "error": str(exc)})
    except ReplyloopError as exc:  # anything else is answered 500 by the server's request guard
        log.warning("intake failed: %s", exc)
        return IntakeResponse(500, {"ok": False, "error": str(exc)})
    if result.draft_id is not None:
        bot.background.submit(_post_card_logged, bot, result.draft_id)
    draft = bot.store.get_draft(result.draft_id) if result.draft_id else None
    return IntakeResponse(201, {"ok": True, "question_id": result.question_id, "draft_id": result.draft_id,
                                "verdict": draft["verdict"] if draft else None})


def _post_card_logged(bot: "Bot", draft_id: int) -> None:
    try:
        review.post_card(bot, draft_id)
    except Exception:
        log.exception("posting the card of draft %s failed (serve posts it again later)", draft_id)


def _wanted(bot: "Bot") -> str:
    return bot.config.file.slack.intake_channel.strip().lstrip("#")


def known_intake_channel(bot: "Bot", channel: str | None) -> bool | None:
    """Whether ``channel`` is the intake channel, without asking Slack: None while its name is
    not known yet (``lookup_channel`` asks)."""
    wanted = _wanted(bot)
    if not wanted or not channel:
        return False
    if channel == wanted:
        return True
    name = bot.channel_names.get(channel)
    return None if name is None else name == wanted


def lookup_channel(bot: "Bot", channel: str) -> bool | None:
    """Ask Slack for the channel's name (``conversations.info``, cached); None when Slack cannot
    be asked (the next message or the sweep asks again)."""
    known = known_intake_channel(bot, channel)
    if known is not None:
        return known
    try:
        info = bot.client.conversations_info(channel=channel)
    except Exception as exc:
        log.warning("conversations.info for %s failed (%s): cannot tell yet whether it is the intake "
                    "channel #%s; its messages are kept and taken in once it can", channel, slack_error(exc),
                    _wanted(bot))
        return None
    bot.channel_names[channel] = (info.get("channel") or {}).get("name") or ""
    return known_intake_channel(bot, channel)


def is_intake_channel(bot: "Bot", channel: str | None) -> bool:
    return bool(channel) and bool(lookup_channel(bot, channel))


_TAG = re.compile(r"<([^<>]*)>")
_SPECIAL = {"here": "@here", "channel": "@channel", "everyone": "@everyone"}


def _unescape(text: str) -> str:
    """Slack escapes only these three in message text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _decode_tag(inner: str) -> str:
    target, _, label = inner.partition("|")
    target, label = _unescape(target), _unescape(label)
    if target.startswith("@"):          # <@U123> or <@U123|name>: a user mention
        return f"@{label or target[1:]}"
    if target.startswith("#"):          # <#C123|general>: a channel
        return f"#{label or target[1:]}"
    if target.startswith("!"):          # <!here>, <!subteam^S1|@team>, <!date^…|fallback>
        if label:
            return label
        word, _, rest = target[1:].partition("^")
        if word == "subteam" and rest:
            return f"@{rest}"
        return _SPECIAL.get(word, f"@{word}")
    if not label:                       # <https://example.com>
        return target
    bare = re.sub(r"^(?:https?://|mailto:)", "", target).rstrip("/")
    if label in (target, bare):         # Slack's own auto-link of a typed URL or address
        return label
    return f"{label} ({target})"        # a link with a different text keeps both


def slack_to_text(text: str) -> str:
    """Slack's message markup as the plain text the customer wrote: ``&amp; &lt; &gt;`` back to
    ``& < >``; ``<@U123|name>`` -> ``@name`` (``@U123`` without a name); ``<#C123|general>`` ->
    ``#general``; ``<!here>`` -> ``@here``; ``<https://x.example|label>`` -> ``label
    (https://x.example)`` (only the address when Slack auto-linked it as typed)."""
    out, pos = [], 0
    for m in _TAG.finditer(text):
        out.append(_unescape(text[pos:m.start()]))
        out.append(_decode_tag(m.group(1)))
        pos = m.end()
    out.append(_unescape(text[pos:]))
    return "".join(out)


TAKEN_SUBTYPES = (None, "file_share", "thread_broadcast")  # see the module docstring for the rest


def _attachment_note(event: dict) -> str:
    files = event.get("files")
    names = [str(f.get("name") or f.get("title") or f.get("filetype") or "file")
             for f in (files if isinstance(files, list) else []) if isinstance(f, dict)]
    return f"[attachment: {', '.join(names)}]" if names else ""


def message_text(event: dict) -> str | None:
    """The customer's text of a message event (plain text, with a note of its attachments), or
    None for a message that is not a customer question (see the module docstring)."""
    if event.get("subtype") not in TAKEN_SUBTYPES or event.get("bot_id"):
        return None
    raw = event.get("text")
    text = slack_to_text(raw if isinstance(raw, str) else "").strip()
    note = _attachment_note(event)
    return "\n".join(part for part in (text, note) if part) or None


@dataclass(frozen=True)
class Stored:
    """What ``store_message`` did: a new question to draft, or a held message to resolve."""

    question_id: int | None = None
    channel: str | None = None  # held: its channel's name is to be looked up


def store_message(bot: "Bot", event: dict) -> Stored | None:
    """Before the ack: store an intake-channel message as a question with its dedup key (one
    transaction), or hold it while its channel is not known; None when there is nothing to do
    (not a question, not the intake channel, a retry already stored)."""
    text = message_text(event)
    channel, ts, thread = event.get("channel"), event.get("ts"), event.get("thread_ts")
    if text is None or not isinstance(channel, str) or not isinstance(ts, str) or not channel or not ts:
        return None
    if not isinstance(thread, str):
        thread = None
    intake = known_intake_channel(bot, channel)
    if intake is False:
        return None
    key = f"slack:{channel}:{ts}"
    conversation = f"slack:{channel}:{thread or ts}"
    if intake is None:
        return Stored(channel=channel) if hold_question(bot.store, key, channel, conversation, text) else None
    [result] = store_questions(bot.store, [QuestionIn(conversation, text)], "slack", keys=[(key, channel)])
    return Stored(question_id=result.question_id) if result.created else None


def after_store(bot: "Bot", stored: Stored | None) -> None:
    """After the ack (a listener thread): queue the slow part, never run it here."""
    if stored is None:
        return
    if stored.question_id is not None:
        bot.drafting.submit(stored.question_id, draft_and_post, bot, stored.question_id)
    elif stored.channel is not None:
        bot.drafting.submit(f"resolve:{stored.channel}", resolve_held, bot, stored.channel)


def draft_and_post(bot: "Bot", question_id: int) -> None:
    """On the drafting queue: draft a stored question and post its card. A failure leaves the
    question stored for the sweep."""
    if bot.drafter is None:
        return  # stored without a draft, like an import: it waits for a drafting model
    try:
        draft_id = draft_question(bot.store, question_id, bot.drafter, bot.checker)
    except ReplyloopError as exc:  # DraftingError included
        log.warning("drafting question %s failed (it is stored; the sweep drafts it later): %s", question_id, exc)
        return
    if draft_id is not None:
        _post_card_logged(bot, draft_id)


def resolve_held(bot: "Bot", channel: str) -> int:
    """Look up a held channel; take its messages in (and draft them) or drop them. Returns how
    many questions it took in (0 also while Slack cannot be asked: they stay held)."""
    intake = lookup_channel(bot, channel)
    if intake is None:
        return 0
    ids = release_held(bot.store, channel, take=intake, source="slack")
    for qid in ids:
        if not bot.drafting.submit(qid, draft_and_post, bot, qid):
            log.info("drafting queue full: question %s is drafted by the sweep", qid)
    return len(ids)


def resolve_all_held(bot: "Bot") -> int:
    """The sweep: channels whose lookup failed earlier are asked again."""
    return sum(resolve_held(bot, channel) for channel in held_channels(bot.store))


def handle_message(bot: "Bot", event: dict) -> None:
    """A message in the intake channel becomes a question (the thread is the conversation):
    stored, then drafted on the drafting queue. (The bolt app runs the two halves around the
    event's ack; this runs both, for callers outside bolt.)"""
    after_store(bot, store_message(bot, event))
