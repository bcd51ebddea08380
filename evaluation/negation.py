"""Clause-scoped negation: is a phrase negated by the words right next to it in its own clause?

The caller cuts the clause (sentence punctuation ，。！？；,.!? and newlines end a clause) and
passes the text between the clause start and the phrase (``prefix``) and the text between the
phrase and the clause end (``suffix``); other rule hits are already cut out of both. Then:

- Prefix. A contrast, addition or condition word (但, 不过, 而是, 而且, 如果, 若, 假如, 要是,
  万一, 的话, 只要, 一旦, 即使, but, however, if, unless, when, ...) starts a new scope: only the
  text after the last one counts. From the phrase backwards, the *chain* is the run of words that
  are negators, polarity flips or modal / promise words (能, 会, 可以, 可能, 一定, 予以, 给予,
  为您, 承诺, 保证, 提供, 支持, 是, 再, 都, 有, ...; can, will, be, offer, give, a, any, ...);
  it ends at the first other word. Negators: 不, 没, 没有, 无法, 未能, 未, 并非, 绝非, 无须,
  无需, 勿, 拒绝 (a polarity flip); not, no, never, cannot, without, unable, any ``-n't``,
  refuse, decline, deny. A pseudo-negator (不仅, 不但, 不管, 无论, 不用担心, 无需担心, 不要紧,
  没事, 没问题, 不得不, 毫不, ...) is not a negator and ends the chain. The phrase is negated
  when the chain holds an odd number of negators (``不会不全额赔付`` is a promise), or a
  question word (是否, 能否, 可否, 能不能, 会不会, whether: the outcome is left open).
- Suffix. A refusal right after the phrase (``全额赔付不了``, ``是不可能的``, ``做不到``,
  ``无法实现``; ``is not possible``, ``is not available``, ``cannot be offered``) negates too;
  with a negated prefix the two cancel.

So a negator elsewhere in the clause (``如果24小时内不发货我们全额赔付``,
``商品不合格我们全额赔付``) does not clear the promise.

Negation that reads like a person (issue 17); when in doubt the hit stays a promise:

- Rhetorical questions affirm: an odd chain after 谁说 / 难道 / 怎么可能 / 哪有 / 怎么会 ... (no other
  negator between) counts as none (``难道本店不是二十四小时必发吗``).
- English double negation: fail(s/ed), nobody, none, "no reason", "no one / no customer" are
  negators and once / even / full are chain words (``We have never once refused ...``).
- Denied verbs continue the chain (过, 说, 做, 开展, 存在, 符合, ...: ``我们从未承诺过…``,
  ``不存在…的规定``); after the hit ``的承诺我们不能做`` refuses.
- Refuting judgements after a mention negate (``“…”是谣言``, ``属于误传``, ``的说法不准确``,
  ``is a rumour``); fake refusals do not (``不了多久``, ``不在话下``, ``不是难事``).
- ``answer``: when the hit's clause ends with a question mark, the next sentence; a refusal
  there negates (``全额赔付？不行``), a yes turns a question word into a promise
  (``能不能全额赔付？可以！``).
"""

from __future__ import annotations

import re

from replyloop.evaluation.textmap import _DROP, fold

# --- Chinese -----------------------------------------------------------------------------
NEGATORS_ZH = ["不", "没", "没有", "无法", "未能", "未曾", "未", "并非", "绝非", "无须", "无需", "勿",
               "并不", "决不", "绝不", "从不", "从未", "毫无", "拒绝", "没办法", "没法", "无力", "难以",
               # "no reason (not to)": before 不 they make a double negation, i.e. a promise
               "没有任何理由", "没有理由", "没理由", "毫无理由",
               # issue 17: "there is no such ...", "never had ..."
               "并无", "从无", "绝无", "从来没有", "从来没", "从来不", "从没",
               # prohibitions and polite refusals (不得承诺全额赔付, 恕难, 无从), "nobody (is refused)"
               # (没人被拒绝过全额赔付: with 拒绝 a double negation, i.e. a promise)
               "不得", "禁止", "严禁", "不允许", "不准", "切勿", "不要", "不建议", "恕难", "碍难", "无从",
               "没人", "没有人", "无人", "从没有人", "从来没有人",
               # no authority, dare not (我们无权承诺…, 这边没有权限承诺…, 不敢保证…, 不具备…的条件)
               "无权", "无权限", "没有权限", "没权限", "没有权利", "不敢", "不具备"]
