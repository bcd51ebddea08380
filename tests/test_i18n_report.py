"""The weekly report, its charts and the pipeline's messages in the workspace's language (issue 22):
Chinese in a workspace made with the defaults, today's English with ``ui: {language: en}``; machine
formats (numbers.csv, --json, stored reasons) the same in both. Real SQLite stores, the real CLI,
real matplotlib drawing, the local fake Slack."""

from __future__ import annotations

import json
import logging
import re
import shlex
import warnings

import pytest

from helpers import cli
from replyloop import i18n
from replyloop.bot.fake_slack import FakeSlack
from replyloop.config import load_config
from test_canary import canary_setup, review  # noqa: F401  (a fixture and its helper)
from test_drift import seed as seed_drift
from test_report import NOW, WEEK, seed
from test_report_slack import _point_config_at

# English words allowed in Chinese headings and table headers: metric names, statistics, file names
ALLOWED = {"chrF", "CI", "Wilson", "Newcombe", "numbers", "csv"}


def _set_language(config, language: str) -> None:
    text = config.source.read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^  language: .*$", f"  language: {language}", text)
    assert n == 1, "the workspace template has no ui.language line"
    config.source.write_text(text, encoding="utf-8")


def _english_words(line: str) -> list[str]:
    line = re.sub(r"`[^`]*`|\bv\d+ \(#\d+\)|#\d+", "", line)  # code, model names, ids
    return [w for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", line) if w not in ALLOWED]


def _headings_and_headers(md: str) -> list[str]:
    lines = md.splitlines()
    out = [ln for ln in lines if ln.startswith("#")]
    out += [ln for ln, nxt in zip(lines, lines[1:]) if ln.startswith("| ") and nxt.startswith("| --- |")
            or ln.startswith("| ") and nxt.startswith("|--")]
    return out


@pytest.fixture
def seeded_zh(workspace, chinese):
    config, store = workspace
    ids = seed(store)
    return load_config(config.source), store, ids  # reloaded: the workspace's ui.language applies


def test_weekly_report_in_chinese_through_the_cli_and_its_slack_post(seeded_zh, tmp_path, monkeypatch):
    """`replyloop report weekly --post` in a workspace made with the defaults: report.md and the
    Slack post read Chinese; `ui: {language: en}` gives today's English; numbers.csv is the same."""
    from replyloop.evaluation.report import collect_weekly_report, render_markdown, write_numbers_csv
    from replyloop.evaluation.report_slack import summary_text

    config, store, ids = seeded_zh
    assert config.ui.language == "zh-CN"  # what `replyloop init` writes
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    with FakeSlack() as slack:
        _point_config_at(config, slack)
        result = cli("report", "weekly", "--week", WEEK, "--out", tmp_path / "zh", "--post")
        assert result.exit_code == 0, result.output
        (message,) = slack.wait_for("chat.postMessage")
        (complete,) = slack.wait_for("files.completeUploadExternal")
    md = (tmp_path / "zh" / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# 一致性周报 2026年第48周\n")
    assert "2026年11月23日 至 2026年11月29日（Asia/Shanghai）；生成于 " in md
    assert "## 概要" in md and "## 主管审核决定" in md and "## 政策违规" in md and "## 模型" in md
    assert "- 自动化率（原样通过）：**75.0%**（已审核 20 条草稿中 15 条）；2026年第47周：40.0%（+35.0 个百分点）。" in md
    assert "| 周 | 角色 | 模型 | 总体 chrF | 未知词元 | 物流查询 | 登录异常 |" in md
    assert f"| 2026年第48周 | 冠军 | v2 (#{ids['v2']}) | 0.300 | 74.0% | 0.280 | 0.320 |" in md
    assert f"| v2 (#{ids['v2']}) | 冠军 | 16 | 12 | 75.0% | 50.5% – 89.8% |" in md
    assert "灰度 − 冠军：+0.0 个百分点（95% 区间 -47.3 至 +31.9，Newcombe）" in md
    assert "| 快递条码 | 电子面单 | 2 |" in md  # the supervisors' own words, as they wrote them
    assert "| promise.compensation | 拦截 | 2 | 2 |" in md  # rule ids as written, severities translated
    assert f"**1 条通过的草稿含违规**（应为 0）：草稿 #{ids['approved_bad']}。" in md
    assert "| `section` | 报告的部分" in md  # numbers.csv's columns described in the reader's language
    assert "![一致性](consistency.png)" in md
    leftovers = {line: words for line in _headings_and_headers(md) if (words := _english_words(line))}
    assert not leftovers, leftovers

    text = message.params["text"]
    assert text.startswith("*一致性周报 2026年第48周*（2026年11月23日 起，2026年11月30日 前止）")
    assert "• 自动化率（原样通过）：20 次审核中 *75.0%*（较2026年第47周 +35.0 个百分点）" in text
    assert "• 审核决定：原样通过 15，编辑后通过 3，驳回 2" in text
    assert ":warning: 嵌入模型读不懂参考回复，由 chrF 判定" in text and "快递条码 → 电子面单 (2)" in text
    assert complete.params["initial_comment"] == "2026年第48周图表"
    assert sorted(f["title"] for f in complete.params["files"]) == sorted(
        f"{t} 2026年第48周" for t in ("自动化率", "冠军模型一致性", "主管审核决定", "政策违规"))
    report = collect_weekly_report(config, store, WEEK, now=NOW)
    with i18n.language("en"):  # one Slack user's own language does not change a channel post
        assert summary_text(report) == text

    _set_language(config, "en")
    config = load_config(config.source)
    report = collect_weekly_report(config, store, WEEK, now=NOW)
    en = render_markdown(report, {})
    assert en.startswith(f"# Weekly consistency report {WEEK}\n")
    assert "2026-11-23 to 2026-11-29 (Asia/Shanghai)" in en
    assert "**75.0%** (15 of 20 reviewed drafts); 2026-W47: 40.0% (+35.0 pp)" in en
    assert "| week | role | model | overall chrF | unknown tokens | 物流查询 | 登录异常 |" in en
    assert "| `section` | part of the report" in en
    assert not re.search(r"[\u4e00-\u9fff]", re.sub("物流查询|登录异常|支付失败", "", "\n".join(_headings_and_headers(en))))
    assert summary_text(report).startswith(f"*Weekly consistency report {WEEK}* (2026-11-23 to 2026-11-30 excl.)")
    # machine formats do not change with the language
    write_numbers_csv(report, tmp_path / "en.csv")
    zh_csv = (tmp_path / "zh" / "numbers.csv").read_text(encoding="utf-8")
    assert zh_csv.splitlines()[0] == "section,week,category,metric,value" and "2026-W48" in zh_csv
    assert zh_csv == (tmp_path / "en.csv").read_text(encoding="utf-8")


def test_every_chart_renders_its_chinese_strings_without_missing_glyphs(seeded_zh, caplog):
    """No tofu: drawing each figure (as it is saved) raises no "Glyph ... missing from font" warning,
    and the texts drawn are the Chinese ones. The check fails with a font that lacks them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from replyloop.evaluation.charts import FontChoice, chart_figures
    from replyloop.evaluation.report import collect_weekly_report

    config, store, _ids = seeded_zh

    def draw(report, font=None, only=None):
        texts = []
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="matplotlib"):
            warnings.simplefilter("always")
            with chart_figures(report, font) as (figures, _charts):
                for name, fig in figures.items():
                    if only is None or name == only:
                        FigureCanvasAgg(fig).draw()
                        texts += [t.get_text() for t in fig.findobj(Text) if t.get_text().strip()]
        missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
        missing += [r.getMessage() for r in caplog.records if "missing from" in r.getMessage()]
        caplog.clear()
        return texts, missing

    full = collect_weekly_report(config, store, WEEK, now=NOW)
    texts, missing = draw(full)
    assert not missing, missing
    for expected in ("冠军模型一致性，最近 8 周（截至2026年第48周）", "与已通过回复的平均嵌入相似度", "冠军模型（总体）",
                     "灰度模型（总体）", "每周主管审核决定", "原样通过", "编辑后通过", "驳回", "按类别，2026年第48周",
                     "自动化率：已审核草稿中原样通过的比例", "草稿中的政策违规，2026年第48周", "含该违规的草稿",
                     "……其中已通过（应为 0）", "第48周", "物流查询", "term.快递条码",
                     "嵌入相似度（圈出：模型读不懂参考回复，不计入）"):
        assert expected in texts, (expected, sorted(set(texts)))
    rules = {v.rule for v in full.violations}  # rule ids are data, shown as they are
    english = {t for t in texts if re.fullmatch(r"[A-Za-z ().,:%-]{4,}", t) and t not in rules}
    assert not english, english
    empty = collect_weekly_report(config, store, "2026-W10", now=NOW)  # the "no data" texts
    texts, missing = draw(empty)
    assert not missing, missing
    assert "暂无数据：2026年第10周没有审核" in texts and "暂无数据：这 8 周没有冠军模型的评估" in texts
    # the check can fail: the same Chinese in a font without Chinese glyphs
    _texts, missing = draw(full, FontChoice("DejaVu Sans", None, "system"), only="violations.png")
    assert any("Glyph" in m and "DejaVu Sans" in m for m in missing), "the missing-glyph check sees nothing"


def test_canary_judgement_posts_chinese_and_stores_english(canary_setup, chinese):  # noqa: F811
    from replyloop.canary import judge_canary

    config, store, reg, champ, canary = canary_setup
    i18n.set_workspace_language("zh-CN")
    review(store, champ, 60, 40, "now")
    review(store, canary, 18, 2, "canary")
    posted = []
    outcome = judge_canary(config, store, notify=posted.append)
    assert outcome["decision"] == "promote"
    [text] = posted
    name = reg.champion()["name"]
    assert text.startswith(f":tada: 灰度模型 *{name}* 已升级为冠军模型：灰度 20 次审核的原样通过率 90%，冠军为 60%"
                           "（18/20 对 60/100）；相差 +30 个百分点，95% 置信区间 [")
    assert text.endswith("；一致性门槛已通过。")
    # what is stored (audit log) and returned to the scheduler's log stays English
    assert outcome["summary"].startswith("approval without edit 90% vs champion 60% over 20 canary review(s)")
    reason = json.loads(store.one("SELECT detail FROM audit_log WHERE action = 'model.promote'"
                                  " ORDER BY id DESC LIMIT 1")["detail"])["reason"]
    assert reason.startswith("canary succeeded: approval without edit 90%") and "consistency gate passed" in reason


def test_drift_alarms_post_chinese_and_json_is_the_same_in_both_languages(workspace, chinese, monkeypatch):
    from replyloop.bot import jobs

    config, store = workspace
    seed_drift(store, recent=(100, 0.5), pending_hours=30.0)
    with FakeSlack() as fake:
        from bot_support import point_config_at_fake

        point_config_at_fake(config, fake)
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-0000-test-bot-token")
        assert jobs.drift_job(str(config.source)) == "approval-rate: alarm, blocked-share: ok, review-queue: alarm"
        first, second = (p.params["text"] for p in fake.wait_for("chat.postMessage", 2))
    assert first.startswith(":rotating_light: *漂移告警 — 冠军模型通过率*：冠军模型 *cs-lora-0007* 最近 100 次审核的"
                            "原样通过率为 50%（50/100）；此前 400 次审核为 80%（320/400）；相差 -30 个百分点")
    assert "\n*处理建议：* 查看主管最近改了什么" in first
    assert second.startswith(":rotating_light: *漂移告警 — 审核队列*：最早的待审核草稿")
    outputs = {}
    for language in ("zh-CN", "en"):
        _set_language(config, language)
        out = cli("drift", "--json", "--config", config.source)
        assert out.exit_code == 1, out.output
        outputs[language] = out.output
    assert outputs["zh-CN"] == outputs["en"]
    got = json.loads(outputs["en"])
    assert got["checks"][0]["text"].startswith(":rotating_light: *Drift alarm — champion approval rate*")


FAILING_TRAINER = "import sys; print('Error: CUDA out of memory on the GPU host'); sys.exit(1)"


def test_a_failed_retrain_is_posted_in_chinese(workspace, chinese):
    from test_pipeline_units import approve_n

    from replyloop.pipeline import run_pipeline

    config, store = workspace
    config = load_config(config.source)
    approve_n(store, 6)
    config.train_config_path.parent.mkdir(parents=True, exist_ok=True)
    config.train_config_path.write_text("base_model: base\n", encoding="utf-8")
    (config.root / "base").mkdir()
    (config.root / "base" / "config.json").write_text("{}", encoding="utf-8")
    config.file.training.command = "{python} -c %s" % shlex.quote(FAILING_TRAINER)
    posted = []
    with i18n.language("en"):  # started by an English-speaking user: the channel still reads Chinese
        result = run_pipeline(config, store, trigger="slack", requested_by="U0ALICE", notify=posted.append)
    assert result.status == "failed"
    started, failed = posted
    assert re.match(r":hourglass_flowing_sand: 重新训练 #1 已开始（Slack，由 <@U0ALICE> 发起）：快照 \w+，训练样本 \d+ 条，"
                    r"留出样本 \d+ 条，从基础模型开始。$", started), started
    assert failed.startswith(":x: 重新训练 #1 失败：training exited with code 1: Error: CUDA out of memory")
    assert failed.endswith("冠军模型不变。")


def test_retrain_dry_run_reads_chinese_and_its_json_stays_english(workspace, chinese):
    config, _store = workspace
    load_config(config.source)
    shown = cli("retrain", "--dry-run")
    assert "是否到期：否（自冠军模型的快照以来新通过样本 0 条；需要" in shown.output
    assert "冠军模型：（无）" in shown.output and "运行锁：空闲" in shown.output
    outputs = {}
    for language in ("zh-CN", "en"):
        _set_language(config, language)
        load_config(config.source)
        outputs[language] = cli("retrain", "--dry-run", "--json").output.split("\nError:")[0]  # the JSON
    assert outputs["zh-CN"] == outputs["en"]
    assert json.loads(outputs["en"])["message"].startswith("Due: no (0 new approved sample(s)")


def test_gate_verdict_in_chinese_keeps_its_reason_codes(chinese):
    from replyloop.evaluation.gate import decide

    result = decide(mean=0.41, by_category={"物流查询": 0.41}, block_count=2, block_rules={"promise.compensation": 2},
                    floor=0.5, tolerance=0.02, category_margin=0.1)
    with i18n.language("zh-CN"):
        verdict = result.verdict()
    assert verdict.splitlines()[0] == "门槛：未通过"
    assert "  [未通过] 拦截级违规：2（限值 0） — promise.compensation ×2" in verdict
    assert "  [未通过] 平均一致性 ≥ 下限：0.410（限值 0.500）" in verdict
    assert "  [通过] 平均一致性对比冠军：0.410（限值 无） — 没有可对比的冠军模型" in verdict
    assert [c["name"] for c in result.to_dict()["criteria"]][:2] == ["block violations", "mean consistency >= floor"]
    with i18n.language("en"):
        assert result.verdict().startswith("Gate: FAIL\n  [FAIL] block violations: 2 (limit 0)")


def test_data_that_looks_like_a_message_id_is_shown_as_it_is(workspace, chinese):
    """A customer's category named "model", "week" or "{week}" is data: never translated, never
    formatted (real store, the real collector and renderer)."""
    from test_report import W48, _review

    from replyloop.evaluation.report import collect_weekly_report, render_markdown

    config, store = workspace
    config = load_config(config.source)
    for category in ("model", "{week}", "50%", None):
        _review(store, W48[1], category, "approve")
    md = render_markdown(collect_weekly_report(config, store, WEEK, now=NOW))
    assert "| 类别 | 已审核 | 原样通过 | 编辑后通过 | 驳回 | 自动化率 | 平均编辑距离 |" in md
    for category in ("model", "{week}", "50%"):
        assert f"| {category} | 1 | 1 | 0 | 0 | 100.0% | – |" in md
    assert "| （无） | 1 | 1 |" in md  # a question without a category: the report's own marker, translated
