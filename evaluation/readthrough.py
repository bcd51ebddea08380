"""Read a reply the way a customer sees it, before policies are matched.

``read_through(text)`` returns ``None`` for ordinary text (one regex search decides that), else a
``Clean`` with the text as rendered and, for every one of its characters, the ``[start, end)`` of
the original characters it came from, so spans found in the clean text map back to the reply.

What is read through, in order:

1. HTML: comments are dropped, struck-through content (``<del>``, ``<s>``, ``<strike>``) is
   dropped with its tags (deleted text is not read, so ``<del>不</del>`` negates nothing), other
   tags are dropped (quoted attribute values may hold ``>``: ``<b title="a>b">``), entities are
   decoded with the stdlib ``html.unescape`` (``&#36180;`` -> 赔, ``&amp;``). Slack mrkdwn
   ``<url|text>`` reads as ``text``; ``<url>``, ``<@U123>`` are dropped. What is not markup, or is
   left open (an unterminated ``<!--``, a ``<del>`` never closed), is read as text: the customer
   may well see it.

   Why regexes and not an HTML parser: every character of the clean text must carry the offset of
   the original characters it came from (spans index the reply). selectolax, lxml and html5lib
   return trees without character offsets, and markdown-it-py maps tokens to lines only. The
   stdlib's ``html.parser`` does report positions, but on Python 3.11.7 it is quadratic on hostile
   input (``'<a ' * 20000`` took 44 s of CPU) and raises on some (``'<![' * 20000``:
   AssertionError); replies carry customers' and models' text. Each regex here reads one kind of
   token, bounded, so a reply is read in linear time (tests/test_policy_hostile.py).
   A bogus comment (``<?php ?>``, ``<!DOCTYPE html>``) is dropped; a tag that starts a line or a
   box (``<br>``, ``<p>``, ``<div>``, ``<li>``, ...) reads as a space (``full<br>compensation`` is
   two words). Numeric entities need no ``;`` (``&#36180付``), nor named ones before a character
   that is not a letter or digit (``&nbsp赔付``), as in browsers.
2. Markdown: ``~~struck~~`` is dropped, ``[text](url)`` / ``![alt](url)`` (the url may hold balanced
   parentheses) and reference links ``[text][ref]`` read as the text.
   Emphasis marks (``**``, ``*``, ``_``) need nothing: normalisation drops punctuation anyway.
3. URL-encoding: a run of ``%XX`` escapes that decodes as UTF-8 (``%E8%B5%94`` -> 赔).
4. Bidi overrides: a run after RIGHT-TO-LEFT OVERRIDE (U+202E), up to POP DIRECTIONAL FORMATTING,
   another bidi control or the end of the line, is shown reversed, so it is read reversed
   (``全额\u202e付赔`` shows 全额赔付).
5. Numbers: digits of other scripts (Arabic-Indic, Devanagari, ...) become ASCII digits (NFKC
   already folds full-width, circled, parenthesised, full-stop, super/subscript and mathematical
   digits); a run of Chinese numerals (廿/卅/卌, 两, 〇, financial 壹贰叁, digit-by-digit 二四,
   Traditional 貳拾肆) becomes ASCII digits with ``cn2an`` when it is next to an ASCII digit
   (``二4``, ``2四``) or followed by a time unit (小时, 个小时, 天, 日, 分钟, 周, h ...); other
   numerals (``一定``, ``十分``) are left alone.
6. Look-alike letters: in a word that has a Latin letter, Cyrillic and Greek letters that Unicode's
   confusables data (the ``confusable-homoglyphs`` package) lists as a Latin letter's homoglyph
   become that letter (``withоut`` with a Cyrillic о), and so do the Latin letters beyond Latin-1,
   Armenian and Cherokee letters it lists (dotless ``ı``, ``ǀ``, small capitals); squared and
   negative squared letters read as letters (``🄵🅄🄻🄻``); ``1`` after a letter, not before a digit
   (``fu1l``, ``fu11``) and ``I`` after a lower-case letter become ``l`` (``fuIl``, ``fuII``); ``l`` between capitals becomes
   ``i`` (``COMPENSATlON``).
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

__all__ = ["Clean", "has_other_reading", "needs_read_through", "read_through"]

_NUM = "〇零一二两三四五六七八九十廿卅卌百千万壹贰叁肆伍陆柒捌玖拾佰仟貳參陸兩萬"
# Traditional forms, and 卅 (30) and 卌 (40), which cn2an does not read (it reads 廿, 20)
_TRAD_NUM = str.maketrans({"貳": "贰", "參": "叁", "陸": "陆", "兩": "两", "萬": "万", "卅": "三十", "卌": "四十"})
_UNIT = r"(?:个|個)?(?:小时|小時|钟头|鐘頭|天|日|工作日|分钟|分鐘|周|週|星期|h(?![a-z])|hour)"
# Tried at the start of a run only (``(?<![...])``): tried at every position of a long run (a
# reply of numerals and markup, '<b>二十四' * 8000), each try scans to the run's end: quadratic.
_CN_RUN = re.compile(rf"(?<![{_NUM}])(?:[{_NUM}]+(?={_UNIT})|(?<=[0-9])[{_NUM}]+|[{_NUM}]+(?=[0-9]))")
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")
# Enclosed / parenthesised / full-stop digits, Kangxi radicals, CJK compatibility ideographs:
# NFKC per character, keeping its letters and digits (⑵ -> 2, ⒋ -> 4, ⼆ -> 二).
# and the Enclosed Alphanumeric Supplement (🄵 squared, 🅵 negative squared, 🄐 parenthesised letters;
# not the regional indicators of flags).
_COMPAT_RANGES = "\u2460-\u24ff\u2776-\u2793\u3251-\u32bf\u2f00-\u2fdf\uf900-\ufaff\U0001f100-\U0001f1e5"
_COMPAT = re.compile(rf"[{_COMPAT_RANGES}]")
# Letters that may stand in for Latin ones: Greek, Cyrillic, and the Latin letters beyond Latin-1
# that Unicode's confusables list as look-alikes (dotless ı, ǀ, ɑ, small capitals ᴄ ᴏ), Armenian
# (օ) and Cherokee (Ꭺ). Named for its first members; its lookups below cover every range.
_GREEK_CYRILLIC = (r"\u0370-\u03ff\u1f00-\u1fff\u0400-\u052f\u0100-\u02af\u0530-\u058f\u13a0-\u13ff"
                   r"\u1d00-\u1dbf\ua720-\ua7ff")
_LOOKALIKE_RANGES = ((0x370, 0x400), (0x1F00, 0x2000), (0x400, 0x530), (0x100, 0x2B0), (0x530, 0x590),
                     (0x13A0, 0x1400), (0x1D00, 0x1DC0), (0xA720, 0xA800))
# From a word's start only: tried at every position, a long word without a look-alike is scanned
# once per position ('a' * 20000 + ' о' took 1.4 s).
_LATIN_WORD = re.compile(rf"(?<![A-Za-z{_GREEK_CYRILLIC}0-9])[A-Za-z{_GREEK_CYRILLIC}0-9]*[{_GREEK_CYRILLIC}]"
                         rf"[A-Za-z{_GREEK_CYRILLIC}0-9]*")
_ONE_ELL = re.compile(r"(?<=[A-Za-z])1+(?![0-9])|(?<=[a-z])I+")   # fu1l, fu11, fuIl
_ELL_EYE = re.compile(r"(?<=[A-Z])l(?=[A-Z])")   # COMPENSATlON: an l among capitals is an I

# HTML and Slack: comments, struck-through elements, tags, Slack links; entities separately.
_HTML = re.compile(
    r"<!--.{0,1000}?-->"  # bounded: an unterminated (or longer) comment is read as text
    r"|<(?:\?|!(?!--))[^<>]{0,500}>"  # <?php ?>, <!DOCTYPE html>: a bogus comment, not shown
    r"|<(del|s|strike)\b[^<>]*>.{0,500}?</\1\s*>"  # bounded: hostile input stays linear
    r"|<(?P<url>(?:https?|mailto|tel):[^<>|\s]*|[@#!][^<>|\s]*)(?:\|(?P<label>[^<>]*))?>"
    # a tag; its attribute values may be quoted and hold ">" (title="a>b"), not "<"
    r"|</?(?P<tag>[A-Za-z][A-Za-z0-9-]*)(?:\s(?:[^<>\"']|\"[^\"<]{0,500}\"|'[^'<]{0,500}')*)?/?>",
    re.S | re.I,
)
# Browsers also decode a numeric reference without its ';' (&#36180付), and a named one followed
# by something other than a letter or digit (&nbsp赔付); html.unescape does the same.
_ENTITY = re.compile(r"&(?:#[0-9]{1,7};?|#[xX][0-9a-fA-F]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31}(?:;|(?![A-Za-z0-9])))")
# links: [text](url), a url may hold balanced parentheses (wiki/Foo_(bar)) or be <in angle brackets>,
# with a "title", 'title' or (title), spaces inside the parentheses; reference links [text][ref]
_MARKDOWN = re.compile(r"~~.{0,500}?~~|!?\[(?P<text>[^\[\]\n]*)\]"
                       # spaces bounded: three runs of them side by side would backtrack cubically
                       r"(?:\([ \t]{0,8}(?:<[^<>\n]{0,500}>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
                       r"(?:[ \t]{1,8}(?:\"[^\"\n]{0,200}\"|'[^'\n]{0,200}'|\([^()\n]{0,200}\)))?[ \t]{0,8}\)"
                       r"|\[[^\[\]\n]{0,100}\])", re.S)
_URLENC = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# RLO: its run (bounded) is displayed right to left
_RLO = re.compile("\u202e([^\u202a-\u202e\u2066-\u2069\n\r\u2029]{1,500})\u202c?")

# Deciding that nothing here applies (most replies) must cost little next to normalisation:
# character-class and literal-prefix searches only, no lookbehind at every position.
_DIGITS_ELSEWHERE = (  # blocks with decimal digits that NFKC leaves alone (Arabic-Indic ... astral)
    "\u0660-\u0dff\u0e50-\u0ed9\u0f20-\u0f29\u1040-\u1099\u17e0-\u19da\u1a80-\u1c59\ua620-\uabf9"
    "\U000104a0-\U0001fbf9"
)
_SPECIAL = rf"<&%~\]\u202e{_GREEK_CYRILLIC}{_DIGITS_ELSEWHERE}{_COMPAT_RANGES}"
_GATE_UNITS = "小时|小時|钟头|鐘頭|天|日|工作日|分钟|分鐘|周|週|星期|h|hour"
# The pattern starts with one character class, so ``re`` skips ahead with its fast class scan;
# the lookbehinds then tell which case the found character is (about a fifth of ``normalise``).
_GATE = re.compile(
    rf"[{_SPECIAL}1Il{_NUM}](?:(?<=[{_SPECIAL}])|(?<=[A-Za-z]1)(?!1*[02-9])|(?<=[a-z]I)|(?<=[A-Z]l)(?=[A-Z])"
    rf"|(?<=[0-9][{_NUM}])"
    rf"|(?<=[{_NUM}])(?:[0-9]|[个個]?(?:{_GATE_UNITS})))"
)


# None for ordinary text (most replies): then ``read_through`` would return None too.
needs_read_through = _GATE.search


@dataclass(frozen=True)
class Clean:
    text: str
    starts: list[int]   # original start of each character of ``text``
    ends: list[int]     # original end (exclusive)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Original ``[start, end)`` of the clean slice ``[start, end)`` (end > start): from its first
        to its last original character (a run read reversed, ``\u202e付赔``, maps backwards)."""
        return min(self.starts[start:end]), max(self.ends[start:end])


