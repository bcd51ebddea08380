"""The canary judge: once the canary has served enough reviews (or days), promote it or roll
it back by its supervisors' approval-without-edit rate against the champion's over the same
window, and by its consistency gate. Run by the scheduler's canary job."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from replyloop import timeutil
from replyloop.config import Config
from replyloop.i18n import N_, _, workspace
from replyloop.phrases import Phrase, localized
from replyloop.registry import Registry
from replyloop.store import Store

Notify = Callable[[str], None]


def compare_rates(canary: dict, champion: dict | None, margin: float, confidence: float) -> tuple[str, Phrase]:
    """Is the canary's approval-without-edit rate worse than the champion's by more than ``margin``?

    Returns ("ok" | "worse" | "inconclusive", a description). With ``confidence`` > 0 the
    difference is judged by its confidence interval (Newcombe): ok when even its lower end is
    above ``-margin``, worse when even its upper end is below, inconclusive in between. With
    ``confidence`` 0, or counts too small to estimate, the measured rates are compared. The
    description is a ``Phrase``: English as a str (stored reasons, --json), ``localized()`` for people."""
    from replyloop.evaluation.stats import rate_difference, z_for

    fmt = lambda r: Phrase(N_("n/a")) if r is None else f"{r:.0%}"  # noqa: E731
    c_rate = canary["approval_without_edit_rate"]
    ch_rate = champion["approval_without_edit_rate"] if champion else None
    text = Phrase(N_("approval without edit {rate} vs champion {champion_rate} over {reviews} canary review(s)"
                     " ({approved}/{reviews} vs {champion_approved}/{champion_reviews})"),
                  rate=fmt(c_rate), champion_rate=fmt(ch_rate), reviews=canary["reviews"], approved=canary["approved"],
                  champion_approved=champion["approved"] if champion else 0,
                  champion_reviews=champion["reviews"] if champion else 0)
    if c_rate is None:
        return "worse", text
    if ch_rate is None:
        return "ok", text
    if confidence > 0:
        d, low, high = rate_difference(canary["approved"], canary["reviews"], champion["approved"],
                                       champion["reviews"], z_for(confidence))
        text += Phrase(N_("; difference {difference} points, {confidence} CI [{low}, {high}]"),
                       difference=f"{d * 100:+.0f}", confidence=f"{confidence:.0%}", low=f"{low * 100:+.0f}",
                       high=f"{high * 100:+.0f}")
        if low >= -margin:
            return "ok", text
        if high < -margin:
            return "worse", text
        return "inconclusive", text
    return ("ok" if c_rate >= ch_rate - margin else "worse"), text


@dataclass
class CanaryAssessment:
    """Where the canary stands: what the judge would do now, and why (read-only)."""

    canary: dict
    champion: dict | None
    reviews: int
    min_reviews: int
    age_days: float
    max_days: float
    outcome: str            # ok | worse | inconclusive | too-few (reviews, before max_days)
    consistency_ok: bool
    summary: str            # a Phrase: English as a str; ``localized(summary)`` where people read it

    @property
    def decision(self) -> str:
        """promote | rollback | wait"""
        if not self.consistency_ok and self.outcome != "too-few":
            return "rollback"
        return {"ok": "promote", "worse": "rollback"}.get(self.outcome, "wait")


def assess_canary(config: Config, store: Store, now: dt.datetime | None = None) -> CanaryAssessment | None:
    """The canary's trial so far (None without a canary); ``judge_canary`` acts on it and
    ``/retrain status`` shows it.

    The canary's approval-without-edit rate is compared with the champion's over the same
    window (since the canary started: the same traffic split at the same time) by
    ``compare_rates``. While the comparison is inconclusive the canary keeps serving until
    ``canary_max_days``, then the measured rates decide."""
    registry = Registry(store, keep_adapters=config.file.training.keep_adapters)
    canary, champion = registry.canary(), registry.champion()
    if canary is None:
        return None
    sched = config.file.scheduler
    since = canary.get("canary_started_at") or canary["created_at"]
    rates = registry.review_rates(canary["id"], since=since)
    age_days = ((now or timeutil.now()) - timeutil.parse(since)).total_seconds() / 86400
    expired = age_days >= sched.canary_max_days
    champ_rates = None
    if champion:
        champ_rates = registry.review_rates(champion["id"], since=since)
        if champ_rates["reviews"] == 0:  # e.g. a 100% canary: the champion's earlier record
            champ_rates = registry.review_rates(champion["id"])
    outcome, summary = compare_rates(rates, champ_rates, sched.canary_rate_margin, sched.canary_confidence)
    evaluation = registry.latest_evaluation(canary["id"])  # the one promote() checks
    consistency_ok = bool(evaluation and evaluation["gate_passed"])
    if rates["reviews"] < sched.canary_min_reviews and not expired:
        outcome = "too-few"
    elif outcome == "inconclusive" and expired:
        outcome, _measured = compare_rates(rates, champ_rates, sched.canary_rate_margin, 0.0)
        summary += Phrase(N_("; still inconclusive after {days} days, so the measured rates decided"),
                          days=f"{age_days:.1f}")
    summary += (Phrase(N_("; consistency gate not evaluated")) if evaluation is None else
                Phrase(N_("; consistency gate passed")) if consistency_ok else Phrase(N_("; consistency gate failed")))
    return CanaryAssessment(canary, champion, rates["reviews"], sched.canary_min_reviews, age_days,
                            sched.canary_max_days, outcome, consistency_ok, summary)


def judge_canary(config: Config, store: Store, notify: Notify | None = None,
                 now: dt.datetime | None = None) -> dict | None:
    """Promote or roll back the canary once it has served enough reviews (or days): promote when
    it is not worse than the champion by more than ``scheduler.canary_rate_margin`` and its
    latest evaluation passed the gate; roll back when it is worse or the gate failed; wait while
    the evidence is inconclusive (see ``assess_canary``)."""
    say = notify or (lambda message: None)
    a = assess_canary(config, store, now)
    if a is None:
        return None
    decision, canary, summary = a.decision, a.canary, a.summary
    if decision == "wait":
        return {"decision": "wait", "reviews": a.reviews, "age_days": a.age_days, "outcome": a.outcome,
                "summary": summary}
    registry = Registry(store, keep_adapters=config.file.training.keep_adapters)
    if decision == "promote":
        registry.promote(canary["id"], actor="scheduler", reason="canary succeeded: " + str(summary))
        with workspace():  # a channel message: the workspace's language
            say(":tada: " + _("Canary *{canary}* promoted to champion: {summary}.").format(
                canary=canary["name"], summary=localized(summary)))
    else:
        registry.rollback(actor="scheduler", reason="canary rolled back: " + str(summary))
        with workspace():
            say(":rewind: " + _("Canary *{canary}* rolled back; *{champion}* stays champion: {summary}.").format(
                canary=canary["name"], champion=a.champion["name"] if a.champion else "-",
                summary=localized(summary)))
    from replyloop.drafting import unload_retired  # deliver21: vLLM drops what no longer serves
    unload_retired(config, store)
    return {"decision": decision, "summary": summary, "model_id": canary["id"]}
