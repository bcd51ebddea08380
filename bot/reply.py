"""``/reply <question>``: the nearest approved answers, ephemeral (only the asker sees them).

The command is acknowledged at once; the search runs after the ack and answers through the
command's ``response_url``. The index (``replyloop.answers.AnswerIndex``) is built on the first
``/reply`` and picks up new approvals on each search; answers are checked against the bot's
current policies (reloaded when a rule proposal is accepted) at query time.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import TYPE_CHECKING, Callable

from replyloop.answers import AnswerIndex, SearchResult
from replyloop.errors import ReplyloopError
from replyloop.i18n import N_, _, fmt_number

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

USAGE = N_("Usage: `/reply <the customer's question>`, e.g. `/reply 收不到验证码怎么办`.")
SUPERVISORS_ONLY = N_("Only supervisors can use /reply in this workspace (reply.supervisors_only).")
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


def explanation(found: SearchResult, min_score: float, k: int) -> str | None:
    """Why there are fewer answers than asked for, in the reader's language (the library's
    ``found.explanation`` is the English one that ``replyloop reply --json`` prints)."""
    from replyloop.answers import _compact

    if not found.explanation:
        return None
    if not _compact(found.question):
        return _("The question is empty: write what the customer asked, e.g. `/reply 收不到验证码怎么办`.")
    if found.indexed == 0 and found.best is None:
        return _("There are no approved answers yet: answers appear here once supervisors approve drafts "
                 "(or samples are imported with `replyloop data import`).")
    parts = []
    if not found.answers:
        parts.append(_("No approved answer is close enough to this question (best score {best}, reply.min_score "
                       "{min_score}); try other words, or ask a supervisor.").format(
            best=fmt_number(found.best or 0.0, 2), min_score=fmt_number(min_score, 2)))
    elif len(found.answers) < k:
        parts.append(_("Only {found} of {k} answers are close enough (score at least {min_score}).").format(
            found=fmt_number(len(found.answers)), k=fmt_number(k), min_score=fmt_number(min_score, 2)))
    if found.excluded:
        rules = sorted({r for e in found.excluded for r in e["rules"]})
        parts.append(_("{count} approved answer(s) were left out because they break the current policies "
                       "({rules}).").format(count=fmt_number(len(found.excluded)), rules=", ".join(rules)))
    return " ".join(parts)


def blocks(found: SearchResult, min_score: float = 0.1, k: int = 3, tz: str | None = None) -> tuple[str, list[dict]]:
    from replyloop.bot.cards import _clip, escape
    from replyloop.bot.cards import when

    # the fallback text is mrkdwn too: the question escaped, so `<!channel>` in it is no mention
    text = _clip(_("Approved answers for: {question}").format(question=escape(found.question)), 2900)
    out = [{"type": "section", "text": {"type": "mrkdwn", "text": _clip(
        _("*Approved answers for:* {question}").format(question=escape(found.question)), 2900)}}]
    for n, a in enumerate(found.answers, 1):
        who = f"<@{escape(a.approved_by)}>" if a.approved_by else _("an import")
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(
            _("*{n}. {category}* · approved by {who} at {when} · score {score}").format(
                n=n, category=escape(a.category or _("no category")), who=who, when=when(a.approved_at, tz, "short"),
                score=fmt_number(a.score, 2)) + f"\n>{escape(a.question)}", 2900)}})
        out.append({"type": "section", "block_id": f"copy_{a.sample_id}", "text": {"type": "mrkdwn", "text": _clip(
            _("*Copy:*") + f"\n```{escape(a.answer.replace('```', 'ˋˋˋ'))}```", 2900)}})
    note = explanation(found, min_score, k)
    if note:
        out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(escape(note), 2900)}]})
    return text, out[:50]


def handle(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    """Runs after ``ack()``, in the language of the user who typed the command."""
    from replyloop.bot.language import speaks

    with speaks(bot, command.get("user_id")):
        _answer(bot, command, respond)


def _answer(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    user = command.get("user_id")
    question = (command.get("text") or "").strip()
    if bot.config.file.reply.supervisors_only and not bot.supervisors.is_supervisor(user):
        respond(response_type="ephemeral", text=_(SUPERVISORS_ONLY))
        return
    if not question:
        respond(response_type="ephemeral", text=_(USAGE))
        return
    try:
        found = index(bot).search(question, check=bot.checker)
    except ReplyloopError as exc:  # e.g. reply.embedding_model cannot be loaded
        respond(response_type="ephemeral", text=_("/reply is not available: {error}").format(error=exc))
        return
    except Exception:
        log.exception("/reply failed")
        respond(response_type="ephemeral", text=_("/reply failed with an internal error; see the bot's log."))
        return
    searched = index(bot)
    text, body = blocks(found, searched.min_score, searched.results, bot.config.file.scheduler.timezone)
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
        bot.background.submit(contextvars.copy_context().run, run)  # the asker's language goes along
