"""Issue 17: hostile, very long replies are checked in about linear time and still block.

Before the fix, ``'全额赔付' * 5000`` took about 60 s (every hit searched its clause from the
start of the text and compared itself with every other hit). The bound below is a guard against
quadratic behaviour (about 0.1 s each here), not a speed target: it holds on a busy machine.
"""

from __future__ import annotations

import time

import pytest

from replyloop.evaluation.policy import MAX_HITS_PER_RULE, load_policies

BOUND_S = 5.0


@pytest.fixture(scope="module")
def engine():
    return load_policies()


@pytest.mark.parametrize("text, verdict, rules", [
    ("全额赔付" * 5000, "block", {"full-compensation"}),                       # the case
    ("全额赔付，" * 20000, "block", {"full-compensation"}),                   # 20,000 clauses
    ("不能全额赔付" * 5000, "pass", set()),                                  # every hit negated
    ("不能全额赔付" * 5000 + "，我们全额赔付", "block", {"full-compensation"}),  # the last hit is not
    ("x" * 200_000 + "全额赔付", "block", {"full-compensation"}),             # one huge clause
    ("我们不能" + "好" * 100_000 + "全额赔付", "block", {"full-compensation"}),  # far from its negator
    ("免审核退款" * 20000, "block", {"refund-without-review"}),
    ("<b>全额赔付</b>" * 5000, "block", {"full-compensation"}),               # markup read through
    ("二十四小时必发" * 5000, "block", {"guaranteed-24h-dispatch"}),           # a regex and a phrase
    ("二4" * 50000 + "，24小时必发", "block", {"guaranteed-24h-dispatch"}),   # numerals next to digits
    ("①" * 100000 + "，全额赔付", "block", {"full-compensation"}),
    ("<del>" * 20000 + "全额赔付", "block", {"full-compensation"}),
    ("full compensation " * 10000, "block", {"full-compensation"}),
    ("难道" * 50000 + "全额赔付", "block", {"full-compensation"}),
    ("我们承诺全额赔付吗" * 5000, "block", {"full-compensation"}),
    ("我们会赔付。全额退款" * 10000, "pass", set()),                         # 10,000 hits joining two clauses
    ("全。额。赔。付" * 10000, "block", {"full-compensation"}),                # spelt across boundaries
    # markup that the stdlib html.parser (Python 3.11.7) takes quadratic time on, or raises on
    # (measured 2026-12-02: '<a ' * 20000 took 44 s, '<![' * 20000 raised AssertionError); the
    # regex tokenizer reads them in linear time (README "How text is matched": why not a parser)
    ("<a " * 20000 + "全额赔付", "block", {"full-compensation"}),
    ("<![" * 20000 + "全额赔付", "block", {"full-compensation"}),
    ("<!--" * 20000 + "全额赔付", "block", {"full-compensation"}),           # unterminated: read as text
    ('<a b="' * 20000 + "全额赔付", "block", {"full-compensation"}),         # unterminated quotes
    ('<a title="' + "x" * 499 + '>"' + ">全额<b>赔付", "block", {"full-compensation"}),
    ("\u202e" + "付赔额全" * 25000, "block", {"full-compensation"}),           # bidi override runs, read twice
    (("\u202e" + "付赔额全" * 100 + "\u202c") * 250, "block", {"full-compensation"}),
    ("\u202ea" * 50000 + "全额赔付", "block", {"full-compensation"}),
    # the other reading: hidden markup and single-tilde strike-through dropped
    ("<span hidden>" * 20000 + "全额赔付", "block", {"full-compensation"}),
    ('<span style="display:none">不</span>' * 5000 + "全额赔付", "block", {"full-compensation"}),
    ("<a " + " hidden" * 20000, "pass", set()),
    ("<script>" * 20000 + "全额赔付", "block", {"full-compensation"}),
    ("~不" * 50000 + "~全额赔付", "block", {"full-compensation"}),
    ("亲~" + "我们不能全额赔付哦~" * 5000, "pass", set()),
    ("&#" + "1" * 100000, "pass", set()),
    ("[a](" + "(b)" * 30000, "pass", set()),
    # numeral runs and words tried from their start only (each was scanned again from every
    # position: '<b>二十四' * 8000 took 20 s, 'a' * 20000 + ' о' 1.4 s)
    ("<b>二十四" * 8000 + "，全额赔付", "block", {"full-compensation"}),
    ("\u202e二十四" * 8000, "pass", set()),
    ("~二十四" * 8000 + "，24小时必发", "block", {"guaranteed-24h-dispatch"}),
    ("a" * 100000 + " о，全额赔付", "block", {"full-compensation"}),
    ("a1" * 50000 + " ı", "pass", set()),
    ("[a]( " + " " * 100000 + "全额赔付", "block", {"full-compensation"}),   # spaces in a link target (bounded runs)
    ("[a]( " * 20000 + "全额赔付", "block", {"full-compensation"}),
    ("[a](x" + " " * 100000 + '"' * 1000, "pass", set()),
    ("[a](<" + "a" * 100000, "pass", set()),
    (("[a](x (" + "b" * 199) * 400, "pass", set()),
    ("<?" * 50000 + "全额赔付", "block", {"full-compensation"}),
])
def test_hostile_input_is_fast_and_still_decided(engine, text, verdict, rules):
    t0 = time.perf_counter()
    result = engine.check(text)
    elapsed = time.perf_counter() - t0
    assert elapsed < BOUND_S, f"{elapsed:.1f} s for {len(text):,} characters"
    assert result.verdict == verdict
    assert {v.rule for v in result.violations} == rules
    for v in result.violations:
        assert text[v.start:v.end] == v.match


def test_a_rule_reports_a_bounded_number_of_hits(engine):
    result = engine.check("全额赔付，好的。" * 5000)
    assert len(result.violations) == MAX_HITS_PER_RULE
    assert [v.start for v in result.violations] == [8 * i for i in range(MAX_HITS_PER_RULE)]


def _pattern_words(pattern: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+|[\u4e00-\u9fff]+|[0-9]+", pattern)


def test_every_shipped_pattern_is_linear_on_its_own_words_repeated(engine):
    """A regex like ``ship\\w*within`` is quadratic on its own words repeated ('guaranteed ship' *
    5000 took 10 s): every shipped pattern's words, repeated to 30,000 characters."""
    texts = []
    for rule in engine.rules:
        for pattern in rule.patterns:
            words = " ".join(_pattern_words(pattern)) + " "
            texts.append(words * (30_000 // len(words)))
    assert len(texts) >= 15
    for text in texts:
        t0 = time.perf_counter()
        engine.check(text)
        assert time.perf_counter() - t0 < BOUND_S, text[:60]


def test_english_pattern_words_repeated(engine):
    t0 = time.perf_counter()
    assert engine.check("guaranteed ship" * 5000).verdict == "pass"
    assert engine.check("guaranteed ship" * 5000 + " guaranteed to ship within 24 hours").verdict == "block"
    assert time.perf_counter() - t0 < BOUND_S
