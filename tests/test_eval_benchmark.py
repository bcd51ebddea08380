"""benchmarks/eval_speed.py runs end to end in quick mode (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_eval_speed_quick():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_speed.py"), "--quick", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["scoring"]["pairs"] == 60
    assert result["scoring"]["cold_encoded"] == 120 and result["scoring"]["warm_encoded"] == 0
    assert result["generation"]["questions"] == 6 and result["generation"]["speedup"] > 0
