"""Normalise reply text for matching, with a map from every normalised character back to the original.

Normalisation, in order: every character that is not a letter or a digit is dropped (whitespace,
punctuation, symbols, zero-width characters, combining marks, ``_``); then each remaining
character gets Unicode NFKC (full-width to half-width, ``２４`` -> ``24``) and casefold, keeping
letters and digits only; then Traditional to Simplified Chinese (OpenCC ``t2s``, the C++ binding,
one output character per input character; text without any character that OpenCC converts on
its own is left as it is, which skips OpenCC for ordinary simplified text). So ``全 额 赔 付``, ``全-額賠付`` and ``全\u200b额赔付``
all normalise to ``全额赔付``.

``compact(text)`` runs on every reply: for ordinary text it is a few ``str.replace`` (the common
punctuation, see ``drop``), an ``isalnum``, an ``is_normalized`` check, a casefold and OpenCC.
``TextMap.build(text)`` is only built when something matched and a span in the original text has
to be reported; it gives the same string.
"""

from __future__ import annotations

import re
import unicodedata
from itertools import compress, count
from dataclasses import dataclass

import opencc

_CC = opencc.OpenCC("t2s")
_DROP = re.compile(r"[\W_]+")
_KEEP = re.compile(r"[^\W_]")


def _traditional_chars() -> re.Pattern:
    """A character class of the CJK characters that ``t2s`` changes on their own (about 10 ms to build)."""
    chars = "".join(chr(cp) for blocks in ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00)) for cp in range(*blocks))
    converted = _CC.convert("\n".join(chars)).split("\n")
    changed = [c for c, s in zip(chars, converted) if c != s] if len(converted) == len(chars) else list(chars)
    return re.compile("[" + "".join(changed) + "]|[\U00020000-\U0003FFFF]")


_TRADITIONAL = _traditional_chars()
_has_traditional = _TRADITIONAL.search
_drop = _DROP.sub
_is_normalized = unicodedata.is_normalized

# The punctuation and spaces of ordinary replies. None of them is a letter or a digit, so removing
# them with ``str.replace`` (a C search per character, no match objects) and then, only when
# something else is left (``str.isalnum`` says so), whatever else ``[\W_]`` matches gives exactly
# ``_DROP.sub("", text)``: the drop is a filter of single characters (``[^\W_]`` is ``str.isalnum``).
COMMON_DROPPED = "，。！？ ：、"
if any(ch.isalnum() or not _DROP.fullmatch(ch) for ch in COMMON_DROPPED):  # pragma: no cover - a broken edit
    raise AssertionError("COMMON_DROPPED must hold only characters that normalisation drops")


def drop(text: str) -> str:
    """``_DROP.sub("", text)`` (every character that is not a letter or a digit removed), faster
    for ordinary replies: ``normalise`` inlines the same lines."""
    kept = (text.replace("，", "").replace("。", "").replace("！", "").replace("？", "").replace(" ", "")
            .replace("：", "").replace("、", ""))
    return kept if kept.isalnum() else _drop("", kept)


def _t2s(text: str) -> str:
    return _CC.convert(text)


def _t2s_aligned(text: str) -> str:
    """``t2s`` that keeps one output character per input character.

    OpenCC converts by phrase; when that changes the length (rare), fall back to converting one
    character at a time and keeping a character whose conversion is not exactly one character.
    """
    if not _TRADITIONAL.search(text):
        return text  # nothing to convert: simplified Chinese, Latin, digits
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


def normalise(text: str) -> tuple[str, bool]:
    """``(compact(text), aligned)``; ``aligned``: the i-th normalised character comes from the
    i-th letter or digit of ``text`` (the usual case), so ``TextMap.aligned`` can map offsets.

    Runs on every reply, so the usual case (already NFKC, casefold keeps the length, nothing
    Traditional) is a few ``str.replace`` and an ``isalnum`` (``drop``), an ``is_normalized``
    check, a casefold and one regex search, with no other function calls.
    """
    kept = (text.replace("，", "").replace("。", "").replace("！", "").replace("？", "").replace(" ", "")
            .replace("：", "").replace("、", ""))   # ``drop(text)``, inlined: this runs on every reply
    if not kept.isalnum():
        kept = _drop("", kept)
    if _is_normalized("NFKC", kept):
        folded = kept.casefold()
        if len(folded) == len(kept):
            return (_t2s_aligned(folded) if _has_traditional(folded) else folded), True
    return _t2s_aligned(_per_char(kept, range(len(kept)))[0]), False


def compact(text: str) -> str:
    """The normalised form of ``text`` that phrases and patterns are matched against."""
    return normalise(text)[0]


def fold(text: str) -> str:
    """NFKC + casefold + t2s, keeping separators (used on clause prefixes and word checks)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _t2s(folded) if _TRADITIONAL.search(folded) else folded


@dataclass(frozen=True)
class TextMap:
    """``norm`` plus, for each of its characters, the index of the original character it came from."""

    original: str
    norm: str
    starts: list[int]   # every normalised character comes from exactly one original character

    @classmethod
    def build(cls, text: str) -> "TextMap":
        index = list(compress(count(), map(str.isalnum, text)))  # the positions of [^\W_]
        kept = _DROP.sub("", text)
        folded = _aligned(kept)
        if folded is None:
            folded, index = _per_char(kept, index)
        return cls(original=text, norm=_t2s_aligned(folded), starts=index)

    @classmethod
    def aligned(cls, text: str, norm: str) -> "TextMap":
        """The map of ``text`` when ``normalise(text)`` gave ``(norm, True)`` (same as ``build``)."""
        return cls(original=text, norm=norm, starts=list(compress(count(), map(str.isalnum, text))))

    def span(self, nstart: int, nend: int) -> tuple[int, int]:
        """Original [start, end) of the normalised slice [nstart, nend) (nend > nstart).

        The end is extended over combining marks that follow the last character.
        """
        end = self.starts[nend - 1] + 1
        while end < len(self.original) and unicodedata.combining(self.original[end]):
            end += 1
        return self.starts[nstart], end
