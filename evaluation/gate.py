"""The promotion gate: a challenger replaces the champion only if every criterion holds.

1. zero block violations of the policy rules in its drafts;
2. mean consistency >= ``evaluation.floor``;
3. mean consistency >= the champion's on the same held-out set minus ``evaluation.tolerance``;
4. no category's mean drops by more than ``evaluation.category_margin`` below the champion's.

Each criterion carries the measured value and the limit, so the verdict explains itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Criterion:
    name: str
    value: float | int | None
    limit: float | int | None
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        value = _fmt(self.value)
        text = f"[{mark}] {self.name}: {value} (limit {_fmt(self.limit)})"
        return text + (f" — {self.detail}" if self.detail else "")


@dataclass
class GateResult:
    passed: bool
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """One line per failed criterion."""
        return [c.describe() for c in self.criteria if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "criteria": [asdict(c) for c in self.criteria]}

    @classmethod
    def from_stored(cls, passed, criteria: list[dict]) -> "GateResult":
        """The verdict as ``evaluations.gate_passed`` / ``evaluations.gate`` stored it."""
        return cls(bool(passed), [Criterion(**c) for c in criteria])

    def verdict(self) -> str:
        head = "Gate: PASS" if self.passed else "Gate: FAIL"
        return "\n".join([head, *(f"  {c.describe()}" for c in self.criteria)])


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def decide(*, mean: float, by_category: dict[str, float], block_count: int | None,
           block_rules: dict[str, int] | None = None, champion_mean: float | None = None,
           champion_by_category: dict[str, float] | None = None, floor: float, tolerance: float,
           category_margin: float, block_example: str = "") -> GateResult:
    """The gate verdict. ``block_count`` None means the policy engine could not run (fails)."""
    criteria = []
    if block_count is None:
        criteria.append(Criterion("block violations", None, 0, False,
                                  "the policy engine (evaluation.policy) is not available"))
    else:
        rules = ", ".join(f"{rule} ×{n}" for rule, n in sorted((block_rules or {}).items()))
        detail = rules + (f"; e.g. {block_example}" if block_example else "") if block_count else ""
        criteria.append(Criterion("block violations", block_count, 0, block_count == 0, detail))
    criteria.append(Criterion("mean consistency >= floor", mean, floor, mean >= floor))
    if champion_mean is None:
        criteria.append(Criterion("mean consistency vs champion", mean, None, True,
                                  "no champion to compare with"))
    else:
        limit = champion_mean - tolerance
        criteria.append(Criterion("mean consistency vs champion", mean, limit, mean >= limit,
                                  f"champion {champion_mean:.3f} - tolerance {tolerance:.3f}"))
    if champion_by_category:
        drops = {c: champion_by_category[c] - by_category.get(c, 0.0) for c in champion_by_category}
        worst = max(drops, key=drops.get)
        ok = drops[worst] <= category_margin
        failed = [f"{c} {by_category.get(c, 0.0):.3f} vs {champion_by_category[c]:.3f}"
                  for c, d in sorted(drops.items()) if d > category_margin]
        detail = ("dropped: " + "; ".join(failed)) if failed else f"largest drop in {worst}"
        criteria.append(Criterion("largest category drop", round(drops[worst], 6), category_margin, ok, detail))
    else:
        criteria.append(Criterion("largest category drop", None, category_margin, True,
                                  "no champion to compare with"))
    return GateResult(passed=all(c.passed for c in criteria), criteria=criteria)
