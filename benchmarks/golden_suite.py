"""Golden suite speed: cases per second for a 500-case suite, cold (every question drafted by
the model) and warm (drafts from the cache: the re-run after an edit to the assertions), in
one run; the ratio is printed.

    python benchmarks/golden_suite.py              # 500 cases, 16 new tokens
    python benchmarks/golden_suite.py --quick      # a smoke run (40 cases)

Uses a tiny Llama built in code with an untrained LoRA adapter, the shipped policies and the
bundled all-MiniLM-L6-v2 (for the ``similar`` assertions, one case in five); no network.
Each case has 8-9 assertions: contains, not-contains, regex, chrf, policy-clean,
terminology, max-chars, not-repetitive (+ similar).
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


def sample_rows() -> list[dict]:
    with open(ROOT / "replyloop" / "samples" / "cs_samples.csv", encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def make_adapter(tmp: Path, rows: list[dict]) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from replyloop.training.tiny import build_tiny_base

    base = Path(build_tiny_base(tmp / "base", [r["prompt"] for r in rows] + [r["response"] for r in rows]))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    out = tmp / "adapter"
    model.save_pretrained(out)
    (out / "manifest.json").write_text(json.dumps({"base_model": str(base)}), encoding="utf-8")
    return out


def write_suite(directory: Path, rows: list[dict], n: int, threshold: float) -> None:
    import yaml

    cases = []
    for i in range(n):
        row = rows[i % len(rows)]
        asserts = [{"type": "contains", "value": ["您好", "请"]}, {"type": "not-contains", "value": ["全额赔付", "保证"]},
                   {"type": "regex", "value": r"\S"}, {"type": "chrf", "threshold": threshold},
                   {"type": "policy-clean"}, {"type": "terminology"}, {"type": "max-chars", "value": 400},
                   {"type": "not-repetitive"}]
        if i % 5 == 0:
            asserts.append({"type": "similar", "threshold": threshold})
        cases.append({"id": f"case-{i}", "question": f"{row['prompt']}（第{i}问）", "category": row["category"],
                      "reference": row["response"], "assert": asserts})
    directory.mkdir(exist_ok=True)
    (directory / "bench.yaml").write_text(yaml.safe_dump({"cases": cases}, allow_unicode=True), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 cases: a smoke run")
    parser.add_argument("--cases", type=int, default=None, help="suite size (default 500)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n = args.cases or (40 if args.quick else 500)

    import torch

    from replyloop.evaluation import golden
    from replyloop.evaluation.embeddings import Encoder
    from replyloop.evaluation.policy import load_policies
    from replyloop.config import default_config
    from replyloop.registry import Registry
    from replyloop.store import Store

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = sample_rows()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = default_config(tmp)
        config.file.evaluation.max_new_tokens = args.new_tokens
        with Store(tmp / "bench.db") as store:
            model = Registry(store).register(make_adapter(tmp, rows))
            engine = load_policies()
            encoder = Encoder.from_config(config, store)
            encoder.model  # noqa: B018 - load outside the timings (as the gate has it loaded)
            gen = golden.local_generator(config, max_new_tokens=args.new_tokens, batch_size=16)
            gen(model, ["预热"])  # load the base and the adapter outside the timings
            results = {}
            for label, threshold in (("cold", 0.3), ("warm", 0.25)):  # warm: an assertion edit, same questions
                write_suite(tmp / "evals", rows, n, threshold)
                suites = golden.load_suites(tmp / "evals")
                t0 = time.perf_counter()
                run = golden.run_suites(config, store, model, suites, generate=gen, engine=engine, encoder=encoder)
                elapsed = time.perf_counter() - t0
                results[label] = {"cases": len(run.cases), "seconds": elapsed, "cases_per_s": len(run.cases) / elapsed,
                                  "drafted": run.generated, **run.timings}
    ratio = results["warm"]["cases_per_s"] / results["cold"]["cases_per_s"]
    if args.json:
        print(json.dumps({**results, "warm_vs_cold": ratio}, indent=2))
        return 0
    for label, r in results.items():
        print(f"{label}: {r['cases']} cases in {r['seconds']:.2f} s = {r['cases_per_s']:.1f} cases/s"
              f" ({r['drafted']} drafted: {r['draft_s']:.2f} s; checking {r['check_s']:.2f} s)")
    print(f"warm (cached drafts, after an assertion edit) is {ratio:.1f}x faster than cold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
