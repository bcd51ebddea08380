"""The engine's speed-ups give exactly the results of the straightforward paths.

- the literal scan (overlapping matches) vs a brute-force ``str.find`` of every key;
- regex triggers: every string a small finite pattern can match, else one required literal;
- the clause start found by one backwards regex (decimal points are not boundaries).
"""

import random
import re
import sys
from pathlib import Path

import pytest
import yaml

from helpers import find_all

from replyloop.evaluation.policy import PolicyEngine, load_policies
from replyloop.evaluation.regexcheck import trigger_literals
from replyloop.evaluation.textmap import normalise

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import policy_check  # noqa: E402


@pytest.mark.parametrize("pattern, expected", [
    ("风一(很|非常)?见线", ["风一很见线", "风一见线", "风一非常见线"]),
    ("a(b|c){2}d", ["abbd", "abcd", "acbd", "accd"]),
    ("x[a-c]y", ["xay", "xby", "xcy"]),
    ("(?:ab|cd)?ef", ["abef", "cdef", "ef"]),
    ("(a|b|c|d){2}", sorted(a + b for a in "abcd" for b in "abcd")),  # exactly 16
    ("风一[0-9]{1,3}见线", [f"风一{d}" for d in range(10)]),  # the run plus one repetition of [0-9]
    ("(很|非常)+好", ["很好", "非常好"]),
    ("x\\d+y", ["x"]),                     # \d is a category: not expanded
    ("保证.{0,3}发货", ["保证"]),
    ("(a|b)*c", ["c"]),
    ("[ab]+", None),                       # no literal every match contains
])
def test_trigger_literals(pattern, expected):
    assert trigger_literals(pattern) == expected


CHUNKS = ["保证", "在", "24", "二十四", "小时", "内", "发货", "一定", "肯定", "必须", "发出", "a", "b", "c", "d", "风", "一",
          "见线", "见", "0", "1", "7", "很", "非常", "好", "x"]


def _sample(pattern: str, rng: random.Random) -> str:
    """A random string the pattern matches (for the constructs used below)."""
    from replyloop.evaluation.regexcheck import C, _parse

    def gen(seq) -> str:
        out = []
        for op, av in seq:
            if op == C.LITERAL:
                out.append(chr(av))
            elif op == C.IN:
                lo, hi = (av[0][1], av[0][1]) if av[0][0] == C.LITERAL else av[0][1] if av[0][0] == C.RANGE else (48, 57)
                out.append(chr(rng.randint(lo, hi)))
            elif op == C.SUBPATTERN:
                out.append(gen(av[-1]))
            elif op == C.BRANCH:
                out.append(gen(rng.choice(av[1])))
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
                out.append("".join(gen(av[2]) for _ in range(rng.randint(av[0], min(av[1], av[0] + 3)))))
        return "".join(out)

    return gen(_parse(pattern))


def test_every_match_contains_a_trigger():
    rng = random.Random(5)
    for pattern in ["保证在?(24|二十四)小时内?发货", "(24|二十四)小时内?(一定|肯定|必定|必须)发出", "a(b|c){2}d", "风一[0-9]{1,3}见线",
                    "(很|非常)+好", "ab[0-9]+", "风[0-9]{2,}见?", "(保证|必须)+[0-9]*发货", "a(?=b)b[0-9]{1,2}"]:
        triggers = trigger_literals(pattern)
        rx = re.compile(pattern)
        matched = 0
        for _ in range(1000):
            text = "".join(rng.choice(CHUNKS) if rng.random() < 0.7 else _sample(pattern, rng) for _ in range(rng.randint(1, 6)))
            for m in rx.finditer(text):
                matched += 1
                assert any(t in m.group() for t in triggers), (pattern, m.group())
        assert matched > 10, pattern


