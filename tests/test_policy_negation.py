"""evaluation.negation on its own: the chain next to the phrase, parity, question words, suffixes."""

from __future__ import annotations

import pytest

from replyloop.evaluation.negation import is_negated


@pytest.mark.parametrize("prefix, negated", [
    ("我们无法承诺", True),
    ("很抱歉不能保证", True),
    ("暂不支持", True),
    ("我们不能为您", True),
    ("不是", True),
    ("我们拒绝", True),                       # a refusal on its own negates
    ("不会不", False),                        # double negation: two negators cancel
    ("我们不会拒绝", False),                   # 拒绝 flips polarity
    ("没有不", False),
    ("如果24小时内不发货我们", False),          # the negator belongs to another verb
    ("商品不合格我们", False),
    ("不满意可以", False),                     # 满意 ends the chain before 不
    ("没收到货的话", False),                   # a condition starts a new scope
    ("如果不", True),                          # "if we do not …": the chain after the condition
    ("不用担心", False),                       # pseudo-negators
    ("无需担心我们", False),
    ("不得不", False),
    ("不仅", False),
    ("是否", True),                            # question words: the outcome is left open
    ("能不能为您", True),
    ("We cannot offer", True),
    ("We can\u2019t offer you a", True),
    ("We are unable to provide", True),
    ("There is no", True),
    ("We will not refuse", False),
    ("If the parcel does not arrive we offer", False),
    ("Not only", False),
    ("No worries we offer", False),
    ("We will check whether", True),
    ("", False),
])
def test_prefix(prefix, negated):
    assert is_negated(prefix) is negated


@pytest.mark.parametrize("suffix, negated", [
    ("不了哦", True),
    ("是不可能的", True),
    ("这个我们做不到", True),
    ("目前无法实现", True),
    ("不用审核", False),                       # a promise goes on: not a refusal
    ("不会少", False),
    ("没有问题", False),
    (" is not possible", True),
    (" isn't available for used items", True),
    (" cannot be offered", True),
    (" is not only possible but guaranteed", False),
    (" is yours", False),
])
def test_suffix(suffix, negated):
    assert is_negated("", suffix) is negated


def test_prefix_and_suffix_cancel():
    assert is_negated("不是", "不了") is False
    assert is_negated("我们", "不了") is True


def test_every_chinese_negator_and_question_word_passes_the_prefix_hint():
    """The hint is a fast pre-check on the original text: a negator it misses is never counted."""
    from replyloop.evaluation.negation import _PREFIX_HINT, NEGATORS_ZH, QUESTION_ZH

    missed = [w for w in NEGATORS_ZH + QUESTION_ZH if not _PREFIX_HINT.search(w)]
    assert missed == []