QUESTION_ZH = ["是否", "能否", "可否", "能不能", "会不会", "可不可以", "是不是", "有没有", "赔不赔", "行不行",
               "可不可能"]
PSEUDO_ZH = [
    "不仅", "不但", "不管", "不论", "不只", "不光", "不止", "不单", "不错", "不少", "不久", "不断",
    "不过", "不好意思", "不用担心", "不必担心", "不要担心", "不需要担心", "不用着急", "不必着急", "不要着急",
    "无需担心", "无须担心", "别担心", "别着急", "不用怕", "别怕",
    "不客气", "不得不", "毫不", "无论", "没关系", "没问题", "没有问题", "没事", "不要紧", "不会有问题",
    "不言而喻", "不遗余力", "不用说", "不必说", "更不用说", "不在话下", "毫无疑问", "不折不扣", "要不", "要不然",
    "不然", "别说", "不要说",  # "let alone": 别说全额赔付，双倍都行
    "了不得", "不得了", "巴不得", "恨不得",  # not 不得 (must not)
    # offers, not questions of whether: 要不要给您全额赔付, 要不要都全额赔付
    "要不要", "给不给",
] + [no + verb for no in ("无需", "无须", "不用", "不需要", "不必", "免")  # "no need to apply": not the promise
     for verb in ("申请", "办理", "审核", "提交", "寄回", "退回", "退货", "等待", "联系", "操作", "排队", "提供", "举证")]
_PRONOUNS = ["您", "你们", "你", "大家", "客户", "顾客", "亲", "买家"]
MODAL_ZH = [
    "能", "会", "可", "可以", "可能", "能够", "一定", "肯定", "必定", "必须", "必", "绝对", "完全", "百分百",
    "百分之百", "敢", "该", "应该", "应", "需要", "需", "要", "用", "愿意", "打算", "再", "都", "均", "一律",
    "一概", "全部", "直接", "马上", "立即", "立刻", "轻易", "随便", "随意", "主动", "额外", "目前", "暂时",
    "暂", "现在", "还", "是", "有", "予以", "给予", "予", "给", "为", "向", "帮", "替", "做到", "承诺", "保证",
    "担保", "确保", "答应", "同意", "接受", "提供", "支持", "进行", "办理", "安排", "实现", "兑现", "申请",
    "享受", "享有", "获得", "得到",
    # issue 17: a promise that is the object of a denied verb (从未承诺过, 从未说过, 不做, 不开展,
    # 不存在…的规定, 不符合…的条件)
    "过", "曾", "曾经", "说", "讲", "表示", "声称", "宣称", "提到", "提及", "对外", "公开", "做", "开展",
    "推出", "存在", "符合", "满足", "达到", "任何", "这种", "这样的", "此类", "类似",
    "被", "了",  # 没人被拒绝过…, 我们拒绝了…
] + [p + q for p in ("为", "给", "向", "帮", "替", "对") for q in _PRONOUNS]
BREAKERS_ZH = ["但", "可是", "不过", "然而", "而是", "而且", "并且", "却",
               "如果", "若", "假如", "假设", "要是", "万一", "的话", "只要", "一旦", "即使", "就算", "哪怕"]

