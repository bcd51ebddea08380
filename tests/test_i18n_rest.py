"""The English that was left inside otherwise-Chinese output (issue 22): `replyloop reply`,
`rules list`, `drift` through real subprocesses (Chinese by default, today's English with
REPLYLOOP_LANGUAGE=en, --json byte-identical), and the gate verdict's measured details, the
golden table and change text, the eval summary's fixed words in both languages."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from test_i18n_cli import _all, _run

# ASCII words a Chinese line may still hold: technical names (rule ids, model names, config keys)
TECHNICAL = {"chrF", "n", "p50", "p95", "USUP1", "rl", "first", "second", "import"}


def _english_words(text: str, allowed: set[str] = frozenset()) -> list[str]:
    words = re.findall(r"[A-Za-z][A-Za-z-]*", text)
    return [w for w in words if w not in TECHNICAL and w not in allowed]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """`replyloop init --samples` (zh-CN), /reply on character overlap only, one open and one
    accepted rule proposal."""
    root = tmp_path_factory.mktemp("i18n-rest") / "cs"
    init = _run("init", root, "--samples", cwd=root.parent)
    assert init.returncode == 0, init.stderr
    path = root / "replyloop.yaml"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r'(\nreply:\n(?:  .*\n)*?)  embedding_model: ""', r'\1  embedding_model: "none"', text)
    assert 'embedding_model: "none"' in text
    path.write_text(text, encoding="utf-8")
    with sqlite3.connect(root / "replyloop.db") as db:
        db.execute("INSERT INTO rule_proposals (key, kind, avoid, preferred, count, supervisors, status, created_at, updated_at)"
                   " VALUES ('terminology:快递单号->运单号', 'terminology', '快递单号', '运单号', 4, '[\"U1\", \"U2\"]',"
                   " 'open', '2026-12-01T00:00:00+00:00', '2026-12-01T00:00:00+00:00')")
        db.execute("INSERT INTO rule_proposals (key, kind, avoid, preferred, count, supervisors, status, created_at, updated_at)"
                   " VALUES ('banned:亲', 'banned', '亲', NULL, 3, '[\"U1\"]', 'accepted', '2026-12-01T00:00:00+00:00', '2026-12-01T00:00:00+00:00')")
    return root


def test_reply_rules_and_drift_in_chinese_and_english(ws):
    commands = [("reply", "怎么申请退货"), ("rules", "list"), ("drift",), ("reply", "量子纠缠的哈密顿量")]
    zh = _all(commands, cwd=ws)
    en = _all(commands, cwd=ws, lang="en")
    for proc in zh + en:
        assert proc.returncode == 0, proc.stderr
    reply, rules, drift, far = (p.stdout for p in zh)
    assert re.fullmatch(r"没有与此问题足够接近的已通过回复（最高分 0\.\d\d，reply\.min_score 0\.10）；请换个说法，或询问主管。\n",
                        far), far
    assert re.fullmatch(r"No approved answer is close enough to this question \(best score 0\.\d\d, reply\.min_score"
                        r" 0\.10\); try other words, or ask a supervisor\.\n", en[3].stdout), en[3].stdout
    first = reply.splitlines()[0]
    assert re.fullmatch(r"1\. \[.+\] 由 导入数据 于 \S+ 通过（得分 \d\.\d\d）", first), first
    assert reply.splitlines()[1].startswith("   问：") and reply.splitlines()[2].startswith("   答：")
    assert "approved by" not in reply and "score" not in reply
    assert rules.splitlines() == ["#1 术语 快递单号 → 运单号（4 次编辑，2 位主管）[待处理]",
                                  "#2 禁用词 删除“亲”（3 次编辑，1 位主管）[已采纳]"]
    assert drift.splitlines() == ["冠军通过率：已跳过：没有冠军模型；无可对比",
                                  "被拦截草稿：已跳过：目前共 0 条草稿；至少需要 20 条",
                                  "审核队列：正常：没有待审核的草稿；上限 24 小时"]
    reply_en, rules_en, drift_en = (p.stdout for p in en[:3])
    assert re.fullmatch(r"1\. \[.+\] approved by import at \S+ \(score \d\.\d\d\)", reply_en.splitlines()[0])
    assert reply_en.splitlines()[1].startswith("   Q: ")
    assert rules_en.splitlines() == ["#1 terminology 快递单号 → 运单号 (4 edits, 2 supervisors) [open]",
                                     "#2 banned delete “亲” (3 edits, 1 supervisors) [accepted]"]
    assert drift_en.splitlines() == ["approval-rate: skipped: no champion model; nothing to compare",
                                     "blocked-share: skipped: 0 drafts so far; needs at least 20",
                                     "review-queue: ok: no draft is waiting for review; limit 24 h"]


def test_json_is_the_same_in_both_languages(ws):
    commands = [("reply", "量子纠缠的哈密顿量", "--json"), ("rules", "list", "--json"), ("drift", "--json")]
    zh = _all(commands, cwd=ws)
    en = _all(commands, cwd=ws, lang="en")
    for a, b in zip(zh, en):
        assert a.returncode == b.returncode == 0, a.stderr
        assert a.stdout == b.stdout
    far = json.loads(zh[0].stdout)
    assert far["explanation"].startswith("No approved answer is close enough") or far["answers"]


def test_gate_details_golden_changes_and_summary_words(chinese):
    from replyloop import i18n
    from replyloop.evaluation import gate, golden
    from replyloop.phrases import localized

    result = gate.decide(mean=0.5, by_category={"退款": 0.4}, block_count=1, block_rules={"guarantee": 1},
                         block_example="保证", champion_mean=0.6, champion_by_category={"退款": 0.6}, floor=0.3,
                         tolerance=0.05, category_margin=0.1, unknown_share=0.5, max_unknown_share=0.2,
                         embedding_model="MiniLM", fix="x")
    stored = json.dumps(result.to_dict(), ensure_ascii=False)
    with i18n.language("en"):
        en = result.verdict()
        assert json.dumps(result.to_dict(), ensure_ascii=False) == stored
    assert "champion 0.600 - tolerance 0.050" in en and "dropped: 退款 0.400 vs 0.600" in en
    assert "guarantee ×1; e.g. 保证" in en and "embedding similarity is not counted, and chrF was not measured" in en
    with i18n.language("zh-CN"):
        zh = result.verdict()
        assert json.dumps(result.to_dict(), ensure_ascii=False) == stored  # stored / --json: English
    assert "冠军 0.600 - 容差 0.050" in zh and "下降：退款 0.400 vs 0.600" in zh and "guarantee ×1；例如 保证" in zh
    assert "嵌入相似度不计入，且未测 chrF" in zh
    for line in zh.splitlines():
        assert not _english_words(line, {"vs", "guarantee", "MiniLM", "x", "fix"}), line
    changes = {"newly broken": ["a"], "fixed": ["b"], "still failing": [], "failing": ["d"], "passing": ["c"]}
    text = golden.describe_changes(changes)
    assert str(text) == "newly broken: a; fixed: b; failing: d"
    with i18n.language("zh-CN"):
        assert localized(text) == "新失败：a; 已修复：b; 未通过：d"
