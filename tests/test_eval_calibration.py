"""benchmarks/consistency_calibration.py runs end to end in quick mode; its chrF numbers separate
paraphrases from unrelated replies on the shipped Chinese samples (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_calibration_quick():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "consistency_calibration.py"), "--quick",
                          "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    chrf = result["chrf"]
    assert chrf["zh paraphrase"]["median"] > 2 * chrf["zh unrelated"]["median"]
    minilm = result["encoders"]["minilm"]
    assert minilm["unknown_share"] > 0.5 and "reads Chinese" in minilm["failed"]
    assert set(result["drift"]) == {"n=27", "n=4"}
    assert result["drift"]["n=4"]["drift_p50"] > result["drift"]["n=27"]["drift_p50"]  # fewer items, more noise