_ZH_KIND: dict[str, str] = {}
for _kind, _words in (("modal", MODAL_ZH), ("neg", NEGATORS_ZH), ("question", QUESTION_ZH), ("pseudo", PSEUDO_ZH)):
    for _w in _words:
        _ZH_KIND[_w] = _kind  # later lists win: 没有问题 is a pseudo-negator, not 没有 + 问题
# Matched on the reversed prefix, longest token first: the token that ends right before the phrase.
_ZH_TOKEN = re.compile("|".join(re.escape(w[::-1]) for w in sorted(_ZH_KIND, key=len, reverse=True)))
_BREAK_ZH = re.compile("|".join(map(re.escape, BREAKERS_ZH)))
_SUFFIX_ZH = re.compile(
    "(?:这个|这点|这种|这样|这块|这边|这方面|的话|的|是|我们|目前|暂时|恐怕|可能|确实|实在|都|也|还|本店|平台|您|给您|为您"
    # issue 17: 全额赔付的承诺我们不能做, “…”的说法有误, 这一说法
    "|承诺|保证|说法|这一|一说|消息|传言|传闻|信息|要求|请求|服务|政策|申请|已经|已)*"
    "(?:不了(?!多久|多少|几天|太久|多长|多远)|不可能|没可能|做不到|办不到|实现不了|满足不了|给不了|赔不了|兑现不了"
    "|做不了|不行|不予|不支持|不提供|不适用"
    "|无法(?:做到|实现|办到|满足|承诺|保证|提供|支持|兑现|办理|操作|给予|答应)|没办法|没法(?:做到|实现|办到)"
    "|(?:不能|不可以|不会|不敢|无权|没有权限|没权限)(?:承诺|保证|提供|支持|给予|做到|实现|兑现|答应|打包票|决定)"
    "|没有的|暂不(?:支持|提供)|恕难|不在.{0,6}范围"
    # beyond our authority; not ours to decide; subject to review (赔付以审核结果为准: what the rule asks for)
    "|超出(?:了)?.{0,6}(?:权限|范围|能力)|不是(?:我们|本店|客服|这边)?(?:能|可以)?(?:决定|做主|承诺|说了算)"
    "|(?:需要|需|要|须|必须|得)?(?:以|看|根据|视|按|走|经过|通过|等)?(?:平台|我们的|仓库|售后)?审核(?:结果|流程|情况)?"
    "(?:为准|而定|决定|来定|后(?:确定|决定|处理)?)?(?:的|哦|呢|啦|了|呀|才能确定|再定|才能决定)*$"
    # 全额赔付的承诺我们不能做 / 无法给您: 给 / 做 only when nothing but a particle follows
    "|(?:不能|不可以|不会|无法|没法)(?:给|做)(?:您|你|出)?(?:的|了|哦|呢|啦|吧|呀)*$"
    # a refuting judgement of a (quoted) mention: “…”是谣言 / 属于误传 / 是假的 / 并非事实 / 的说法不准确
    "|(?:是|属于|纯属|系|为|乃)?(?:谣言|误传|谣传|假的|假消息|虚假|不实|误解|讹传)"
    "|并非(?:事实|真的|如此|实情|真实|属实)|不是真的|不属实|不是事实|与事实不符"
    "|不准确|有误|不正确|不对(?!外)|是错的|错误的|不成立|误会"
    # issue 17 hostile pass: 全额赔付不太可能 / 是不现实的 / 并不存在 / 不符合平台规定 / 不属于服务范围 /
    # 不作承诺 / (的申请)被驳回 / 未通过; only at the clause end where the words after could be the
    # promise's object (全额赔付不存在任何问题, 全额赔付不符合条件的商品 are promises)
    "|(?:不太可能|不太现实|不现实|(?:并|根本|压根)?不存在(?:这回事|这种事)?)(?:的|哦|呢|啦|了|呀)*$"
    "|(?:不符合|违反|违背)(?:了)?.{0,8}(?:规定|规则|政策|条件|标准|要求)(?:的|哦|呢|啦|了|呀)*$"
    "|不属于.{0,10}(?:范围|范畴|政策|服务)(?:的|哦|呢|啦|了|呀)*$"
    "|不(?:作|做)(?:任何)?(?:承诺|保证)|被(?:驳回|拒绝|拒)|驳回|(?:未|没有|没)(?:能)?通过|不予通过|未获批)"
    "(?![不没])"  # 全额赔付不可能不兑现: a refusal of a refusal is a promise
)
# The answer to a promise echoed as a question (全额赔付？不行 / 24小时必发？做不到): the next clause.
_ANSWER_ZH = re.compile(
    r"\s*(?:(?:抱歉|对不起|很抱歉|很遗憾|遗憾|不好意思|恐怕|这个|这|那个|那|答案是|当然|肯定|绝对|我们|本店|目前|暂时|真的|确实|实在|是|哦|呃)[，,\s]*)*"
    r"(?:不行|不可以|不能|做不到|办不到|不可能|没有|没门|不会|不支持|不提供|无法(?:做到|办到|提供|实现|承诺)?"
    r"|没法(?:做到|办到)?|没办法|不存在|不是的|不是|给不了|做不了|没(?:有)?这(?:回)?事|想多了)"
    r"(?:的|啦|了|呢|哦|噢|呀|吧|哈|喔|这样做|这么做|做到|承诺|保证|提供|给您|这个)*\s*(?:[，,。.！!；;~～…]|$)"
)
# A yes to the question (能不能全额赔付？可以！): the question word no longer leaves it open.
_YES_ZH = re.compile(r"\s*(?:(?:亲|您好|放心|嗯|好)[，,\s]*)*(?:当然|肯定|绝对|一定|完全)?(?:可以|能|会|行|没问题|没有问题|是的|好的|支持|有的)")
_YES_EN = re.compile(r"\s*(?:yes|yeah|yep|sure|of\s+course|absolutely|certainly|definitely|we\s+(?:can|do|will))\b")
# Rhetorical questions affirm (难道本店不是二十四小时必发吗): a marker before the negated chain,
# with no other negator between them, makes the chain a promise.
_RHETORICAL_ZH = re.compile("谁说|难道|怎么可能|怎可能|哪有|哪里有|哪儿有|怎么会|怎会|怎能|怎么能|岂能|岂会|岂可|哪能|何尝|焉能")
_NEG_CHAR_ZH = re.compile("[不没无未非勿]")
_RHETORICAL_EN = re.compile(r"\bwho\s+(?:says|said|told\s+you|claims)\b")
# A yes to an echoed refusal (全额赔付不可能？可能！): the refusal is not made (when no negator follows).
_YES_TO_REFUSAL_ZH = re.compile(r"\s*(?:(?:亲|您好|放心|嗯|好|我们|本店)[，,\s]*)*(?:当然|肯定|绝对|一定|完全)?"
                                r"(?:可能|可以|能|做得到|办得到|能做到|行|没问题|是的|有的)")

