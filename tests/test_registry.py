"""Registry: register, promote / canary / rollback / reject transitions with their audit rows,
the gate check on promote, retention of old adapters, the canary split, review rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli

from replyloop.errors import ConflictError, GateFailed, NotFoundError
from replyloop.registry import Registry, RegistryError, canary_bucket


def fake_adapter(root: Path, name: str, snapshot: str | None = "abc123") -> Path:
    """An adapter directory as the trainer leaves it (the registry reads only manifest.json)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "manifest.json").write_text(json.dumps({
        "base_model": "/models/tiny", "snapshot_hash": snapshot,
        "metrics": {"train_loss": 1.25, "eval_loss": 1.5, "steps": 30}}))
    return d


def add_eval(store, model_id: int, passed: bool) -> int:
    with store.transaction() as db:
        return db.execute(
            "INSERT INTO evaluations (model_id, embedding_model, n, mean_similarity, gate_passed, created_at)"
            " VALUES (?, 'test', 10, 0.8, ?, datetime('now', '+' || ? || ' seconds'))",
            (model_id, int(passed), model_id)).lastrowid


def audit(store, action: str | None = None) -> list[dict]:
    rows = store.query("SELECT * FROM audit_log WHERE action LIKE 'model.%' ORDER BY id")
    rows = [r for r in rows if action is None or r["action"] == action]
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else None
    return rows


@pytest.fixture
def reg(workspace):
    config, store = workspace
    return Registry(store, keep_adapters=2)


def register_n(reg, root: Path, n: int) -> list[dict]:
    return [reg.register(fake_adapter(root, f"run-{i}")) for i in range(1, n + 1)]


def test_register_reads_manifest_and_audits(reg, tmp_path):
    row = reg.register(fake_adapter(tmp_path, "run-1"), run_id=None)
    assert row["name"] == "run-1" and row["status"] == "candidate"
    assert row["base_model"] == "/models/tiny" and row["snapshot_hash"] == "abc123"
    assert row["metrics"]["train_loss"] == 1.25
    assert row["adapter_path"] == str((tmp_path / "run-1").resolve())
    # same directory again: same row, no second audit entry
    assert reg.register(tmp_path / "run-1")["id"] == row["id"]
    [entry] = audit(reg.store, "model.register")
    assert entry["entity_id"] == str(row["id"]) and entry["detail"]["to"] == "candidate"
    assert reg.get("run-1")["id"] == reg.get(str(row["id"]))["id"] == row["id"]
    assert reg.get(str(tmp_path / "run-1"))["id"] == row["id"]  # by adapter path


def test_register_without_manifest_names_the_file(reg, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match=r"empty/manifest.json: no manifest.json"):
        reg.register(tmp_path / "empty")
    bad = fake_adapter(tmp_path, "bad")
    (bad / "manifest.json").write_text('{"base_model": "x",\n "metrics": }')
    with pytest.raises(RegistryError, match=r"bad/manifest.json: line 2: invalid JSON"):
        reg.register(bad)


def test_promote_requires_a_passing_evaluation(reg, tmp_path):
    a, = register_n(reg, tmp_path, 1)
    with pytest.raises(GateFailed, match="has no evaluation"):
        reg.promote(a["id"], "alice")
    add_eval(reg.store, a["id"], passed=False)
    with pytest.raises(GateFailed, match="failed the promotion gate"):
        reg.promote(a["id"], "alice")
    assert reg.get(a["id"])["status"] == "candidate"
    assert audit(reg.store, "model.promote") == []
    row = reg.promote(a["id"], "alice", force=True, reason="first model")
    assert row["status"] == "champion" and row["promoted_by"] == "alice" and row["promoted_at"]
    [entry] = audit(reg.store, "model.promote")
    assert entry["actor"] == "alice"
    assert entry["detail"]["forced"] is True and entry["detail"]["gate_passed"] is False
    assert entry["detail"]["from"] == "candidate" and entry["detail"]["to"] == "champion"
    assert entry["detail"]["reason"] == "first model"


