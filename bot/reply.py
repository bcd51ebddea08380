"""``/reply <question>``: the nearest approved answers, ephemeral (only the asker sees them).

The command is acknowledged at once; the search runs after the ack and answers through the
command's ``response_url``. The index (``replyloop.answers.AnswerIndex``) is built on the first
``/reply`` and picks up new approvals on each search; answers are checked against the bot's
current policies (reloaded when a rule proposal is accepted) at query time.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from replyloop.answers import AnswerIndex, SearchResult
from replyloop.errors import ReplyloopError

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

USAGE = "Usage: `/reply <the customer's question>`, e.g. `/reply 收不到验证码怎么办`."
SUPERVISORS_ONLY = "Only supervisors can use /reply in this workspace (reply.supervisors_only)."
_build_lock = threading.Lock()


def index(bot: "Bot") -> AnswerIndex:
    """The bot's answer index, built once (the first /reply waits for it)."""
    existing = getattr(bot, "_reply_index", None)
    if existing is not None:
        return existing
    with _build_lock:
        existing = getattr(bot, "_reply_index", None)
        if existing is None:
            existing = AnswerIndex.from_config(bot.config, bot.store)
            bot._reply_index = existing  # type: ignore[attr-defined]
    return existing


def blocks(found: SearchResult) -> tuple[str, list[dict]]:
    from replyloop.bot.cards import _clip, escape

    text = f"Approved answers for: {found.question}"
    out = [{"type": "section", "text": {"type": "mrkdwn", "text": _clip(
        f"*Approved answers for:* {escape(found.question)}", 2900)}}]
    for n, a in enumerate(found.answers, 1):
        who = f"<@{escape(a.approved_by)}>" if a.approved_by else "an import"
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(
            f"*{n}. {escape(a.category or 'no category')}* · approved by {who} at {escape(a.approved_at)}"
            f" · score {a.score:.2f}\n>{escape(a.question)}", 2900)}})
        out.append({"type": "section", "block_id": f"copy_{a.sample_id}", "text": {"type": "mrkdwn", "text": _clip(
            f"*Copy:*\n```{escape(a.answer.replace('```', 'ˋˋˋ'))}```", 2900)}})
    if found.explanation:
        out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(escape(found.explanation), 2900)}]})
    return text, out[:50]


def handle(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    """Runs after ``ack()``."""
    user = command.get("user_id")
    question = (command.get("text") or "").strip()
    if bot.config.file.reply.supervisors_only and not bot.supervisors.is_supervisor(user):
        respond(response_type="ephemeral", text=SUPERVISORS_ONLY)
        return
    if not question:
        respond(response_type="ephemeral", text=USAGE)
        return
    try:
        found = index(bot).search(question, check=bot.checker)
    except ReplyloopError as exc:  # e.g. reply.embedding_model cannot be loaded
        respond(response_type="ephemeral", text=f"/reply is not available: {exc}")
        return
    except Exception:
        log.exception("/reply failed")
        respond(response_type="ephemeral", text="/reply failed with an internal error; see the bot's log.")
        return
    text, body = blocks(found)
    respond(response_type="ephemeral", text=text, blocks=body)


def register(app, bot: "Bot") -> None:
    @app.command("/reply")
    def on_reply(ack, command, respond):
        ack()

        def run():  # on the background pool: the first /reply builds the index (embeddings)
            try:
                handle(bot, command, respond)
            except Exception:
                log.exception("/reply failed")
        bot.background.submit(run)
