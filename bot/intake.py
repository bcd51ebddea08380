"""Intake of customer questions: ``POST /intake`` (bearer token) and the Slack intake channel.

Both store through ``replyloop.intake.ingest`` (draft if missing, policy check, one
transaction) and then post the review card in the background.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot import review
from bot.slackclient import slack_error
from replyloop import dataio, errors, fields
from replyloop.dataio import QuestionIn
from replyloop.errors import ReplyloopError
from replyloop.intake import ingest

if TYPE_CHECKING:
    from bot.app import Bot

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


def is_intake_channel(bot: "Bot", channel: str | None) -> bool:
    wanted = bot.config.file.slack.intake_channel.strip().lstrip("#")
    if not wanted or not channel:
        return False
    if channel == wanted:
        return True
    name = bot.channel_names.get(channel)
    if name is None:
        try:
            info = bot.client.conversations_info(channel=channel)
        except Exception as exc:  # not cached: the next message in this channel asks again
            log.warning("conversations.info for %s failed (%s): cannot tell whether it is the intake "
                        "channel #%s; its message is not taken in", channel, slack_error(exc), wanted)
            return False
        name = (info.get("channel") or {}).get("name") or ""
        bot.channel_names[channel] = name
    return name == wanted


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


def handle_message(bot: "Bot", event: dict) -> None:
    """A message in the intake channel becomes a question (the thread is the conversation)."""
    if event.get("subtype") or event.get("bot_id"):
        return
    channel = event.get("channel")
    text = slack_to_text(event.get("text") or "").strip()
    if not text or not is_intake_channel(bot, channel):
        return
    conversation = f"slack:{channel}:{event.get('thread_ts') or event.get('ts')}"
    try:
        [result] = ingest(bot.config, bot.store, [QuestionIn(conversation, text)], source="slack",
                          drafter=bot.drafter, checker=bot.checker, skip_existing=True)
    except ReplyloopError as exc:
        log.warning("intake from channel %s failed: %s", channel, exc)
        return
    if result.created and result.draft_id is not None:
        _post_card_logged(bot, result.draft_id)
