"""Clause-scoped negation: is a phrase negated by what precedes it in its own clause?

The caller cuts the clause (sentence punctuation ，。！？；,.!? and newlines end a clause) and
passes the text between the clause start and the phrase. Inside it:

- A contrast or addition conjunction (但, 不过, 而是, 而且, but, however, ...) starts a new scope:
  ``不会拖延而且全额赔付`` is not negated.
- A negator (不, 不能, 无法, 没有, 并不, 暂不, 不会, 不可以, 未能, cannot, can't, unable to,
  do not, will not, not, never, any ``-n't``) negates, unless it is the start of a
  pseudo-negator that does not negate what follows: 不仅, 不但, 不管, 无论, 不用担心, 不得不,
  毫不, not only, no matter, don't worry, ...
"""

from __future__ import annotations

import re

from evaluation.textmap import _DROP, fold

NEGATORS_ZH = ["不", "没", "无法", "未能", "未曾", "并非", "绝非", "无须", "无需", "勿"]
PSEUDO_ZH = [
    "不仅", "不但", "不管", "不论", "不只", "不光", "不止", "不单", "不错", "不少", "不久", "不断",
    "不过", "不好意思", "不用担心", "不必担心", "不要担心", "不用着急", "不必着急", "不要着急",
    "不客气", "不得不", "毫不", "无论", "没关系", "没问题", "不言而喻", "不遗余力",
]
BREAKERS_ZH = ["但", "可是", "不过", "然而", "而是", "而且", "并且", "却"]

_NEG_ZH = re.compile("|".join(map(re.escape, NEGATORS_ZH)))
_PSEUDO_ZH = re.compile("|".join(map(re.escape, sorted(PSEUDO_ZH, key=len, reverse=True))))
_BREAK_ZH = re.compile("|".join(map(re.escape, BREAKERS_ZH)))

_NEG_EN = re.compile(r"\b(?:not|cannot|never|unable\s+to|[a-z]+n't)\b")
_PSEUDO_EN = re.compile(r"\b(?:not\s+only|not\s+just|no\s+matter|(?:do\s+not|don't)\s+(?:worry|hesitate))\b")
_BREAK_EN = re.compile(r"\b(?:but|however|instead|rather|although|though)\b")
# Every negator contains one of these (a cheap first test; most clauses have none).
_HINT = re.compile(r"[不没無沒无未并並绝絕非须須需勿nNｎＮ]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_ANY_APOSTROPHE = re.compile("[\u2019\u2018\u02bc`]")  # translate() is slow on CJK text: only when needed


def _after_last(pattern: re.Pattern, text: str) -> str:
    last = None
    for last in pattern.finditer(text):
        pass
    return text[last.end():] if last else text


def _negated(text: str, negators: re.Pattern, pseudo: re.Pattern) -> bool:
    covered = set()
    for m in pseudo.finditer(text):
        covered.update(range(m.start(), m.end()))
    return any(m.start() not in covered for m in negators.finditer(text))


def is_negated(prefix: str) -> bool:
    """True when ``prefix`` (clause start up to the phrase, original text) negates the phrase."""
    if not prefix or not _HINT.search(prefix):
        return False
    folded = fold(prefix)
    if _ANY_APOSTROPHE.search(folded):
        folded = folded.translate(_APOSTROPHES)
    zh = _after_last(_BREAK_ZH, _DROP.sub("", folded))
    if _negated(zh, _NEG_ZH, _PSEUDO_ZH):
        return True
    if "n" not in folded:
        return False  # every English negator contains an "n"
    en = _after_last(_BREAK_EN, folded)
    return _negated(en, _NEG_EN, _PSEUDO_EN)