# --- English -------------------------------------------------------------------------------
_WORD_EN = re.compile(r"[a-z_]+(?:'[a-z]+)?")
_NEG_EN = re.compile(r"not|no|never|cannot|nor|neither|without|unable|[a-z]+n't|cant|dont|doesnt|didnt|wont|wouldnt|"
                     r"couldnt|isnt|arent|refuse[sd]?|declines?|declined|deny|denies|denied|rejects?|rejected|"
                     r"fail|fails|failed|nobody|none")
_QUESTION_EN = {"whether"}
MODAL_EN = set("""
can could will would shall should may might must be is are am was were been being able to do does did have has had
offer offers offered offering provide provides provided providing give gives given giving guarantee guarantees
guaranteed promise promises promised grant grants granted issue issues issued pay pays paid make makes get gets
receive receives accept accepts agree agrees approve approves arrange arrange you your a an the any always ever
currently presently yet really possibly necessarily also still there us
once even ever said say says claimed claim claims stated state states full complete immediate instant
we
""".split())
# Rewritten before the chain is read: "no reason (not to)", "no one / no customer (is refused)" and
# "none of our customers (are denied)" are negators, so with the second negation they make a promise (issue 17).
_NEG_PHRASE_EN = re.compile(r"\bnot\s+in\s+a\s+position\s+to\b|\bnot\s+possible\s+(?:for\s+us\s+)?to\b|\bno\s+way\b|\bno\s+(?:good\s+)?reason\b|\bno\s+(?:one|customer|client|buyer|shopper|body|order)s?\b"
                            r"|\bnone\s+of\s+(?:(?:our|the|your|these|those|its|their|my)\s+)?"
                            r"(?:customers|clients|buyers|shoppers|users|members|orders|you|them|us)\b")
