"""Catch rate per evasion class of the shipped policies on the labelled suite (issue 17).

    python benchmarks/policy_evasion.py                    # tests/policy_evasion.yaml, shipped policies
    python benchmarks/policy_evasion.py --policies DIR --suite FILE.yaml

A case with verdict ``block`` is caught when the reply blocks with exactly its rules; a case with
verdict ``pass`` (a must-pass negative) is a false block when anything blocks. Prints, per class,
the cases, the caught positives and the false blocks, then the totals and the check speed on the
suite's replies. Exit code 1 when a class catches under 95% or anything is falsely blocked.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replyloop.evaluation.policy import load_policies  # noqa: E402

DEFAULT_SUITE = Path(__file__).resolve().parent.parent / "tests" / "policy_evasion.yaml"


def evaluate(engine, cases: list[dict]) -> dict[str, dict]:
    per_class: dict[str, dict] = defaultdict(lambda: {"cases": 0, "positives": 0, "caught": 0, "negatives": 0,
                                                      "false_blocks": 0, "missed": []})
    for case in cases:
        row = per_class[case["class"]]
        row["cases"] += 1
        result = engine.check(case["text"])
        if case["verdict"] == "block":
            row["positives"] += 1
            if result.blocked and sorted({v.rule for v in result.violations}) == sorted(case["rules"]):
                row["caught"] += 1
            else:
                row["missed"].append(case["text"])
        else:
            row["negatives"] += 1
            if result.blocked:
                row["false_blocks"] += 1
                row["missed"].append(case["text"])
    return dict(per_class)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default=None, help="policy directory (default: the shipped policies/)")
    parser.add_argument("--suite", default=str(DEFAULT_SUITE), help="labelled cases (YAML with a 'cases' list)")
    args = parser.parse_args(argv)
    engine = load_policies(args.policies)
    cases = yaml.safe_load(Path(args.suite).read_text(encoding="utf-8"))["cases"]
    per_class = evaluate(engine, cases)
    print(f"{len(cases)} cases from {args.suite}")
    print(f"{'class':<20} {'cases':>5} {'caught':>9} {'rate':>7} {'false blocks':>13}")
    ok = True
    for cls, row in sorted(per_class.items()):
        rate = row["caught"] / row["positives"] if row["positives"] else None
        shown = f"{rate:.0%}" if rate is not None else "-"
        print(f"{cls:<20} {row['cases']:>5} {row['caught']:>4}/{row['positives']:<4} {shown:>7} "
              f"{row['false_blocks']:>6}/{row['negatives']:<6}")
        for text in row["missed"]:
            print(f"    wrong: {text!r}")
        if (rate is not None and rate < 0.95) or row["false_blocks"]:
            ok = False
    positives = sum(r["positives"] for r in per_class.values())
    caught = sum(r["caught"] for r in per_class.values())
    negatives = sum(r["negatives"] for r in per_class.values())
    false_blocks = sum(r["false_blocks"] for r in per_class.values())
    print(f"{'total':<20} {len(cases):>5} {caught:>4}/{positives:<4} {caught / max(positives, 1):>7.0%} "
          f"{false_blocks:>6}/{negatives:<6}")
    texts = [c["text"] for c in cases] * 50
    t0 = time.perf_counter()
    for text in texts:
        engine.check(text)
    elapsed = time.perf_counter() - t0
    print(f"speed on these (mostly hit) replies: {len(texts) / elapsed:,.0f} replies/s, {elapsed / len(texts) * 1e6:.1f} µs/reply")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
