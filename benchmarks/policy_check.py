"""Policy engine vs a naive loop, at 10 / 100 / 1,000 / 10,000 rules, in one run.

    python benchmarks/policy_check.py            # 10,000 replies; about a minute on 2 cores
    python benchmarks/policy_check.py --quick    # tiny sizes, just checks the script runs

The rules are the shipped policies plus generated ones (2-3 Chinese phrases of 3-8 characters each,
every tenth also an English phrase, every fifth a regex), written to policy files in a temp dir and
loaded with ``load_policies``. The replies are generated Chinese customer-service text of about
30-80 characters (some with an order number or an English word); about one in ten contains a
banned phrase.

Baseline ("naive"): per rule one regex compiled once (its phrases and patterns as alternatives),
``re.search`` per rule per reply on the raw text lower-cased once (about 20% faster than
``re.IGNORECASE``, so the baseline is the faster of the two) -- it does not normalise,
scope negation or compute spans, so it does less than the engine. At large rule counts the
naive loop runs on a subset of the replies (reported) to keep the run short; replies/s is what
is compared. Timing: each side is timed in chunks of 500 replies, in CPU time, 5 rounds, interleaved chunk by
chunk with the naive loop and with the engine of the first size (10 rules), so "vs first" compares
two engines under the same load; the fastest time of each chunk counts (see ``best_of``). Goals:
engine >= 50x naive at 1,000 rules, >= 100,000 replies/s at 10,000 rules on an idle core, and
time per reply flat: at 10,000 rules about 1.05x of 10 rules.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replyloop.evaluation.policy import load_policies  # noqa: E402
from replyloop.paths import default_policies_dir  # noqa: E402

POOL = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而"
        "方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开"
        "它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
        "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基"
        "资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治"
        "北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身")
PUNCT = "，。！？ "
TEMPLATES = ["您好，{}", "亲，{}。", "{}，请您耐心等待", "关于您的问题：{}", "{}，谢谢！"]
ENGLISH = ["refund", "free", "guarantee", "order", "delivery", "express", "full", "cash", "back", "today", "promise",
           "always", "instant", "return", "warranty", "lifetime", "price", "match", "bonus", "gift"]
BANNED = ["我们保证全额赔付", "可以免审核退款", "现货24小时必发", "这个绝对没问题", "请提供快递条码", "我们无法承诺全额赔付"]


def make_rules(count: int, rng: random.Random) -> list[dict]:
    """2-3 Chinese phrases of 3-8 characters per rule; every tenth rule also has an English
    phrase, every fifth a regex (half with a digit run, half with an optional adverb)."""
    rules = []
    for i in range(count):
        phrases = ["".join(rng.choice(POOL) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(2, 3))]
        if i % 10 == 3:
            phrases.append(" ".join(rng.sample(ENGLISH, 2)))
        rule = {"id": f"gen-{i:05d}", "severity": rng.choice(["block", "warn"]), "message": f"generated rule {i}",
                "phrases": phrases}
        if i % 5 == 0:
            a, b = (rng.choice(POOL) + rng.choice(POOL) for _ in range(2))
            rule["patterns"] = [f"{a}[0-9]{{1,3}}{b}" if i % 2 else f"{a}(很|非常)?{b}"]
        rules.append(rule)
    return rules


def make_replies(count: int, rng: random.Random) -> list[str]:
    """Replies of about 30-80 characters; one in five carries an order number or an English word,
    about one in ten contains a banned phrase of the shipped policies."""
    replies = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(4, 9)):
            words.append("".join(rng.choice(POOL) for _ in range(rng.randint(3, 8))))
            words.append(rng.choice(PUNCT))
        body = "".join(words).strip("，。！？ ")
        if rng.random() < 0.2:
            body += rng.choice([f"，订单号{rng.randint(10**9, 10**10 - 1)}", f"，{rng.choice(ENGLISH)} OK"])
        if rng.random() < 0.1:
            body += "，" + rng.choice(BANNED)
        replies.append(rng.choice(TEMPLATES).format(body))
    return replies


def shipped_rules() -> list[dict]:
    rules = []
    for path in sorted(default_policies_dir().glob("*.yaml")):
        rules.extend((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("rules", []))
    return rules


def naive_compile(rules: list[dict]) -> list[re.Pattern]:
    """One regex per rule, compiled once: its phrases (lower-cased, escaped) and patterns as alternatives."""
    out = []
    for rule in rules:
        parts = [re.escape(p.lower()) for p in rule.get("phrases", [])] + list(rule.get("patterns", []))
        out.append(re.compile("|".join(parts)))
    return out


def naive_check(compiled: list[re.Pattern], text: str) -> int:
    """``re.search`` per rule on the raw text, lower-cased once (faster than ``re.IGNORECASE``)."""
    text = text.lower()
    hits = 0
    for rx in compiled:
        if rx.search(text):
            hits += 1
    return hits


def best_of(repeats: int, *jobs: tuple, chunk: int = 500) -> list[float]:
    """Seconds for each ``(function, items)`` job to run over all its items.

    The items are timed in chunks of ``chunk``, each chunk ``repeats`` times, in CPU time of this
    process (the machine is shared: wall time counts other people's work); the fastest time of
    each chunk counts, and the chunks' times are summed. The jobs are interleaved so that
    they see the same load (the machine may be shared): in each round, the chunks of a job with
    fewer items (the naive loop on a subset) are spread evenly between the chunks of the longest.
    """
    best: list[dict[int, float]] = [{} for _ in jobs]
    starts = [list(range(0, len(items), chunk)) for _, items in jobs]
    slots = max(map(len, starts))
    for _ in range(repeats):
        for slot in range(slots):
            for i, (fn, items) in enumerate(jobs):
                k = slot * len(starts[i]) // slots
                if slot and k == (slot - 1) * len(starts[i]) // slots:
                    continue  # this job's next chunk comes at a later slot
                lo = starts[i][k]
                t0 = time.process_time()
                fn(items[lo:lo + chunk])
                elapsed = time.process_time() - t0
                best[i][lo] = min(best[i].get(lo, float("inf")), elapsed)
    return [sum(b.values()) for b in best]


def run(sizes: list[int], n_replies: int, naive_budget: int, repeats: int = 3, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    replies = make_replies(n_replies, rng)
    base = shipped_rules()
    generated = make_rules(max(sizes), rng)
    terminology = yaml.safe_load((default_policies_dir() / "terminology.yaml").read_text(encoding="utf-8"))
    results = []
    print(f"{n_replies:,} replies, average {sum(map(len, replies)) / len(replies):.0f} characters; best of {repeats} per chunk of 500")
    print(f"{'rules':>7} {'load s':>7} {'engine r/s':>11} {'µs/reply':>9} {'vs first':>9} {'naive r/s':>10} {'naive n':>8} {'ratio':>7}")
    first = None  # the engine of the first (smallest) size: every larger size is timed against it, chunk by chunk
    for size in sizes:
        rules = base + generated[: size - len(base)]
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "rules.yaml").write_text(yaml.safe_dump({"rules": rules}, allow_unicode=True), encoding="utf-8")
            Path(tmp, "terminology.yaml").write_text(yaml.safe_dump(terminology, allow_unicode=True), encoding="utf-8")
            t0 = time.perf_counter()
            engine = load_policies(tmp)
            load_s = time.perf_counter() - t0
        check = engine.check
        first = first or check
        blocked = sum(check(text).verdict == "block" for text in replies)
        compiled = naive_compile(rules)
        subset = replies[: max(50, min(n_replies, naive_budget // len(rules)))]
        jobs = [(lambda part: [check(text) for text in part], replies),
                (lambda part: [naive_check(compiled, text) for text in part], subset)]
        if first is not check:
            jobs.append((lambda part: [first(text) for text in part], replies))
        engine_s, naive_s, *rest = best_of(repeats, *jobs)
        first_s = rest[0] if rest else engine_s
        row = {"rules": len(rules), "load_s": load_s, "engine_rps": n_replies / engine_s,
               "us_per_reply": engine_s / n_replies * 1e6, "naive_rps": len(subset) / naive_s,
               "naive_replies": len(subset), "blocked": blocked, "vs_first": engine_s / first_s}
        row["ratio"] = row["engine_rps"] / row["naive_rps"]
        results.append(row)
        print(f"{row['rules']:>7,} {load_s:>7.2f} {row['engine_rps']:>11,.0f} {row['us_per_reply']:>9.1f} "
              f"{row['vs_first']:>8.2f}x {row['naive_rps']:>10,.0f} {len(subset):>8,} {row['ratio']:>6.1f}x", flush=True)
    print(f"time per reply at {results[-1]['rules']:,} rules / at {results[0]['rules']:,} rules: "
          f"{results[-1]['vs_first']:.2f}x (timed chunk by chunk in the same run, CPU time)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script works")
    parser.add_argument("--replies", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        run([10, 100], n_replies=args.replies or 200, naive_budget=20_000, repeats=1)
    else:
        run([10, 100, 1_000, 10_000], n_replies=args.replies or 10_000, naive_budget=2_000_000, repeats=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