class _Buf:
    def __init__(self, text: str):
        self.text, self.starts, self.ends = text, list(range(len(text))), list(range(1, len(text) + 1))

    def sub(self, rx: re.Pattern, repl) -> None:
        """Replace every match of ``rx``; ``repl(m)`` returns None (keep the match) or a list of
        pieces: a ``str`` (its characters map to the whole match), an ``(i, j)`` slice of the text
        kept as it is, or ``(replacement, i, j)`` (its characters map to the slice ``[i, j)``)."""
        text, st, en = self.text, self.starts, self.ends
        out, ost, oen, last, changed = [], [], [], 0, False
        for m in rx.finditer(text):
            pieces = repl(m)
            if pieces is None:
                continue
            changed = True
            out.append(text[last:m.start()]); ost += st[last:m.start()]; oen += en[last:m.start()]
            s, e = st[m.start()], en[m.end() - 1]
            for piece in pieces:
                if isinstance(piece, str):
                    out.append(piece); ost += [s] * len(piece); oen += [e] * len(piece)
                elif len(piece) == 3:  # (replacement, i, j): maps to the original of text[i:j]
                    r, i, j = piece
                    out.append(r); ost += [st[i]] * len(r); oen += [en[j - 1]] * len(r)
                else:
                    i, j = piece
                    out.append(text[i:j]); ost += st[i:j]; oen += en[i:j]
            last = m.end()
        if changed:
            out.append(text[last:]); ost += st[last:]; oen += en[last:]
            self.text, self.starts, self.ends = "".join(out), ost, oen


