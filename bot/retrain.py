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

from replyloop import i18n, timeutil
from replyloop.bot import status
from replyloop.bot.slackclient import slack_error
from replyloop.errors import LockedError, ReplyloopError
from replyloop.i18n import N_, _, fmt_datetime, fmt_number

if TYPE_CHECKING:
    from replyloop.bot.app import Bot

log = logging.getLogger(__name__)

USAGE = N_("Usage: `/retrain` or `/retrain status`, `/retrain history`, `/retrain now` (supervisors).")
NOT_CONFIGURED = N_("The retrain pipeline is not configured in this bot (start `replyloop serve` with the scheduler).")
NOT_SUPERVISOR = N_("Only supervisors can start a retrain.")

# training_runs.status and .trigger as people read them (the stored values stay English)
RUN_STATUS = {"queued": N_("queued"), "running": N_("running"), "succeeded": N_("succeeded"), "failed": N_("failed")}
TRIGGERS = {"scheduler": N_("scheduler"), "slack": N_("slack"), "cli": N_("cli")}


def _word(words: dict[str, str], value: str | None) -> str:
    """A stored code (``succeeded``) in the reader's language; an unknown code as it is."""
    known = words.get(value or "")
    return _(known) if known else str(value)


def when(iso: str | None, tz: str | None) -> str:
    """A stored UTC time (ISO text) in the workspace's timezone, in the reader's locale."""
    if not iso:
        return ""
    try:
        return fmt_datetime(timeutil.parse(iso), tz, format="short")
    except (TypeError, ValueError):
        return str(iso)[:16]


def _score(value) -> str:
    return _("n/a") if value is None else fmt_number(value, 3)


def model_line(model: dict | None, role: str, tz: str | None) -> str:
    """``*Champion:* `name` (id 1) — consistency 0.812, ...``; ``role`` is ``champion`` or ``canary``."""
    from replyloop.bot.cards import escape

    label = _("Champion") if role == "champion" else _("Canary")
    if not model:
        return _("*{role}:* none").format(role=label)
    line = _("*{role}:* `{name}` (id {id})").format(role=label, name=escape(model["name"]), id=model["id"])
    if model.get("canary_percent") and role == "canary":
        line += _(", {percent}% of conversations").format(percent=fmt_number(model["canary_percent"]))
    ev = model.get("evaluation")
    if not ev:
        return line + _(" — not evaluated yet")
    gate = {1: _("passed"), 0: _("failed")}.get(ev.get("gate_passed"), _("n/a"))
    chrf = "" if ev.get("mean_chrf") is None else _(", chrF {chrf}").format(chrf=_score(ev["mean_chrf"]))
    line += _(" — consistency {consistency}{chrf}, share above threshold {share}, gate {gate} ({when})").format(
        consistency=_score(ev.get("mean_similarity")), chrf=chrf, share=_score(ev.get("share_above")), gate=gate,
        when=when(ev.get("created_at"), tz))
    if ev.get("embedding_unreadable"):
        line += " " + _(":warning: the embedding model cannot read the references, chrF decided the gate")
    return line


def status_text(state: dict, tz: str | None = None) -> str:
    """The ``/retrain status`` answer (``bot.status.retrain_status``)."""
    from replyloop.bot.cards import escape

    lines = [_("*Approved samples since the last training:* {count} (threshold {threshold})").format(
        count=fmt_number(state["samples_since"]), threshold=fmt_number(state["threshold"]))]
    for run in state["running"]:
        total, step = run.get("total_steps"), fmt_number(run.get("step") or 0)
        progress = (_("step {step}/{total}").format(step=step, total=fmt_number(total)) if total
                    else _("step {step}").format(step=step))
        loss = "" if run.get("loss") is None else _(", loss {loss}").format(loss=fmt_number(run["loss"], 4))
        lines.append(_("*Running:* run #{id} ({trigger}), {progress}{loss}, since {since}").format(
            id=run["id"], trigger=_word(TRIGGERS, run["trigger"]), progress=progress, loss=loss,
            since=when(run["started_at"], tz)))
    if not state["running"]:
        lines.append(_("*Running:* nothing"))
    lines.append(model_line(state["champion"], "champion", tz))
    if state.get("canary"):
        lines.append(model_line(state["canary"], "canary", tz))
    trial = state.get("canary_trial")
    if trial:
        step = trial["next"]  # bot.status.NEXT_STEP: N_() constants, translated where shown
        lines.append(_("*Canary trial:* {reviews}/{min_reviews} reviews, day {day} of {max_days}: {summary}. "
                       "Next: {next}.").format(
            reviews=fmt_number(trial["reviews"]), min_reviews=fmt_number(trial["min_reviews"]),
            day=fmt_number(trial["age_days"], 1), max_days=f"{trial['max_days']:g}",
            summary=escape(trial["summary"]), next=_(step)))
    return "\n".join(lines)


def history_text(runs: list[dict], tz: str | None = None) -> str:
    """The ``/retrain history`` answer (``bot.status.recent_runs``)."""
    from replyloop.bot.cards import escape

    if not runs:
        return _("No training runs yet.")
    lines = [_("*Recent training runs*")]
    for r in runs:
        trigger = _word(TRIGGERS, r["trigger"])
        if r.get("requested_by"):
            trigger = _("{trigger}, <@{user}>").format(trigger=trigger, user=r["requested_by"])
        line = _("• #{id} {status} ({trigger}) started {started}").format(
            id=r["id"], status=_word(RUN_STATUS, r["status"]), trigger=trigger, started=when(r["started_at"], tz))
        if r.get("finished_at"):
            line += _(", finished {finished}").format(finished=when(r["finished_at"], tz))
        if r.get("loss") is not None:
            line += _(", loss {loss}").format(loss=fmt_number(r["loss"], 4))
        if r.get("model_name"):
            line += f" → `{escape(r['model_name'])}`"
        if r.get("error"):
            line += f" — {escape(r['error'][:200])}"
        lines.append(line)
    return "\n".join(lines)


def handle(bot: "Bot", command: dict, respond: Callable[..., object]) -> None:
    """Runs after ``ack()``; answers through ``respond`` (the command's response_url), in the
    language of the user who typed the command."""
    words = (command.get("text") or "").strip().lower().split()
    sub = words[0] if words else "status"
    user = command.get("user_id")
    tz = bot.config.file.scheduler.timezone
    if sub == "help":
        respond(text=_(USAGE))
    elif sub == "status":
        respond(text=status_text(status.retrain_status(bot.config, bot.store), tz))
    elif sub == "history":
        respond(text=history_text(status.recent_runs(bot.store), tz))
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
