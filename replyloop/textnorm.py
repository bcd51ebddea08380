"""Text normalisation shared by dedupe, snapshots and splits."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")

# A fast exact path for the text of this dataset (Chinese, ASCII, CJK and full-width
# punctuation): for these characters NFKC is a per-character mapping (none decomposes to a
# combining mark, none composes with a neighbour), so only the few that NFKC changes (full-width
# ， ？ ！ Ａ, ideographic space, …) need replacing. Anything else takes unicodedata's path;
# tests/test_textnorm.py checks every fast character and mixed strings against it.
_WIDE_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF))  # CJK ideographs: NFKC leaves them alone


def _fast_tables() -> tuple[re.Pattern, re.Pattern, dict[str, str]]:
    small = [*range(0x09, 0x0E), *range(0x1C, 0x7F), 0xA0, *range(0x2000, 0x2070), *range(0x3000, 0x3040),
             *range(0xFF01, 0xFF61), *range(0xFFE0, 0xFFEF),
             *range(0x2190, 0x2200), *range(0x2460, 0x2500), *range(0x25A0, 0x2700)]  # → ① ● ★ in replies
    chars, changed = [], {}
    for code in small:
        ch = chr(code)
        if any(unicodedata.combining(d) for d in unicodedata.normalize("NFKD", ch)):
            continue  # e.g. ￣ (FFE3) -> space + combining macron: not per-character safe
        chars.append(ch)
        nfkc = unicodedata.normalize("NFKC", ch)
        if nfkc != ch:
            changed[ch] = nfkc
    klass = "".join(re.escape(c) for c in chars) + "".join(f"{chr(a)}-{chr(b)}" for a, b in _WIDE_RANGES)
    return re.compile(f"[{klass}]*"), re.compile("[" + "".join(re.escape(c) for c in changed) + "]"), changed


_FAST, _CHANGED, _NFKC_OF = _fast_tables()
# the whitespace a fast text can hold after NFKC and casefold (what ``str.split()`` removes);
# the wide ranges hold none
_FAST_SPACES = sorted({c for ch in _FAST.pattern for c in unicodedata.normalize("NFKC", ch).casefold()
                       if c.isspace()})
# the fast class plus NUL, the separator ``compact_many`` joins texts with (never in a stored text)
_FAST_JOINED = re.compile(_FAST.pattern[:-2] + "\x00]*")


def nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, several times faster on Chinese text."""
    if _FAST.fullmatch(text):
        for ch in set(_CHANGED.findall(text)):
            text = text.replace(ch, _NFKC_OF[ch])
        return text
    return unicodedata.normalize("NFKC", text)


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), case-folded, whitespace collapsed and trimmed."""
    return " ".join(nfkc(text).casefold().split())


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compact(text: str) -> str:
    """``normalize`` with all whitespace removed (``怎么 退货`` equals ``怎么退货``)."""
    return "".join(nfkc(text).casefold().split())


def compact_many(texts: list[str]) -> list[str]:
    """``[compact(t) for t in texts]``, done on the joined texts at once when they are all in the
    fast character set (an import's chunk of thousands of rows: a few C calls instead of
    several per row)."""
    if len(texts) <= 16:
        return [compact(t) for t in texts]
    joined = "\x00".join(texts)
    if _FAST_JOINED.fullmatch(joined):
        found = _CHANGED.search(joined)
        while found:  # one pass per distinct character NFKC changes (its NFKC is never one of them)
            joined = joined.replace(found.group(), _NFKC_OF[found.group()])
            found = _CHANGED.search(joined, found.start())
        joined = joined.casefold()
        for space in _FAST_SPACES:
            if space in joined:
                joined = joined.replace(space, "")
        out = joined.split("\x00")
        if len(out) == len(texts):  # a NUL inside a text would shift the rest
            return out
    half = len(texts) // 2  # the few texts outside the fast set take unicodedata's path
    return compact_many(texts[:half]) + compact_many(texts[half:])


def dedupe_key(prompt: str, response: str) -> str:
    """Two samples are duplicates when prompt and response match after ``compact``."""
    return sha256(compact(prompt) + "\x1f" + compact(response))


def prompt_key(compacted: str) -> str:
    """``samples.prompt_key`` of a prompt already passed through ``compact``: a short hash that
    finds the same prompt with another answer."""
    return sha256(compacted)[:16]
