"""Normalise reply text for matching, with a map from every normalised character back to the original.

Normalisation, in order: Unicode NFKC (full-width to half-width), casefold, every character that
is not a letter or a digit dropped (whitespace, punctuation, symbols, zero-width characters, ``_``),
then Traditional to Simplified Chinese (OpenCC ``t2s``, the C++ binding, one output character per
input character). So
``全 额 赔 付``, ``全-額賠付`` and ``全\u200b额赔付`` all normalise to ``全额赔付``.

``compact(text)`` runs on every reply: for ordinary text it is one ``str.translate`` (NFKC and
dropping, precomputed per character), a casefold and OpenCC; text the table cannot handle exactly
(combining marks, characters with multi-character NFKC forms such as ㈱) goes character by
character. ``TextMap.build(text)`` is only built when something matched and a span in the original
text has to be reported; it gives the same string.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import opencc

_CC = opencc.OpenCC("t2s")
_DROP = re.compile(r"[\W_]+")
_KEEP = re.compile(r"[^\W_]")


def _fast_table() -> dict[int, str | None]:
    """A ``str.translate`` table doing NFKC + dropping for the characters that allow it.

    A character whose NFKC form holds no letter or digit is dropped (punctuation, spaces,
    zero-width characters, emoji); one whose NFKC form is another single character is replaced
    (full-width letters and digits). Combining marks and multi-character forms are left alone;
    the result is then checked with ``unicodedata.is_normalized``.
    """
    table: dict[int, str | None] = {}
    for cp in list(range(0xD800)) + list(range(0xE000, 0x10000)) + list(range(0x1F000, 0x1FB00)):
        ch = chr(cp)
        if unicodedata.combining(ch):
            continue
        nfkc = unicodedata.normalize("NFKC", ch)
        if not any(c.isalnum() for c in nfkc):
            table[cp] = None
        elif len(nfkc) == 1 and nfkc != ch:
            table[cp] = nfkc
    return table


_TABLE = _fast_table()
_MARK = {cp: (value if value is not None else " ") for cp, value in _TABLE.items()}  # same, length-preserving


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


def _fast_kept(text: str) -> str | None:
    """NFKC + casefold + drop via the table, when that is exact (one char per kept char), else None."""
    kept = text.translate(_TABLE)
    if not unicodedata.is_normalized("NFKC", kept):
        return None
    folded = kept.casefold()
    if len(folded) != len(kept):
        return None
    return folded if folded.isalnum() or not folded else None


def _units(text: str):
    """(start, end) of each base character with the combining marks that follow it."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or not unicodedata.combining(text[i]):
            yield start, i
            start = i


def _slow_kept(text: str) -> tuple[str, list[int], list[int]]:
    """NFKC + casefold + drop unit by unit, with the original (start, end) of every kept char."""
    pieces, starts, ends = [], [], []
    for s, e in _units(text):
        for ch in unicodedata.normalize("NFKC", text[s:e]).casefold():
            if ch.isalnum():
                pieces.append(ch)
                starts.append(s)
                ends.append(e)
    return "".join(pieces), starts, ends


def compact(text: str) -> str:
    """The normalised form of ``text`` that phrases and patterns are matched against."""
    kept = _fast_kept(text)
    if kept is None:
        kept = _slow_kept(text)[0]
    return _t2s_aligned(kept)


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
        kept = _fast_kept(text)
        if kept is not None:
            starts = [m.start() for m in _KEEP.finditer(text.translate(_MARK))]
            ends = [i + 1 for i in starts]
        if kept is None or len(starts) != len(kept):
            kept, starts, ends = _slow_kept(text)
        return cls(original=text, norm=_t2s_aligned(kept), starts=starts, ends=ends)

    def span(self, nstart: int, nend: int) -> tuple[int, int]:
        """Original [start, end) of the normalised slice [nstart, nend) (nend > nstart)."""
        return self.starts[nstart], self.ends[nend - 1]
