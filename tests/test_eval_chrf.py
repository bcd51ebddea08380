"""chrF of drafts against references: language-independent, reads Chinese with no model."""

from __future__ import annotations

import pytest

from replyloop.evaluation.chrf import chrf, chrf_many


def test_identical_and_disjoint():
    assert chrf("您好，请在订单详情里申请退货。", "您好，请在订单详情里申请退货。") == pytest.approx(1.0)
    assert chrf("收不到验证码", "我想退货") == 0.0


def test_chinese_paraphrase_beats_unrelated():
    ref = "客户问：收不到验证码怎么办？"
    para = chrf("验证码一直收不到怎么办", ref)
    unrelated = chrf("我想退货", ref)
    assert 0.2 < para < 1.0
    assert unrelated < 0.05 < para - unrelated


def test_normalisation_matches_the_policy_rules():
    # punctuation, width, case and Traditional characters do not count against a draft
    assert chrf("全額賠付。", "全额赔付") == pytest.approx(1.0)
    assert chrf("ORDER ２４", "order 24!") == pytest.approx(1.0)


def test_empty_texts():
    assert chrf("", "") == 1.0
    assert chrf("。", "") == 1.0
    assert chrf("", "您好") == 0.0
    assert chrf("您好", "") == 0.0


def test_many_is_pairwise_and_checks_lengths():
    refs = ["Your parcel is on its way.", "请在订单详情里申请退货。"]
    hyps = ["Your parcel is on the way.", "请在订单详情申请退货"]
    scores = chrf_many(hyps, refs)
    assert scores == [chrf(h, r) for h, r in zip(hyps, refs)]
    assert all(0.5 < s < 1.0 for s in scores)
    assert chrf_many([], []) == []
    with pytest.raises(ValueError, match="2 hypotheses against 1 references"):
        chrf_many(hyps, refs[:1])


def test_a_supervisors_wording_fix_raises_chrf():
    ref = "您好，请提供电子面单号，我们马上为您查询物流。"
    legacy = "您好，请提供快递条码，我们马上为您查询物流。"
    fixed = "您好，请提供电子面单号码，我们马上为您查询物流。"
    assert chrf(legacy, ref) < chrf(fixed, ref) < 1.0


def test_hostile_text():
    # lone surrogates, NUL, zero-width and emoji are not letters: dropped before scoring, never an error
    assert chrf("\ud800您好\x00", "您好") == pytest.approx(1.0)
    assert chrf("\u200b\u200b", "") == 1.0
    assert chrf("😀", "您好") == 0.0
    long = "您好请在订单详情里申请退货" * 2000
    assert 0.0 < chrf(long, long[::-1]) < 0.5