# Tags that start a new line or box: they break words (full<br>compensation reads as two words).
_BLOCK_TAGS = frozenset("br p div li ul ol tr td th h1 h2 h3 h4 h5 h6 hr table blockquote pre section article "
                        "header footer dd dt dl".split())


def _html(m: re.Match):
    if m.group("url") is not None:
        return [m.span("label")] if m.group("label") else []
    tag = m.group("tag")
    if tag is not None and tag.lower() in _BLOCK_TAGS:
        return [" "]
    return []


def _entity(m: re.Match):
    decoded = html.unescape(m.group())
    return None if decoded == m.group() else [decoded]


def _markdown(m: re.Match):
    return [m.span("text")] if m.group("text") is not None else []


def _urlenc(m: re.Match):
    try:
        return [unquote(m.group(), errors="strict")]
    except UnicodeDecodeError:
        return None


def _rlo(m: re.Match):
    return [(i, i + 1) for i in range(m.end(1) - 1, m.start(1) - 1, -1)]


def _compat(m: re.Match):
    return _compat_char(m.group())


_ENCLOSED_LETTER = re.compile(r"LATIN (?:CAPITAL|SMALL) LETTER ([A-Z])$")


@lru_cache(maxsize=4096)
def _compat_char(ch: str):
    folded = "".join(c for c in unicodedata.normalize("NFKC", ch) if c.isalnum())
    if folded == ch or not folded:  # no decomposition (❷, dingbat digits, 🅵): its numeric value
        letter = _ENCLOSED_LETTER.search(unicodedata.name(ch, ""))
        if letter:  # 🅵 NEGATIVE SQUARED LATIN CAPITAL LETTER F
            return (letter.group(1),)
        value = unicodedata.numeric(ch, None)
        if value is None or not float(value).is_integer():
            return None
        folded = str(int(value))
    return (folded,)