_PSEUDO_EN = re.compile(r"\b(?:not\s+only|not\s+just|no\s+matter|no\s+problem|no\s+worries|no\s+doubt|"
                        r"(?:do\s+not|don't|dont)\s+(?:worry|hesitate))\b")
_BREAK_EN = re.compile(r"\b(?:but|however|instead|rather|although|though|if|unless|when|whenever|"
                       r"(?<!never )(?<!not )(?<!at )(?<!even )once|provided|"
                       r"in\s+case|as\s+long\s+as)\b")
_PRED_EN = (r"(?:possible|available|an\s+option|offered|provided|given|granted|guaranteed|promised|applicable|"
            r"covered|included|something\s+we)")
_SUFFIX_EN = re.compile(
    r"[\s\"'“”‘’«»]*(?:(?:is|are|was|were|will\s+be|would\s+be)\s+(?:(?:currently|simply|unfortunately|really|just)\s+)?"
    r"(?:not|never)\s+" + _PRED_EN +
    r"|(?:isn't|aren't|wasn't|weren't|won't\s+be|wouldn't\s+be)\s+" + _PRED_EN +
    r"|(?:would|will|could|can|may|might)\s+not\s+be\s+" + _PRED_EN +
    # is not within / part of / covered by our policy, is against / beyond / outside our policy
    r"|(?:is|are)\s+(?:not\s+(?:within|part\s+of|covered\s+by)|against|beyond|outside(?:\s+of)?)\s+(?:our|the|what)\b"
    r"|(?:is|are)\s+(?:impossible|unavailable|out\s+of\s+the\s+question|excluded)"
    r"|(?:can't|cannot|can\s+not|couldn't|won't|will\s+not)\s+be\s+(?:offered|provided|given|granted|guaranteed|"
    r"promised|arranged|approved)"
    r"|(?:does\s+not|doesn't|do\s+not|don't)\s+apply"
    # a refuting judgement of a (quoted) mention: "'full compensation' is a rumour / is not true"
    r"|(?:\s*(?:claim|promise|statement|rumou?r|story|idea))?\s*(?:is|was)\s+(?:(?:simply|just|completely|totally)\s+)?"
    r"(?:false|untrue|not\s+true|a\s+(?:myth|rumou?r|misunderstanding)|wrong|incorrect|inaccurate|a\s+misquote))\b"
)
# The answer to a promise echoed as a question ("Full compensation? No."): the next clause.
_ANSWER_EN = re.compile(r"\s*(?:(?:sorry|unfortunately|i'm\s+afraid|i\s+am\s+afraid|absolutely|definitely|certainly|"
                        r"of\s+course)[,\s]*)*"
                        r"(?:no|nope|not|not\s+possible|impossible|we\s+(?:can't|cannot|can\s+not|don't|do\s+not|won't)"
                        r"(?:\s+(?:do|offer|promise|guarantee)\s+(?:that|it|this))?)\s*(?:[.,!;]|$)")

