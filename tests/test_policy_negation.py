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


# --- issue 17 item 5: negation that reads like a person ------------------------------------

@pytest.mark.parametrize("prefix, negated", [
    ("难道本店不是", False),                   # rhetorical questions affirm
    ("谁说我们不", False),
    ("怎么可能不", False),                     # the marker overlaps the chain (可能)
    ("哪里有不", False),
    ("怎么会不", False),
    ("难道你不知道我们不能", True),             # another negator between marker and chain: not rhetorical
    ("难道我们会", False),                     # no negation: left a promise (ambiguous, so it blocks)
    ("我们从未承诺过", True),                   # a denied verb of saying / promising
    ("客服从来没有说过", True),
    ("本店不做", True),
    ("本店不开展", True),
    ("本活动不存在", True),
    ("您的订单不符合", True),
    ("我们并无", True),
    ("We have never once refused", False),     # English double negation affirms
    ("We never fail to offer", False),
    ("There is no reason not to give you", False),
    ("Nobody is denied", False),
    ("No customer is ever refused a", False),
    ("We cannot refuse", False),
    ("We failed to provide", True),
    ("We cannot offer a full", True),
    ("Once the parcel arrives we offer", False),  # "once" still starts a new scope
])
def test_prefix_item5(prefix, negated):
    assert is_negated(prefix) is negated


@pytest.mark.parametrize("suffix, negated", [
    ("的承诺我们不能做", True),
    ("的承诺无法给您", True),
    ("的承诺不能给您打折扣", False),            # 给 / 做 refuse only at the end of the clause
    ("”是谣言", True),                         # refuting judgements of a mention
    ("”属于误传", True),
    ("”是假的", True),
    ("”并非事实", True),
    ("”的说法不准确", True),
    ("”的说法有误", True),
    ("' is a rumour", True),
    ("\" is not true", True),
    ("”不是谣言", False),                      # "not a rumour" affirms
    ("不是假的", False),
    ("不了多久就到账", False),                  # suffixes that look like refusals
    ("不在话下", False),
    ("不成问题", False),
    ("不是难事", False),
    ("不对外公开", False),
])
def test_suffix_item5(suffix, negated):
    assert is_negated("", suffix) is negated


@pytest.mark.parametrize("answer, negated", [
    ("不行", True), ("做不到", True), ("抱歉，做不到", True), ("这个真的办不到哦", True), ("不能", True), ("没门", True),
    ("No", True), ("Sorry, no", True), ("We can't do that", True),
    ("不行的话我们再商量", False), ("没有问题！", False), ("不会让您失望的", False), ("当然可以", False),
    ("No problem", False), ("", False),
])
def test_answer_to_an_echoed_question(answer, negated):
    assert is_negated("", "", answer) is negated


@pytest.mark.parametrize("text, verdict", [
    ("全额赔付？不行。", "pass"),                 # the echoed question is answered with a refusal
    ("24小时必发？做不到。", "pass"),
    ("能全额赔付吗？不能。", "pass"),
    ("全额赔付？不行的话我们再商量", "block"),
    ("全额赔付？当然可以！", "block"),
    ("全额赔付，不行", "block"),                  # only a question mark makes an echo
    ("我们承诺“全额赔付”", "block"),              # a bare quotation does not clear a promise
    ("“全额赔付”是谣言", "pass"),
    ("所谓“二十四小时必发”属于误传", "pass"),
    ("难道本店不是二十四小时必发吗", "block"),
    ("哪里有不免审核退款的店", "block"),
    ("免审核退款不是难事", "block"),
    ("我们从未承诺过免审核退款", "pass"),
    ("本活动不存在二十四小时必发的规定", "pass"),
    ("We have never once refused a full refund without review", "block"),
    ("能不能全额赔付？可以！", "block"),             # a question answered yes is a promise
    ("是否全额赔付？当然可以。", "block"),
    ("能不能全额赔付？我们会尽快核实", "pass"),
])
def test_issue_examples(shipped, text, verdict):
    assert shipped.check(text).verdict == verdict


@pytest.fixture(scope="module")
def shipped():
    from replyloop.evaluation.policy import load_policies

    return load_policies()
