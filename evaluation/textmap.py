"""Normalise reply text for matching, with a map from every normalised character back to the original.

Normalisation, in order: every character that is not a letter or a digit is dropped (whitespace,
punctuation, symbols, zero-width characters, combining marks, ``_``); then each remaining
character gets Unicode NFKC (full-width to half-width, ``２４`` -> ``24``) and casefold, keeping
letters and digits only; then Traditional to Simplified Chinese (OpenCC ``t2s``, the C++ binding,
one output character per input character). So ``全 额 赔 付``, ``全-額賠付`` and ``全\u200b额赔付``
all normalise to ``全额赔付``.

``compact(text)`` runs on every reply: for ordinary text it is one regex substitution, an
``is_normalized`` check, a casefold and OpenCC. ``TextMap.build(text)`` is only built when
something matched and a span in the original text has to be reported; it gives the same string.
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


def _aligned(kept: str) -> str | None:
    """NFKC + casefold of already-dropped text when both keep one char per char (the usual case)."""
    if not unicodedata.is_normalized("NFKC", kept):
        return None
    folded = kept.casefold()
    return folded if len(folded) == len(kept) else None


def _per_char(chars: str, index: list[int]) -> tuple[str, list[int]]:
    """NFKC + casefold character by character, keeping letters and digits, with their source index."""
    out, where = [], []
    for ch, i in zip(chars, index):
        for c in unicodedata.normalize("NFKC", ch).casefold():
            if c.isalnum():
                out.append(c)
                where.append(i)
    return "".join(out), where


def compact(text: str) -> str:
    """The normalised form of ``text`` that phrases and patterns are matched against."""
    kept = _DROP.sub("", text)
    folded = _aligned(kept)
    if folded is None:
        folded = _per_char(kept, range(len(kept)))[0]
    return _t2s_aligned(folded)


def fold(text: str) -> str:
    """NFKC + casefold + t2s, keeping separators (used on clause prefixes and word checks)."""
    return _t2s(unicodedata.normalize("NFKC", text).casefold())


@dataclass(frozen=True)
class TextMap:
    """``norm`` plus, for each of its characters, the [start, end) it came from in ``original``."""

    original: str
    norm: str
    starts: list[int]
    ends: list[int]

    @classmethod
    def build(cls, text: str) -> "TextMap":
        index = [m.start() for m in _KEEP.finditer(text)]
        kept = "".join(text[i] for i in index)
        folded = _aligned(kept)
        if folded is None:
            folded, index = _per_char(kept, index)
        return cls(original=text, norm=_t2s_aligned(folded), starts=index, ends=[i + 1 for i in index])

    def span(self, nstart: int, nend: int) -> tuple[int, int]:
        """Original [start, end) of the normalised slice [nstart, nend) (nend > nstart).

        The end is extended over combining marks that follow the last character.
        """
        end = self.ends[nend - 1]
        while end < len(self.original) and unicodedata.combining(self.original[end]):
            end += 1
        return self.starts[nstart], end