def test_promote_retires_old_champion_and_rollback_restores_it(reg, tmp_path):
    a, b, c = register_n(reg, tmp_path, 3)
    for m in (a, b, c):
        add_eval(reg.store, m["id"], passed=True)
    reg.promote(a["id"], "alice")
    reg.promote(b["id"], "bob")
    assert reg.champion()["id"] == b["id"] and reg.get(a["id"])["status"] == "retired"
    reg.promote(c["id"], "carol")
    assert [m["status"] for m in reg.list()] == ["retired", "retired", "champion"]

    restored = reg.rollback("dave", reason="refund replies got worse")
    assert restored["id"] == b["id"] and restored["status"] == "champion"
    assert reg.get(c["id"])["status"] == "retired"
    entry = audit(reg.store, "model.rollback")[-1]
    assert entry["entity_id"] == str(c["id"]) and entry["actor"] == "dave"
    assert entry["detail"] == {"reason": "refund replies got worse", "from": "champion", "to": "retired",
                               "restored": b["id"]}
    # a second rollback goes further back, never forward to the rolled-back model
    assert reg.rollback("dave")["id"] == a["id"]
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("dave")
    assert reg.champion()["id"] == a["id"]


def test_canary_lifecycle_and_rollback_of_canary(reg, tmp_path):
    a, b, c = register_n(reg, tmp_path, 3)
    for m in (a, b, c):
        add_eval(reg.store, m["id"], passed=True)
    with pytest.raises(RegistryError, match="no champion yet"):
        reg.start_canary(b["id"], 10, "alice")
    reg.promote(a["id"], "alice")
    row = reg.start_canary(b["id"], 10, "alice")
    assert row["status"] == "canary" and row["canary_percent"] == 10 and reg.canary()["id"] == b["id"]
    with pytest.raises(ConflictError, match="run-2 is already the canary"):
        reg.start_canary(c["id"], 5, "alice")
    assert reg.start_canary(b["id"], 25, "alice")["canary_percent"] == 25
    entries = audit(reg.store, "model.canary")
    assert [e["detail"]["percent"] for e in entries] == [10, 25]
    assert entries[1]["detail"]["previous_percent"] == 10

    champion = reg.rollback("bob", reason="canary approvals low")
    assert champion["id"] == a["id"]
    assert reg.get(b["id"])["status"] == "rejected" and reg.canary() is None
    entry = audit(reg.store, "model.rollback")[-1]
    assert entry["detail"] == {"reason": "canary approvals low", "from": "canary", "to": "rejected"}

    # a canary that passed is promoted: the canary share ends, the old champion retires
    reg.start_canary(c["id"], 10, "alice")
    row = reg.promote(c["id"], "alice", reason="canary ok")
    assert row["status"] == "champion" and row["canary_percent"] is None
    assert reg.get(a["id"])["status"] == "retired"
    assert audit(reg.store, "model.promote")[-1]["detail"]["from"] == "canary"


def test_canary_refuses_failed_gate_and_bad_percent(reg, tmp_path):
    a, b = register_n(reg, tmp_path, 2)
    add_eval(reg.store, a["id"], passed=True)
    add_eval(reg.store, b["id"], passed=False)
    reg.promote(a["id"], "alice")
    with pytest.raises(GateFailed):
        reg.start_canary(b["id"], 10, "alice")
    with pytest.raises(RegistryError, match="between 1 and 100"):
        reg.start_canary(b["id"], 0, "alice")
    assert reg.start_canary(b["id"], 10, "alice", force=True)["status"] == "canary"


def test_reject(reg, tmp_path):
    a, = register_n(reg, tmp_path, 1)
    row = reg.reject(a["id"], "alice", "tone too informal")
    assert row["status"] == "rejected"
    [entry] = audit(reg.store, "model.reject")
    assert entry["detail"] == {"reason": "tone too informal", "from": "candidate", "to": "rejected"}
    with pytest.raises(RegistryError, match="only a candidate or the canary"):
        reg.promote(a["id"], "alice", force=True)


def test_transition_is_atomic_with_its_audit_row(reg, tmp_path):
    """If the audit insert fails, the status change is rolled back with it."""
    a, b = register_n(reg, tmp_path, 2)
    reg.promote(a["id"], "alice", force=True)
    with reg.store.transaction() as db:
        db.execute("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'nope'); END")
    with pytest.raises(Exception, match="nope"):
        reg.promote(b["id"], "bob", force=True)
    assert reg.champion()["id"] == a["id"] and reg.get(b["id"])["status"] == "candidate"


def test_retention_keeps_newest_retired_adapters(reg, tmp_path):
    models = register_n(reg, tmp_path, 5)
    for m in models:
        reg.promote(m["id"], "alice", force=True)
    # keep_adapters=2: run-1 and run-2 are deleted; run-3, run-4 kept (retired); run-5 is the champion
    assert not (tmp_path / "run-1").exists() and not (tmp_path / "run-2").exists()
    assert all((tmp_path / f"run-{i}").exists() for i in (3, 4, 5))
    rows = {r["name"]: r for r in reg.list()}
    assert rows["run-1"]["adapter_deleted_at"] and rows["run-3"]["adapter_deleted_at"] is None
    assert audit(reg.store, "model.prune")[-1]["detail"]["deleted_adapters"] == [models[1]["id"]]
    # rollback only reaches models whose adapter is still on disk
    assert reg.rollback("bob")["name"] == "run-4"
    assert reg.rollback("bob")["name"] == "run-3"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("bob")


