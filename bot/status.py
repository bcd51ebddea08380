"""Read-only views of the store for ``/retrain`` and App Home (queue, approvals, models, runs).

The data is language-free (counts, ids, ISO times, message ids marked with ``N_``); ``bot.cards``
turns it into the words of the language being displayed, times in the returned ``timezone``."""

from __future__ import annotations

import datetime as dt
import json

from replyloop import timeutil
from replyloop.config import Config
from replyloop.i18n import N_
from replyloop.registry import Registry
from replyloop.store import Store


def model_with_status(store: Store, status: str) -> dict | None:
    """The champion or canary with its latest evaluation, which also carries ``mean_chrf`` and
    ``embedding_unreadable`` (the unknown-token guard fired: chrF decided its gate)."""
    from replyloop.evaluation.gate import UNREADABLE

    model = Registry(store).with_status(status)
    ev = model and model.get("evaluation")
    if ev:
        row = store.one("SELECT mean_chrf, unknown_share, gate FROM evaluations WHERE id = ?", (ev["id"],))
        try:
            criteria = json.loads(row["gate"] or "[]")
        except ValueError:
            criteria = []
        ev.update(mean_chrf=row["mean_chrf"], unknown_share=row["unknown_share"],
                  embedding_unreadable=any(isinstance(c, dict) and c.get("name") == UNREADABLE
                                           and not c.get("passed") for c in criteria))
    return model


def retrain_status(config: Config, store: Store) -> dict:
    return {
        "samples_since": store.samples_since(store.baseline_snapshot()),
        "threshold": config.file.scheduler.min_new_samples,
        "running": store.query("SELECT id, trigger, requested_by, step, total_steps, loss, started_at"
                               " FROM training_runs WHERE status = 'running' ORDER BY id"),
        "champion": model_with_status(store, "champion"),
        "canary": model_with_status(store, "canary"),
        "canary_trial": canary_trial(config, store),
        "timezone": config.file.scheduler.timezone,  # i18n22: the times people read
    }


# what the canary job does next: message ids (English), translated where shown (bot.cards)
NEXT_STEP = {"promote": N_("the next canary check promotes it"), "rollback": N_("the next canary check rolls it back"),
             "too-few": N_("waiting for reviews"), "inconclusive": N_("keeps serving: too early to tell")}


def canary_trial(config: Config, store: Store) -> dict | None:
    """The canary's trial so far, as the canary job would judge it now."""
    from replyloop.canary import assess_canary

    a = assess_canary(config, store)
    if a is None:
        return None
    step = NEXT_STEP[a.decision if a.decision != "wait" else a.outcome]
    return {"reviews": a.reviews, "min_reviews": a.min_reviews, "age_days": a.age_days, "max_days": a.max_days,
            "summary": a.summary, "next": step}


def recent_runs(store: Store, limit: int = 10) -> list[dict]:
    return store.query(
        "SELECT r.id, r.status, r.trigger, r.requested_by, r.started_at, r.finished_at, r.loss, r.error,"
        " m.name AS model_name FROM training_runs r LEFT JOIN models m ON m.id = r.model_id"
        " ORDER BY r.id DESC LIMIT ?", (limit,))


def week_start(config: Config | None = None, now: dt.datetime | None = None) -> dt.datetime:
    """The start of the current week as the weekly report defines weeks (cli16): ISO weeks,
    Monday 00:00 in ``scheduler.timezone`` (UTC without a config)."""
    from replyloop.evaluation.report import IsoWeek, report_timezone

    now = now or timeutil.now()
    tz = report_timezone(config) if config is not None else dt.timezone.utc
    return IsoWeek.containing(now.astimezone(tz).date()).bounds(tz)[0]


def home(store: Store, config: Config | None = None, now: dt.datetime | None = None) -> dict:
    start = week_start(config, now)
    approvals = store.query(
        "SELECT reviewer, sum(decision = 'approve') AS approved, sum(decision = 'edit') AS edited,"
        " sum(decision = 'reject') AS rejected FROM reviews WHERE created_at >= ?"
        " GROUP BY reviewer ORDER BY approved + edited DESC, reviewer",
        (start.astimezone(dt.timezone.utc).isoformat(timespec="microseconds"),))  # stored times are UTC
    return {
        "queue": store.pending_count(),
        "week_start": start.isoformat(timespec="minutes"),  # local: 2026-11-30T00:00+08:00
        "approvals_this_week": approvals,
        "champion": model_with_status(store, "champion"),
        "canary": model_with_status(store, "canary"),
        "delivery": _delivery_line(store),  # deliver21
        "automation": _automation_line(store),  # deliver21
        "timezone": config.file.scheduler.timezone if config is not None else None,  # i18n22
    }


def _automation_line(store: Store) -> str | None:
    from replyloop.automation import home_line

    return home_line(store)


def _delivery_line(store: Store) -> str | None:
    from replyloop.bot.delivery import home_line

    return home_line(store)
