"""The weekly consistency report: numbers for one ISO week, collected from the store.

``collect_weekly_report`` reads the store into a typed ``WeeklyReport``;
``write_weekly_report`` writes ``report.md``, ``numbers.csv`` (every number in the
report, long format) and the charts into a directory (temp dir, then rename);
``build_weekly_report`` does both and is what the scheduler's Monday job calls.

Weeks are ISO weeks (``2026-W48``) in the scheduler's time zone
(``scheduler.timezone``): Monday 00:00 to the next Monday 00:00 local time. The
default week is the last *complete* one, the week that just ended when the Monday
09:00 job runs.
"""

from __future__ import annotations

import datetime as dt
import difflib
import io
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from replyloop.evaluation.stats import rate_difference, wilson_interval
from replyloop.evaluation.golden import weekly_golden, weekly_markdown as weekly_golden_markdown  # golden23
from replyloop import csvsafe, timeutil
from replyloop.i18n import N_, _, fmt_date, fmt_datetime, fmt_number, fmt_percent, week_label, workspace
from replyloop.config import Config
from replyloop.errors import ConfigError, PathError, ReplyloopError
from replyloop.store import Store

DECISION_KEYS = ("approved", "edited", "rejected")
MODEL_ACTIONS = ("model.promote", "model.canary", "model.rollback", "model.reject")
EVENT_METRICS = {"model.promote": "promotions", "model.canary": "canary_changes",
                 "model.rollback": "rollbacks", "model.reject": "rejections"}
NO_CATEGORY = "(none)"
NO_MODEL = "(no model)"  # drafts stored without a model id or name
TOP_REPLACEMENTS = 10
OUTPUT_FILES = ("report.md", "numbers.csv", "consistency.png", "reviews.png", "automation.png",
                "violations.png")


class ReportError(ReplyloopError):
    """Could not build the weekly report"""


class ReportPathError(ReportError, PathError):
    """The report cannot be written there (exit 2: the --out path is the mistake)"""


class WeekError(ReportError):
    """Invalid ISO week"""

    exit_code = 2


# -- weeks ---------------------------------------------------------------------------------

