"""The policy engine on the shipped policies: a labelled table of replies, spans, fix, normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from replyloop.evaluation.policy import CheckResult, Violation, load_policies
from replyloop.evaluation.textmap import TextMap, compact

CASES = yaml.safe_load((Path(__file__).parent / "policy_cases.yaml").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def engine():
    return load_policies()


def test_the_table_is_big_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:24] or "empty" for c in CASES])
def test_labelled_reply(engine, case):
    result = engine.check(case["text"])
    assert result.verdict == case["verdict"], result.to_dict()
    assert sorted({v.rule for v in result.violations}) == sorted(case["rules"]), result.to_dict()
    for v in result.violations:  # every span points into the original text
        assert 0 <= v.start < v.end <= len(case["text"])
        assert case["text"][v.start:v.end] == v.match
        assert compact(v.match) != ""


@pytest.mark.parametrize("text, match", [
    ("我们保证全额赔付", "全额赔付"),
    ("我们保证全額賠付哦", "全額賠付"),
    ("前面很多字：ｆｕｌｌ　ｃｏｍｐｅｎｓａｔｉｏｎ！", "ｆｕｌｌ　ｃｏｍｐｅｎｓａｔｉｏｎ"),
    ("请注意 全 额 赔 付 。", "全 额 赔 付"),
    ("好的\u200b全\u200b额\u200b赔\u200b付\u200b", "全\u200b额\u200b赔\u200b付"),
    ("承诺２４小时必发。", "２４小时必发"),
    ("e\u0301 先说明：全额赔付", "全额赔付"),  # a combining mark before the hit
    ("Straße, full compensation", "full compensation"),  # casefold changes the length before the hit
    ("㈱公司全额赔付", "全额赔付"),  # NFKC expands ㈱ to (株)
])
def test_span_points_into_original(engine, text, match):
    [v] = engine.check(text).violations
    assert text[v.start:v.end] == match
    assert v.match == match


def test_pattern_span(engine):
    text = "亲，我们保证 在２４小時內發貨！"
    [v] = engine.check(text).violations
    assert v.rule == "guaranteed-24h-dispatch"
    assert v.match == "保证 在２４小時內發貨"


def test_violation_fields_and_dicts(engine):
    result = engine.check("请提供快递条码")
    assert isinstance(result, CheckResult)
    [v] = result.violations
    assert isinstance(v, Violation)
    assert v.to_dict() == {"rule": "terminology:电子面单", "severity": "warn", "message": "用“电子面单”，不用“快递条码”",
                           "start": 3, "end": 7, "match": "快递条码", "suggestion": "电子面单"}
    assert result.to_dict() == {"verdict": "warn", "violations": [v.to_dict()]}
    block = engine.check("全额赔付").violations[0]
    assert block.suggestion is None and block.severity == "block" and "全额赔付" in block.message


def test_fix_rewrites_terminology_only(engine):
    assert engine.fix("请提供快遞條碼，本店支持7日退货") == "请提供电子面单，本店支持七天无理由退货"
    assert engine.fix("快 递 条 码") == "电子面单"
    assert engine.fix("全额赔付，快递条码") == "全额赔付，电子面单"
    assert engine.fix("没有问题") == "没有问题"


def test_textmap_matches_compact_on_odd_inputs():
    for text in ["全 额", "ＡＢＣ１２３", "全額賠付", "Straße", "e\u0301x", "㈱①", "a\u200bb", "", "  ", "乾隆"]:
        tm = TextMap.build(text)
        assert tm.norm == compact(text)
        assert len(tm.starts) == len(tm.norm)
        for i in range(len(tm.norm)):
            s, e = tm.span(i, i + 1)
            assert 0 <= s < e <= len(text)


def test_traditional_conversion_keeps_length():
    # The offset map relies on t2s giving one character per character (or a per-character fallback).
    from replyloop.evaluation.textmap import _t2s_aligned

    for text in ["我們保證全額賠付", "乾淨的頭髮", "後來發現裡面", "著作權", "瞭解臺灣"]:
        assert len(_t2s_aligned(text)) == len(text)


def test_many_rules_sharing_a_phrase(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "rules:\n"
        "  - {id: a, severity: warn, message: A, phrases: [全额赔付]}\n"
        "  - {id: b, severity: block, message: B, phrases: [全额赔付, 赔付]}\n"
        "  - {id: c, severity: warn, message: C, patterns: ['赔.']}\n"
        "  - {id: d, severity: warn, message: D, patterns: ['(退|赔)款?']}\n",
        encoding="utf-8")
    engine = load_policies(tmp_path)
    result = engine.check("全额赔付")
    assert result.verdict == "block"
    assert {(v.rule, v.match) for v in result.violations} == {
        ("a", "全额赔付"), ("b", "全额赔付"), ("c", "赔付"), ("d", "赔")}
    assert engine.check("退款").violations[0].rule == "d"  # a pattern without a literal still runs
    assert engine.check("没事").verdict == "pass"
