"""A non-editable wheel of this checkout, installed into its own folder: run `replyloop` from it.

The process runs with ``python -S`` so that no ``.pth`` file (the editable install of the checkout) is
read, and with the wheel's folder plus the venv's site-packages (the dependencies) on PYTHONPATH, from a
working directory outside the checkout: only what the wheel ships can be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel_target(dest: Path) -> Path:
    """Build the wheel (no build isolation: setuptools and wheel come from the dev extra) and unpack it."""
    dist, target = dest / "dist", dest / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(dist)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("replyloop-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    return target


def wheel_env(target: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    env.update(extra)
    return env


def run_from_wheel(target: Path, *args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
                   code: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-S", "-c", code] if code else [sys.executable, "-S", "-m", "replyloop",
                                                           *map(str, args)]
    return subprocess.run(argv, cwd=cwd, env=env or wheel_env(target), capture_output=True, text=True,
                          timeout=timeout)
