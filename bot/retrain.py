"""``/retrain [status | history | now | help]``: what the pipeline is doing, and starting it from Slack.

The answers are in the language of the user who typed the command (their Slack locale, else
``ui.language``); what the command posts to the channel (the retrain was started, the pipeline's
progress and outcome) is in the workspace's language, since the whole channel reads it.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import TYPE_CHECKING, Callable

from replyloop import i18n
from replyloop.bot import cards, status
from replyloop.bot.slackclient import slack_error
from replyloop.errors import LockedError, ReplyloopError
from replyloop.i18n import N_, _

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

USAGE = N_("Usage: `/retrain` or `/retrain status`, `/retrain history`, `/retrain now` (supervisors).")
NOT_CONFIGURED = N_("The retrain pipeline is not configured in this bot (start `replyloop serve` with the scheduler).")
NOT_SUPERVISOR = N_("Only supervisors can start a retrain.")

def handle(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    """Runs after ``ack()``; answers through ``respond`` (the command's response_url), in the
    language of the user who typed the command."""
    from replyloop.bot.language import speaks

    with speaks(bot, command.get("user_id")):
        _answer(bot, command, respond)


def _answer(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    words = (command.get("text") or "").strip().lower().split()
    sub = words[0] if words else "status"
    user = command.get("user_id")
    if sub == "help":
        respond(text=_(USAGE))
    elif sub == "status":
        respond(text=cards.retrain_status_text(status.retrain_status(bot.config, bot.store)))
    elif sub == "history":
        respond(text=cards.retrain_history_text(status.recent_runs(bot.store), bot.config.file.scheduler.timezone))
    elif sub == "now":
        start_now(bot, user, command.get("channel_id"), respond)
    else:
        respond(text=_("Unknown option `{option}`. {usage}").format(option=sub, usage=_(USAGE)))


def start_now(bot: "Bot", user: str, channel: str | None, respond: Callable[..., object]) -> None:
    if not bot.supervisors.is_supervisor(user):
        respond(text=_(NOT_SUPERVISOR))
        return
    if bot.start_pipeline is None:
        respond(text=_(NOT_CONFIGURED))
        return
    target = channel or bot.config.file.slack.review_channel

    def answer(**kwargs) -> None:
        try:
            respond(**kwargs)
        except Exception as exc:
            log.warning("could not answer /retrain now through its response_url: %s", slack_error(exc))

    def notify(text: str) -> None:
        """Never raises: the run's outcome must not depend on Slack. When the channel cannot be
        posted to (the bot is not in it, an outage), the command's response_url gets the text."""
        try:
            bot.client.chat_postMessage(channel=target, text=text)
            return
        except Exception as exc:
            log.warning("could not post the retrain update to channel %s (%s); answering the command instead",
                        target, slack_error(exc))
        answer(response_type="in_channel", text=text)

    def run() -> None:  # in a copy of the request's context: the user's language for their own answer
        try:
            with i18n.workspace():  # the pipeline's messages are for the channel
                bot.start_pipeline(trigger="slack", requested_by=user, notify=notify)
        except LockedError as exc:
            answer(text=_("Not started: {reason}").format(reason=exc))
        except ReplyloopError as exc:
            with i18n.workspace():
                notify(_("Retrain requested by <@{user}> failed: {error}").format(user=user, error=exc))
        except Exception:  # the pipeline's own bug: tell the channel, keep the bot alive
            log.exception("the retrain pipeline failed")
            with i18n.workspace():
                notify(_("Retrain requested by <@{user}> failed with an internal error; see the bot's log.").format(
                    user=user))
        finally:  # a one-off thread: close its SQLite connection
            bot.store.release_thread()

    with i18n.workspace():  # in_channel: the whole channel reads it
        started = _("<@{user}> started a retrain. I'll report here when training, evaluation and the gate "
                    "are done.").format(user=user)
    answer(response_type="in_channel", text=started)
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name="retrain-slack", daemon=True).start()
