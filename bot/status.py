"""Read-only views of the store for ``/retrain`` and App Home (queue, approvals, models, runs)."""

from __future__ import annotations

import datetime as dt
import json

from replyloop import timeutil
from replyloop.config import Config
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
    }


NEXT_STEP = {"promote": "the next canary check promotes it", "rollback": "the next canary check rolls it back",
             "too-few": "waiting for reviews", "inconclusive": "keeps serving: too early to tell"}


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


def week_start(now: dt.datetime | None = None) -> dt.datetime:
    now = now or timeutil.now()
    monday = now - dt.timedelta(days=now.weekday())
    return monday.replace(hour=0, minute=0, second=0, microsecond=0)


def home(store: Store) -> dict:
    start = week_start().isoformat(timespec="microseconds")
    approvals = store.query(
        "SELECT reviewer, sum(decision = 'approve') AS approved, sum(decision = 'edit') AS edited,"
        " sum(decision = 'reject') AS rejected FROM reviews WHERE created_at >= ?"
        " GROUP BY reviewer ORDER BY approved + edited DESC, reviewer", (start,))
    return {
        "queue": store.pending_count(),
        "week_start": start,
        "approvals_this_week": approvals,
        "champion": model_with_status(store, "champion"),
        "canary": model_with_status(store, "canary"),
    }
