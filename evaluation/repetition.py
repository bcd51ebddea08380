"""Degeneration: how much of a reply repeats itself (``您好您好您好…``, a looping sentence).

``repeated_ngram_share(text)`` is the share of the character n-grams of the normalised reply
(``evaluation.textmap.compact``: no spaces or punctuation, NFKC, casefold, Traditional to
Simplified) that already occurred earlier in it. A normal reply scores near 0 (a 40-character
Chinese reply rarely repeats a 4-gram); a reply stuck in a loop approaches 1. Used by the golden
suites' ``not-repetitive`` assertion; a gate measure can reuse the same function.
"""

from __future__ import annotations

from evaluation.textmap import TextMap, compact

DEFAULT_N = 4


def repeated_ngram_share(text: str, n: int = DEFAULT_N) -> float:
    """Share (0..1) of the character ``n``-grams of ``compact(text)`` that repeat an earlier one."""
    norm = compact(text or "")
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
