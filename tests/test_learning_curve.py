"""benchmarks/learning_curve.py runs, prints its table and writes the PNG (a smoke run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_learning_curve_prints_the_table_and_plots(tmp_path):
    out = tmp_path / "curve.png"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_curve.py"), "--quick",
                             "--points", "0,all", "--cache", str(tmp_path / "cache"), "--out", str(out), "--json",
                             "--heldout-limit", "8"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Learning curve, base demo" in result.stdout and f"plot: {out}" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(result.stdout[result.stdout.index("{"):])
    assert [p["corrections"] for p in table["points"]] == [0, table["points"][1]["corrections"]]
    assert table["points"][1]["corrections"] > 0 and table["points"][0]["corrected"] is None
    for point in table["points"]:
        assert 0 <= point["heldout"]["chrf"] <= 1 and point["heldout"]["n"] == 8  # --heldout-limit 8


def test_an_unknown_base_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_curve.py"), "--base", "gpt9",
                             "--cache", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "Error: --base gpt9: unknown base model (choose from demo, smollm2)" in result.stderr


def test_a_negative_heldout_limit_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_curve.py"), "--heldout-limit", "-1",
                             "--cache", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert "--heldout-limit -1: expected 0 (all) or a positive number" in result.stderr
    assert not (tmp_path / "learning_curve.png").exists()
