"""Drift alarms: the daily checks that something changed while nobody was looking.

    report = check_drift(config, store)        # DriftReport(checks=[...]); report.alarms: the ones that fired
    for alarm in report.alarms: notify(alarm.text)

Three checks, each with its threshold under ``drift`` in ``replyloop.yaml``:

- **approval rate**: the champion's approval-without-edit rate over its last ``recent_reviews``
  reviews against its own earlier reviews (the baseline, at least ``min_baseline_reviews``).
  The comparison is the canary judge's (``replyloop.canary.compare_rates``: Newcombe's interval of
  the difference at ``confidence``): the alarm fires when the recent rate is worse by more than
  ``rate_margin`` even at the interval's upper end.
- **blocked drafts**: the share of the last ``blocked_window_drafts`` drafts that a blocking rule
  stopped, against ``max_blocked_share``.
- **review queue**: the age of the oldest undecided draft against ``max_pending_hours`` (an idle
  team, or a bot that no longer posts cards).

Each alarm says what was measured, against what, and what to do.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from replyloop import timeutil
from replyloop.config import Config
from replyloop.i18n import N_, _, language
from replyloop.phrases import Phrase, localized
from replyloop.store import UNDECIDED, Store

MIN_DRAFTS = 20  # fewer recent drafts: the blocked share is not judged (one blocked draft of 3 is no trend)


@dataclass
class Check:
    name: str          # approval-rate | blocked-share | review-queue
    status: str        # ok | alarm | skipped
    measured: str      # Phrases: English as str (--json, logs); ``text`` shows them in the reader's language
    against: str
    action: str = ""

    @property
    def text(self) -> str:
        """The alarm as posted, in the current language (post it inside ``i18n.workspace()``)."""
        icon = {"alarm": ":rotating_light:", "ok": ":white_check_mark:", "skipped": ":grey_question:"}[self.status]
        title = TITLES[self.name]
        out = icon + " " + _("*Drift alarm — {title}*: {measured}; {against}.").format(
            title=_(title), measured=localized(self.measured), against=localized(self.against))
        return out + ("\n" + _("*What to do:* {action}").format(action=localized(self.action)) if self.action else "")

    def to_dict(self) -> dict:
        """English whatever the language: --json is a machine format."""
        with language("en"):
            return {**asdict(self), "text": self.text}


TITLES = {"approval-rate": N_("champion approval rate"), "blocked-share": N_("blocked drafts"),
          "review-queue": N_("review queue")}


@dataclass
class DriftReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def alarms(self) -> list[Check]:
        return [c for c in self.checks if c.status == "alarm"]


def _pct(x: float) -> str:
    return f"{x:.0%}"


def check_approval_rate(config: Config, store: Store) -> Check:
    from replyloop.evaluation.stats import rate_difference, z_for
    from replyloop.canary import compare_rates
    from replyloop.registry import Registry

    s = config.file.drift
    champion = Registry(store, keep_adapters=config.file.training.keep_adapters).champion()
    if champion is None:
        return Check("approval-rate", "skipped", Phrase(N_("no champion model")), Phrase(N_("nothing to compare")))
    decisions = [r["decision"] == "approve" for r in store.query(
        "SELECT r.decision FROM reviews r JOIN drafts d ON d.id = r.draft_id WHERE d.model_id = ? ORDER BY r.id",
        (champion["id"],))]
    recent, baseline = decisions[-s.recent_reviews:], decisions[:-s.recent_reviews]
    name = champion["name"]
    if len(recent) < s.recent_reviews or len(baseline) < s.min_baseline_reviews:
        return Check("approval-rate", "skipped",
                     Phrase(N_("champion {name} has {reviews} reviews"), name=name, reviews=len(decisions)),
                     Phrase(N_("needs {recent} recent plus {baseline} earlier ones"
                               " (drift.recent_reviews, drift.min_baseline_reviews)"),
                            recent=s.recent_reviews, baseline=s.min_baseline_reviews))
    now_rates = {"reviews": len(recent), "approved": sum(recent), "approval_without_edit_rate": sum(recent) / len(recent)}
    base_rates = {"reviews": len(baseline), "approved": sum(baseline),
                  "approval_without_edit_rate": sum(baseline) / len(baseline)}
    outcome, _measured = compare_rates(now_rates, base_rates, s.rate_margin, s.confidence)
    measured = Phrase(N_("champion *{name}* approved without edit {rate} of its last {reviews} reviews"
                         " ({approved}/{reviews})"),
                      name=name, rate=_pct(now_rates["approval_without_edit_rate"]), reviews=len(recent),
                      approved=sum(recent))
    against = Phrase(N_("against {rate} over its {reviews} earlier reviews ({approved}/{reviews})"),
                     rate=_pct(base_rates["approval_without_edit_rate"]), reviews=len(baseline),
                     approved=sum(baseline))
    margin = f"{s.rate_margin * 100:.0f}"
    if s.confidence > 0:
        d, low, high = rate_difference(sum(recent), len(recent), sum(baseline), len(baseline), z_for(s.confidence))
        against += Phrase(N_("; difference {difference} points, {confidence} CI [{low}, {high}], alarm when worse by"
                             " more than {margin} points (drift.rate_margin)"),
                          difference=f"{d * 100:+.0f}", confidence=f"{s.confidence:.0%}", low=f"{low * 100:+.0f}",
                          high=f"{high * 100:+.0f}", margin=margin)
    else:
        against += Phrase(N_(", alarm when worse by more than {margin} points (drift.rate_margin)"), margin=margin)
    if outcome != "worse":
        return Check("approval-rate", "ok", measured, against)
    return Check("approval-rate", "alarm", measured, against,
                 Phrase(N_("read what supervisors changed lately (`replyloop report weekly`, `replyloop rules propose`):"
                           " customers may be asking about something new, or a policy or product changed. Retrain on"
                           " the new approvals (`/retrain now`), or roll back to the previous model"
                           " (`replyloop models rollback`).")))


def check_blocked_share(config: Config, store: Store) -> Check:
    s = config.file.drift
    rows = store.query("SELECT verdict, violations FROM drafts ORDER BY id DESC LIMIT ?", (s.blocked_window_drafts,))
    if len(rows) < min(MIN_DRAFTS, s.blocked_window_drafts):
        return Check("blocked-share", "skipped", Phrase(N_("{drafts} drafts so far"), drafts=len(rows)),
                     Phrase(N_("needs at least {drafts}"), drafts=min(MIN_DRAFTS, s.blocked_window_drafts)))
    blocked = [r for r in rows if r["verdict"] == "block"]
    share = len(blocked) / len(rows)
    measured = Phrase(N_("{share} of the last {drafts} drafts were blocked by a policy rule ({blocked})"),
                      share=_pct(share), drafts=len(rows), blocked=len(blocked))
    against = Phrase(N_("limit {limit} (drift.max_blocked_share)"), limit=_pct(s.max_blocked_share))
    if share <= s.max_blocked_share:
        return Check("blocked-share", "ok", measured, against)
    rules: Counter = Counter()
    for r in blocked:
        try:
            rules.update({v.get("rule") for v in json.loads(r["violations"] or "[]")
                          if isinstance(v, dict) and v.get("severity") == "block"} - {None})
        except ValueError:
            continue
    if rules:
        measured += Phrase(N_("; most often {rules}"),
                           rules=", ".join(f"{rule} ({n})" for rule, n in rules.most_common(3)))
    return Check("blocked-share", "alarm", measured, against,
                 Phrase(N_("see which rule blocks (`replyloop check` on a few drafts): a new rule that is too broad"
                           " (narrow it in policies.dir), or a model that learned a banned promise (roll it back with"
                           " `replyloop models rollback`, and edit such drafts rather than approving them).")))


def check_review_queue(config: Config, store: Store, now: dt.datetime | None = None) -> Check:
    s = config.file.drift
    row = store.one(f"SELECT d.id, d.created_at FROM drafts d WHERE {UNDECIDED} ORDER BY d.created_at, d.id LIMIT 1")
    if row is None:
        return Check("review-queue", "ok", Phrase(N_("no draft is waiting for review")),
                     Phrase(N_("limit {hours} h"), hours=f"{s.max_pending_hours:g}"))
    pending = store.pending_count()
    hours = ((now or timeutil.now()) - timeutil.parse(row["created_at"])).total_seconds() / 3600
    measured = Phrase(N_("the oldest pending review (draft #{draft_id}) is {hours} hours old; {pending} drafts are"
                         " waiting"), draft_id=row["id"], hours=f"{hours:.1f}", pending=pending)
    against = Phrase(N_("limit {hours} hours (drift.max_pending_hours)"), hours=f"{s.max_pending_hours:g}")
    if hours <= s.max_pending_hours:
        return Check("review-queue", "ok", measured, against)
    return Check("review-queue", "alarm", measured, against,
                 Phrase(N_("check that the bot is running and posting cards (`GET /health`, the review channel), and"
                           " that supervisors are reviewing: customers are waiting for these replies.")))


def check_drift(config: Config, store: Store, now: dt.datetime | None = None) -> DriftReport:
    return DriftReport([check_approval_rate(config, store), check_blocked_share(config, store),
                        check_review_queue(config, store, now)])


def run_alarms(config: Config, store: Store, notify, now: dt.datetime | None = None) -> DriftReport:
    """Check and post every alarm that fired (one message each, in the workspace's language); the daily job."""
    from replyloop.i18n import workspace

    report = check_drift(config, store, now)
    for alarm in report.alarms:
        with workspace():
            text = alarm.text
        notify(text)
    return report
