"""The literal scan (evaluation/literalscan.py): Hyperscan and the Aho-Corasick fallback find the
same matches as ``str.find``, in characters, for Chinese, Latin, non-BMP and mixed text, and
Hyperscan's scratch space is safe to use from many threads at once."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from helpers import find_all, in_threads

from replyloop.evaluation.literalscan import BACKENDS, LiteralScanner, default_backend
from replyloop.evaluation.policy import PolicyEngine
from replyloop.evaluation.policy_files import read_policies
from replyloop.evaluation.textmap import normalise

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import policy_check  # noqa: E402

KEYS = ["ab", "abab", "bab", "b", "𠀀a", "a𠀀", "𠀀", "全额", "额赔", "全额赔付", "赔付全额", "24小时必发", "24h",
        "fullcompensation", "é", "éa"]
TEXTS = ["", "ababab", "𠀀a𠀀a𠀀", "全额赔付全额赔付", "bbbb", "x𠀀ab全额赔付𠀀", "24h24小时必发", "éaé全额",
         "我们fullcompensation全额赔付24h", "无关的文字"]


def _backends():
    return [b if b != "hyperscan" or default_backend() == "hyperscan"
            else pytest.param(b, marks=pytest.mark.skip("hyperscan has no wheel here")) for b in BACKENDS]


@pytest.mark.parametrize("backend", _backends())
def test_every_backend_finds_what_str_find_finds(backend):
    rng = random.Random(5)
    rules = policy_check.shipped_rules() + policy_check.make_rules(300, rng)
    keys = sorted({normalise(p)[0] for r in rules for p in r.get("phrases", [])} | set(KEYS))
    texts = TEXTS + [normalise(t)[0] for t in policy_check.make_replies(300, rng)]
    for _ in range(300):  # texts full of keys, overlapping and nested
        texts.append("".join(rng.choice(keys + list(policy_check.POOL[:40])) for _ in range(rng.randint(1, 10))))
    scan = LiteralScanner(keys, backend=backend)
    hits = 0
    for text in texts:
        found = scan(text)
        assert sorted(found) == find_all(keys, text), text
        hits += len(found)
    assert hits > 1000


def test_hyperscan_is_the_default_where_it_installs():
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        pytest.skip("hyperscan has no wheel here")
    assert default_backend() == "hyperscan"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != default_backend()])
def test_the_engine_gives_the_same_results_with_every_backend(backend):
    """The shipped policies on the evasion suite: same verdicts, rules and spans as the default."""
    import yaml

    suite = yaml.safe_load((Path(__file__).parent / "policy_evasion.yaml").read_text(encoding="utf-8"))["cases"]
    policies = read_policies(Path(__file__).resolve().parent.parent / "policies")
    default, other = PolicyEngine(policies), PolicyEngine(policies, scan_backend=backend)
    for case in suite:
        assert other.check(case["text"]).to_dict() == default.check(case["text"]).to_dict(), case["text"]


def test_many_threads_scan_at_once():
    """One scanner shared by 8 threads (the bot checks replies on worker threads)."""
    keys = [f"{a}{b}" for a in "赔付全额退款审核" for b in "赔付全额退款审核"]
    scan = LiteralScanner(keys)
    text = "全额赔付退款审核" * 200
    expected = sorted(scan(text))

    def work():
        for _ in range(10):
            assert sorted(scan(text)) == expected

    errors = in_threads(work, 8)
    assert not errors, errors[0]


def test_bad_keys_and_backend_are_refused():
    with pytest.raises(ValueError, match="empty"):
        LiteralScanner(["ab", ""])
    with pytest.raises(ValueError, match="unknown literal scan backend 're2'"):
        LiteralScanner(["ab"], backend="re2")
    assert LiteralScanner([])("anything") == []
