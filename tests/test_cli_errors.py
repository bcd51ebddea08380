"""A user's typical mistakes, one row each: every command answers with an `Error:` line and the
exit code the README's "Exit codes" table documents, never a traceback (real `replyloop`
subprocesses, a real SQLite workspace, a real busy port)."""

from __future__ import annotations

import socket
import sqlite3

import pytest
import yaml

from helpers import cli, cli_subprocess
from pipeline_fixtures import tiny_base_dir  # noqa: F401

SLACK_ENV = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_APP_TOKEN": "xapp-test", "SLACK_SIGNING_SECRET": "s3cret"}


@pytest.fixture
def ws(workspace, samples_csv):
    config, store = workspace
    from replyloop.dataio import read_samples

    store.add_samples(read_samples(samples_csv))
    store.create_snapshot(0.15)
    # two more snapshots whose hashes share a prefix (as two of thousands eventually do)
    with store.transaction() as db:
        for digest in ("abcd1111aaaa0000", "abcd2222bbbb0000"):
            db.execute("INSERT INTO snapshots (hash, created_at, sample_count, heldout_share, max_sample_id)"
                       " VALUES (?, '2026-11-30T10:00:00Z', 1, 0.15, 1)", (digest,))
    return config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case_busy_port(ws, tmp_path, busy):
    return ["serve", "--http", "--port", busy.getsockname()[1], "--no-scheduler"], SLACK_ENV



def _afile(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    return afile


def _nonempty(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me", encoding="utf-8")
    return d


# (name, argv builder, exit code, what the Error: line must name)
CASES = [
    ("serve on a busy port", _case_busy_port, 2, "cannot listen on 127.0.0.1:"),
    # Socket Mode with Slack unreachable is not a mistake: serve warns (one line, no traceback) and retries
    # until Slack answers (issue 16 part 1; tests/test_ops_health.py::test_unreachable_slack_at_start_*)
    ("backup under a file", lambda ws, t, b: (["data", "backup", _afile(t) / "x.db"], {}), 2,
     "afile is a file, not a directory"),
    ("backup into /proc", lambda ws, t, b: (["data", "backup", "/proc/x.db"], {}), 2, "/proc/x.db: cannot write"),
    ("report under a file", lambda ws, t, b: (["report", "weekly", "--out", _afile(t) / "r"], {}), 2,
     "afile is a file"),
    ("report into a non-empty dir", lambda ws, t, b: (["report", "weekly", "--out", _nonempty(t)], {}), 2,
     "holds other files (notes.txt)"),
    ("export of a missing snapshot", lambda ws, t, b: (["data", "export", t / "o", "--snapshot", "feedbeef"], {}),
     2, "snapshot feedbeef not found"),
    ("export of an ambiguous prefix", lambda ws, t, b: (["data", "export", t / "o", "--snapshot", "abcd"], {}),
     2, "snapshot abcd is ambiguous, it matches 2: abcd1111aaaa0000 (1 samples, 2026-11-30T10:00:00Z); "
        "abcd2222bbbb0000"),
    ("export of a too-short prefix", lambda ws, t, b: (["data", "export", t / "o", "--snapshot", "ab"], {}), 2,
     "at least its first 4 hex characters"),
]


@pytest.mark.parametrize("name,build,code,needle", CASES, ids=[c[0] for c in CASES])
def test_a_user_mistake_is_an_error_line_with_the_documented_code(ws, tmp_path, name, build, code, needle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv, env = build(ws, tmp_path, busy)
        proc = cli_subprocess(*argv, env=env, cwd=ws.root, timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("Error: ") and needle in last, proc.stderr
    if "afile" in needle:
        assert (tmp_path / "afile").read_text(encoding="utf-8") == "keep me"
    assert not list(tmp_path.glob("**/.*.partial"))


def test_a_unique_snapshot_prefix_exports_like_the_full_hash(ws, tmp_path):
    full = sqlite3.connect(ws.db_path).execute(
        "SELECT hash FROM snapshots WHERE hash NOT LIKE 'abcd%'").fetchone()[0]
    by_prefix = cli_subprocess("data", "export", tmp_path / "a.jsonl", "--format", "jsonl", "--snapshot",
                               full[:6].upper(), cwd=ws.root)
    assert by_prefix.returncode == 0, by_prefix.stderr
    by_hash = cli("data", "export", tmp_path / "b.jsonl", "--format", "jsonl", "--snapshot", full)
    assert by_hash.exit_code == 0
    a, b = (tmp_path / "a.jsonl").read_text(encoding="utf-8"), (tmp_path / "b.jsonl").read_text(encoding="utf-8")
    assert a == b and a.count("\n") == 180


@pytest.mark.slow
def test_a_gate_fail_exits_3_from_retrain_so_cron_sees_it(replyloop_home, tiny_base_dir):
    from pipeline_fixtures import make_workspace

    make_workspace(replyloop_home, tiny_base_dir, steps=1,
                   evaluation={"chrf_floor": 1.0, "max_new_tokens": 4})  # cannot pass
    proc = cli_subprocess("retrain", "--now", cwd=replyloop_home)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "did not pass the gate; the champion is unchanged." in proc.stdout
    assert "[FAIL] mean chrF >= floor" in proc.stdout
