"""`replyloop demo --quick` end to end in a real process; its outcome checked in the database."""

import json

import pytest

from helpers import cli_subprocess
from replyloop.demo import HELD_BACK_INTENTS
from replyloop.store import Store

pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)  # pre-training included: minutes on 2 cores, many more on a busy machine
def test_demo_quick_runs_the_whole_loop(tmp_path):
    """From a non-editable wheel installed into a folder of its own (tests/wheel_support.py): what a
    user who installs the package gets, package data and the pipeline's child processes included."""
    from wheel_support import build_wheel_target, run_from_wheel

    site = build_wheel_target(tmp_path / "wheel")
    workdir = tmp_path / "demo"
    result = run_from_wheel(site, "demo", "--quick", "--workdir", workdir, cwd=tmp_path, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_demo_outcome(workdir, result.stdout)


def check_demo_outcome(workdir, stdout, pretrained=True):
    """What a finished demo left in its workspace and printed (also run by hand on a full demo,
    or on one that reused a cached base: ``pretrained=False``)."""
    from types import SimpleNamespace

    result = SimpleNamespace(stdout=stdout)
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]", "replyloop demo: done in"):
        assert step in result.stdout

    store = Store(workdir / "replyloop.db")
    # 1. workspace and sample data: the shipped set minus the questions with no approved reply yet
    held_back = [r for r in _sample_rows() if r["intent"] in HELD_BACK_INTENTS]
    assert store.scalar("SELECT count(*) FROM samples WHERE source = 'import'") == 180 - len(held_back)
    # the base model was pre-trained in this run and cached in the workspace
    cached = list((workdir / ".cache").glob("tiny-llama-*/pretrain.json"))
    assert len(cached) == 1
    built = json.loads(cached[0].read_text(encoding="utf-8"))
    assert built["final_loss"] < 1.0
    size = f"{built['parameters'] / 1e6:.1f}M-parameter model"
    assert (f"pre-trained a {size}" if pretrained else f"reused the cached {size}") \
        in " ".join(result.stdout.split())  # the console wraps long lines
    # 2. the first champion came from the pipeline, the legacy candidate was blocked for 全额赔付
    runs = store.query("SELECT * FROM training_runs ORDER BY id")
    assert [r["trigger"] for r in runs][:1] == ["scheduler"]
    assert all(r["status"] == "succeeded" for r in runs)
    first = store.one("SELECT * FROM models WHERE name = 'team-current'")
    assert first is not None and first["status"] in ("retired", "champion")
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
    # every approved or edited reply is a sample (a pair already in the dataset is not added twice)
    assert store.scalar("SELECT count(*) FROM reviews r JOIN drafts d ON d.id = r.draft_id"
                        " JOIN questions q ON q.id = d.question_id WHERE r.decision IN ('approve', 'edit')"
                        " AND NOT EXISTS (SELECT 1 FROM samples s WHERE s.prompt = q.text"
                        " AND s.response = r.final_text)") == 0
    assert store.scalar("SELECT count(*) FROM samples WHERE source = 'review'") > 0
    # the blocked drafts were edited, never approved unchanged
    assert store.scalar("SELECT count(*) FROM drafts d JOIN reviews r ON r.draft_id = d.id"
                        " WHERE d.verdict = 'block' AND r.decision = 'approve'") == 0
    assert store.scalar("SELECT count(*) FROM drafts WHERE verdict = 'block'") >= 1
    edited = [r["final_text"] for r in store.query("SELECT final_text FROM reviews WHERE decision = 'edit'")]
    assert not any("全额赔付" in t or "快递条码" in t or "七日退货" in t for t in edited)
    # 4. the scheduler's run passed the gate, served as the canary, and the canary job promoted it
    scheduled = runs[-1]
    assert [r["trigger"] for r in runs] == ["scheduler"]  # one retrain: the gate passed it the first time
    retrained = store.one("SELECT * FROM models WHERE id = ?", (scheduled["model_id"],))
    gate = store.one("SELECT gate_passed, violations FROM evaluations WHERE model_id = ?", (retrained["id"],))
    assert gate["gate_passed"] == 1, gate["violations"]
    canary_events = [e["action"] for e in store.query(
        "SELECT action FROM audit_log WHERE entity_id = ? AND action LIKE 'model.%' ORDER BY id",
        (str(retrained["id"]),))]
    assert "model.canary" in canary_events and canary_events[-1] == "model.promote"
    assert retrained["status"] == "champion"
    assert store.scalar("SELECT count(*) FROM models WHERE status = 'champion'") == 1
    decided = store.query("SELECT action FROM audit_log WHERE actor = 'scheduler' AND action IN"
                          " ('model.promote', 'model.rollback')")
    assert [d["action"] for d in decided] == ["model.promote"]  # the canary job decided exactly once
    # 5. the weekly report
    reports = list((workdir / "reports").glob("*/report.md"))
    assert len(reports) == 1 and "Weekly consistency report" in reports[0].read_text(encoding="utf-8")
    assert (reports[0].parent / "numbers.csv").exists()
    assert f"Weekly report: {reports[0]}" in result.stdout  # the whole path, not cut to the table's width
    # the retrained model was evaluated with the champion on the same held-out questions
    compared = store.one("SELECT model_id, against_model_id FROM evaluations WHERE against_model_id IS NOT NULL"
                         " ORDER BY id DESC LIMIT 1")
    assert compared["model_id"] == scheduled["model_id"] and compared["against_model_id"] == first["id"]

    # the rounds, counted here from the drafts and reviews themselves
    r1, r2 = _round(store, "r1-"), _round(store, "r2-")
    assert r1["models"] == {"team-current"}  # every round-1 draft came from the first champion
    assert r2["models"] == {store.scalar("SELECT name FROM models WHERE status = 'champion'")}
    assert r1["drafts"] == r2["drafts"] > 0
    # the first champion has the legacy habits: its own drafts say 快递条码 / promise 全额赔付
    assert r1["terminology"] > 0 and r1["promises"] > 0
    assert r1["texts_with_legacy"] > 0
    # the summary prints these numbers (per 100 drafts), not numbers written in
    summary = json.loads((workdir / "demo-summary.json").read_text(encoding="utf-8"))
    for got, counted in zip(summary["rounds"], (r1, r2)):
        assert got["drafts"] == counted["drafts"]
        assert got["terminology_per_100"] == pytest.approx(100 * counted["terminology"] / counted["drafts"])
        assert got["promises_per_100"] == pytest.approx(100 * counted["promises"] / counted["drafts"])
        assert got["approval_without_edit"] == pytest.approx(counted["approved"] / counted["drafts"])
        assert got["heldout_chrf"] is not None and 0 <= got["heldout_chrf"] <= 1
        assert got["heldout_n"] == compared_n(store)
    out = " ".join(result.stdout.split())
    assert "Rounds of reviews" in out and "Round 1" in out and "Round 2" in out and "Terminology" in out
    assert f"{100 * r1['terminology'] / r1['drafts']:.1f}" in out
    assert f"{100 * r1['promises'] / r1['drafts']:.1f}" in out
    assert f"({r1['approved']}/{r1['drafts']})" in out
    assert "held-out chrF" in out  # the paired change, two models drafted the held-out questions
    # round 2 (the retrained model) is better than round 1 (the first champion): fewer
    # violations per 100 drafts, more drafts approved without edit
    assert r2["models"] == {retrained["name"]}
    assert r2["terminology"] + r2["promises"] < r1["terminology"] + r1["promises"]
    assert r2["approved"] / r2["drafts"] > r1["approved"] / r1["drafts"]
    # the summary's decision counts add up: the rounds and the canary, off-topic rejections included
    reviews = summary["reviews"]
    assert reviews["all"] == {k: decisions.get(k, 0) for k in ("approve", "edit", "reject")}
    assert reviews["round 1"] == {"approve": r1["approved"], "edit": r1["drafts"] - r1["approved"], "reject": 1}
    assert reviews["round 2"] == {"approve": r2["approved"], "edit": r2["drafts"] - r2["approved"], "reject": 1}
    assert sum(sum(reviews.get(p, {}).values()) for p in ("round 1", "canary", "round 2")) == sum(decisions.values())
    assert "Review decisions" in out
    store.close()


