"""`replyloop demo --quick` end to end in a real process; its outcome checked in the database."""

import json

import pytest

from helpers import cli_subprocess
from replyloop.store import Store

pytestmark = pytest.mark.slow


def test_demo_quick_runs_the_whole_loop(tmp_path):
    workdir = tmp_path / "demo"
    result = cli_subprocess("demo", "--quick", "--workdir", workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "replyloop demo: done in"):
        assert step in result.stdout

    store = Store(workdir / "replyloop.db")
    # 1. workspace and sample data
    assert store.scalar("SELECT count(*) FROM samples WHERE source = 'import'") == 180
    # 2. the first champion came from the pipeline, the legacy candidate was blocked for 全额赔付
    runs = store.query("SELECT * FROM training_runs ORDER BY id")
    assert [r["trigger"] for r in runs][:2] == ["demo", "scheduler"]
    assert all(r["status"] == "succeeded" for r in runs)
    legacy = store.one("SELECT * FROM models WHERE name = 'legacy-import'")
    assert legacy["status"] == "rejected"
    evaluation = store.one("SELECT * FROM evaluations WHERE model_id = ?", (legacy["id"],))
    assert evaluation["gate_passed"] == 0
    assert "full-compensation" in json.loads(evaluation["violations"])
    reject = store.one("SELECT detail FROM audit_log WHERE action = 'model.reject' AND entity_id = ?",
                       (str(legacy["id"]),))
    assert "block violations" in json.loads(reject["detail"])["reason"]
    # 3. questions came in over /intake; supervisors approved, edited and rejected in Slack
    decisions = dict(store.db.execute("SELECT decision, count(*) FROM reviews GROUP BY 1").fetchall())
    assert decisions.get("approve", 0) >= 1 and decisions.get("edit", 0) >= 1 and decisions.get("reject", 0) >= 1
    assert store.scalar("SELECT count(*) FROM questions WHERE source = 'http'") == store.scalar(
        "SELECT count(*) FROM questions")
    assert store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") == \
        decisions.get("approve", 0) + decisions.get("edit", 0)
    # the blocked drafts were edited, never approved unchanged
    assert store.scalar("SELECT count(*) FROM drafts d JOIN reviews r ON r.draft_id = d.id"
                        " WHERE d.verdict = 'block' AND r.decision = 'approve'") == 0
    assert store.scalar("SELECT count(*) FROM drafts WHERE verdict = 'block'") >= 1
    edited = [r["final_text"] for r in store.query("SELECT final_text FROM reviews WHERE decision = 'edit'")]
    assert not any("全额赔付" in t or "快递条码" in t for t in edited)
    # 4. the scheduler's run made a canary, and the canary job decided it
    scheduled = runs[1]
    canary_events = store.query("SELECT action FROM audit_log WHERE entity_id = ? AND action LIKE 'model.%'",
                                (str(scheduled["model_id"]),))
    assert "model.canary" in [e["action"] for e in canary_events]
    assert store.scalar("SELECT status FROM models WHERE id = ?", (scheduled["model_id"],)) in ("champion", "rejected")
    assert store.scalar("SELECT count(*) FROM models WHERE status = 'champion'") == 1
    decided = store.query("SELECT action FROM audit_log WHERE actor = 'scheduler' AND action IN"
                          " ('model.promote', 'model.rollback')")
    assert len(decided) == 1  # the canary job decided exactly once
    # 5. the weekly report
    reports = list((workdir / "reports").glob("*/report.md"))
    assert len(reports) == 1 and "Weekly consistency report" in reports[0].read_text(encoding="utf-8")
    assert (reports[0].parent / "numbers.csv").exists()
    assert f"Weekly report: {reports[0]}" in result.stdout  # the whole path, not cut to the table's width
    # the summary compares the retrained model with the champion on the same held-out questions
    compared = store.one("SELECT model_id, against_model_id FROM evaluations WHERE against_model_id IS NOT NULL"
                         " ORDER BY id DESC LIMIT 1")
    assert compared["model_id"] == scheduled["model_id"] and compared["against_model_id"] == runs[0]["model_id"]
    assert "Retrained vs champion" in result.stdout and "First champion consistency" in result.stdout
    store.close()


def test_demo_refuses_a_non_empty_workdir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = cli_subprocess("demo", "--workdir", tmp_path)
    assert result.returncode == 1
    assert "is not empty: choose another --workdir or pass --force" in result.stderr
    assert (tmp_path / "keep.txt").exists()