_ANY_LATIN = re.compile("[a-z]")
# What may open the clause after a topic before its refusal (关于全额赔付，很抱歉我们这边无法承诺).
_TOPIC_LEAD_ZH = re.compile("^(?:很|非常|十分|实在)?(?:抱歉|遗憾|对不起|不好意思)?(?:的是)?(?:我们|本店|平台|店铺)?"
                            "(?:这边|这里|目前|暂时|现在)?")
_TOPIC_LEAD_EN = re.compile(r"^\s*(?:(?:sorry|unfortunately|i'm\s+afraid)[,\s]*)*")
# Cheap first tests (most hits have neither): every negator or question word of the chain
# contains one of the prefix hint characters, every suffix refusal one of the suffix ones.
# One character class each (an alternation would be tried at every position: 10-20x slower):
# English negators have an n (not, no, never, nobody, cannot, -n't) or are refuse / reject /
# whether / fail (r, w, f); refutations false / myth / rumour / wrong (f, m, r, w).
_PREFIX_HINT = re.compile(r"[不没沒无無未并並非绝絕须須需勿决決毫拒否难難禁nNｎＮrRｒＲwWｗＷfFｆＦ]")
_SUFFIX_HINT = re.compile(r"[不没沒无無恕谣謠误誤假虚虛讹訛错錯并並违違驳駁未拒超审審nNｎＮxXｘＸfFｆＦmMｍＭrRｒＲwWｗＷ]")
# can′t (prime), can´t (acute accent: some keyboards) are apostrophes too
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u2032": "'", "\u00b4": "'"})
_ANY_APOSTROPHE = re.compile("[\u2019\u2018\u02bc`\u2032\u00b4]")  # translate() is slow on CJK text: only when needed


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def _after_last(pattern: re.Pattern, text: str) -> str:
    last = _last_match(pattern, text)
    return text[last.end():] if last else text


def _zh_chain(zh: str) -> int | None:
    """Negators in the chain that ends ``zh``; None for a question word (not negated, not a promise).

    An odd count after a rhetorical marker (谁说, 难道, 怎么可能, 哪有, 怎么会, ...) with no other
    negator between the marker and the chain counts as none: the question affirms.
    """
    rev, pos, count = zh[::-1], 0, 0
    while True:
        m = _ZH_TOKEN.match(rev, pos)
        if m is None:
            break
        kind = _ZH_KIND[m.group()[::-1]]
        if kind == "pseudo":
            break
        if kind == "question":
            return None
        if kind == "neg":
            count += 1
        pos = m.end()
    if count % 2 and len(zh) > pos:
        chain_start, last = len(zh) - pos, None
        for m in _RHETORICAL_ZH.finditer(zh):  # the marker may overlap the chain (怎么可能 + 不)
            if m.start() >= chain_start:
                break
            last = m
        if last is not None and not _NEG_CHAR_ZH.search(zh, last.end(), chain_start):
            return 0
    return count


def _en_chain(en: str) -> int | None:
    en = _PSEUDO_EN.sub(" _pseudo_ ", en)
    if "no" in en:  # also "none of our customers (is denied)"
        en = _NEG_PHRASE_EN.sub(" nobody ", en)
    count = 0
    for word in reversed(_WORD_EN.findall(en)):
        if word in _QUESTION_EN:
            return None
        if _NEG_EN.fullmatch(word):
            count += 1
        elif word not in MODAL_EN:
            break
    if count % 2 and _rhetorical_en(en):  # Who said we cannot offer …? (no other negator between)
        return 0
    return count


def _negators_after_rhetorical_en(en: str) -> int | None:
    """English negators after the last "who says / who said" (None: there is none)."""
    marker = _last_match(_RHETORICAL_EN, en)
    if marker is None:
        return None
    return sum(1 for w in _WORD_EN.findall(en, marker.end()) if _NEG_EN.fullmatch(w))


