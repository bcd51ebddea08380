import csv
import json
from pathlib import Path

import pytest

from helpers import cli
from replyloop.dataio import read_questions, read_samples
from replyloop.errors import DataFormatError


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# -- formats -------------------------------------------------------------------------------------


def test_lora_scripts_csv_with_optional_category(tmp_path):
    path = write(tmp_path / "m.csv", 'prompt,response,category\n怎么退货,"七天无理由退货，请在订单页申请",退换货政策\n'
                                     '"multi\nline",ok,\n')
    samples = read_samples(path)
    assert [(s.prompt, s.response, s.category) for s in samples] == [
        ("怎么退货", "七天无理由退货，请在订单页申请", "退换货政策"), ("multi\nline", "ok", None)]


def test_utf8_bom_and_gbk(tmp_path):
    text = "prompt,response\n电子面单在哪看,在订单详情页查看电子面单\n"
    assert read_samples(write(tmp_path / "bom.csv", "\ufeff" + text))[0].prompt == "电子面单在哪看"
    gbk = write(tmp_path / "gbk.csv", text, encoding="gbk")
    assert read_samples(gbk, encoding="gbk")[0].response == "在订单详情页查看电子面单"
    with pytest.raises(DataFormatError, match=r"gbk.csv:2: not valid utf-8 text \(try --encoding gbk\)"):
        read_samples(gbk)