def _engine(tmp_path: Path, rules: list[dict], name: str) -> PolicyEngine:
    folder = tmp_path / name
    folder.mkdir()
    shipped = Path(policy_check.default_policies_dir())
    (folder / "rules.yaml").write_text(yaml.safe_dump({"rules": rules}, allow_unicode=True), encoding="utf-8")
    (folder / "terminology.yaml").write_text((shipped / "terminology.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return load_policies(folder)


TRICKY = [
    "我们保证全額賠付", "全 额 赔 付", "全\u200b额赔付", "我们无法承诺全额赔付", "不用担心，我们全额赔付", "不仅全额赔付",
    "我们不会说3.5全额赔付", "我们不会说.全额赔付", "不.5全额赔付", "我们不\n全额赔付", "we don\u02bct offer full compensation",
    "we don\u2019t offer full compensation", "Full Compensation!", "fullcompensation", "保证在二十四小时内发货", "保证24小时发货",
    "２４小时必发", "请提供快遞條碼", "本店支持7日退货", "本店支持17日退货", "Straße e\u0301 ㈱ ① ¼ 𠀀", "", "。。。",
]


def _order(matches) -> list[tuple[int, int, int]]:
    return sorted(matches, key=lambda m: (m[2], m[1], m[0]))


def test_automaton_scan_equals_brute_force_find(tmp_path):
    rng = random.Random(11)
    rules = policy_check.shipped_rules() + policy_check.make_rules(400, rng)
    phrases = [p for r in rules for p in r.get("phrases", [])]
    texts = TRICKY + policy_check.make_replies(300, rng)
    for _ in range(500):
        parts = [rng.choice(phrases + TRICKY) if rng.random() < 0.5 else rng.choice(policy_check.POOL) for _ in range(rng.randint(1, 8))]
        texts.append(rng.choice(["", "，", " ", "不"]).join(parts))
    # keys that overlap and nest inside each other, non-BMP characters, Latin and digits
    overlapping = [{"id": "nest", "severity": "warn", "message": "nested keys",
                    "phrases": ["ab", "abab", "bab", "b", "𠀀a", "a𠀀", "𠀀", "全额", "额赔", "全额赔付"]}]
    texts += ["ababab", "𠀀a𠀀a𠀀", "全额赔付全额赔付", "bbbb", "x𠀀ab全额赔付𠀀"]

    fast = _engine(tmp_path, rules + overlapping, "fast")
    reference = _engine(tmp_path, rules + overlapping, "reference")
    reference._scan = lambda norm, overlapping=True: find_all(reference._keys, norm)
    assert fast._keys == reference._keys and len(fast._keys) > 1000
    flagged = scanned = 0
    for text in texts:
        norm, _ = normalise(text)
        matches = fast._matches(norm)
        assert len(matches) == len(set(matches)), text
        assert _order(matches) == _order(find_all(fast._keys, norm)), text
        scanned += len(matches)
        a, b = fast.check(text), reference.check(text)
        assert a.to_dict() == b.to_dict(), text
        assert fast.fix(text) == reference.fix(text)
        flagged += a.verdict != "pass"
        for v in a.violations:
            assert text[v.start:v.end] == v.match
    assert flagged > 200 and scanned > 1000  # the comparison covers many hits, not just passes


@pytest.mark.parametrize("text, verdict", [
    ("我们不会3.5倍全额赔付", "block"),     # the negator is not next to the phrase (see test_clause_context)
    ("我们不会说.全额赔付", "block"),       # a full stop ends the clause
    ("我们不会说a.全额赔付", "block"),
    ("不.5全额赔付", "block"),              # '.' after a non-digit ends the clause
    ("我们不\n全额赔付", "block"),
    ("we don\u02bct offer full compensation", "pass"),
])
def test_clause_start(text, verdict):
    assert load_policies().check(text).verdict == verdict


@pytest.mark.parametrize("text, hit, prefix, suffix", [
    ("我们不会说3.5全额赔付", "全额赔付", "我们不会说3.5", ""),       # 3.5 is a decimal point: same clause
    ("我们不会说.全额赔付。好的", "全额赔付", "", ""),                  # a full stop ends the clause
    ("全额赔付3.5倍不了，好", "全额赔付", "", "3.5倍不了"),
    ("Full compensation is not possible. Sorry", "Full compensation", "", " is not possible"),
])
def test_clause_context(text, hit, prefix, suffix):
    from replyloop.evaluation.policy import _context

    start = text.index(hit)
    assert _context(text, start, start + len(hit), ()) == (prefix, suffix)


def test_clause_context_cuts_other_hits_out():
    from replyloop.evaluation.policy import _context

    text = "放心绝对不会有问题我们全额赔付不了哦"
    aa, fc = (2, 9), (11, 15)
    assert _context(text, *fc, [aa, fc]) == ("我们", "不了哦")
    assert _context(text, *aa, [aa, fc]) == ("放心", "我们")
    # a hit inside another one gets the larger hit's context
    assert _context("不能全额赔付哦", 4, 6, [(2, 6), (4, 6)]) == ("不能", "哦")


def test_aligned_textmap_equals_built_one():
    from replyloop.evaluation.textmap import TextMap, compact, normalise

    rng = random.Random(3)
    texts = TRICKY + policy_check.make_replies(200, rng) + ["ＡＢＣ１２３", "Straße", "e\u0301x", "㈱①", "ﬁne", "İstanbul", "乾隆"]
    seen = set()
    for text in texts:
        norm, aligned = normalise(text)
        assert norm == compact(text)
        seen.add(aligned)
        if aligned:
            assert TextMap.aligned(text, norm) == TextMap.build(text), text
    assert seen == {True, False}


def test_reversed_clause_start_equals_the_forward_search():
    """The clause start is searched in the reversed text; a greedy forward regex is the reference."""
    from replyloop.evaluation.policy import _BOUNDARY, _Clauses

    last_boundary = re.compile(r"(?s:.*)(?:" + _BOUNDARY.pattern + ")")
    rng = random.Random(1)
    checked = 0
    for _ in range(800):
        text = "".join(rng.choice("ab12.。，,?？ 全额") for _ in range(rng.randint(1, 30)))
        for start in range(len(text)):
            if not text[start].isalnum():
                continue
            m = last_boundary.match(text, 0, start + 1)
            prefix, _ = _Clauses(text).context(start, start + 1)
            assert prefix == text[m.end() if m else 0:start], (text, start)
            checked += 1
    assert checked > 3000
