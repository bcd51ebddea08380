import sqlite3
import threading

import pytest

from replyloop import migrations
from replyloop.errors import NotFoundError, ReplyloopError
from replyloop.store import BlockedDraftError, SampleIn, Store


def make_draft(store: Store, text="您好，请在订单详情查看电子面单。", verdict="pass", conversation="c1"):
    qid = store.add_question("我的快递到哪里了？", conversation, "物流查询", source="http")
    return store.add_draft(qid, text, model_name="m1", verdict=verdict)


def test_wal_and_foreign_keys(tmp_path):
    store = Store(tmp_path / "a.db")
    assert store.scalar("PRAGMA journal_mode") == "wal"
    assert store.scalar("PRAGMA foreign_keys") == 1
    with pytest.raises(sqlite3.IntegrityError):
        store.add_draft(999, "x")


def test_migrate_blank_database_creates_every_table(tmp_path):
    store = Store(tmp_path / "a.db")
    tables = set(store.db.table_names())
    assert {"questions", "drafts", "reviews", "samples", "snapshots", "snapshot_samples", "models",
            "training_runs", "locks", "audit_log", "evaluations", "embedding_cache",
            "_replyloop_migrations"} <= tables
    assert migrations.schema_version(store.db) == len(migrations.MIGRATIONS)
    assert "intent" in store.db["samples"].columns_dict


