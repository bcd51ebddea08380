"""The promotion gate: a challenger replaces the champion only if every criterion holds.

1. zero block violations of the policy rules in its drafts;
2. mean consistency (embedding cosine) >= ``evaluation.floor``;
3. mean consistency >= the champion's on the same held-out set minus ``evaluation.tolerance``;
4. no category's mean drops by more than ``evaluation.category_margin`` below the champion's;
5-7. the same three for chrF (character n-grams, ``evaluation.chrf_floor``,
   ``evaluation.chrf_tolerance``, ``evaluation.chrf_category_margin``), when chrF was measured.

Unreadable references: when the embedding model's tokenizer maps more than
``evaluation.max_unknown_share`` of the reference characters to its unknown token (the bundled
English MiniLM on Chinese), criteria 2-4 are still measured and shown but not counted
(``counted`` False, marked SKIP), a WARN line names the fix, and chrF decides.

Degenerate and overfit drafts (``evaluation.degeneration``, evaluation/degeneration.py), each with
an absolute limit and one relative to the champion:

8. share of repetitive drafts (repeated character n-grams, a clause repeated in a row);
9. share of drafts whose length collapsed or exploded against the reference;
10. distinct-2 of the drafts as a ratio to the references' (a floor);
11. the largest group of near-identical drafts (one canned reply for many questions), above the
    references' own share.

Each criterion carries the measured value and the limit, so the verdict explains itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from replyloop.i18n import N_, _
from replyloop.phrases import Phrase, localized

UNREADABLE = "embedding model reads the references"
# The criteria's names and fixed details are identifiers stored with the verdict
# (``evaluations.gate``) and printed by --json; ``describe()`` shows them in the reader's language
# (marked here for the catalog; an unknown name or detail is shown as it is).
_NAME_IDS = (N_("block violations"), N_("embedding model reads the references"), N_("mean consistency >= floor"),
             N_("mean consistency vs champion"), N_("largest category drop"), N_("mean chrF >= floor"),
             N_("mean chrF vs champion"), N_("largest chrF category drop"), N_("repetitive drafts"),
             N_("repetitive drafts vs champion"), N_("off-length drafts"), N_("off-length drafts vs champion"),
             N_("distinct-2 vs references"), N_("distinct-2 vs champion"), N_("one reply for many questions"),
             N_("one reply for many questions vs champion"), N_("golden suite failures"))
_DETAIL_IDS = (N_("no champion to compare with"), N_("the policy engine (evaluation.policy) is not available"),
               N_("distinct character bigrams of the drafts / of the references"),
               N_("chrF was not measured, and the embedding model cannot read the references"))
MARKS = {"PASS": N_("PASS"), "FAIL": N_("FAIL"), "WARN": N_("WARN"), "SKIP": N_("SKIP")}


@dataclass
class Criterion:
    name: str
    value: float | int | None
    limit: float | int | None
    passed: bool
    detail: str = ""
    counted: bool = True      # False: shown, but not part of the verdict

    def describe(self) -> str:
        """One line for people, in the current language (names and fixed details translated;
        the measured details with their numbers as recorded)."""
        if self.counted:
            mark = "PASS" if self.passed else "FAIL"
        else:
            mark = "WARN" if self.name == UNREADABLE else "SKIP"
        shown_mark, name, detail = MARKS[mark], self.name, self.detail
        text = _("[{mark}] {name}: {value} (limit {limit})").format(
            mark=_(shown_mark), name=_(name) if name in _NAME_IDS else name, value=_fmt(self.value),
            limit=_fmt(self.limit))
        detail = _(detail) if detail in _DETAIL_IDS else localized(detail)  # stored details: as recorded
        if mark == "SKIP":
            skipped = _("not counted, would pass") if self.passed else _("not counted, would fail")
            detail = "; ".join(filter(None, [detail, skipped]))
        return text + (f" — {detail}" if detail else "")


@dataclass
class GateResult:
    passed: bool
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """One line per failed criterion that counts."""
        return [c.describe() for c in self.criteria if c.counted and not c.passed]

    @property
    def warnings(self) -> list[str]:
        """The unknown-token warning, when it fired."""
        return [c.describe() for c in self.criteria if c.name == UNREADABLE and not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "criteria": [asdict(c) for c in self.criteria]}

    @classmethod
    def from_stored(cls, passed, criteria: list[dict]) -> "GateResult":
        """The verdict as ``evaluations.gate_passed`` / ``evaluations.gate`` stored it."""
        return cls(bool(passed), [Criterion(**c) for c in criteria])

    def verdict(self) -> str:
        head = _("Gate: PASS") if self.passed else _("Gate: FAIL")
        return "\n".join([head, *(f"  {c.describe()}" for c in self.criteria)])


def _fmt(v) -> str:
    if v is None:
        return _("n/a")
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _consistency_criteria(label: str, mean: float, by_category: dict[str, float], champion_mean: float | None,
                          champion_by_category: dict[str, float] | None, floor: float, tolerance: float,
                          category_margin: float) -> list[Criterion]:
    """Floor, tolerance against the champion and category margin of one score (cosine or chrF)."""
    criteria = [Criterion(f"{label} >= floor", mean, floor, mean >= floor)]
    if champion_mean is None:
        criteria.append(Criterion(f"{label} vs champion", mean, None, True, "no champion to compare with"))
    else:
        limit = champion_mean - tolerance
        criteria.append(Criterion(f"{label} vs champion", mean, limit, mean >= limit,
                                  Phrase(N_("champion {champion} - tolerance {tolerance}"), champion=f"{champion_mean:.3f}",
                                         tolerance=f"{tolerance:.3f}")))
    prefix = "" if label == "mean consistency" else label.removeprefix("mean ") + " "
    name = f"largest {prefix}category drop"
    if champion_by_category:
        drops = {c: champion_by_category[c] - by_category.get(c, 0.0) for c in champion_by_category}
        worst = max(drops, key=drops.get)
        ok = drops[worst] <= category_margin
        failed = [f"{c} {by_category.get(c, 0.0):.3f} vs {champion_by_category[c]:.3f}"
                  for c, d in sorted(drops.items()) if d > category_margin]
        detail = (Phrase(N_("dropped: {categories}"), categories="; ".join(failed)) if failed
                  else Phrase(N_("largest drop in {category}"), category=worst))
        criteria.append(Criterion(name, round(drops[worst], 6), category_margin, ok, detail))
    else:
        criteria.append(Criterion(name, None, category_margin, True, "no champion to compare with"))
    return criteria


def decide(*, mean: float, by_category: dict[str, float], block_count: int | None,
           block_rules: dict[str, int] | None = None, champion_mean: float | None = None,
           champion_by_category: dict[str, float] | None = None, floor: float, tolerance: float,
           category_margin: float, block_example: str = "",
           chrf_mean: float | None = None, chrf_by_category: dict[str, float] | None = None,
           champion_chrf_mean: float | None = None, champion_chrf_by_category: dict[str, float] | None = None,
           chrf_floor: float = 0.0, chrf_tolerance: float = 0.0, chrf_category_margin: float = 0.0,
           unknown_share: float | None = None, max_unknown_share: float = 1.0,
           embedding_model: str = "", fix: str = "", degeneration=None, champion_degeneration=None,
           degeneration_limits=None) -> GateResult:
    """The gate verdict. ``block_count`` None means the policy engine could not run (fails).

    ``chrf_mean`` None: chrF was not measured (its criteria are left out). ``unknown_share`` above
    ``max_unknown_share``: the embedding criteria are shown but not counted, and chrF decides."""
    criteria = []
    if block_count is None:
        criteria.append(Criterion("block violations", None, 0, False,
                                  "the policy engine (evaluation.policy) is not available"))
    else:
        rules = ", ".join(f"{rule} ×{n}" for rule, n in sorted((block_rules or {}).items()))
        detail = rules + (Phrase(N_("; e.g. {example}"), example=block_example) if block_example else "") \
            if block_count else ""
        criteria.append(Criterion("block violations", block_count, 0, block_count == 0, detail))
    unreadable = unknown_share is not None and unknown_share > max_unknown_share
    if unreadable:
        model = Phrase(N_(" for {model}"), model=embedding_model) if embedding_model else ""
        decides = Phrase(N_("chrF decides")) if chrf_mean is not None else Phrase(N_("and chrF was not measured"))
        criteria.append(Criterion(
            UNREADABLE, round(unknown_share, 6), max_unknown_share, False,
            Phrase(N_("{share} of the reference characters are unknown tokens{model}: embedding similarity"
                      " is not counted, {decides}"), share=f"{unknown_share:.0%}", model=model, decides=decides)
            + (Phrase(N_("; fix: {fix}"), fix=fix) if fix else ""), counted=False))
    embedding = _consistency_criteria("mean consistency", mean, by_category, champion_mean, champion_by_category,
                                      floor, tolerance, category_margin)
    for c in embedding:
        c.counted = not unreadable
    criteria += embedding
    if chrf_mean is not None:
        criteria += _consistency_criteria("mean chrF", chrf_mean, chrf_by_category or {}, champion_chrf_mean,
                                          champion_chrf_by_category, chrf_floor, chrf_tolerance,
                                          chrf_category_margin)
    elif unreadable:
        criteria.append(Criterion("mean chrF >= floor", None, chrf_floor, False,
                                  "chrF was not measured, and the embedding model cannot read the references"))
    if degeneration is not None and degeneration_limits is not None and degeneration_limits.enabled:
        criteria += degeneration_criteria(degeneration, champion_degeneration, degeneration_limits)
    return GateResult(passed=all(c.passed for c in criteria if c.counted), criteria=criteria)


def _clip(text: str, n: int = 40) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def degeneration_criteria(d, champ, lim) -> list[Criterion]:
    """The degeneration criteria of a ``DegenerationResult`` (``champ``: the champion's, or None)."""
    margin = lim.champion_margin
    out = []

    def share(name, value, limit, champ_value, example):
        detail = Phrase(N_("e.g. “{example}”"), example=_clip(example)) if value > 0 and example else ""
        out.append(Criterion(name, round(value, 6), limit, value <= limit, detail))
        if champ is None:
            out.append(Criterion(f"{name} vs champion", round(value, 6), None, True, "no champion to compare with"))
        else:
            rel = round(champ_value + margin, 6)
            out.append(Criterion(f"{name} vs champion", round(value, 6), rel, value <= rel,
                                 Phrase(N_("champion {champion} + margin {margin}"), champion=f"{champ_value:.3f}",
                                        margin=f"{margin:.3f}")))

    share("repetitive drafts", d.repetitive_share, lim.max_repetitive_share,
          champ.repetitive_share if champ else 0.0, d.examples.get("repetitive", ""))
    share("off-length drafts", d.off_length_share, lim.max_off_length_share,
          champ.off_length_share if champ else 0.0, d.examples.get("off_length", ""))
    out.append(Criterion("distinct-2 vs references", round(d.distinct2_ratio, 6), lim.min_distinct2_ratio,
                         d.distinct2_ratio >= lim.min_distinct2_ratio,
                         "distinct character bigrams of the drafts / of the references"))
    if champ is None:
        out.append(Criterion("distinct-2 vs champion", round(d.distinct2_ratio, 6), None, True,
                             "no champion to compare with"))
    else:
        # A champion more varied than the references (a ratio over 1: often noise) is counted as 1:
        # a challenger that comes closer to the references' own variety has not degenerated.
        counted = min(champ.distinct2_ratio, 1.0)
        rel = round(counted - margin, 6)
        if champ.distinct2_ratio > 1.0:
            detail = Phrase(N_("champion {champion}, counted as the references' {counted}, - margin {margin}"),
                            champion=f"{champ.distinct2_ratio:.3f}", counted=f"{counted:.3f}", margin=f"{margin:.3f}")
        else:
            detail = Phrase(N_("champion {champion} - margin {margin}"),
                            champion=f"{champ.distinct2_ratio:.3f}", margin=f"{margin:.3f}")
        out.append(Criterion("distinct-2 vs champion", round(d.distinct2_ratio, 6), rel, d.distinct2_ratio >= rel,
                             detail))
    limit = round(max(lim.max_template_share, d.reference_template_share + lim.max_template_share), 6)
    limit = min(limit, 1.0)
    detail = Phrase(N_("{share} of the drafts are near-identical to “{example}”; references {references}"),
                    share=f"{d.template_share:.0%}", example=_clip(d.template_example),
                    references=f"{d.reference_template_share:.0%}")
    out.append(Criterion("one reply for many questions", round(d.template_share, 6), limit,
                         d.template_share <= limit, detail))
    if champ is None:
        out.append(Criterion("one reply for many questions vs champion", round(d.template_share, 6), None, True,
                             "no champion to compare with"))
    else:
        rel = round(champ.template_share + margin, 6)
        out.append(Criterion("one reply for many questions vs champion", round(d.template_share, 6), rel,
                             d.template_share <= rel,
                             Phrase(N_("champion {champion} + margin {margin}"),
                                    champion=f"{champ.template_share:.3f}", margin=f"{margin:.3f}")))
    return out


# golden23: one more criterion (the golden suites, ``evaluation.golden.gate_check``) added to a verdict
def with_criterion(result: GateResult, criterion: Criterion) -> GateResult:
    """``result`` with ``criterion`` appended and the verdict recomputed over the counted criteria."""
    criteria = [*result.criteria, criterion]
    return GateResult(passed=all(c.passed for c in criteria if c.counted), criteria=criteria)