def test_canary_split_is_stable_and_close_to_percent(reg, tmp_path):
    a, b = register_n(reg, tmp_path, 2)
    reg.promote(a["id"], "alice", force=True)
    reg.start_canary(b["id"], 10, "alice", force=True)
    ids = [f"conv-{i}" for i in range(10_000)]
    routed = [reg.route(cid)["id"] for cid in ids]
    share = routed.count(b["id"]) / len(ids)
    assert 0.09 <= share <= 0.11
    # stable: the same conversation always gets the same model, in a new Registry too
    again = Registry(reg.store)
    assert [again.route(cid)["id"] for cid in ids[:500]] == routed[:500]
    # raising the share keeps every earlier canary conversation on the canary
    reg.start_canary(b["id"], 30, "alice")
    on_canary = {cid for cid, m in zip(ids, routed) if m == b["id"]}
    assert all(reg.route(cid)["id"] == b["id"] for cid in on_canary)
    assert 0.28 <= sum(canary_bucket(c) < 30 for c in ids) / len(ids) <= 0.32
    assert reg.route(None)["id"] == a["id"]


def test_route_without_champion(reg):
    with pytest.raises(NotFoundError, match="no champion model yet"):
        reg.route("conv-1")


def test_review_rates(reg, workspace, tmp_path):
    _, store = workspace
    a, b = register_n(reg, tmp_path, 2)
    assert reg.review_rates(a["id"]) == {"reviews": 0, "approved": 0, "edited": 0, "rejected": 0,
                                         "approval_without_edit_rate": None}
    decisions = {a["id"]: ["approve", "approve", "edit", "reject"], b["id"]: ["approve"]}
    for model_id, ds in decisions.items():
        for i, d in enumerate(ds):
            q = store.add_question(f"问题 {model_id}-{i}", f"c{model_id}-{i}")
            draft = store.add_draft(q, f"回复 {model_id}-{i}", model_id=model_id)
            store.decide(draft, d, "alice", final_text="改过的回复" if d == "edit" else None)
    store.add_draft(store.add_question("未审核", "c9"), "待审核", model_id=a["id"])
    assert reg.review_rates(a["id"]) == {"reviews": 4, "approved": 2, "edited": 1, "rejected": 1,
                                         "approval_without_edit_rate": 0.5}
    assert reg.review_rates(b["id"])["approval_without_edit_rate"] == 1.0


def test_models_cli(workspace, tmp_path):
    config, store = workspace
    a = fake_adapter(tmp_path, "run-1")
    b = fake_adapter(tmp_path, "run-2")
    r = cli("models", "register", a)
    assert r.exit_code == 0 and r.output == "model 1 run-1: candidate\n"
    assert cli("models", "register", b, "--name", "second").output == "model 2 second: candidate\n"
    r = cli("models", "promote", "run-1")
    assert r.exit_code == 1
    assert r.output == ("Error: model run-1 has no evaluation: run `replyloop eval run-1` first"
                        " (or promote with --force)\n")
    r = cli("models", "promote", "run-1", "--force", "--by", "alice", "--reason", "bootstrap")
    assert r.exit_code == 0 and r.output == "Promoted model 1 run-1: champion\n"
    r = cli("models", "canary", "second", "--percent", "20", "--force")
    assert r.exit_code == 0 and r.output == "Canary: model 2 second: canary 20%\n"
    r = cli("models", "list", "--json")
    assert [(m["name"], m["status"]) for m in json.loads(r.output)] == [("run-1", "champion"), ("second", "canary")]
    assert "run-1" in cli("models", "list").output
    r = cli("models", "show", "second")
    assert r.exit_code == 0 and r.output.startswith("model 2 second: canary 20%\n")
    assert "reviews: 0" in r.output and "not evaluated yet" in r.output
    r = cli("models", "rollback", "--reason", "too many edits")
    assert r.output == "Stopped canary model 2 second (rejected); champion: model 1 run-1: champion\n"
    r = cli("models", "rollback")
    assert r.exit_code == 1 and "no earlier champion" in r.output
    assert cli("models", "show", "nope").output == "Error: model nope not found (see `replyloop models list`)\n"
    assert [e["action"] for e in audit(store)] == ["model.register", "model.register", "model.promote",
                                                   "model.canary", "model.rollback"]
