"""Degenerate and overfit drafts: repetition, length collapse, and one canned reply for every question.

The failure the seed article warns about after a few months of retraining: "the loss falls below
1.5 but the replies start repeating, e.g. 请联系我们 over and over". Embedding similarity and chrF
average it away; these measures do not.

Per draft:
- ``repeat_share``: the share of its character n-grams (``ngram``; text normalised like the
  policy rules, so it works on Chinese) that repeat an earlier n-gram of the same draft;
- ``clause_run``: the longest run of the same clause in a row (clauses split at punctuation);
- ``length_ratio``: draft characters / reference characters (a draft cut at the token cap,
  ``max_new_tokens``, is not counted as collapsed).

A draft is *repetitive* when ``repeat_share`` > ``max_repeat_share`` or ``clause_run`` >=
``max_clause_run``, and *off-length* when its length ratio is outside
[``min_length_ratio``, ``max_length_ratio``].

Across drafts:
- ``distinct2``: distinct character bigrams / all bigrams over the drafts, reported as a ratio to
  the same measure over the references (so a set of short answers is not penalised);
- ``template_share``: the largest group of drafts near-identical to one draft (rapidfuzz ratio >=
  ``near_identical``), as a share of all drafts. The same measure over the references is the
  baseline: questions that share one approved answer are not degenerate.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from replyloop.evaluation.textmap import TextMap, compact

DEFAULT_N = 4

CLAUSE_SPLIT = re.compile(r"[，,。.!！?？;；:：、\n]+")


def _chars(text: str) -> str:
    """The text as the policy engine compares it (``evaluation.textmap.compact``: no spaces or
    punctuation, NFKC, casefold, Traditional to Simplified)."""
    return compact(text or "")


def repeated_ngram_share(text: str, n: int = DEFAULT_N) -> float:
    """Share (0..1) of the character ``n``-grams of the normalised text that repeat an earlier one:
    near 0 for a normal reply (a 40-character Chinese reply rarely repeats a 4-gram), towards 1
    for a reply stuck in a loop. The golden suites' ``not-repetitive`` assertion uses it too."""
    norm = _chars(text)
    total = len(norm) - n + 1
    if total <= 0:
        return 0.0
    seen: set[str] = set()
    repeats = 0
    for i in range(total):
        gram = norm[i:i + n]
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


repeat_share = repeated_ngram_share


def first_repeat(text: str, n: int = DEFAULT_N) -> tuple[int, int] | None:
    """``[start, end)`` in ``text`` of the first n-gram that repeats an earlier one, or None."""
    tm = TextMap.build(text or "")
    seen: set[str] = set()
    for i in range(len(tm.norm) - n + 1):
        gram = tm.norm[i:i + n]
        if gram in seen:
            return tm.span(i, i + n)
        seen.add(gram)
    return None


def clause_run(text: str) -> int:
    """The longest run of the same clause in a row (1 for a text without repeats, 0 for an empty one)."""
    clauses = [_chars(c) for c in CLAUSE_SPLIT.split(text or "")]
    clauses = [c for c in clauses if c]
    best = run = 0
    previous = None
    for clause in clauses:
        run = run + 1 if clause == previous else 1
        best = max(best, run)
        previous = clause
    return best


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct character n-grams / all n-grams over ``texts`` (1.0 when there are none)."""
    counts: Counter = Counter()
    for text in texts:
        chars = _chars(text)
        counts.update(chars[i:i + n] for i in range(len(chars) - n + 1))
    total = sum(counts.values())
    return len(counts) / total if total else 1.0


def template_share(texts: list[str], near_identical: float = 90.0) -> tuple[float, str]:
    """(share of texts in the largest group near-identical to one text, that text)."""
    from rapidfuzz import fuzz, process

    keys = [_chars(t) for t in texts]
    if not keys:
        return 0.0, ""
    matrix = process.cdist(keys, keys, scorer=fuzz.ratio, score_cutoff=near_identical, workers=1)
    counts = (matrix >= near_identical).sum(axis=1)
    best = int(counts.argmax())
    return float(counts[best]) / len(keys), texts[best]


@dataclass
class DegenerationResult:
    n: int
    repetitive_share: float          # share of drafts that are repetitive
    off_length_share: float          # share of drafts whose length collapsed or exploded
    distinct2_ratio: float           # distinct-2 of the drafts / distinct-2 of the references
    template_share: float            # largest near-identical group of drafts / n
    reference_template_share: float  # the same over the references (the baseline)
    template_example: str = ""
    per_draft: list[dict] = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # measure -> one offending draft

    def to_dict(self, per_draft: bool = False) -> dict:
        d = asdict(self)
        if not per_draft:
            d.pop("per_draft")
        return d


def measure(drafts: list[str], references: list[str], limits=None,
            truncated: list[bool] | None = None) -> DegenerationResult:
    """Every degeneration measure of ``drafts`` against their ``references``.

    ``truncated``: per draft, whether generation stopped at the token cap (``max_new_tokens``): such
    a draft is short because of the cap, not collapsed, so only explosion counts for it."""
    if limits is None:
        from replyloop.config import DegenerationConfig

        limits = DegenerationConfig()
    lim = limits
    per, repetitive, off = [], [], []
    truncated = truncated or [False] * len(drafts)
    for draft, ref, cut in zip(drafts, references, truncated):
        share = repeat_share(draft, lim.ngram)
        run = clause_run(draft)
        ratio = len(_chars(draft)) / max(1, len(_chars(ref)))
        is_rep = share > lim.max_repeat_share or run >= lim.max_clause_run
        is_off = (ratio < lim.min_length_ratio and not cut) or ratio > lim.max_length_ratio
        per.append({"repeat_share": round(share, 4), "clause_run": run, "length_ratio": round(ratio, 4),
                    "at_token_cap": bool(cut), "repetitive": is_rep, "off_length": is_off})
        if is_rep:
            repetitive.append(draft)
        if is_off:
            off.append(draft)
    n = len(per)
    ref_distinct = distinct_n(references)
    tshare, texample = template_share(drafts, lim.near_identical)
    rshare, _ = template_share(references, lim.near_identical)
    examples = {}
    if repetitive:
        examples["repetitive"] = repetitive[0]
    if off:
        examples["off_length"] = off[0]
    return DegenerationResult(
        n=n, repetitive_share=len(repetitive) / n if n else 0.0, off_length_share=len(off) / n if n else 0.0,
        distinct2_ratio=distinct_n(drafts) / ref_distinct if ref_distinct else 1.0, template_share=tshare,
        reference_template_share=rshare, template_example=texample, per_draft=per, examples=examples)