def _rhetorical_en(en: str) -> bool:
    """A "who says / who said" before the hit with no negator after it other than the chain's."""
    negators = _negators_after_rhetorical_en(en)
    return negators is not None and negators % 2 == 1


def _rhetorical_before(prefix: str) -> bool:
    """Is the hit inside a rhetorical question that starts before it (谁说全额赔付做不到, 难道全额赔付
    是谣言吗, Who says full compensation is not possible?), with no negator between marker and hit?
    Then a refusal after the hit is asked about, not made."""
    folded = _fold(prefix)
    zh = _after_last(_BREAK_ZH, _DROP.sub("", folded))
    last = _last_match(_RHETORICAL_ZH, zh)
    if last is not None and not _NEG_CHAR_ZH.search(zh, last.end()):
        return True
    return bool(_ANY_LATIN.search(folded)) and _negators_after_rhetorical_en(_after_last(_BREAK_EN, folded)) == 0


# Markdown / Slack emphasis marks around the words next to a hit (``is **not** possible``,
# ``We _cannot_ offer``, ``？**不行**``): not words, so dropped before the words are read (a
# backtick is an apostrophe: ``don`t``).
_EMPHASIS = re.compile(r"[*_\u00ad\u034f\u200b-\u200f\u2060-\u2064\ufeff]+")  # and invisible characters: can\u200bnot


def _fold(text: str) -> str:
    if _ANY_APOSTROPHE.search(text):  # before NFKC, which makes ´ a space and a combining accent
        text = text.translate(_APOSTROPHES)
    folded = fold(text)
    if _EMPHASIS.search(folded):
        folded = _EMPHASIS.sub("", folded)
    return folded


def is_negated(prefix: str, suffix: str = "", answer: str = "", topic: str = "") -> bool:
    """True when the phrase between ``prefix`` and ``suffix`` (original text, same clause) is negated.

    ``answer``: when the phrase's clause ends with a question mark, the next clause; a refusal
    there (``全额赔付？不行``, ``Full compensation? No.``) negates the echoed promise.
    ``topic``: when the phrase's clause names it as a topic (``关于全额赔付，``), the next clause;
    a refusal at its start (``我们无法承诺``, ``很抱歉目前做不到``, ``we cannot offer that``) negates.
    """
    negations = 0
    if prefix and _PREFIX_HINT.search(prefix):
        folded = _fold(prefix)
        zh = _after_last(_BREAK_ZH, _DROP.sub("", folded))
        count = _zh_chain(zh) if zh else 0
        if count == 0 and _ANY_LATIN.search(folded):
            count = _en_chain(_after_last(_BREAK_EN, folded))
        if count is None:  # a question word: open, unless the next sentence says yes
            return not (answer and (_YES_ZH.match(_fold(answer)) or _YES_EN.match(_fold(answer))))
        negations += count
    if suffix and _SUFFIX_HINT.search(suffix):
        folded = _fold(suffix)
        if _SUFFIX_ZH.match(_DROP.sub("", folded)) or _SUFFIX_EN.match(folded):
            # ... unless asked rhetorically (谁说全额赔付做不到) or answered yes (全额赔付不可能？可能！)
            if prefix and _rhetorical_before(prefix):
                pass
            elif answer and _YES_TO_REFUSAL_ZH.match(_fold(answer)) and not _NEG_CHAR_ZH.search(answer):
                return False
            else:
                negations += 1
    if answer:
        folded = _fold(answer)
        if _ANSWER_ZH.match(folded) or _ANSWER_EN.match(folded):
            negations += 1
    if topic and _SUFFIX_HINT.search(topic):
        folded = _fold(topic)
        if (_SUFFIX_ZH.match(_TOPIC_LEAD_ZH.sub("", _DROP.sub("", folded)))
                or _ANSWER_EN.match(_TOPIC_LEAD_EN.sub("", folded))):
            negations += 1
    return negations % 2 == 1