def _digit(m: re.Match):
    d = unicodedata.decimal(m.group(), None)
    return None if d is None else [str(d)]


def _cn_number(m: re.Match):
    run = m.group()
    if len(run) > 16:
        return None  # not a number anyone reads (hostile input): left as written
    return _cn_run(run)


@lru_cache(maxsize=4096)  # hostile text repeats one run thousands of times
def _cn_run(run: str):
    import cn2an  # lazy: about 0.1 s, only for replies with Chinese numbers next to a unit or digit

    run = run.translate(_TRAD_NUM)
    try:
        value = cn2an.cn2an(run, "smart")
    except (ValueError, KeyError, TypeError, IndexError, OverflowError):
        try:  # digit by digit (二四, 〇五)
            value = "".join(str(cn2an.cn2an(ch, "smart")) for ch in run)
        except (ValueError, KeyError, TypeError, IndexError):
            return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else value
    return (str(value),)


@lru_cache(maxsize=1)
def _homoglyphs() -> dict[str, str]:
    """Greek and Cyrillic letters that Unicode's confusables list as a Latin letter's homoglyph."""
    from confusable_homoglyphs import confusables

    table = {}
    for lo, hi in _LOOKALIKE_RANGES:
        for cp in range(lo, hi):
            ch = chr(cp)
            if not ch.isalpha():
                continue
            # every alias (a Latin letter such as ı is "confusable" only when Latin is not preferred);
            # only single ASCII letters are kept below
            for found in confusables.is_confusable(ch, greedy=True, preferred_aliases=[]) or ():
                latin = [h["c"] for h in found["homoglyphs"] if len(h["c"]) == 1 and h["c"].isascii() and h["c"].isalpha()]
                if latin:
                    table[ch] = latin[0]
                    break
    return table


