"""The policy engine's fast paths against the straightforward paths, on many generated and hostile texts.

``reference_check`` below is the engine's check written the plain way (what it was before the
fast paths): every read-through step runs (no gate), normalisation drops with the ``[\\W_]+``
regex, the literal scan is a ``str.find`` of every key, the offset map is ``TextMap.build`` of the
whole text, the clause boundaries are the plain alternation, and every hit is searched for a
boundary. ``engine.check`` must give the same verdict, rule ids, spans and messages on every text.
"""

from __future__ import annotations

import random
import re
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from helpers import find_all

from replyloop.evaluation import policy
from replyloop.evaluation.policy import (
    CheckResult, Violation, _gaps_match, _joins_clauses, _Literal, load_policies,
)
from replyloop.evaluation.readthrough import _FIRST, _OTHER, Clean, _Buf, needs_read_through
from replyloop.evaluation.textmap import (
    _DROP, COMMON_DROPPED, TextMap, _per_char, _t2s_aligned, _TRADITIONAL, drop, fold, normalise,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import policy_check  # noqa: E402

TESTS = Path(__file__).resolve().parent
PLAIN_BOUNDARY = re.compile(policy._BOUNDARY_PLAIN)
PLAIN_SENTENCE_END = re.compile(policy._SENTENCE_END_PLAIN)


# --- the reference ------------------------------------------------------------------------

def reference_normalise(text: str) -> tuple[str, bool]:
    kept = _DROP.sub("", text)
    if unicodedata.is_normalized("NFKC", kept):
        folded = kept.casefold()
        if len(folded) == len(kept):
            return (_t2s_aligned(folded) if _TRADITIONAL.search(folded) else folded), True
    return _t2s_aligned(_per_char(kept, range(len(kept)))[0]), False


def reference_read_through(text: str, other: bool = False) -> Clean | None:
    buf = _Buf(text)
    for _needed, rx, repl in (_OTHER if other else _FIRST):  # every step, whatever the gate and the steps' own prechecks say
        buf.sub(rx, repl)
    return None if buf.text == text else Clean(buf.text, buf.starts, buf.ends)


def _on_word_boundaries(tm: TextMap, lit: _Literal, start: int, end: int) -> bool:
    text = tm.original
    if lit.latin_start and start > 0 and policy._ALNUM.match(fold(text[start - 1])):
        return False
    if lit.latin_end and end < len(text) and policy._ALNUM.match(fold(text[end])):
        return False
    if lit.latin_start or lit.latin_end or lit.gaps:
        return _gaps_match(text[start:end], lit.gaps)
    return True


def _reference_inner(engine, text: str) -> CheckResult:
    norm, _ = reference_normalise(text)
    hits = engine._raw_hits(norm, find_all(engine._keys, norm))
    if not hits:
        return CheckResult("pass", [])
    tm = TextMap.build(text)
    if tm.norm != norm:
        hits = engine._raw_hits(tm.norm, find_all(engine._keys, tm.norm))
    hits.sort(key=lambda h: (h[1], -h[2]))
    found: dict[tuple, Violation] = {}
    spans, rule_hits = [], []
    for what, ns, ne in hits:
        start, end = tm.span(ns, ne)
        literal = isinstance(what, _Literal)
        if literal and (what.latin_start or what.latin_end or what.gaps) and not _on_word_boundaries(tm, what, start, end):
            continue
        if PLAIN_BOUNDARY.search(text, start, end) is not None and _joins_clauses(text, start, end):
            continue
        spans.append((start, end))
        if literal and what.kind == "term":
            term = engine.terms[what.index]
            v = Violation(term.id, "warn", f"用“{term.preferred}”，不用“{what.phrase.text}”",
                          start, end, text[start:end], term.preferred)
            found.setdefault((v.rule, start, end), v)
            continue
        rule = engine.rules[what.index] if literal else engine.rules[engine._patterns[what][0]]
        rule_hits.append((rule, start, end))
    return engine._verdict(text, spans, rule_hits, found)


def reference_check(engine, text: str, monkeypatch) -> CheckResult:
    """Both readings, always (the engine reads the other one only when it can differ): the first
    that blocks, else the first reading's result."""
    first = _reference_reading(engine, text, monkeypatch, False)
    if first.verdict == "block":
        return first
    second = _reference_reading(engine, text, monkeypatch, True)
    return second if second.verdict == "block" else first


def _reference_reading(engine, text: str, monkeypatch, other: bool) -> CheckResult:
    with monkeypatch.context() as m:  # the clause helpers with the plain boundary alternations
        m.setattr(policy, "_BOUNDARY", PLAIN_BOUNDARY)
        m.setattr(policy, "_SENTENCE_END", PLAIN_SENTENCE_END)
        clean = reference_read_through(text, other)
        if clean is None:
            return _reference_inner(engine, text)
        result = _reference_inner(engine, clean.text)
    violations = []
    for v in result.violations:
        start, end = clean.span(v.start, v.end)
        violations.append(Violation(v.rule, v.severity, v.message, start, end, text[start:end], v.suggestion))
    return CheckResult(result.verdict, violations)


# --- the texts ----------------------------------------------------------------------------

PIECES = [
    # markup, entities, encodings
    "<b>", "</b>", "<span hidden>不</span>", "<p>", "<br>", "<?x ?>", "&#36180", "[赔](w(x))", "[付][1]", "~不~", "\u202e",
    "<del>不</del>", "<s>不会</s>", "<!-- x -->", "<https://x.cn|全额赔付>", "<@U123>", "&#36180;", "&#x8D54;",
    "&amp;", "&lt;b&gt;", "&nbsp;", "%E8%B5%94", "%E4%BB%98", "%zz", "~~不~~", "[全额](http://a.b)", "![赔付](x.png)", "**", "_",
    # numerals in all forms
    "24", "２４", "二十四", "二四", "廿四", "貳拾肆", "两", "〇", "②④", "⑵⑷", "⒉⒋", "٢٤", "२४", "𝟐𝟒", "²⁴", "1.5", "3.", ".5",
    "小时", "小時", "个小时", "h", "hour", "天", "日", "分钟",
    # look-alikes and Latin
    "fuIl", "fu1l", "FULL", "COMPENSATlON", "c\u043emp\u0435nsation", "\u03bfk", "full compensation", "refund without review",
    "quan e pei fu", "scam", "bus camp", "don\u2019t", "not", "never", "İ", "ß", "ﬁ", "Straße",
    # invisible and combining characters, other scripts, astral
    "\u200b", "\u200d", "\ufeff", "\u00ad", "e\u0301", "\u0301", "a\u0308", "㈱", "⼆", "\uf900", "𠀀", "😀", "ا", "한",
    # punctuation and spaces: the common ones (dropped with str.replace) and others
    "，", "。", "！", "？", " ", "：", "、", ",", ".", "!", "?", ";", "；", "\n", "\t", "\u3000", "…", "~", "-", "/", "“", "”",
    # negators, questions, clause words
    "不", "没有", "无法", "不会", "能不能", "吗", "难道", "谁说", "是谣言", "不了", "但是", "如果", "可以！", "不行",
    # Traditional and phrase pieces
    "全額賠付", "快遞條碼", "乾隆", "全额", "赔付", "全额赔付", "免审核", "退款", "必发", "保证", "请提供快递条码", "电子面单",
]


def _texts(rng: random.Random, phrases: list[str]) -> list[str]:
    texts = [case["text"] for case in yaml.safe_load((TESTS / "policy_evasion.yaml").read_text(encoding="utf-8"))["cases"]]
    texts += [case["text"] for case in yaml.safe_load((TESTS / "policy_cases.yaml").read_text(encoding="utf-8"))["cases"]]
    texts += policy_check.make_replies(600, rng)
    texts += ["", " ", "。。。", "全" * 300 + "额赔付", "全额赔付。" * 60, "<b>" * 50 + "全额赔付", "二" * 40 + "小时必发",
              "I" * 30, "1l" * 30 + "full compensation", "\u200b".join("全额赔付"), "全-額.賠_付", "全额赔付\u0301", "ＦＵＬＬ ｃｏｍｐｅｎｓａｔｉｏｎ"]
    pool = PIECES + phrases
    for _ in range(1500):
        parts = [rng.choice(pool) if rng.random() < 0.6 else rng.choice(policy_check.POOL) for _ in range(rng.randint(1, 12))]
        texts.append("".join(parts))
    for _ in range(300):  # one phrase with a piece pushed in between its characters
        phrase = rng.choice(phrases)
        i = rng.randint(0, len(phrase))
        texts.append(rng.choice(policy_check.TEMPLATES).format(phrase[:i] + rng.choice(PIECES) + phrase[i:]))
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(17)
    rules = policy_check.shipped_rules() + policy_check.make_rules(300, rng)
    rules.append({"id": "latin-nest", "severity": "warn", "message": "Latin and nested keys",
                  "phrases": ["ab", "abab", "full", "ok", "24h", "a1b", "全额", "额赔"]})
    folder = tmp_path_factory.mktemp("differential")
    (folder / "rules.yaml").write_text(yaml.safe_dump({"rules": rules}, allow_unicode=True), encoding="utf-8")
    shipped = Path(policy_check.default_policies_dir())
    (folder / "terminology.yaml").write_text((shipped / "terminology.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    engine = load_policies(folder)
    phrases = [p for r in rules for p in r.get("phrases", [])]
    return engine, _texts(rng, phrases)


def _compare(engine, texts, monkeypatch) -> tuple[int, list[str]]:
    flagged, differing = 0, []
    for text in texts:
        fast, slow = engine.check(text), reference_check(engine, text, monkeypatch)
        if fast.to_dict() != slow.to_dict():
            differing.append(text)
        flagged += slow.verdict != "pass"
    return flagged, differing


def test_check_equals_the_reference_on_generated_and_hostile_texts(corpus, monkeypatch):
    engine, texts = corpus
    flagged, differing = _compare(engine, texts, monkeypatch)
    assert not differing, differing[:5]
    # the comparison covers many hits, read-throughs and texts off the usual fast paths
    assert flagged > 800, flagged
    assert sum(needs_read_through(t) is not None for t in texts) > 400
    assert sum(needs_read_through(t) is None for t in texts) > 1000   # the engine's inlined path
    assert sum(not normalise(t)[1] for t in texts) > 80   # not aligned: the per-character path
    # punctuation beyond the common set: ``drop`` falls back to the regex
    assert sum(any(not c.isalnum() and c not in COMMON_DROPPED for c in t) for t in texts) > 400


def test_the_comparison_catches_a_broken_fast_path(corpus, monkeypatch):
    """A fast path that is wrong (here: clause boundaries never found in the engine) is caught."""
    engine, texts = corpus
    with monkeypatch.context() as m:
        m.setattr(policy, "_BOUNDARY", re.compile(r"(?!x)x"))
        broken = [t for t in texts[:1500] if engine.check(t).to_dict() != reference_check(engine, t, monkeypatch).to_dict()]
    assert len(broken) > 10


def test_drop_is_the_regex_on_every_code_point():
    every = "".join(map(chr, range(0x110000)))
    assert drop(every) == _DROP.sub("", every)
    assert [c for c in every if not c.isalnum()] == re.findall(r"[\W_]", every)  # [^\W_] is str.isalnum
    assert all(not c.isalnum() for c in COMMON_DROPPED)
    rng = random.Random(2)
    alphabet = list(COMMON_DROPPED) + ["a", "全", "_", "\u200b", "…", "-", "Ａ", "\u0301", "𠀀", "1"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert drop(text) == _DROP.sub("", text), text
        assert normalise(text) == reference_normalise(text), text


def test_boundary_regexes_equal_the_plain_alternations():
    rng = random.Random(4)
    alphabet = list("ab12.。，,?？!！;；\n\r 全额\uff0e\uff61\u2028\u2029٣")
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        for fast, plain in ((policy._BOUNDARY, PLAIN_BOUNDARY), (policy._SENTENCE_END, PLAIN_SENTENCE_END)):
            assert [m.span() for m in fast.finditer(text)] == [m.span() for m in plain.finditer(text)], text
            assert fast.split(text) == plain.split(text), text
            lo, hi = sorted(rng.randint(0, len(text)) for _ in range(2))
            a, b = fast.search(text, lo, hi), plain.search(text, lo, hi)
            assert (a and a.span()) == (b and b.span()), (text, lo, hi)
            a, b = fast.search(text[::-1], 1), plain.search(text[::-1], 1)   # as _Clauses.around searches
            assert (a and a.span()) == (b and b.span()), text
