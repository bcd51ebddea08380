"""The fast NFKC path gives exactly unicodedata's result (stored dedupe keys and held-out
splits depend on it)."""

import random
import re
import unicodedata

from replyloop import textnorm


def slow_compact(text: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip())


def fast_chars() -> list[str]:
    return [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and textnorm._FAST.fullmatch(chr(c))]


def test_every_fast_character_normalises_like_unicodedata():
    chars = fast_chars()
    assert len(chars) > 27000  # the CJK ideographs and the punctuation around them
    for ch in chars:
        assert textnorm.nfkc(ch) == unicodedata.normalize("NFKC", ch), hex(ord(ch))


def test_mixed_strings_match_unicodedata():
    rng = random.Random(15)
    chars = fast_chars()
    tricky = ["e\u0301", "\u3099", "ｶﾞ", "한", "\u1161", "\u0301", "ﬁ", "Σ", "ß", "\uffe3", "\u203e", "①", "㍿", "\u2028"]
    for _ in range(50_000):
        text = "".join(rng.choice(chars) if rng.random() < 0.8 else rng.choice(tricky) for _ in range(rng.randint(0, 12)))
        assert textnorm.compact(text) == slow_compact(text), repr(text)
        assert textnorm.normalize(text) == re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()
    assert textnorm.compact("ＡＢＣ　怎么 退货？") == "abc怎么退货?"


def test_compact_many_matches_compact_text_by_text():
    """The import's bulk keys: one join of a chunk, the same keys as ``compact`` on each text,
    also with texts outside the fast set and a NUL (which would shift the split) among them."""
    rng = random.Random(151)
    chars = fast_chars()
    spaces = [" ", "\t", "\n", "\u3000", "\u00a0", "\u2028", "\x1f", "\r"]
    tricky = ["e\u0301", "ｶﾞ", "ß", "Σ", "\u0085", "\x00", "→", "①", "…", "，", "Ａ"]
    for _ in range(300):
        texts = ["".join(rng.choice(chars) if rng.random() < 0.7 else rng.choice(spaces) if rng.random() < 0.7
                         else rng.choice(tricky) for _ in range(rng.randint(0, 15))) for _ in range(rng.randint(0, 60))]
        if rng.random() < 0.5:  # mostly fast texts: the bulk path
            texts = [t for t in texts if textnorm._FAST.fullmatch(t)]
        assert textnorm.compact_many(texts) == [textnorm.compact(t) for t in texts], texts
