"""Issue 15 (scale): the import's fast paths give exactly what the row-by-row reference gives.

The raw file is cut into blocks at line ends (quote parity), each block parsed by a worker;
here the blocks are made tiny so that cuts fall everywhere: inside quoted values with line
breaks, between CR and LF, next to a stray quote. A large import drops the table's indexes,
leaves the duplicates out itself (64-bit keys) and rebuilds the indexes; here that path runs on
small data and is checked against the ordinary insert, including a forced 64-bit key collision.
"""

from __future__ import annotations

import json

import pytest

from replyloop import dataio, migrations, store as store_mod
from replyloop.dataio import import_file, iter_staged, iter_samples
from replyloop.errors import DataFormatError
from replyloop.store import Staging, Store

ROWS = "SELECT id, prompt, response, category, intent, dedupe_key, prompt_key FROM samples ORDER BY id"

TRICKY_CSV = (
    "\ufeffprompt,response,category,intent\r\n"
    "问题一，快递呢？,您好（编号1）,物流查询,\r\n"
    '"多行\r\n问题 →","回答, 带逗号",物流查询,track\r\n'
    '"He said ""hi""",好的,售后服务,\r\n'
    "\r\n"                                    # a blank record
    'a"b 没有引号的值,stray quote,售后服务,\r\n'  # a stray quote inside an unquoted value
    "退货要多久？,七天内可退,退换货政策,\r"        # a lone CR ends this record
    "退货要多久？,不可以退,退换货政策,\n"          # the same prompt, another answer
    "问题一，快递呢？,您好（编号1）,物流查询,\n"    # a duplicate of line 2
    "Ｆｕｌｌ　ｗｉｄｔｈ,ＯＫ,,\n"
    "最后一行,没有换行,,"
)


def reference(tmp_path, path, name="ref", encoding="utf-8"):
    ref = Store(tmp_path / f"{name}.db")
    result = ref.import_rows(iter_staged(path, encoding))
    rows = ref.query(ROWS)
    ref.close()
    return result, rows


@pytest.mark.parametrize("block", [7, 64, 97, 1 << 20])
def test_blocks_cut_anywhere_give_the_reference_rows(tmp_path, monkeypatch, block):
    path = tmp_path / "tricky.csv"
    path.write_bytes(TRICKY_CSV.encode("utf-8"))
    expected, rows = reference(tmp_path, path)
    monkeypatch.setattr(dataio, "BLOCK_BYTES", block)
    fast = Store(tmp_path / "fast.db")
    result = import_file(fast, path, workers=0)
    assert fast.query(ROWS) == rows
    assert (result.added, result.duplicates, result.conflicts) == (expected.added, expected.duplicates, 1) == (8, 1, 1)
    assert [r["prompt"] for r in rows][:3] == ["问题一，快递呢？", "多行\r\n问题 →", 'He said "hi"']
    assert rows[3]["prompt"] == 'a"b 没有引号的值' and rows[1]["response"] == "回答, 带逗号"
    assert result.conflict_examples == expected.conflict_examples
    assert [(c.line, c.other_line) for c in result.conflict_examples] == [(9, 8)]  # a lone CR ends a line, as in csv


def test_worker_blocks_match_the_reference_for_gbk_and_jsonl(tmp_path, monkeypatch):
    monkeypatch.setattr(dataio, "BLOCK_BYTES", 50)
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("prompt,response\n怎么退货？,七天内可退\n物流查询,请提供订单号\n".encode("gbk"))
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(o, ensure_ascii=False) for o in [
        {"prompt": "怎么退货？", "response": "七天内可退"}, {},
        {"messages": [{"role": "user", "content": "在吗"}, {"role": "assistant", "content": "在的"}]},
    ]).replace("{}", "").encode("utf-8") + b"\r\n")
    for path, encoding in ((gbk, "gbk"), (jsonl, "utf-8")):
        _, rows = reference(tmp_path, path, path.stem, encoding)
        fast = Store(tmp_path / f"fast-{path.stem}.db")
        import_file(fast, path, encoding=encoding, workers=2)  # forked workers parse the blocks
        assert fast.query(ROWS) == rows and len(rows) == 2


@pytest.mark.parametrize("block", [16, 1 << 20])
@pytest.mark.parametrize("bad, line", [
    (b"\xff\xfe,bad bytes,\n", 8),               # not UTF-8, after good rows
    ("问题,回答,../etc\n".encode(), 8),           # a bad category
    ('"never closed,回答,\n好,好,\n'.encode(), None),  # broken quoting: the exact path names the line
])
def test_errors_are_the_reference_errors(tmp_path, monkeypatch, block, bad, line):
    monkeypatch.setattr(dataio, "BLOCK_BYTES", block)
    path = tmp_path / "bad.csv"
    good = "".join(f"问题{i},回答{i},物流查询\n" for i in range(5)).encode()
    path.write_bytes(b"prompt,response,category\n" + good + b"x,y,\n" + bad + good)
    with pytest.raises(DataFormatError) as ref:
        list(iter_samples(path))
    assert line is None or f"bad.csv:{line}:" in str(ref.value)
    store = Store(tmp_path / "s.db")
    with pytest.raises(DataFormatError) as got:
        import_file(store, path, workers=0)
    assert str(got.value) == str(ref.value)
    assert store.sample_count() == 0


