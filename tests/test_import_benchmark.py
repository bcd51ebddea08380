"""benchmarks/import_scale.py runs end to end on a small file (no timing asserts), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_scale_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "import_scale.py"), "--rows", "3000", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["rows"] == 3000 and report["file_mb"] > 0.3
    for path in ("old", "new"):
        assert report[path]["added"] == 3000
        assert report[path]["bot"]["failures"] == 0 and report[path]["bot"]["writes"] > 0
        assert report[path]["peak_rss_mb"] > 0 and report[path]["locked_seconds"] > 0
    assert report["speedup"] > 0
    assert report["snapshot"]["train"] + report["snapshot"]["heldout"] == 3000
    assert report["export"]["bytes"] > 0
    assert report["old_snapshot"]["hash"] == report["snapshot"]["hash"]  # same rows, same snapshot
    assert report["snapshot"]["bot"]["failures"] == 0
    assert report["old_export"]["bytes"] == report["export"]["bytes"]
