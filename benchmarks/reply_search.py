"""/reply search speed at 10,000 and 100,000 approved samples, on one core, in one run.

    python benchmarks/reply_search.py             # 10k and 100k; a few minutes on 2 busy cores
    python benchmarks/reply_search.py --quick     # 1,000 and 5,000, just checks the script runs
    python benchmarks/reply_search.py --model     # also time the bundled model's query encoding

The samples are the shipped sample questions (``replyloop/samples/cs_samples.csv``) with random
Chinese characters and an order number spliced in, so every question is distinct; their answers
the shipped answers naming that order. The index is ``replyloop.answers.AnswerIndex`` with the shipped policies checked on
every candidate answer (as ``/reply`` does). Embeddings: building 100,000 real sentence embeddings
on this CPU takes far too long for a benchmark (all-MiniLM-L6-v2 encodes about 300 short
sentences a second here), so the index uses ``HashingEncoder`` (384 dimensions, the size of
MiniLM's vectors: the matrix product costs the same); ``--model`` times the bundled model encoding
one query, which a real ``/reply`` adds once per query.

Columns: build time, queries per second, p50 / p99 latency, the cost of adding one approval, and
``matvec``: one plain float32 matrix-vector product over the same embedding matrix, the
memory-bound floor of any exact embedding search (the p50 against it is the index's overhead).
Baseline: the naive search, sacrebleu chrF (``evaluation.chrf``) of the query against every stored
question, on a few queries. Figures: queries per second and p50 / p99 latency over ``--queries``
queries (one thread, ``OMP_NUM_THREADS=1``). Goal: p99 <= 50 ms at 100,000 on one core.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replyloop.answers import AnswerIndex, HashingEncoder  # noqa: E402
from replyloop.paths import samples_dir  # noqa: E402

POOL = "的一是在不了有和人这中大为上个我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法"


def make_samples(n: int, rng: random.Random) -> list[tuple]:
    with open(samples_dir() / "cs_samples.csv", encoding="utf-8") as fh:
        base = [(r["prompt"], r["response"], r["category"]) for r in csv.DictReader(fh)]
    rows = []
    for i in range(n):
        q, a, cat = base[i % len(base)]
        cut = rng.randint(0, len(q))
        noise = "".join(rng.choice(POOL) for _ in range(rng.randint(2, 6)))
        order = rng.randint(10**7, 10**8)
        q = f"{q[:cut]}{noise}{q[cut:]} 订单{order}"
        rows.append((i + 1, q, f"{a}（订单{order}）", cat, f"U{i % 40:03d}", "2026-11-30T09:00:00+00:00"))
    return rows, base


def queries(base, count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        q = rng.choice(base)[0]
        drop = rng.randint(0, max(0, len(q) - 4))
        out.append(q[:drop] + q[drop + 2:])  # a paraphrase-ish: two characters left out
    return out


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(size: int, n_queries: int, checker, rng: random.Random, baseline_queries: int) -> dict:
    rows, base = make_samples(size, rng)
    started = time.perf_counter()
    index = AnswerIndex(store=None, encoder=HashingEncoder(), embedding_weight=0.5, min_score=0.1)
    index.add_rows(rows)
    build_s = time.perf_counter() - started
    qs = queries(base, n_queries, rng)
    index.search(qs[0], check=checker, refresh=False)  # warm up
    times = []
    for q in qs:
        t = time.perf_counter()
        found = index.search(q, check=checker, refresh=False)
        times.append(time.perf_counter() - t)
        assert found.answers, q
    # incremental adds of single approvals (what each approval costs the next search), the median of 20
    adds = []
    for j in range(20):
        t = time.perf_counter()
        index.add_rows([(size + 1 + j, qs[j % len(qs)] + "新", f"答复{j}", "其他", "U000", "2026-11-30T09:00:00+00:00")])
        adds.append(time.perf_counter() - t)
    add_ms = statistics.median(adds) * 1000
    # the floor: one plain float32 matrix-vector product over the embeddings (memory-bound)
    vec = index._vectors[:len(index)]
    q = vec[0].copy()
    t = time.perf_counter()
    for _ in range(20):
        vec @ q
    floor_ms = (time.perf_counter() - t) / 20 * 1000
    from replyloop.evaluation.chrf import chrf

    naive = []
    prompts = [r[1] for r in rows]
    for q in qs[:baseline_queries]:
        t = time.perf_counter()
        scores = [chrf(q, p) for p in prompts]
        sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:3]
        naive.append(time.perf_counter() - t)
    return {"size": size, "build_s": build_s, "qps": len(times) / sum(times), "p50_ms": percentile(times, 50) * 1000,
            "p99_ms": percentile(times, 99) * 1000, "add_ms": add_ms, "floor_ms": floor_ms,
            "naive_ms": statistics.mean(naive) * 1000 if naive else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 5,000 samples, 50 queries")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--model", action="store_true", help="also time the bundled model encoding one query")
    args = parser.parse_args()
    from replyloop.evaluation.policy import load_policies
    from replyloop.intake import policy_checker
    from replyloop.config import default_config

    checker = policy_checker(default_config("."), load_policies())
    rng = random.Random(19)
    sizes = (1000, 5000) if args.quick else (10_000, 100_000)
    n_queries = 50 if args.quick else args.queries
    print(f"/reply search, one thread, {n_queries} queries per size, shipped policies checked per candidate")
    print(f"{'samples':>8} {'build s':>8} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8} {'add ms':>8} {'matvec ms':>9}"
          f" {'naive ms':>9} {'vs naive':>9}")
    for size in sizes:
        r = measure(size, n_queries, checker, rng, baseline_queries=3 if size <= 10_000 else 1)
        ratio = r["naive_ms"] / r["p50_ms"] if r["naive_ms"] else float("nan")
        print(f"{r['size']:>8} {r['build_s']:>8.1f} {r['qps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
              f" {r['add_ms']:>8.2f} {r['floor_ms']:>9.2f} {r['naive_ms']:>9.0f} {ratio:>8.0f}x")
        if size == 100_000:
            print(f"goal p99 <= 50 ms at 100,000: {'met' if r['p99_ms'] <= 50 else 'NOT met'} ({r['p99_ms']:.1f} ms)")
    if args.model:
        import torch

        from replyloop.answers import StoreEncoder

        torch.set_num_threads(1)  # one core, like the search

        enc = StoreEncoder("", None)
        enc.encode_query("预热")
        times = []
        for q in queries(make_samples(10, rng)[1], 30, rng):
            t = time.perf_counter()
            enc.encode_query(q)
            times.append(time.perf_counter() - t)
        print(f"bundled model ({enc.name}) query encoding: p50 {percentile(times, 50) * 1000:.1f} ms,"
              f" p99 {percentile(times, 99) * 1000:.1f} ms (added once per real /reply)")


if __name__ == "__main__":
    main()
