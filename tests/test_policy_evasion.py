"""Issue 17: banned promises hold under markup, encodings, number forms, look-alike letters and
patterns written with whitespace; spans still index the original reply."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from replyloop.evaluation.policy import load_policies
from replyloop.evaluation.readthrough import read_through
from replyloop.evaluation.regexcheck import normalise_pattern
from replyloop.errors import PolicyError

SUITE = yaml.safe_load((Path(__file__).parent / "policy_evasion.yaml").read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def engine():
    return load_policies()


def test_the_suite_is_big_and_covers_every_class():
    assert len(SUITE) >= 200
    classes = Counter(c["class"] for c in SUITE)
    for cls in ("html-tags", "html-entities", "markdown", "slack-mrkdwn", "markup-negation", "url-encoding", "bidi",
                "numbers", "look-alikes", "pattern-whitespace", "negated-markup", "ordinary",
                # items 5 and 6
                "rhetorical", "double-negation", "answered-question", "denied-promise", "refuted-quote", "bare-quote", "fake-refusal",
                "paraphrase-shipping", "paraphrase-compensation", "paraphrase-refund", "paraphrase-negatives",
                # hits that would join two clauses (…赔付。全额…)
                "clause-boundary"):
        assert classes[cls] >= 5, cls
    assert sum(c["verdict"] == "pass" for c in SUITE) >= 100  # must-pass negatives
    assert len({c["text"] for c in SUITE}) == len(SUITE)  # no case counted twice


@pytest.mark.parametrize("case", SUITE, ids=[f"{c['class']}:{c['text'][:20]}" for c in SUITE])
def test_evasion_case(engine, case):
    result = engine.check(case["text"])
    assert result.verdict == case["verdict"], result.to_dict()
    assert sorted({v.rule for v in result.violations}) == sorted(case["rules"]), result.to_dict()
    for v in result.violations:  # spans index the original reply
        assert 0 <= v.start < v.end <= len(case["text"])
        assert case["text"][v.start:v.end] == v.match


@pytest.mark.parametrize("text, match", [
    ("放心，我们全额<b>赔付</b>。", "全额<b>赔付"),
    ("24<br>小时必发", "24<br>小时必发"),
    ("亲，全额&#36180;付哦", "全额&#36180;付"),
    ("下单后二十四个小时内必发", "二十四个小时内必发"),
    ("好的，refund withоut review", "refund withоut review"),
    ("<https://shop.example.com|全额赔付> 点这里", "全额赔付"),
])
def test_span_points_at_the_original_markup(engine, text, match):
    (v,) = engine.check(text).violations
    assert text[v.start:v.end] == v.match == match


def test_fix_keeps_markup_around_a_terminology_hit(engine):
    assert engine.fix("请提供<b>快递条码</b>") == "请提供<b>电子面单</b>"


def test_ordinary_text_is_not_rewritten():
    for text in ["您好，请您耐心等待", "订单号1234567890", "我们一定十分注意", "iPhone 已发货", "50 off"]:
        assert read_through(text) is None
    assert read_through("三天内发货").text == "3天内发货"  # a number before a time unit is read as digits


def test_struck_negator_does_not_negate_but_plain_one_does(engine):
    assert engine.check("<del>不</del>全额赔付").blocked
    assert engine.check("~~不~~全额赔付").blocked
    assert not engine.check("不能<b>全额赔付</b>").blocked


@pytest.mark.parametrize("text", ["<s>" * 20000 + "全额赔付", "~~" * 30000 + "x", "<!--" * 20000, "&#" * 50000,
                                  "%E8" * 30000, "二" * 50000 + "小时", "аI1l" * 20000, "<" * 60000])
def test_hostile_markup_finishes(engine, text):
    engine.check(text)  # no exception; each finishes in about a second on a busy machine


def test_phrases_are_read_like_replies(tmp_path, engine):
    (tmp_path / "p.yaml").write_text(
        "rules:\n  - id: three-days\n    severity: block\n    message: m\n    phrases: [三天内必发, 全额<b>赔付</b>]\n",
        encoding="utf-8")
    custom = load_policies(tmp_path)
    assert custom.check("亲，3天内必发哦").blocked
    assert custom.check("亲，三天内必发哦").blocked
    assert custom.check("全额赔付").blocked


def test_every_chinese_numeral_the_issue_names_is_read_as_digits(tmp_path):
    # 卅 (30) and 卌 (40) are not read by cn2an; 廿 (20) and 〇 are
    (tmp_path / "p.yaml").write_text(
        "rules:\n  - id: hours\n    severity: block\n    message: m\n"
        "    phrases: [20小时必发, 30小时必发, 40小时必发, 34小时必发, 205小时必发]\n", encoding="utf-8")
    custom = load_policies(tmp_path)
    for text in ["卅小时必发", "卌小时必发", "廿小时必发", "二〇小时必发", "卅四小时必发", "二〇五小时必发", "三十小时必发"]:
        assert custom.check(text).blocked, text
    assert read_through("卅四小时").text == "34小时"
    assert read_through("卌小时").text == "40小时"
    assert not custom.check("卅一小时必发").blocked  # 31: no rule


def test_issue_patterns_with_whitespace_load_and_block(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "rules:\n  - id: refund\n    severity: block\n    message: m\n"
        "    patterns: ['guarantee(d)?\\s+(a\\s+)?full\\s+refund', 'ships?\\s+within\\s+24\\s+hours,?\\s+guaranteed',"
        " 'Next Day\\s*Delivery', '24 小时必达']\n",
        encoding="utf-8")
    engine = load_policies(tmp_path)
    for text in ["We guarantee a full refund.", "guaranteed full refund", "Your package ships within 24 hours, guaranteed.",
                 "next day delivery", "NEXT-DAY DELIVERY", "亲，24小时必达"]:
        assert engine.check(text).blocked, text
    assert not engine.check("ships within 2 days").blocked


@pytest.mark.parametrize("pattern, rewritten", [
    (r"guarantee(d)?\s+(a\s+)?full\s+refund", "guarantee(d)?(a)?fullrefund"),
    (r"ships?\s+within\s+24\s+hours,?\s+guaranteed", "ships?within24hoursguaranteed"),
    (r"a[\s,-]?b", "ab"),
    (r"\bFull\b compensation", "fullcompensation"),
    (r"(?:a|b)\.c{2,3}", "(?:a|b)c{2,3}"),
    ("保证在?(24|二十四)小时内?发货", "保证在?(24|二十四)小时内?发货"),
    (r"[^ ]x", r"[^ ]x"),
])
def test_normalise_pattern(pattern, rewritten):
    assert normalise_pattern(pattern) == rewritten


def test_pattern_that_is_only_whitespace_is_a_load_error_naming_file_line_rule(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("rules:\n  - id: ok\n    severity: warn\n    message: m\n    phrases: [x]\n"
                   "  - id: spaces\n    severity: warn\n    message: m\n    patterns: ['\\s+']\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{bad}:9: rule 'spaces': pattern")
    assert "empty string" in message


@pytest.mark.parametrize("text", ["24<br>小时必发", "放心，我们全额<b>赔付</b>。"])
def test_edit_submission_and_intake_check_block_markup(engine, text):
    """The issue's examples through the bot's Edit validation and intake's checker (same engine)."""
    from types import SimpleNamespace

    from replyloop.bot import cards
    from replyloop.bot.review import validate_edit
    from replyloop.intake import check_text, policy_checker

    checker = policy_checker(None, engine=engine)
    assert check_text(checker, text)["verdict"] == "block"
    view = {"state": {"values": {cards.REPLY_BLOCK: {cards.REPLY_INPUT: {"value": text}}}}}
    errors = validate_edit(SimpleNamespace(checker=checker), view)
    assert errors and "Breaks a blocking policy rule" in errors[cards.REPLY_BLOCK]
    assert validate_edit(SimpleNamespace(checker=checker), {"state": {"values": {cards.REPLY_BLOCK: {
        cards.REPLY_INPUT: {"value": "我们不能<b>全额赔付</b>，以审核结果为准"}}}}}) is None
