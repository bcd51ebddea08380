"""``/retrain [status | history | now]``: what the pipeline is doing, and starting it from Slack."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from replyloop.bot import cards, status
from replyloop.bot.slackclient import slack_error
from replyloop.errors import LockedError, ReplyloopError

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

USAGE = "Usage: `/retrain` or `/retrain status`, `/retrain history`, `/retrain now` (supervisors)."
NOT_CONFIGURED = "The retrain pipeline is not configured in this bot (start `replyloop serve` with the scheduler)."


def handle(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    """Runs after ``ack()``; answers through ``respond`` (the command's response_url)."""
    words = (command.get("text") or "").strip().lower().split()
    sub = words[0] if words else "status"
    user = command.get("user_id")
    if sub == "status":
        respond(text=cards.retrain_status_text(status.retrain_status(bot.config, bot.store)))
    elif sub == "history":
        respond(text=cards.retrain_history_text(status.recent_runs(bot.store)))
    elif sub == "now":
        start_now(bot, user, command.get("channel_id"), respond)
    else:
        respond(text=f"Unknown option `{sub}`. {USAGE}")


def start_now(bot: "Bot", user: str, channel: str | None, respond: Callable[..., object]) -> None:
    if not bot.supervisors.is_supervisor(user):
        respond(text="Only supervisors can start a retrain.")
        return
    if bot.start_pipeline is None:
        respond(text=NOT_CONFIGURED)
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

    def run() -> None:
        try:
            bot.start_pipeline(trigger="slack", requested_by=user, notify=notify)
        except LockedError as exc:
            answer(text=f"Not started: {exc}")
        except ReplyloopError as exc:
            notify(f"Retrain requested by <@{user}> failed: {exc}")
        except Exception:  # the pipeline's own bug: tell the channel, keep the bot alive
            log.exception("the retrain pipeline failed")
            notify(f"Retrain requested by <@{user}> failed with an internal error; see the bot's log.")
        finally:  # a one-off thread: close its SQLite connection
            bot.store.release_thread()

    answer(response_type="in_channel",
           text=f"<@{user}> started a retrain. I'll report here when training, evaluation and the gate are done.")
    threading.Thread(target=run, name="retrain-slack", daemon=True).start()