def test_a_stray_quote_that_hides_every_record_end_takes_the_exact_path(tmp_path, monkeypatch):
    """With a quote in an unquoted value, quote parity finds no record end: the blocks grow
    until ``MAX_RECORD_BYTES``, then the exact path reads the file."""
    monkeypatch.setattr(dataio, "BLOCK_BYTES", 32)
    monkeypatch.setattr(dataio, "MAX_RECORD_BYTES", 256)
    path = tmp_path / "stray.csv"
    path.write_text("prompt,response\n" + 'a"b,c\n' + "".join(f"问题{i},回答{i}\n" for i in range(40)), encoding="utf-8")
    _, rows = reference(tmp_path, path)
    fast = Store(tmp_path / "fast.db")
    assert import_file(fast, path, workers=0).added == 41
    assert fast.query(ROWS) == rows


def _pairs(n: int, start: int = 0) -> str:
    return "".join(f"问题{i}？,回答{i},物流查询\n" for i in range(start, start + n))


def test_the_rebuilding_insert_matches_the_ordinary_one(tmp_path, monkeypatch):
    """Duplicates in the file and in the table, and conflicting answers: the same ids, rows,
    counts and examples whether the indexes are rebuilt or kept; every index is back."""
    path = tmp_path / "in.csv"
    body = _pairs(300) + _pairs(50) + "问题7？,另一个回答,物流查询\n" + _pairs(20, 1000)  # 50 in-file duplicates
    path.write_text("prompt,response,category\n" + body, encoding="utf-8")
    seen = []
    for name, min_rows in (("ordinary", 10**9), ("rebuild", 1)):
        monkeypatch.setattr(store_mod, "REBUILD_MIN_ROWS", min_rows)
        s = Store(tmp_path / f"{name}.db")
        s.add_samples([store_mod.SampleIn("问题1000？", "回答1000"), store_mod.SampleIn("问题5？", "旧回答")])
        result = import_file(s, path, workers=0)
        indexes = {r["name"] for r in s.query("SELECT name FROM sqlite_master WHERE type = 'index'"
                                              " AND tbl_name = 'samples' AND sql IS NOT NULL")}
        assert s.scalar("PRAGMA integrity_check") == "ok"
        seen.append((result.added, result.duplicates, list(result.sample_ids), result.conflicts,
                     result.conflict_examples, s.query(ROWS), indexes))
        s.close()
    assert seen[0] == seen[1]
    added, duplicates, _, conflicts, _, rows, indexes = seen[1]
    assert (added, duplicates, conflicts) == (300 + 1 + 19, 51, 3)  # 问题7 in the file, 问题5 (twice) stored
    assert indexes == {"idx_samples_category", "idx_samples_prompt_key", "idx_samples_dedupe_key",
                       "idx_samples_review_id"}
    assert len({r["dedupe_key"] for r in rows}) == len(rows)


def test_a_64_bit_key_collision_falls_back_to_the_ordinary_insert(tmp_path, monkeypatch):
    """Two different rows whose dedupe keys share their first 64 bits: the rebuilding insert
    leaves the second out, sees that its full key is not stored, undoes itself, and the
    ordinary insert stores both."""
    monkeypatch.setattr(store_mod, "REBUILD_MIN_ROWS", 1)
    s = Store(tmp_path / "s.db")
    rows = [(1, "甲", "一", None, None, "ab" * 8 + "0" * 48, "11" * 8), (2, "乙", "二", None, None, "ab" * 8 + "1" * 48,
                                                                     "22" * 8)]
    with Staging() as staging:
        writer = staging.writer()
        staging.add_keys(*writer.write(rows), file=writer.path.name)
        writer.close()
        result = s.import_staged(staging)
    assert (result.added, result.duplicates) == (2, 0)
    assert [r["prompt"] for r in s.query(ROWS)] == ["甲", "乙"]
    assert s.scalar("SELECT count(*) FROM sqlite_master WHERE name = 'idx_samples_dedupe_key'") == 1