def _sample_rows():
    import csv

    from replyloop import paths

    with (paths.samples_dir() / "cs_samples.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def compared_n(store):
    return json.loads(store.one("SELECT report FROM evaluations WHERE against_model_id IS NOT NULL"
                                " ORDER BY id DESC LIMIT 1")["report"])["n"]


def _round(store, prefix):
    """A round's drafts for customer questions, and the decisions on them, straight from the tables."""
    rows = store.query("SELECT d.text, d.model_name, d.violations, r.decision FROM drafts d"
                       " JOIN questions q ON q.id = d.question_id JOIN reviews r ON r.draft_id = d.id"
                       " WHERE q.conversation_id LIKE ? AND q.conversation_id NOT LIKE '%off-topic'", (prefix + "%",))
    rules = [[v["rule"] for v in json.loads(r["violations"])] for r in rows]
    return {"drafts": len(rows), "models": {r["model_name"] for r in rows},
            "terminology": sum(1 for rs in rules for x in rs if x.startswith("terminology:")),
            "promises": sum(1 for rs in rules for x in rs if not x.startswith("terminology:")),
            "approved": sum(r["decision"] == "approve" for r in rows),
            "texts_with_legacy": sum(("快递条码" in r["text"]) or ("全额赔付" in r["text"]) for r in rows)}


def test_force_keeps_the_cached_base_and_nothing_else(tmp_path):
    from replyloop.demo import CACHE_DIR, _prepare_workdir

    (tmp_path / CACHE_DIR / "tiny-llama-x").mkdir(parents=True)
    (tmp_path / CACHE_DIR / "tiny-llama-x" / "config.json").write_text("{}")
    (tmp_path / "replyloop.db").write_text("old")
    (tmp_path / "adapters" / "a").mkdir(parents=True)
    _prepare_workdir(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_DIR]
    assert (tmp_path / CACHE_DIR / "tiny-llama-x" / "config.json").exists()


def test_demo_refuses_a_non_empty_workdir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = cli_subprocess("demo", "--workdir", tmp_path)
    assert result.returncode == 1
    assert "is not empty: choose another --workdir or pass --force" in result.stderr
    assert (tmp_path / "keep.txt").exists()
