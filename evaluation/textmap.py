"""Normalise reply text for matching, with a map from every normalised character back to the original.

Normalisation, in order: Unicode NFKC (full-width to half-width), casefold, Traditional to
Simplified Chinese (OpenCC ``t2s``, the C++ binding), then every character that is not a letter or
a digit is dropped (whitespace, punctuation, symbols, zero-width characters, ``_``). So
``全 额 赔 付``, ``全-額賠付`` and ``全\u200b额赔付`` all normalise to ``全额赔付``.

``compact(text)`` is the fast path used on every reply; ``TextMap.build(text)`` is only built when
something matched and a span in the original text has to be reported. Both give the same string.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import opencc

_CC = opencc.OpenCC("t2s")
_DROP = re.compile(r"[\W_]+")
_KEEP = re.compile(r"[^\W_]")


def _t2s(text: str) -> str:
    return _CC.convert(text)


def _t2s_aligned(text: str) -> str:
    """``t2s`` that keeps one output character per input character.

    OpenCC converts by phrase; when that changes the length (rare), fall back to converting one
    character at a time and keeping a character whose conversion is not exactly one character.
    """
    converted = _t2s(text)
    if len(converted) == len(text):
        return converted
    out = []
    for ch in text:
        c = _t2s(ch)
        out.append(c if len(c) == 1 else ch)
    return "".join(out)


def _aligned_fold(text: str) -> str | None:
    """NFKC + casefold + t2s when every step keeps one character per input character, else None."""
    if not unicodedata.is_normalized("NFKC", text):
        return None
    folded = text.casefold()
    if len(folded) != len(text):
        return None
    return _t2s_aligned(folded)


def _units(text: str):
    """(start, end) of each base character with the combining marks that follow it."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or not unicodedata.combining(text[i]):
            yield start, i
            start = i


def _slow_fold(text: str) -> tuple[str, list[int], list[int]]:
    """NFKC + casefold + t2s unit by unit, with the original (start, end) of every output char."""
    pieces, starts, ends = [], [], []
    for s, e in _units(text):
        piece = unicodedata.normalize("NFKC", text[s:e]).casefold()
        pieces.append(piece)
        starts.extend([s] * len(piece))
        ends.extend([e] * len(piece))
    return _t2s_aligned("".join(pieces)), starts, ends


def compact(text: str) -> str:
    """The normalised form of ``text`` that phrases and patterns are matched against."""
    folded = _aligned_fold(text)
    if folded is None:
        folded = _slow_fold(text)[0]
    return _DROP.sub("", folded)


def fold(text: str) -> str:
    """NFKC + casefold + t2s, keeping separators (used on clause prefixes and word checks)."""
    folded = _aligned_fold(text)
    return folded if folded is not None else _slow_fold(text)[0]


@dataclass(frozen=True)
class TextMap:
    """``norm`` plus, for each of its characters, the [start, end) it came from in ``original``."""

    original: str
    norm: str
    starts: list[int]
    ends: list[int]

    @classmethod
    def build(cls, text: str) -> "TextMap":
        folded = _aligned_fold(text)
        if folded is not None:
            starts = [m.start() for m in _KEEP.finditer(folded)]
            ends = [s + 1 for s in starts]
        else:
            folded, all_starts, all_ends = _slow_fold(text)
            keep = [m.start() for m in _KEEP.finditer(folded)]
            starts = [all_starts[i] for i in keep]
            ends = [all_ends[i] for i in keep]
        norm = "".join(folded[i] for i in (m.start() for m in _KEEP.finditer(folded)))
        return cls(original=text, norm=norm, starts=starts, ends=ends)

    def span(self, nstart: int, nend: int) -> tuple[int, int]:
        """Original [start, end) of the normalised slice [nstart, nend) (nend > nstart)."""
        return self.starts[nstart], self.ends[nend - 1]