def test_m038_keeps_every_row_and_the_uniqueness_rules(tmp_path):
    """An existing database (samples, a reviewed sample, a snapshot pointing at them) goes
    through the table rebuild with its ids; duplicates are still refused, foreign keys are on."""
    import sqlite3

    import sqlite_utils

    names = [fn.__name__ for fn in migrations.MIGRATIONS]
    previous = names[names.index("m038_samples_unique_indexes") - 1]
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrations.migrate(old, upto=previous)
    old.execute("INSERT INTO samples (id, prompt, response, source, approved_at, dedupe_key, prompt_key)"
                " VALUES (7, 'q', 'a', 'import', '2026-01-01', 'k1', 'p1'), (9, 'q2', 'a2', 'import', '2026-01-01', 'k2', 'p2')")
    old.execute("INSERT INTO snapshots (hash, created_at, sample_count, heldout_share) VALUES ('h', '2026', 2, 0.1)")
    old.execute("INSERT INTO snapshot_samples (snapshot_hash, sample_id, split) VALUES ('h', 7, 'train'), ('h', 9, 'heldout')")
    old.conn.commit()
    old.close()
    store = Store(path)
    assert [(r["id"], r["prompt"]) for r in store.query("SELECT id, prompt FROM samples ORDER BY id")] == [(7, "q"), (9, "q2")]
    assert store.scalar("PRAGMA foreign_keys") == 1 and store.scalar("PRAGMA integrity_check") == "ok"
    assert store.query("PRAGMA foreign_key_check") == []
    assert store.scalar("SELECT count(*) FROM snapshot_samples ss JOIN samples s ON s.id = ss.sample_id") == 2
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO samples (prompt, response, source, approved_at, dedupe_key) VALUES"
                         " ('x', 'y', 'import', '2026', 'k1')")
    sql = store.scalar("SELECT sql FROM sqlite_master WHERE name = 'samples'")
    assert "UNIQUE" not in sql.upper()
    assert migrations.migrate(store.db) == []


KILLED_IMPORT = """
import sys, time
from replyloop import store as store_mod
from replyloop.dataio import import_file
store_mod.REBUILD_MIN_ROWS = 1  # the rebuilding insert, on a small file
real = store_mod.Store._insert_rebuilding
def announced(self, *args):
    print("merging", flush=True)
    time.sleep(float(sys.argv[3]))
    return real(self, *args)
store_mod.Store._insert_rebuilding = announced
import_file(store_mod.Store(sys.argv[1]), sys.argv[2], workers=0)
print("done", flush=True)
"""


def test_kill_9_inside_the_rebuilding_insert_leaves_the_table_and_its_indexes(tmp_path):
    """``kill -9`` while the indexes are dropped and the rows half in: the next open finds the
    table as it was, every index there, and the import then goes through whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "in.csv"
    path.write_text("prompt,response,category\n" + _pairs(10000), encoding="utf-8")
    db = tmp_path / "s.db"
    Store(db).add_samples([store_mod.SampleIn("早就有的问题", "早就有的回答")])
    indexes = "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples' AND sql IS NOT NULL"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(dataio.Path(dataio.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    counts = []
    for pause, after in ((0.0, 0.01), (0.3, 0.0)):  # inside the insert; before it, the write lock held
        proc = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, str(db), str(path), str(pause)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "merging"
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = Store(db)
        counts.append(s.sample_count())
        assert counts[-1] in (1, 10001) and s.scalar("PRAGMA integrity_check") == "ok"
        assert s.scalar(indexes) == 4
        s.close()
    assert counts == [1, 1]  # killed inside the transaction: nothing of it is left
    s = Store(db)
    assert import_file(s, path, workers=0).added == 10000 and s.sample_count() == 10001
    assert s.scalar(indexes) == 4


@pytest.mark.parametrize("block", [40, 1 << 20])
def test_single_line_quoted_values_among_plain_lines(tmp_path, monkeypatch, block):
    """The common export: CRLF line ends, a few quoted values (commas, doubled quotes), a
    zero-width space, a blank value: each block cut at its commas, the quoted lines read by the
    csv module, the odd rows checked one by one, and the same rows as the reference."""
    monkeypatch.setattr(dataio, "BLOCK_BYTES", block)
    lines = ["prompt,response,category"] + [f"问题{i}？,回答{i},物流查询" for i in range(30)]
    lines[3] = '"Yes, we deliver","Please tap ""Forgot password""",登录异常'
    lines[9] = "零宽\u200b空格,回答,物流查询"
    lines[20] = '"引号里的问题",回答,'
    path = tmp_path / "export.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    _, rows = reference(tmp_path, path)
    fast = Store(tmp_path / "fast.db")
    import_file(fast, path, workers=0)
    assert fast.query(ROWS) == rows and len(rows) == 30
    assert (rows[2]["prompt"], rows[2]["response"]) == ("Yes, we deliver", 'Please tap "Forgot password"')
    blank = tmp_path / "blank.csv"
    blank.write_bytes(("\r\n".join(lines[:25] + ["\u200b\u200b,回答,物流查询"] + lines[25:]) + "\r\n").encode("utf-8"))
    with pytest.raises(DataFormatError) as ref:
        list(iter_samples(blank))
    with pytest.raises(DataFormatError) as got:
        import_file(Store(tmp_path / "blank.db"), blank, workers=0)
    assert str(got.value) == str(ref.value) and "blank.csv:26: empty prompt" in str(got.value)
