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