_WEEK_RE = re.compile(r"^\s*(\d{4})-?W(\d{1,2})\s*$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class IsoWeek:
    year: int
    week: int

    @classmethod
    def parse(cls, text: str) -> "IsoWeek":
        """``2026-W48`` (also ``2026W48``, ``2026-w48``)."""
        m = _WEEK_RE.match(text or "")
        if m:
            year, week = int(m.group(1)), int(m.group(2))
            try:
                dt.date.fromisocalendar(year, week, 1)
            except ValueError:
                raise WeekError(f"week {text!r}: {year} has no ISO week {week}") from None
            return cls(year, week)
        raise WeekError(f"week {text!r}: expected an ISO week such as 2026-W48")

    @classmethod
    def containing(cls, day: dt.date) -> "IsoWeek":
        iso = day.isocalendar()
        return cls(iso.year, iso.week)

    @classmethod
    def last_complete(cls, now: dt.datetime, tz: dt.tzinfo) -> "IsoWeek":
        """The week that ended most recently before ``now`` (local time ``tz``)."""
        return cls.containing(now.astimezone(tz).date()).shift(-1)

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.week:02d}"

    @property
    def monday(self) -> dt.date:
        return dt.date.fromisocalendar(self.year, self.week, 1)

    def shift(self, weeks: int) -> "IsoWeek":
        return IsoWeek.containing(self.monday + dt.timedelta(weeks=weeks))

    def bounds(self, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) as aware datetimes: local Monday 00:00 to the next Monday 00:00."""
        start = dt.datetime.combine(self.monday, dt.time(0), tzinfo=tz)
        end = dt.datetime.combine(self.monday + dt.timedelta(days=7), dt.time(0), tzinfo=tz)
        return start, end

    def __str__(self) -> str:
        return self.label


def report_timezone(config: Config) -> ZoneInfo:
    name = config.file.scheduler.timezone
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"scheduler.timezone: unknown time zone {name!r}") from None


# -- the report's parts ----------------------------------------------------------------------

@dataclass
class DecisionCounts:
    approved: int = 0   # approved unchanged
    edited: int = 0
    rejected: int = 0

    @property
    def reviewed(self) -> int:
        return self.approved + self.edited + self.rejected

    @property
    def automation_rate(self) -> float | None:
        """Share of reviewed drafts approved without edit."""
        return self.approved / self.reviewed if self.reviewed else None

    def add(self, decision: str) -> None:
        key = {"approve": "approved", "edit": "edited", "reject": "rejected"}[decision]
        setattr(self, key, getattr(self, key) + 1)


@dataclass
class ConsistencyPoint:
    """The latest evaluation (up to the week's end) of the model that served as champion or
    canary at the end of that week."""

    week: str
    role: str                       # champion | canary
    model_id: int
    model_name: str
    evaluation_id: int
    evaluated_at: str
    mean_similarity: float | None
    n: int
    by_category: dict[str, float]   # category -> mean similarity
    mean_chrf: float | None = None  # chrF of the drafts against the references (None: not measured)
    chrf_by_category: dict[str, float] = field(default_factory=dict)
    unknown_share: float | None = None   # reference characters the embedding model could not read


@dataclass
class Replacement:
    old: str
    new: str
    count: int


@dataclass
class EditStats:
    edits: int = 0
    mean_distance: float | None = None                        # normalised Levenshtein, 0..1
    by_category: dict[str, tuple[int, float]] = field(default_factory=dict)  # cat -> (edits, mean)


@dataclass
class RuleCount:
    rule: str
    severity: str
    drafts: int          # drafts with at least one violation of the rule
    occurrences: int


@dataclass
class ModelRef:
    id: int
    name: str
    percent: int | None = None      # canary share of conversations


@dataclass
class ModelRate:
    model_id: int | None            # None: drafts of the old system (named only) or with no model
    name: str
    role: str                       # champion | canary | retired champion | old system | no model | a status
    reviews: int
    approved: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass
class ModelEvent:
    at: str
    action: str                     # model.promote | model.canary | model.rollback | model.reject
    model_id: int | None
    model_name: str
    actor: str
    reason: str
    from_status: str
    to_status: str


@dataclass
class NumberRow:
    section: str
    week: str
    category: str
    metric: str
    value: float | int


@dataclass
class WeeklyReport:
    week: IsoWeek
    timezone: str
    start: dt.datetime              # local time
    end: dt.datetime
    generated_at: dt.datetime
    complete: bool                  # the week had ended when the report was built
    history: list[str]              # week labels, oldest first, ending with this week
    consistency: list[ConsistencyPoint]
    decisions: dict[str, DecisionCounts]                        # week -> counts
    decisions_by_category: dict[str, dict[str, DecisionCounts]]  # week -> category -> counts
    edits: dict[str, EditStats]                                 # week -> edit stats
    replacements: list[Replacement]                             # this week, most frequent first
    drafts_created: int
    drafts_flagged: int
    drafts_blocked: int
    violations: list[RuleCount]
    approved_violations: list[RuleCount]
    approved_violation_drafts: list[int]
    champion: ModelRef | None
    canary: ModelRef | None
    model_rates: list[ModelRate]
    events: list[ModelEvent]
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    chart_labels: dict[str, str] = field(default_factory=dict)  # shown label -> category (no CJK font)
    max_unknown_share: float = 0.2                               # evaluation.max_unknown_share
    automation_split: list[dict] = field(default_factory=list)   # deliver21: this week, per category
    golden: list[dict] = field(default_factory=list)             # golden23: the gate's golden suite runs
    rule_proposals: list[dict] = field(default_factory=list)     # rules19: open / accepted / dismissed proposals

    # -- derived -----------------------------------------------------------------------------

    @property
    def canary_difference(self) -> tuple[float, float, float] | None:
        """Canary minus champion approval-without-edit rate this week, with its 95% interval
        (Newcombe), when both served reviewed drafts."""
        by_role = {m.role: m for m in self.model_rates}
        canary, champion = by_role.get("canary"), by_role.get("champion")
        if canary is None or champion is None:
            return None
        return rate_difference(canary.approved, canary.reviews, champion.approved, champion.reviews)

    @property
    def label(self) -> str:
        return self.week.label

    @property
    def previous_label(self) -> str:
        return self.week.shift(-1).label

    @property
    def this_week(self) -> DecisionCounts:
        return self.decisions.get(self.label, DecisionCounts())

    @property
    def last_week(self) -> DecisionCounts:
        return self.decisions.get(self.previous_label, DecisionCounts())

    @property
    def automation_change(self) -> float | None:
        now, before = self.this_week.automation_rate, self.last_week.automation_rate
        return None if now is None or before is None else now - before

    def automation_history(self) -> list[tuple[str, DecisionCounts, float | None]]:
        """(week, decisions, change of the automation rate vs the week before) for each history week."""
        out, before = [], None
        for week in self.history:
            counts = self.decisions.get(week, DecisionCounts())
            rate = counts.automation_rate
            out.append((week, counts, None if rate is None or before is None else rate - before))
            before = rate
        return out

    def consistency_at(self, week: str, role: str = "champion") -> ConsistencyPoint | None:
        return next((p for p in self.consistency if p.week == week and p.role == role), None)

    @property
    def consistency_change(self) -> float | None:
        now, before = self.consistency_at(self.label), self.consistency_at(self.previous_label)
        if now is None or before is None or now.mean_similarity is None or before.mean_similarity is None:
            return None
        return now.mean_similarity - before.mean_similarity

    @property
    def chrf_change(self) -> float | None:
        now, before = self.consistency_at(self.label), self.consistency_at(self.previous_label)
        if now is None or before is None or now.mean_chrf is None or before.mean_chrf is None:
            return None
        return now.mean_chrf - before.mean_chrf

    @property
    def unreadable(self) -> list[ConsistencyPoint]:
        """Evaluations whose embedding model could not read the references (above
        ``evaluation.max_unknown_share``): their embedding numbers measure little."""
        return [p for p in self.consistency
                if p.unknown_share is not None and p.unknown_share > self.max_unknown_share]

    @property
    def categories(self) -> list[str]:
        """Every category seen in decisions or evaluations, sorted."""
        cats = set()
        for per_cat in self.decisions_by_category.values():
            cats.update(per_cat)
        for point in self.consistency:
            cats.update(point.by_category)
        return sorted(cats)

    @property
    def empty(self) -> bool:
        """Nothing happened in this week: no drafts, reviews, evaluations or model changes."""
        evaluated = any(p.week == self.label and self.start <= _local(p.evaluated_at, self.start.tzinfo) < self.end
                        for p in self.consistency)
        return (self.drafts_created == 0 and self.this_week.reviewed == 0 and not self.events
                and not evaluated)

    def rows(self) -> list[NumberRow]:
        """Every number in the report, long format (what numbers.csv holds)."""
        out: list[NumberRow] = []

        def add(section, week, category, metric, value):
            if value is not None:
                out.append(NumberRow(section, week, category, metric,
                                     round(value, 6) if isinstance(value, float) else value))

        for p in self.consistency:
            prefix = p.role
            add("consistency", p.week, "", f"{prefix}_model_id", p.model_id)
            add("consistency", p.week, "", f"{prefix}_evaluation_id", p.evaluation_id)
            add("consistency", p.week, "", f"{prefix}_n", p.n)
            add("consistency", p.week, "", f"{prefix}_mean_similarity", p.mean_similarity)
            for cat, mean in sorted(p.by_category.items()):
                add("consistency", p.week, cat, f"{prefix}_mean_similarity", mean)
            add("consistency", p.week, "", f"{prefix}_mean_chrf", p.mean_chrf)
            for cat, mean in sorted(p.chrf_by_category.items()):
                add("consistency", p.week, cat, f"{prefix}_mean_chrf", mean)
            add("consistency", p.week, "", f"{prefix}_unknown_share", p.unknown_share)
        for week, counts, change in self.automation_history():
            for key in (*DECISION_KEYS, "reviewed"):
                add("reviews", week, "", key, getattr(counts, key))
            for cat, c in sorted(self.decisions_by_category.get(week, {}).items()):
                for key in (*DECISION_KEYS, "reviewed"):
                    add("reviews", week, cat, key, getattr(c, key))
            stats = self.edits.get(week, EditStats())
            add("edits", week, "", "edits", stats.edits)
            add("edits", week, "", "mean_edit_distance", stats.mean_distance)
            for cat, (n, mean) in sorted(stats.by_category.items()):
                add("edits", week, cat, "edits", n)
                add("edits", week, cat, "mean_edit_distance", mean)
            add("automation", week, "", "reviewed", counts.reviewed)
            add("automation", week, "", "approved_unchanged", counts.approved)
            add("automation", week, "", "rate", counts.automation_rate)
            add("automation", week, "", "change_vs_previous_week", change)
        add("consistency", self.label, "", "champion_change_vs_previous_week", self.consistency_change)
        add("consistency", self.label, "", "champion_chrf_change_vs_previous_week", self.chrf_change)
        for r in self.replacements:
            add("replacements", self.label, f"{r.old} → {r.new}", "count", r.count)
        for g in self.golden:  # golden23
            add("golden", self.label, "", f"evaluation_{g['evaluation_id']}_cases", g["n"])
            add("golden", self.label, "", f"evaluation_{g['evaluation_id']}_failed", len(g["failed"]))
        add("violations", self.label, "", "drafts_created", self.drafts_created)
        add("violations", self.label, "", "drafts_flagged", self.drafts_flagged)
        add("violations", self.label, "", "drafts_blocked", self.drafts_blocked)
        add("violations", self.label, "", "approved_with_violations", len(self.approved_violation_drafts))
        for r in self.violations:
            add("violations", self.label, r.rule, "drafts", r.drafts)
            add("violations", self.label, r.rule, "occurrences", r.occurrences)
        for r in self.approved_violations:
            add("approved_violations", self.label, r.rule, "drafts", r.drafts)
        if self.champion:
            add("models", self.label, "champion", "model_id", self.champion.id)
        if self.canary:
            add("models", self.label, "canary", "model_id", self.canary.id)
            add("models", self.label, "canary", "percent", self.canary.percent)
        for action, metric in EVENT_METRICS.items():
            add("models", self.label, "", metric, sum(e.action == action for e in self.events))
        for r in self.model_rates:
            add("model_rates", self.label, r.name, "model_id", r.model_id)
            add("model_rates", self.label, r.name, "reviews", r.reviews)
            add("model_rates", self.label, r.name, "approved_unchanged", r.approved)
            add("model_rates", self.label, r.name, "rate", r.rate)
            add("model_rates", self.label, r.name, "ci_low", r.ci_low)
            add("model_rates", self.label, r.name, "ci_high", r.ci_high)
        if difference := self.canary_difference:
            for metric, value in zip(("difference", "ci_low", "ci_high"), difference):
                add("model_rates", self.label, "canary - champion", metric, value)
        for p in self.rule_proposals:  # rules19: rule proposals mined from edits
            add("rule_proposals", self.label, f"#{p['id']} {p['avoid']}", f"{p['status']} edits", p["count"])
            add("rule_proposals", self.label, f"#{p['id']} {p['avoid']}", f"{p['status']} supervisors",
                len(p["supervisors"]))
        return out


# -- small pure helpers ------------------------------------------------------------------------

def edit_distance(old: str, new: str) -> float:
    """Normalised Levenshtein distance (0 = unchanged, 1 = nothing in common)."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.normalized_distance(old.strip(), new.strip())


def _is_noise(text: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PZC" for ch in text)


def replacements(old: str, new: str, merge_gap: int = 1) -> list[tuple[str, str]]:
    """What a supervisor replaced, inserted or deleted: ``[(old, new), ...]``.

    Character-level ``difflib`` opcodes; changes separated by at most ``merge_gap`` unchanged
    characters are merged (``快递单号`` → ``电子面单`` is one replacement, not three), and
    changes of only punctuation or whitespace are left out.
    """
    sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
    spans: list[list[int]] = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        if spans and i1 - spans[-1][1] <= merge_gap and j1 - spans[-1][3] <= merge_gap:
            spans[-1][1], spans[-1][3] = i2, j2
        else:
            spans.append([i1, i2, j1, j2])
    out = []
    for i1, i2, j1, j2 in spans:
        a, b = old[i1:i2].strip(), new[j1:j2].strip()
        if (a or b) and not (_is_noise(a) and _is_noise(b)):
            out.append((a, b))
    return out


def _parse_violations(raw: str | None) -> list[dict]:
    try:
        items = json.loads(raw or "[]")
    except ValueError:
        return [{"rule": "(unreadable)", "severity": "?"}]
    result = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            result.append({"rule": str(item.get("rule") or "(unknown)"),
                           "severity": str(item.get("severity") or "")})
        elif isinstance(item, str):
            result.append({"rule": item, "severity": ""})
    return result


def _count_rules(drafts: list[list[dict]]) -> list[RuleCount]:
    drafts_per_rule: Counter = Counter()
    occurrences: Counter = Counter()
    severity: dict[str, str] = {}
    for violations in drafts:
        for v in violations:
            occurrences[v["rule"]] += 1
            severity.setdefault(v["rule"], v["severity"])
        for rule in {v["rule"] for v in violations}:
            drafts_per_rule[rule] += 1
    return [RuleCount(rule, severity[rule], drafts_per_rule[rule], occurrences[rule])
            for rule in sorted(occurrences, key=lambda r: (-drafts_per_rule[r], r))]


def _local(value: str, tz) -> dt.datetime:
    return timeutil.parse(value).astimezone(tz)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def _json(raw: str | None) -> dict:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- who served when ---------------------------------------------------------------------------

@dataclass
class _Serving:
    champion: int | None
    canary: int | None
    percent: int | None


class _History:
    """Champion and canary at any time, replayed from the audit log (model.promote, model.canary,
    model.rollback, model.reject); models.status when the log has no such rows."""

    def __init__(self, store: Store):
        self.models = {r["id"]: r for r in store.query(
            "SELECT id, name, status, canary_percent, promoted_at, created_at FROM models")}
        self.rows = store.query(
            "SELECT id, at, actor, action, entity_id, detail FROM audit_log WHERE action IN (?, ?, ?, ?)"
            " ORDER BY at, id", MODEL_ACTIONS)

    def name(self, model_id: int | None) -> str:
        row = self.models.get(model_id)
        return row["name"] if row else (f"#{model_id}" if model_id is not None else "?")

    def at(self, when: dt.datetime) -> _Serving:
        if not self.rows:
            return self._from_status(when)
        state = _Serving(None, None, None)
        for row in self.rows:
            if timeutil.parse(row["at"]) >= when:
                break
            model_id = _int(row["entity_id"])
            detail = _json(row["detail"])
            action = row["action"]
            if action == "model.promote":
                state.champion = model_id
                if state.canary == model_id:
                    state.canary, state.percent = None, None
            elif action == "model.canary":
                state.canary, state.percent = model_id, _int(detail.get("percent"))
            elif action in ("model.rollback", "model.reject"):
                if state.canary == model_id:
                    state.canary, state.percent = None, None
                if action == "model.rollback" and state.champion == model_id:
                    state.champion = _int(detail.get("restored"))
        return state

    def _from_status(self, when: dt.datetime) -> _Serving:
        def since(row):
            return timeutil.parse(row["promoted_at"] or row["created_at"])

        champion = next((r for r in self.models.values() if r["status"] == "champion" and since(r) < when), None)
        canary = next((r for r in self.models.values()
                       if r["status"] == "canary" and timeutil.parse(r["created_at"]) < when), None)
        return _Serving(champion and champion["id"], canary and canary["id"],
                        canary and canary["canary_percent"])


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- collection ----------------------------------------------------------------------------------

def collect_weekly_report(config: Config, store: Store, week: IsoWeek | str | None = None,
                          now: dt.datetime | None = None) -> WeeklyReport:
    """Read everything the report shows for ``week`` (default: the last complete week)."""
    tz = report_timezone(config)
    now = now or timeutil.now()
    if week is None:
        week = IsoWeek.last_complete(now, tz)
    elif isinstance(week, str):
        week = IsoWeek.parse(week)
    weeks = [week.shift(-i) for i in range(config.file.report.weeks - 1, -1, -1)]
    labels = [w.label for w in weeks]
    start, end = week.bounds(tz)
    window_start = weeks[0].bounds(tz)[0]
    # Stored timestamps are UTC ISO strings: select a day wider in SQL, bucket exactly in Python.
    lo, hi = _iso(window_start - dt.timedelta(days=1)), _iso(end + dt.timedelta(days=1))

    def week_of(value: str) -> str | None:
        when = _local(value, tz)
        if not (window_start <= when < end):
            return None
        return IsoWeek.containing(when.date()).label

    # supervisor decisions, edits, automation
    decisions = {label: DecisionCounts() for label in labels}
    by_category: dict[str, dict[str, DecisionCounts]] = {label: {} for label in labels}
    distances: dict[str, dict[str, list[float]]] = {label: defaultdict(list) for label in labels}
    replaced: Counter = Counter()
    approved_bad: list[tuple[int, list[dict]]] = []
    reviews = store.query(
        "SELECT r.decision, r.final_text, r.created_at, d.id AS draft_id, d.text AS draft_text,"
        " d.model_id, d.model_name, d.violations, q.category"
        " FROM reviews r JOIN drafts d ON d.id = r.draft_id JOIN questions q ON q.id = d.question_id"
        " WHERE r.created_at >= ? AND r.created_at < ? AND r.automated = 0 ORDER BY r.id", (lo, hi))  # people only
    this_week_reviews = []
    for r in reviews:
        label = week_of(r["created_at"])
        if label is None:
            continue
        category = r["category"] or NO_CATEGORY
        decisions[label].add(r["decision"])
        by_category[label].setdefault(category, DecisionCounts()).add(r["decision"])
        if r["decision"] == "edit" and r["final_text"] is not None:
            distances[label][category].append(edit_distance(r["draft_text"], r["final_text"]))
            if label == week.label:
                replaced.update(replacements(r["draft_text"], r["final_text"]))
        if label == week.label:
            this_week_reviews.append(r)
            if r["decision"] == "approve":
                violations = _parse_violations(r["violations"])
                if violations:
                    approved_bad.append((r["draft_id"], violations))
    edits = {}
    for label in labels:
        per_cat = distances[label]
        everything = [d for values in per_cat.values() for d in values]
        edits[label] = EditStats(
            edits=len(everything),
            mean_distance=sum(everything) / len(everything) if everything else None,
            by_category={cat: (len(v), sum(v) / len(v)) for cat, v in sorted(per_cat.items())},
        )
    top = [Replacement(a, b, n) for (a, b), n in
           sorted(replaced.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REPLACEMENTS]]

    # policy violations in this week's drafts
    draft_rows = [d for d in store.query(
        "SELECT id, verdict, violations, created_at FROM drafts WHERE created_at >= ? AND created_at < ?",
        (lo, hi)) if week_of(d["created_at"]) == week.label]
    parsed = [_parse_violations(d["violations"]) for d in draft_rows]

    # models: who served, events, review rates per model
    history = _History(store)
    state_end = history.at(min(end, now))
    champion = ModelRef(state_end.champion, history.name(state_end.champion)) \
        if state_end.champion is not None else None
    canary = ModelRef(state_end.canary, history.name(state_end.canary), state_end.percent) \
        if state_end.canary is not None else None
    events = []
    for row in history.rows:
        when = _local(row["at"], tz)
        if start <= when < end:
            detail = _json(row["detail"])
            model_id = _int(row["entity_id"])
            events.append(ModelEvent(
                at=when.isoformat(timespec="minutes"), action=row["action"], model_id=model_id,
                model_name=history.name(model_id), actor=row["actor"], reason=str(detail.get("reason") or ""),
                from_status=str(detail.get("from") or ""), to_status=str(detail.get("to") or "")))
    # every reviewed draft has a row (cli16): a model of the registry, a model named by the old
    # system (drafts.model_name only), or no model at all, so the table adds up to the headline
    per_model: dict[tuple, list[int]] = {}
    for r in this_week_reviews:
        if r["model_id"] is not None:
            key = ("id", r["model_id"])
        elif r["model_name"]:
            key = ("name", r["model_name"])
        else:
            key = ("none",)
        counts = per_model.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += r["decision"] == "approve"
    served = {history.at(start).champion} | {_int(row["entity_id"]) for row in history.rows
                                             if row["action"] == "model.promote" and start <= _local(row["at"], tz) < end}
    rates = []
    for key, (n, k) in per_model.items():
        model_id = key[1] if key[0] == "id" else None
        if key[0] == "name":
            name, role = key[1], "old system"
        elif key[0] == "none":
            name, role = NO_MODEL, "no model"
        else:
            name = history.name(model_id)
            status = (history.models.get(model_id) or {}).get("status") or "unknown"
            role = ("champion" if champion and model_id == champion.id
                    else "canary" if canary and model_id == canary.id
                    else "retired champion" if model_id in served else status)
        ci = wilson_interval(k, n)
        rates.append(ModelRate(model_id, name, role, n, k, k / n, ci and ci[0], ci and ci[1]))
    rates.sort(key=lambda r: ({"champion": 0, "canary": 1, "retired champion": 2}.get(r.role, 3),
                              r.model_id is None, r.model_id or 0, r.name))

    # consistency: the champion's (and canary's) latest evaluation up to each week's end
    evaluations = store.query(
        "SELECT id, model_id, n, mean_similarity, mean_chrf, unknown_share, by_category, created_at FROM evaluations"
        " WHERE created_at < ? ORDER BY created_at, id", (hi,))
    consistency = []
    for w in weeks:
        w_end = min(w.bounds(tz)[1], now)
        serving = history.at(w_end)
        for role, model_id in (("champion", serving.champion), ("canary", serving.canary)):
            if model_id is None:
                continue
            latest = None
            for e in evaluations:
                if e["model_id"] == model_id and timeutil.parse(e["created_at"]) < w_end:
                    latest = e
            if latest is None:
                continue
            cats, chrf_cats = {}, {}
            for cat, value in _json(latest["by_category"]).items():
                mean = value.get("mean") if isinstance(value, dict) else value
                if isinstance(mean, (int, float)):
                    cats[cat or NO_CATEGORY] = float(mean)
                chrf = value.get("chrf") if isinstance(value, dict) else None
                if isinstance(chrf, (int, float)):
                    chrf_cats[cat or NO_CATEGORY] = float(chrf)
            consistency.append(ConsistencyPoint(
                week=w.label, role=role, model_id=model_id, model_name=history.name(model_id),
                evaluation_id=latest["id"], evaluated_at=latest["created_at"],
                mean_similarity=latest["mean_similarity"], n=latest["n"], by_category=cats,
                mean_chrf=latest["mean_chrf"], chrf_by_category=chrf_cats, unknown_share=latest["unknown_share"]))

    return WeeklyReport(
        week=week, timezone=config.file.scheduler.timezone, start=start, end=end,
        generated_at=now.astimezone(tz), complete=end <= now, history=labels,
        consistency=consistency, decisions=decisions, decisions_by_category=by_category, edits=edits,
        replacements=top, drafts_created=len(draft_rows),
        drafts_flagged=sum(1 for v in parsed if v),
        drafts_blocked=sum(1 for d in draft_rows if d["verdict"] == "block"),
        violations=_count_rules(parsed), approved_violations=_count_rules([v for _draft, v in approved_bad]),
        approved_violation_drafts=sorted(d for d, _violations in approved_bad),
        champion=champion, canary=canary, model_rates=rates, events=events,
        max_unknown_share=config.file.evaluation.max_unknown_share,
        automation_split=_automation_split(store, start, end),  # deliver21
        golden=[g for g in weekly_golden(store, lo, hi) if week_of(g["created_at"]) == week.label],  # golden23
        rule_proposals=_rule_proposals(store),
    )


def _automation_split(store: Store, start: dt.datetime, end: dt.datetime) -> list[dict]:
    from replyloop.automation import weekly_split

    return weekly_split(store, _iso(start), _iso(end))


def _rule_proposals(store: Store) -> list[dict]:
    """rules19: the open, accepted and dismissed rule proposals (``evaluation.proposals``)."""
    from replyloop.evaluation.proposals import list_proposals

    return list_proposals(store)


# -- writing -----------------------------------------------------------------------------------

def write_numbers_csv(report: WeeklyReport, path: Path, csv_safe: bool = True) -> None:
    """``csv_safe`` (the default): a cell that could run as a formula gets a leading quote
    (``replyloop.csvsafe``); off, cells are written as stored (``report weekly --raw-csv``)."""
    buffer = io.StringIO()
    writer = csvsafe.writer(buffer, safe=csv_safe, lineterminator="\n")  # categories come from customers
    writer.writerow(["section", "week", "category", "metric", "value"])
    for row in report.rows():
        writer.writerow([row.section, row.week, row.category, row.metric, row.value])
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _check_target(out: Path) -> None:
    """Refuse to replace a directory that holds anything but a previous report, and a path that
    cannot be a directory (a file on the way, no permission): PathError, exit 2."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "exists and is not a directory" if path == out else f"cannot be created: {path} is a file"
            raise ReportPathError(f"{out}: {where}")
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
        if foreign:
            raise ReportPathError(f"{out}: holds other files ({', '.join(foreign[:3])}): choose an empty"
                            " or report-only directory for --out")


def write_weekly_report(report: WeeklyReport, out: str | Path, csv_safe: bool = True) -> WeeklyReport:
    """Write report.md, numbers.csv and the charts into ``out``: built in a temp dir beside it,
    then renamed into place, so readers never see half a report. ``csv_safe``: see
    ``write_numbers_csv``."""
    from replyloop.evaluation.charts import render_charts

    out = Path(out)
    _check_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise ReportPathError(f"{out}: cannot write the report there ({exc.strerror or exc})") from None
    try:
        charts = render_charts(report, tmp)
        report.chart_labels = charts.labels
        write_numbers_csv(report, tmp / "numbers.csv", csv_safe=csv_safe)
        (tmp / "report.md").write_text(render_markdown(report, charts.files), encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out_dir = out
    report.files = {"report.md": out / "report.md", "numbers.csv": out / "numbers.csv",
                    **{name: out / name for name in charts.files}}
    return report


def default_out_dir(config: Config, week: IsoWeek) -> Path:
    return config.reports_dir / week.label


def build_weekly_report(config: Config, store: Store, week: IsoWeek | str | None = None,
                        out: str | Path | None = None, now: dt.datetime | None = None,
                        csv_safe: bool = True) -> WeeklyReport:
    """Collect the week's numbers and write the report (default: ``reports/<week>/``);
    ``csv_safe=False`` writes numbers.csv cells as stored (``--raw-csv``)."""
    if out is not None:
        _check_target(Path(out))  # a bad --out fails before the work, not after it
    report = collect_weekly_report(config, store, week, now=now)
    return write_weekly_report(report, out if out is not None else default_out_dir(config, report.week),
                               csv_safe=csv_safe)


# -- report.md ---------------------------------------------------------------------------------
# What people read is translated here, where it is displayed (issue 22); the collected numbers,
# week labels of numbers.csv and directory names stay machine formats.

ROLE_WORDS = {"champion": N_("champion"), "canary": N_("canary"), "retired champion": N_("retired champion"),
              "old system": N_("old system"), "no model": N_("no model"), "candidate": N_("candidate"),
              "rejected": N_("rejected"), "retired": N_("retired"), "unknown": N_("unknown")}
ACTION_WORDS = {"promote": N_("promote"), "canary": N_("canary"), "rollback": N_("rollback"),
                "reject": N_("reject")}
# apart: a category a customer named "(no model)" is not the missing model (and a model not the missing category)
CATEGORY_WORDS = {NO_CATEGORY: N_("(none)")}
MODEL_WORDS = {NO_MODEL: N_("(no model)")}
SEVERITY_WORDS = {"block": N_("block"), "warn": N_("warn")}
# numbers.csv's columns: their names stay English for scripts; report.md describes them (issue 22)
CSV_COLUMNS = (("section", N_("part of the report: consistency, reviews, edits, automation, violations, models, ...")),
               ("week", N_("ISO week in scheduler.timezone, as in the report folder's name")),
               ("category", N_("the category, rule or model the number is about (empty: the whole week)")),
               ("metric", N_("what is counted or measured (an English identifier)")),
               ("value", N_("the number (rates and similarities as fractions between 0 and 1)")))


def _word(table: dict[str, str], key: str) -> str:
    """A stored identifier (a role, an action) in the reader's language; anything else (a category
    a customer named "model", a status of a newer version) as it is, never looked up."""
    msgid = table.get(key)
    return _(msgid) if msgid else key


def week_text(label: str) -> str:
    """A week label of the data (``2026-W48``) as people read it (``2026年第48周``)."""
    try:
        week = IsoWeek.parse(label)
    except WeekError:
        return label
    return week_label(week.year, week.week)


def _signed(value: float, digits: int) -> str:
    """``+1.5`` / ``-0.3`` as Python's ``{:+.Nf}`` signs it, with the locale's digits."""
    return ("-" if math.copysign(1.0, value) < 0 else "+") + fmt_number(abs(value), digits)


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else fmt_percent(value, 1)


def fmt_pp(value: float | None) -> str:
    return "–" if value is None else _("{value} pp").format(value=_signed(value * 100, 1))


def fmt_num(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (_signed(value, 3) if signed else fmt_number(value, 3))


def fmt_int(value: int) -> str:
    return fmt_number(value)


def _when(value: dt.datetime, tz: str) -> str:
    # TRANSLATORS: a Babel date-time pattern (the report's "generated" time and model events)
    return fmt_datetime(value, tz, format=_("yyyy-MM-dd'T'HH:mmxxx"))


def _day(value: dt.date) -> str:
    # TRANSLATORS: a Babel date pattern (the report's first and last day)
    return fmt_date(value, format=_("yyyy-MM-dd"))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _unused in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _ci(ci) -> str:
    return f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]" if ci else _("n/a")


def _automation_lines(r: WeeklyReport) -> list[str]:
    """deliver21: earned automation this week, per category (only when it acted)."""
    if not r.automation_split:
        return []
    lines = ["## " + _("Earned automation"), "",
             _("Decisions of {week} by who made them: a person approving without edit (audits apart), "
               "earned automation, and audits (would-be automatic drafts reviewed by a person), with 95% "
               "Wilson intervals. Automatic approvals are not in the supervisor tables above and are never "
               "trained on.").format(week=week_text(r.label)), ""]
    lines += _table([_("category"), _("decided"), _("human-approved"), _("auto-approved"), _("automatic share"),
                     _("audited"), _("audit approved"), _("revoked")],
                    [[_word(CATEGORY_WORDS, c["category"]), fmt_int(c["decided"]), fmt_int(c["human_approved"]),
                      fmt_int(c["auto_approved"]),
                      f"{fmt_pct(c['auto_share'])} {_ci(c['auto_share_ci'])}", fmt_int(c["audited"]),
                      f"{fmt_pct(c['audit_rate'])} {_ci(c['audit_rate_ci'])}" if c["audited"] else "-",
                      _("yes") if c["revoked"] else ""] for c in r.automation_split])
    return lines


def render_markdown(report: WeeklyReport, charts: dict[str, Path] | None = None) -> str:
    """report.md in the workspace's language (``ui.language``): every number in it is also a row
    of numbers.csv."""
    with workspace():
        return _render_markdown(report, charts or {})


def _render_markdown(report: WeeklyReport, charts: dict[str, Path]) -> str:
    r = report
    this, prev = r.this_week, r.last_week
    week, previous = week_text(r.label), week_text(r.previous_label)
    last_day = (r.end - dt.timedelta(days=1)).date()
    period = _("{start} to {end} ({timezone}); generated {generated}").format(
        start=_day(r.start.date()), end=_day(last_day), timezone=r.timezone,
        generated=_when(r.generated_at, r.timezone))
    lines = ["# " + _("Weekly consistency report {week}").format(week=week), "",
             period + ("" if r.complete else _(" while the week was still running")) + _("."), ""]
    if r.empty:
        lines += [_("**No activity in {week}**: no drafts, reviews, evaluations or model changes were"
                    " recorded this week. Earlier weeks are shown below for context.").format(week=week), ""]

    champ_now, champ_prev = r.consistency_at(r.label), r.consistency_at(r.previous_label)
    lines += ["## " + _("Summary"), "",
              "- " + _("Automation rate (approved without edit): **{rate}** ({approved} of {reviewed} reviewed"
                       " drafts); {previous}: {previous_rate} ({change}).").format(
                  rate=fmt_pct(this.automation_rate), approved=fmt_int(this.approved),
                  reviewed=fmt_int(this.reviewed), previous=previous, previous_rate=fmt_pct(prev.automation_rate),
                  change=fmt_pp(r.automation_change)),
              "- " + _("Champion consistency: **{mean}** ({change} vs {previous}: {previous_mean}); chrF **{chrf}**"
                       " ({chrf_change} vs {previous}: {previous_chrf}).").format(
                  mean=fmt_num(champ_now and champ_now.mean_similarity),
                  change=fmt_num(r.consistency_change, signed=True), previous=previous,
                  previous_mean=fmt_num(champ_prev and champ_prev.mean_similarity),
                  chrf=fmt_num(champ_now and champ_now.mean_chrf), chrf_change=fmt_num(r.chrf_change, signed=True),
                  previous_chrf=fmt_num(champ_prev and champ_prev.mean_chrf)),
              "- " + _("Policy: {flagged} of {created} drafts flagged, {blocked} blocked; {approved_bad} approved"
                       " with a violation.").format(
                  flagged=fmt_int(r.drafts_flagged), created=fmt_int(r.drafts_created),
                  blocked=fmt_int(r.drafts_blocked), approved_bad=fmt_int(len(r.approved_violation_drafts))),
              "- " + _("Champion: {champion}; canary: {canary}.").format(
                  champion=_model(r.champion), canary=_model(r.canary, canary=True)), ""]

    # consistency
    cats = sorted({c for p in r.consistency for c in p.by_category})
    lines += ["## " + _("Consistency (last {weeks} weeks)").format(weeks=len(r.history)), "",
              _("Mean embedding similarity of the model's drafts to the approved references"
                " (latest evaluation up to the end of each week), then their mean chrF (character n-grams,"
                " which reads Chinese with no model)."), ""]
    points = [p for p in r.consistency]
    unreadable = r.unreadable
    if unreadable:
        worst = max(unreadable, key=lambda p: p.unknown_share)
        lines += [_("**The embedding model could not read the references** of {count} of these"
                    " evaluations (up to {share} of their characters were unknown tokens, limit {limit}): their"
                    " similarity measures little more than punctuation, and the gate let chrF decide. Set"
                    " `evaluation.embedding_model` to a Chinese or multilingual sentence-transformers model"
                    " directory.").format(count=fmt_int(len(unreadable)), share=fmt_pct(worst.unknown_share),
                                           limit=fmt_pct(r.max_unknown_share)), ""]
    if points:
        lines += _table([_("week"), _("role"), _("model"), _("evaluation"), "n", _("overall"),
                         *[_word(CATEGORY_WORDS, c) for c in cats]],
                        [[week_text(p.week), _word(ROLE_WORDS, p.role), f"{p.model_name} (#{p.model_id})",
                          f"#{p.evaluation_id}", fmt_int(p.n), fmt_num(p.mean_similarity),
                          *[fmt_num(p.by_category.get(c)) for c in cats]]
                         for p in points])
        chrf_cats = sorted({c for p in r.consistency for c in p.chrf_by_category})
        lines += [_("chrF:"), ""]
        lines += _table([_("week"), _("role"), _("model"), _("overall chrF"), _("unknown tokens"),
                         *[_word(CATEGORY_WORDS, c) for c in chrf_cats]],
                        [[week_text(p.week), _word(ROLE_WORDS, p.role), f"{p.model_name} (#{p.model_id})",
                          fmt_num(p.mean_chrf), fmt_pct(p.unknown_share),
                          *[fmt_num(p.chrf_by_category.get(c)) for c in chrf_cats]]
                         for p in points])
    else:
        lines += [_("No evaluations of a champion or canary in these weeks."), ""]
    lines += _chart(charts, "consistency.png", _("Consistency"))

    # supervisor signal
    lines += ["## " + _("Supervisor decisions"), ""]
    lines += _table([_("week"), _("reviewed"), _("approved unchanged"), _("edited"), _("rejected"),
                     _("mean edit distance")],
                    [[week_text(w), fmt_int(r.decisions[w].reviewed), fmt_int(r.decisions[w].approved),
                      fmt_int(r.decisions[w].edited), fmt_int(r.decisions[w].rejected),
                      fmt_num(r.edits[w].mean_distance)] for w in r.history])
    per_cat = r.decisions_by_category.get(r.label, {})
    edit_cat = r.edits[r.label].by_category
    if per_cat:
        lines += [_("By category, {week}:").format(week=week), ""]
        lines += _table([_("category"), _("reviewed"), _("approved unchanged"), _("edited"), _("rejected"),
                         _("automation"), _("mean edit distance")],
                        [[_word(CATEGORY_WORDS, c), fmt_int(n.reviewed), fmt_int(n.approved), fmt_int(n.edited),
                          fmt_int(n.rejected), fmt_pct(n.automation_rate),
                          fmt_num(edit_cat[c][1] if c in edit_cat else None)] for c, n in sorted(per_cat.items())])
    else:
        lines += [_("No reviews in {week}.").format(week=week), ""]
    if r.replacements:
        lines += [_("Most frequent changes in edited drafts (what the model still gets wrong):"), ""]
        lines += _table([_("draft said"), _("supervisor wrote"), _("times")],
                        [[a or _("(nothing)"), b or _("(deleted)"), fmt_int(n)] for a, b, n in
                         ((x.old, x.new, x.count) for x in r.replacements)])
    lines += _chart(charts, "reviews.png", _("Supervisor decisions"))

    lines += _automation_lines(r)  # deliver21

    # policy
    lines += ["## " + _("Policy violations"), "",
              _("{created} drafts created in {week}: {flagged} with violations, {blocked} blocked.").format(
                  created=fmt_int(r.drafts_created), week=week, flagged=fmt_int(r.drafts_flagged),
                  blocked=fmt_int(r.drafts_blocked)), ""]
    if r.violations:
        lines += _table([_("rule"), _("severity"), _("drafts"), _("occurrences")],
                        [[v.rule, _word(SEVERITY_WORDS, v.severity), fmt_int(v.drafts), fmt_int(v.occurrences)]
                         for v in r.violations])
    if r.approved_violation_drafts:
        lines += [_("**{count} approved drafts had violations** (should be 0): drafts {drafts}.").format(
                      count=fmt_int(len(r.approved_violation_drafts)),
                      drafts=", ".join(f"#{d}" for d in r.approved_violation_drafts)), ""]
        lines += _table([_("rule"), _("severity"), _("approved drafts")],
                        [[v.rule, _word(SEVERITY_WORDS, v.severity), fmt_int(v.drafts)] for v in r.approved_violations])
    else:
        lines += [_("0 approved drafts had violations."), ""]
    lines += _chart(charts, "violations.png", _("Violations"))

    lines += weekly_golden_markdown(r.golden)  # golden23: failing golden cases of the week's gates
    if r.rule_proposals:  # rules19: rule proposals mined from edits (`replyloop rules list`)
        by_status = {k: [p for p in r.rule_proposals if p["status"] == k] for k in ("open", "accepted", "dismissed")}
        lines += ["## " + _("Rule proposals"), "",
                  _("{open} open, {accepted} accepted, {dismissed} dismissed (mined from supervisors' edits;"
                    " `replyloop rules list`).").format(open=fmt_int(len(by_status["open"])),
                                                         accepted=fmt_int(len(by_status["accepted"])),
                                                         dismissed=fmt_int(len(by_status["dismissed"]))), ""]
        lines += _table([_("proposal"), _("kind"), _("drafts said"), _("supervisors wrote"), _("edits"),
                         _("supervisors"), _("status")],
                        [[f"#{p['id']}", p["kind"], p["avoid"], p["preferred"] or _("(deleted)"), fmt_int(p["count"]),
                          fmt_int(len(p["supervisors"])), _word(PROPOSAL_WORDS, p["status"])]
                         for p in r.rule_proposals])

    # models
    lines += ["## " + _("Models"), "", _("Champion: {champion}. Canary: {canary}.").format(
        champion=_model(r.champion), canary=_model(r.canary, canary=True)), ""]
    if r.model_rates:
        lines += [_("Approval without edit per model in {week} (95% Wilson interval):").format(week=week), ""]
        lines += _table([_("model"), _("role"), _("reviews"), _("approved unchanged"), _("rate"), _("95% CI")],
                        [[_rate_name(m), _word(ROLE_WORDS, m.role), fmt_int(m.reviews), fmt_int(m.approved),
                          fmt_pct(m.rate), f"{fmt_pct(m.ci_low)} – {fmt_pct(m.ci_high)}"] for m in r.model_rates])
        if difference := r.canary_difference:
            d, low, high = difference
            lines += [_("Canary − champion: {difference} points (95% interval {low} to {high}, Newcombe); an"
                        " interval that spans 0 means the week's reviews cannot tell them apart.").format(
                          difference=_signed(d * 100, 1), low=_signed(low * 100, 1), high=_signed(high * 100, 1)),
                      ""]
    counts = {a: sum(e.action == a for e in r.events) for a in MODEL_ACTIONS}
    lines += [_("{promotions} promotions, {canaries} canary changes, {rollbacks} rollbacks, {rejections}"
                " rejections.").format(promotions=fmt_int(counts["model.promote"]),
                                       canaries=fmt_int(counts["model.canary"]),
                                       rollbacks=fmt_int(counts["model.rollback"]),
                                       rejections=fmt_int(counts["model.reject"])), ""]
    if r.events:
        lines += _table([_("when"), _("action"), _("model"), _("change"), _("by"), _("reason")],
                        [[_when(dt.datetime.fromisoformat(e.at), r.timezone),
                          _word(ACTION_WORDS, e.action.split(".", 1)[1]), f"{e.model_name} (#{e.model_id})",
                          f"{_word(ROLE_WORDS, e.from_status)} → {_word(ROLE_WORDS, e.to_status)}"
                          if e.from_status or e.to_status else "",
                          e.actor, e.reason] for e in r.events])

    # automation
    lines += ["## " + _("Automation rate"), "", _("Share of reviewed drafts approved without edit."), ""]
    lines += _table([_("week"), _("reviewed"), _("approved unchanged"), _("rate"), _("change")],
                    [[week_text(w), fmt_int(n.reviewed), fmt_int(n.approved), fmt_pct(n.automation_rate),
                      fmt_pp(change)] for w, n, change in r.automation_history()])
    lines += _chart(charts, "automation.png", _("Automation rate"))

    if r.chart_labels:
        lines += [_("Chart labels (no CJK font was available for the charts): {labels}.").format(
            labels=", ".join(f"{k} = {v}" for k, v in r.chart_labels.items())), ""]

    # numbers.csv: English column names for scripts, described here in the reader's language
    lines += ["## numbers.csv", "",
              _("Every number of this report is a row of `numbers.csv`. Its column names stay English for"
                " scripts:"), ""]
    lines += _table([_("column"), _("meaning")], [[f"`{name}`", _(meaning)] for name, meaning in CSV_COLUMNS])
    return "\n".join(lines).rstrip() + "\n"


PROPOSAL_WORDS = {"open": N_("open"), "accepted": N_("accepted"), "dismissed": N_("dismissed")}


def _rate_name(m: ModelRate) -> str:
    return f"{m.name} (#{m.model_id})" if m.model_id is not None else _word(MODEL_WORDS, m.name)


def _model(ref: ModelRef | None, canary: bool = False) -> str:
    if ref is None:
        return _("none")
    if canary and ref.percent:
        return _("{model} at {percent}% of conversations").format(model=f"{ref.name} (#{ref.id})",
                                                                   percent=ref.percent)
    return f"{ref.name} (#{ref.id})"


def _chart(charts: dict[str, Path], name: str, title: str) -> list[str]:
    return [f"![{title}]({name})", ""] if name in charts else []