def _confusable_word(m: re.Match):
    word = m.group()
    if not re.search(r"[A-Za-z]", word):
        return None  # a Greek or Cyrillic word: not a look-alike
    table = _homoglyphs()
    if not any(ch in table for ch in word):
        return None
    base = m.start()
    return [(table[ch], base + k, base + k + 1) if ch in table else (base + k, base + k + 1) for k, ch in enumerate(word)]


def _one_ell(m: re.Match):
    return ["l" * len(m.group())]


def _ell_eye(m: re.Match):
    return ["i"]


# The other reading (``read_through(text, other=True)``): what some renderers hide and others show.
# Hidden HTML (script, style, template, ``hidden``, ``display:none``, a line-through or invisible
# style) and Slack / GFM single-tilde strike-through (``~不能~``) are dropped there; a bidi override
# is ignored (the text as written). The engine blocks a reply when either reading blocks, so markup
# that only some renderers hide can neither hide a negator nor a promise.
_HIDDEN = re.compile(
    r"<(script|style|template|noscript|rt|rp)\b[^<>]{0,500}>.{0,1000}?</\1\s*>"  # rt: a ruby annotation
    r"|<(?P<h>[A-Za-z][A-Za-z0-9]*)(?=\s[^<>]{0,500}?(?:\bhidden\b|display\s*:\s*none|visibility\s*:\s*hidden"
    r"|line-through|font-size\s*:\s*0(?![.0-9])|opacity\s*:\s*0(?![.0-9])))[^<>]{0,500}>.{0,500}?</(?P=h)\s*>",
    re.S | re.I,
)
_TILDE = re.compile(r"(?<!~)~(?![~\s])[^~\n]{1,100}?(?<![~\s])~(?!~)")


def has_other_reading(text: str) -> bool:
    """Does the other reading differ from the first? (The engine checks it when the first does
    not block.)"""
    return "\u202e" in text or ("~" in text and _TILDE.search(text) is not None) or (
        "<" in text and _HIDDEN.search(text) is not None)


def _drop(m: re.Match):
    return []


_STEPS = (  # (a character class the step needs, its regex, its replacement, in which reading)
    ("[<]", _HIDDEN, _drop, "other"),
    ("[<]", _HTML, _html),
    ("[&]", _ENTITY, _entity),
    ("[<]", _HTML, _html),          # entities can spell tags (&lt;b&gt;): read them as rendered
    (r"[~\[]", _MARKDOWN, _markdown),
    (r"[\[]", _MARKDOWN, _markdown),  # a link around an image: [![alt](img)](url)
    ("[~]", _TILDE, _drop, "other"),
    ("[%]", _URLENC, _urlenc),
    ("[\u202e]", _RLO, _rlo, "first"),
    (f"[{_COMPAT_RANGES}]", _COMPAT, _compat),
    (f"[{_DIGITS_ELSEWHERE}]", _OTHER_DIGIT, _digit),
    (f"[{_NUM}]", _CN_RUN, _cn_number),
    (f"[{_GREEK_CYRILLIC}]", _LATIN_WORD, _confusable_word),
    ("[1I]", _ONE_ELL, _one_ell),
    ("l", _ELL_EYE, _ell_eye),
)
_FIRST = tuple((re.compile(s[0]).search, s[1], s[2]) for s in _STEPS if len(s) == 3 or s[3] == "first")
_OTHER = tuple((re.compile(s[0]).search, s[1], s[2]) for s in _STEPS if len(s) == 3 or s[3] == "other")


def read_through(text: str, other: bool = False) -> Clean | None:
    """The reply as read (markup, encodings, number forms, look-alikes folded), or None when
    there is nothing to read through (the usual case). ``other``: the other reading (hidden
    markup and single-tilde strike-through dropped, bidi overrides ignored; see ``_HIDDEN``)."""
    if _GATE.search(text) is None:
        return None
    buf = _Buf(text)
    for needed, rx, repl in (_OTHER if other else _FIRST):
        if needed(buf.text) is not None:
            buf.sub(rx, repl)
    if buf.text == text:
        return None
    return Clean(buf.text, buf.starts, buf.ends)