def test_jsonl_prompt_response_and_chat(tmp_path):
    lines = [
        {"prompt": "q1", "response": "a1", "category": "支付失败", "intent": "pay"},
        {"messages": [{"role": "system", "content": "你是客服"}, {"role": "user", "content": "早"},
                      {"role": "assistant", "content": "您好"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a2"}]},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n")
    samples = read_samples(path)
    assert [(s.prompt, s.response, s.category, s.intent) for s in samples] == [
        ("q1", "a1", "支付失败", "pay"), ("q2", "a2", None, None)]


@pytest.mark.parametrize("name,content,message", [
    ("nocol.csv", "prompt,answer\nq,a\n", r"nocol.csv:1: missing column response \(found: prompt, answer\)"),
    ("quote.csv", 'prompt,response\nq1,a1\n"q2,a2\nq3,a3\n', r"quote.csv:\d+: broken CSV quoting"),
    ("junk.csv", 'prompt,response\nq1,"a1"x\n', r"junk.csv:2: broken CSV quoting"),
    ("fields.csv", "prompt,response\nq1,a1\nq2,a2,extra\n", r"fields.csv:3: expected 2 fields, found 3"),
    ("empty.csv", "prompt,response\nq1,a1\nq2,  \n", r"empty.csv:3: empty response"),
    ("noprompt.csv", "prompt,response\n,a1\n", r"noprompt.csv:2: empty prompt"),
    ("blank.csv", "", r"blank.csv: the file is empty"),
    ("header.csv", "prompt,response\n", r"header.csv: no samples in the file"),
    ("bad.jsonl", '{"prompt": "q", "response": "a"}\n{"prompt": "q2", \n', r"bad.jsonl:2: bad JSON"),
    ("arr.jsonl", '["q", "a"]\n', r"arr.jsonl:1: expected a JSON object"),
    ("keys.jsonl", '{"question": "q"}\n', r"keys.jsonl:1: expected 'prompt' and 'response', or 'messages'"),
    ("resp.jsonl", '{"prompt": "q", "response": ""}\n', r"resp.jsonl:1: empty response"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "q"}]}\n', r"chat.jsonl:1: the last message must be the assistant's reply"),
    ("chat2.jsonl", '{"messages": [{"role": "assistant", "content": "a"}]}\n', r"chat2.jsonl:1: no user message"),
    ("chat3.jsonl", '{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}\n', r"chat3.jsonl:1: messages\[0\] needs"),
    ("data.txt", "x", r"cannot tell the format"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(DataFormatError, match=message):
        read_samples(write(tmp_path / name, content))


def test_questions_file(tmp_path):
    path = write(tmp_path / "q.csv", "conversation_id,question,category\nc1,快递到哪了,物流查询\nc2,login fails,\n")
    qs = read_questions(path)
    assert [(q.conversation_id, q.question, q.category) for q in qs] == [("c1", "快递到哪了", "物流查询"),
                                                                         ("c2", "login fails", None)]
    with pytest.raises(DataFormatError, match="missing column question"):
        read_questions(write(tmp_path / "bad.csv", "conversation_id,text\nc1,x\n"))


# -- CLI import / export -----------------------------------------------------------------------------


@pytest.fixture
def ws(workspace):
    return workspace


def test_import_sample_set_counts_and_duplicates(ws, samples_csv):
    _, store = ws
    result = cli("data", "import", samples_csv)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Imported 180 sample(s) from {samples_csv}, skipped 0 duplicate(s)\n"
    again = cli("data", "import", samples_csv)
    assert again.stdout == f"Imported 0 sample(s) from {samples_csv}, skipped 180 duplicate(s)\n"
    counts = {r["category"]: r["n"] for r in store.query("SELECT category, count(*) n FROM samples GROUP BY 1")}
    assert counts == {"登录异常": 30, "物流查询": 40, "退换货政策": 50, "支付失败": 30, "售后服务": 30}


def test_malformed_import_is_rejected_whole(ws, tmp_path):
    _, store = ws
    bad = write(tmp_path / "half.csv", "prompt,response\nq1,a1\nq2,a2\nq3,\n")
    result = cli("data", "import", bad)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {bad}:4: empty response\n"
    assert store.sample_count() == 0


def test_gbk_import_via_cli(ws, tmp_path):
    _, store = ws
    path = write(tmp_path / "gbk.csv", "prompt,response\n支付失败怎么办,请稍后重试或更换支付方式\n", "gbk")
    assert cli("data", "import", path, "--encoding", "gbk").exit_code == 0
    assert store.samples()[0]["prompt"] == "支付失败怎么办"


@pytest.mark.parametrize("fmt,target", [("lora-scripts", "train_data"), ("jsonl", "out.jsonl"), ("chatml", "out.chatml.jsonl")])
def test_export_then_import_round_trip(ws, tmp_path, samples_csv, fmt, target):
    _, store = ws
    cli("data", "import", samples_csv)
    out = tmp_path / target
    result = cli("data", "export", out, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert "Wrote 180 sample(s)" in result.stdout and "PII masked: nothing" in result.stdout
    written = out / "metadata.csv" if fmt == "lora-scripts" else out
    if fmt == "chatml":
        written = written.rename(tmp_path / "chat.jsonl")
    original = {(s["prompt"], s["response"], s["category"]) for s in store.samples()}

    from replyloop.store import Store
    other = Store(tmp_path / "other.db")
    other.add_samples(read_samples(written))
    got = {(s["prompt"], s["response"], s["category"]) for s in other.samples()}
    assert got == original


def test_lora_scripts_export_layout(ws, tmp_path, samples_csv):
    cli("data", "import", samples_csv)
    out = tmp_path / "train_data"
    cli("data", "export", out)
    with (out / "metadata.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["prompt", "response", "category", "intent"]
    assert len(rows) == 180


def test_export_masks_pii_and_counts(ws, tmp_path):
    _, store = ws
    path = write(tmp_path / "p.csv", "prompt,response\n"
                 "我的手机138 0013 8000收不到验证码,请联系 help@example.com\n"
                 "订单号 2026112712345678 没到,身份证110101199003071234已登记\n")
    cli("data", "import", path)
    out = tmp_path / "o.jsonl"
    result = cli("data", "export", out, "--format", "jsonl")
    assert "PII masked: email 1, id_card 1, order 1, phone 1" in result.stdout
    text = out.read_text(encoding="utf-8")
    for secret in ("13800138000", "138 0013 8000", "help@example.com", "2026112712345678", "110101199003071234"):
        assert secret not in text
    assert "[PHONE]" in text and "[EMAIL]" in text and "[ORDER]" in text and "[ID_CARD]" in text
    raw = cli("data", "export", tmp_path / "raw.jsonl", "--format", "jsonl", "--no-scrub-pii")
    assert "PII masked" not in raw.stdout
    assert "138 0013 8000" in (tmp_path / "raw.jsonl").read_text(encoding="utf-8")


def test_import_questions_cli(ws):
    _, store = ws
    from replyloop.paths import samples_dir

    result = cli("data", "import", samples_dir() / "incoming_questions.csv", "--as-questions")
    assert result.exit_code == 0, result.output
    assert store.scalar("SELECT count(*) FROM questions") == 60
    assert store.sample_count() == 0


# -- snapshots and stats ----------------------------------------------------------------------------


def test_snapshot_hash_is_stable_and_split_is_stratified(ws, samples_csv, tmp_path):
    _, store = ws
    cli("data", "import", samples_csv)
    first = store.create_snapshot(0.15)
    assert first.created and first.train + first.heldout == 180
    assert store.create_snapshot(0.15) == type(first)(first.hash, False, first.train, first.heldout)

    # the same content imported in another order into another database gives the same hash and split
    from replyloop.store import Store
    rows = list(reversed(read_samples(samples_csv)))
    other = Store(tmp_path / "other.db")
    other.add_samples(rows)
    twin = other.create_snapshot(0.15)
    assert twin.hash == first.hash
    held = {s["prompt"] for s in store.snapshot_samples(first.hash, "heldout")}
    assert held == {s["prompt"] for s in other.snapshot_samples(twin.hash, "heldout")}
    per_category = {}
    for s in store.snapshot_samples(first.hash, "heldout"):
        per_category[s["category"]] = per_category.get(s["category"], 0) + 1
    assert set(per_category) == {"登录异常", "物流查询", "退换货政策", "支付失败", "售后服务"}
    assert 0.08 < first.heldout / 180 < 0.25

    # a new sample changes the hash, and existing questions keep their side
    store.add_samples(read_samples(write(tmp_path / "n.csv", "prompt,response,category\n新问题,新回答,物流查询\n")))
    second = store.create_snapshot(0.15)
    assert second.hash != first.hash
    held2 = {s["prompt"] for s in store.snapshot_samples(second.hash, "heldout")}
    assert held <= held2


def test_snapshot_of_empty_store_is_an_error(ws):
    result = cli("data", "snapshot")
    assert result.exit_code == 1
    assert "no samples yet" in result.stderr


def test_stats_json(ws, samples_csv):
    _, store = ws
    cli("data", "import", samples_csv)
    snap = cli("data", "snapshot", "--json")
    assert snap.exit_code == 0
    qid = store.add_question("新问题", "c1", "物流查询")
    store.decide(store.add_draft(qid, "新回答"), "approve", "U1")
    result = cli("data", "stats", "--json")
    stats = json.loads(result.stdout)
    assert stats["samples"] == 181
    assert stats["by_category"]["退换货政策"] == 50
    assert stats["by_source"] == {"import": 180, "review": 1}
    assert stats["approved_since_snapshot"] == 1  # no champion yet: every approved sample is new
    assert stats["champion_snapshot"] is None
    table = cli("data", "stats")
    assert "物流查询" in table.stdout and "approved since: 1" in table.stdout


def test_init_creates_workspace_with_samples(replyloop_home):
    result = cli("init", "--samples")
    assert result.exit_code == 0, result.output
    assert (replyloop_home / "replyloop.yaml").exists()
    assert "Imported 180 sample(s)" in result.stdout
    again = cli("init")
    assert "already exists; keeping it" in again.stdout


def test_stats_counts_approvals_since_the_champions_snapshot(ws, samples_csv):
    _, store = ws
    from replyloop import timeutil

    cli("data", "import", samples_csv)
    trained = store.create_snapshot(0.15)
    with store.transaction() as db:
        db.execute("INSERT INTO models (name, base_model, snapshot_hash, status, promoted_at, created_at)"
                   " VALUES ('m1', 'base', ?, 'champion', ?, ?)", (trained.hash, timeutil.now_iso(), timeutil.now_iso()))
    for i in range(2):
        qid = store.add_question(f"新问题{i}", f"c{i}", "物流查询")
        store.decide(store.add_draft(qid, f"新回答{i}"), "approve", "U1")
    store.create_snapshot(0.15)  # a manual snapshot after training does not reset the count
    stats = json.loads(cli("data", "stats", "--json").stdout)
    assert stats["champion_snapshot"] == trained.hash
    assert stats["approved_since_snapshot"] == 2
    assert "Champion's snapshot: " + trained.hash in cli("data", "stats").stdout


UNICODE_BREAKS = "第一行\u2028第二行\u2029第三段\x85完"  # line/paragraph separators json.dumps leaves raw


@pytest.mark.parametrize("fmt", ["jsonl", "chatml"])
def test_export_then_import_keeps_unicode_line_separators(ws, tmp_path, fmt):
    from replyloop.store import SampleIn, Store

    _, store = ws
    store.add_samples([SampleIn("请问" + UNICODE_BREAKS, "好的\u2028稍等", "售后服务")])
    out = tmp_path / "out.jsonl"
    result = cli("data", "export", out, "--format", fmt, "--no-scrub-pii")
    assert result.exit_code == 0, result.output
    assert "\u2028" in out.read_text(encoding="utf-8")  # written raw, so the reader must not split on it
    [sample] = read_samples(out)
    assert (sample.prompt, sample.response, sample.category) == ("请问" + UNICODE_BREAKS, "好的\u2028稍等", "售后服务")
    other = Store(tmp_path / "other.db")
    other.add_samples(read_samples(out))
    assert other.samples()[0]["prompt"] == "请问" + UNICODE_BREAKS


def test_jsonl_crlf_line_endings_and_line_numbers(tmp_path):
    path = write(tmp_path / "crlf.jsonl", '{"prompt": "q1", "response": "a1"}\r\n\r\n{"prompt": "q2"}\r\n')
    with pytest.raises(DataFormatError, match=rf"{path.name}:3: empty response"):
        read_samples(path)
    write(path, '{"prompt": "q1", "response": "a1"}\r\n{"prompt": "q2", "response": "a2"}\r\n')
    assert [s.response for s in read_samples(path)] == ["a1", "a2"]


def test_shipped_sample_set_is_clean_bilingual_and_paraphrased(samples_csv):
    """The demo and tests learn from these pairs: no reply may carry a banned promise or an
    avoided term, some are English, and every intent has several paraphrases."""
    from collections import Counter

    from replyloop.evaluation.policy import load_policies
    from replyloop.dataio import read_samples
    from replyloop.paths import default_policies_dir

    samples = read_samples(samples_csv)
    engine = load_policies(default_policies_dir())
    flagged = [(s.response, engine.check(s.response).verdict) for s in samples if engine.check(s.response).violations]
    assert flagged == []
    english = sum(1 for s in samples if s.prompt.isascii())
    assert 0.1 <= english / len(samples) <= 0.3
    per_intent = Counter(s.intent for s in samples)
    assert None not in per_intent and min(per_intent.values()) >= 3
