"""Helpers for tests (import as `from helpers import cli`)."""

from __future__ import annotations

import os
import sys


def cli(*args: str, input: str | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from replyloop.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def cli_subprocess(*args: str, env: dict | None = None, timeout: float = 300, cwd=None):
    """Run ``python -m replyloop`` as a real subprocess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "replyloop", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


def find_all(keys, text: str) -> list[tuple[int, int, int]]:
    """Reference literal scan: (key index, start, end) of every occurrence of every key,
    overlapping ones included, by ``str.find`` (what the policy engine's scanners must match)."""
    found = []
    for k, key in enumerate(keys):
        i = text.find(key)
        while i >= 0:
            found.append((k, i, i + len(key)))
            i = text.find(key, i + 1)
    return sorted(found)


def in_threads(work, count: int) -> list[BaseException]:
    """Run ``work()`` on ``count`` threads at once and wait for them; what each raised."""
    import threading

    errors: list[BaseException] = []

    def run():
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