def test_migrations_upgrade_an_old_schema_keeping_data(tmp_path):
    import sqlite_utils

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    assert migrations.migrate(old, upto="m001_initial") == ["m001_initial"]
    old.execute("INSERT INTO samples (prompt, response, category, source, approved_at, dedupe_key)"
                " VALUES ('q', 'a', '物流查询', 'import', '2026-01-01', 'k1')")
    old.conn.commit()
    assert "intent" not in old["samples"].columns_dict
    old.close()

    store = Store(path)  # opening migrates forward
    assert "intent" in store.db["samples"].columns_dict
    assert "evaluations" in store.db.table_names()
    assert store.samples()[0]["prompt"] == "q"
    assert migrations.migrate(store.db) == []  # idempotent


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    def m999_broken(db):
        db.execute("CREATE TABLE half (id INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [m999_broken])
    with pytest.raises(RuntimeError):
        Store(tmp_path / "a.db")
    store = Store(tmp_path / "a.db", migrate=False)
    assert "half" not in store.db.table_names()
    assert "m999_broken" not in migrations.applied(store.db)


def test_approve_creates_one_sample_and_is_idempotent(workspace):
    _, store = workspace
    draft = make_draft(store)
    first = store.decide(draft, "approve", "U1")
    second = store.decide(draft, "approve", "U1")
    third = store.decide(draft, "reject", "U2", reason="late")
    assert first.created and not second.created and not third.created
    assert second.review["reviewer"] == "U1" and third.review["decision"] == "approve"
    assert second.sample_id == first.sample_id
    rows = store.query("SELECT * FROM samples")
    assert len(rows) == 1
    assert rows[0]["review_id"] == first.review["id"]
    assert rows[0]["approved_by"] == "U1" and rows[0]["source"] == "review"
    assert store.scalar("SELECT count(*) FROM audit_log WHERE action = 'review.approve'") == 1


def test_edit_stores_edited_text_and_reject_stores_no_sample(workspace):
    _, store = workspace
    edited = store.decide(make_draft(store, conversation="a"), "edit", "U1", final_text=" 请查看电子面单 ")
    assert store.samples(edited.sample_id and [edited.sample_id])[0]["response"] == "请查看电子面单"
    rejected = store.decide(make_draft(store, "随便", conversation="b"), "reject", "U1", reason="off topic")
    assert rejected.sample_id is None and rejected.review["reason"] == "off topic"
    assert store.sample_count() == 1


def test_blocked_draft_cannot_be_approved_unedited(workspace):
    _, store = workspace
    draft = make_draft(store, "我们全额赔付", verdict="block")
    with pytest.raises(BlockedDraftError):
        store.decide(draft, "approve", "U1")
    assert store.scalar("SELECT count(*) FROM reviews") == 0
    assert store.decide(draft, "edit", "U1", final_text="我们会按规则处理").created


def test_decide_errors(workspace):
    _, store = workspace
    with pytest.raises(NotFoundError):
        store.decide(12345, "approve", "U1")
    draft = make_draft(store)
    with pytest.raises(ReplyloopError, match="decision must be one of"):
        store.decide(draft, "maybe", "U1")
    with pytest.raises(ReplyloopError, match="edited reply text"):
        store.decide(draft, "edit", "U1", final_text="  ")


def test_concurrent_decisions_produce_exactly_one(tmp_path):
    path = tmp_path / "race.db"
    store = Store(path)
    draft = make_draft(store)
    results, barrier = [], threading.Barrier(8)

    def click(i):
        own = Store(path)  # separate connections, as separate processes would have
        barrier.wait()
        results.append(own.decide(draft, "approve" if i % 2 else "edit", f"U{i}", final_text="改过的回复"))
        own.close()

    threads = [threading.Thread(target=click, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    assert store.scalar("SELECT count(*) FROM reviews") == 1
    assert store.scalar("SELECT count(*) FROM samples") == 1
    winner = next(r for r in results if r.created).review
    assert all(r.review["id"] == winner["id"] for r in results)


def test_add_samples_is_one_transaction(workspace):
    _, store = workspace

    class Boom(Exception):
        pass

    def rows():
        yield SampleIn("q1", "a1", "物流查询")
        raise Boom()

    with pytest.raises(Boom):
        store.add_samples(rows())
    assert store.sample_count() == 0


def test_dedupe_after_whitespace_and_full_width_normalisation(workspace):
    _, store = workspace
    result = store.add_samples([
        SampleIn("怎么退货？", "七天无理由退货，请在订单页申请。"),
        SampleIn("怎么 退货?", "七天无理由退货,请在订单页申请。"),
        SampleIn("ＡＢＣ order", "OK"),
        SampleIn("abc ORDER", "ok"),
    ])
    assert (result.added, result.duplicates) == (2, 2)


def test_audit_log_is_append_only(workspace):
    _, store = workspace
    store.audit("U1", "test.action", "thing", 1, {"k": "v"})
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE audit_log SET actor = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit_log")


def test_not_a_database_is_a_clear_error(tmp_path):
    from replyloop.store import StoreError

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store(bad)


def test_backup_while_another_process_keeps_approving(workspace, tmp_path):
    """An online backup is consistent (every approval in the copy has its sample) while a real
    second process writes; the copy is one self-contained file that passes integrity_check."""
    import subprocess
    import sys
    import textwrap
    import time

    config, store = workspace
    for i in range(200):
        store.decide(store.add_draft(store.add_question(f"问题{i}", f"c{i}", "物流查询"), f"回答{i}"), "approve", "U1")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from replyloop.store import Store
        s = Store({str(config.db_path)!r})
        for i in range(200, 1200):
            s.decide(s.add_draft(s.add_question(f"问题{{i}}", f"c{{i}}", "物流查询"), f"回答{{i}}"), "approve", "U2")
        """)])
    try:
        while store.sample_count() == 200 and writer.poll() is None:
            time.sleep(0.01)
        copies = []
        while writer.poll() is None and len(copies) < 5:
            copies.append(store.backup(tmp_path / "backups", overwrite=True) if not copies else
                          store.backup(tmp_path / f"b{len(copies)}.db"))
    finally:
        assert writer.wait(120) == 0
    assert any(200 < c["samples"] < 1200 for c in copies)  # taken while the writer wrote
    assert all(c["samples"] == c["reviews"] for c in copies)
    for c in copies:
        copy = sqlite3.connect(c["path"])
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("SELECT count(*) FROM samples").fetchone()[0] == c["samples"]
        copy.close()
    assert not list(tmp_path.rglob(".*.partial"))
    final = store.backup(tmp_path / "final.db")
    assert final["samples"] == final["reviews"] == 1200

    from helpers import cli
    refused = cli("data", "backup", tmp_path / "final.db", "--config", config.source)
    assert refused.exit_code == 1 and "already exists (use --force to overwrite)" in refused.output
    again = cli("data", "backup", tmp_path / "final.db", "--force", "--config", config.source, "--json")
    assert again.exit_code == 0, again.output
    assert '"samples": 1200' in again.output
    # a new directory named with a trailing slash gets a timestamped file inside it
    into = cli("data", "backup", f"{tmp_path}/new-dir/", "--config", config.source)
    assert into.exit_code == 0, into.output
    [made] = (tmp_path / "new-dir").iterdir()
    assert made.name.startswith("replyloop-") and made.suffix == ".db" and str(made) in into.output
