"""The policy benchmark script runs (tiny sizes, no timing asserts)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_policy_benchmark_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "policy_check.py"), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("200 replies")
    assert any(line.split()[0] == "100" and line.endswith("x") for line in lines[2:])
    assert "time per reply at 100 rules / at 10 rules" in lines[-1]


def test_policy_evasion_report_prints_every_class_and_passes():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "policy_evasion.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    table = {line.split()[0]: line for line in lines[2:] if line and not line.startswith(" ")}
    for cls in ("html-tags", "numbers", "look-alikes", "pattern-whitespace", "negated-markup", "ordinary", "total"):
        assert cls in table, proc.stdout
    assert "wrong:" not in proc.stdout
    total = table["total"].split()  # total, cases, caught/positives, rate, false blocks/negatives
    assert int(total[1]) >= 200 and total[3] == "100%" and total[4].startswith("0/"), table["total"]
