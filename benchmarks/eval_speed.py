"""Evaluation speed, measured in one run (baselines in the same run, ratios printed):

1. scoring 1,000 held-out (draft, reference) pairs with the embedding cache cold vs warm;
2. drafting held-out questions with batched, left-padded generation vs one question at a time.

    python benchmarks/eval_speed.py            # full: 1,000 pairs, 64 generated drafts
    python benchmarks/eval_speed.py --quick    # a smoke run (seconds), used by the tests

Uses the bundled all-MiniLM-L6-v2 and a tiny Llama built in code; no network.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_base(out: Path, texts: list[str]) -> Path:
    try:
        from replyloop.training.tiny import build_tiny_base
    except ImportError:  # before the trainer lands: the test fixture's builder
        sys.path.insert(0, str(ROOT / "tests"))
        from eval_fixtures import build_tiny_base
    return Path(build_tiny_base(out, texts))


def sample_rows() -> list[dict]:
    with open(ROOT / "replyloop" / "samples" / "cs_samples.csv", encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def bench_scoring(n_pairs: int, tmp: Path, rows: list[dict]) -> dict:
    from replyloop.evaluation import consistency
    from replyloop.evaluation.embeddings import Encoder
    from replyloop.store import Store

    # n distinct pairs: each reference is a sample reply, each "draft" another reply of its category
    refs, drafts, cats = [], [], []
    for i in range(n_pairs):
        a, b = rows[i % len(rows)], rows[(i * 7 + 3) % len(rows)]
        refs.append(f"{a['response']}（参考{i}）")
        drafts.append(f"{b['response']}（草稿{i}）")
        cats.append(a["category"])
    loader = Encoder("")
    loader.model  # noqa: B018 - load the model outside the timings
    with Store(tmp / "bench.db") as store:
        def run() -> tuple[float, Encoder]:
            enc = Encoder("", store)
            enc._model = loader._model
            t0 = time.perf_counter()
            consistency.score(enc.encode(drafts), enc.encode(refs), cats, None)
            return time.perf_counter() - t0, enc

        cold, enc_cold = run()
        warm, enc_warm = run()
    return {"pairs": n_pairs, "cold_s": cold, "warm_s": warm, "cold_encoded": enc_cold.encoded,
            "warm_encoded": enc_warm.encoded, "speedup": cold / warm}


def bench_generation(n_questions: int, new_tokens: int, batch_size: int, tmp: Path, rows: list[dict]) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replyloop.drafting import generate

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = tiny_base(tmp / "base", [r["prompt"] for r in rows] + [r["response"] for r in rows])
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).eval()
    questions = [rows[i % len(rows)]["prompt"] for i in range(n_questions)]
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # fixed length: same work both ways
    generate(model, tok, questions[:2], batch_size=2, **kw)  # warm-up
    t0 = time.perf_counter()
    for q in questions:
        generate(model, tok, [q], batch_size=1, **kw)
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(model, tok, questions, batch_size=batch_size, **kw)
    batched = time.perf_counter() - t0
    return {"questions": n_questions, "new_tokens": new_tokens, "batch_size": batch_size,
            "one_at_a_time_s": single, "batched_s": batched, "speedup": single / batched,
            "ms_per_draft": 1000 * single / len(questions)}  # issue 6: one draft well under a second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run for the tests")
    parser.add_argument("--pairs", type=int, default=None, help="held-out pairs to score (default 1000)")
    parser.add_argument("--questions", type=int, default=None, help="questions to draft (default 64)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    pairs = args.pairs or (60 if args.quick else 1000)
    questions = args.questions or (6 if args.quick else 64)
    new_tokens = 8 if args.quick else 32
    rows = sample_rows()
    with tempfile.TemporaryDirectory() as tmp:
        scoring = bench_scoring(pairs, Path(tmp), rows)
        gen = bench_generation(questions, new_tokens, 16, Path(tmp), rows)
    if args.json:
        print(json.dumps({"scoring": scoring, "generation": gen}, indent=2))
        return 0
    print(f"scoring {scoring['pairs']} pairs: cache cold {scoring['cold_s']:.2f} s"
          f" ({scoring['cold_encoded']} texts encoded), warm {scoring['warm_s']:.3f} s"
          f" ({scoring['warm_encoded']} encoded) -> warm is {scoring['speedup']:.1f}x faster")
    print(f"drafting {gen['questions']} questions x {gen['new_tokens']} tokens: one at a time"
          f" {gen['one_at_a_time_s']:.2f} s, batched (batch {gen['batch_size']}, left padding)"
          f" {gen['batched_s']:.2f} s -> batched is {gen['speedup']:.1f}x faster;"
          f" one draft takes {gen['ms_per_draft']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
