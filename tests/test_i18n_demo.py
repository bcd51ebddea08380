"""`replyloop demo`'s human-readable output in the display language (issue 22): the round table,
the summary rows, the review breakdown, the round lines and the held-out notes rendered from
small hand-made inputs (the demo itself runs once, in English, in tests/test_demo.py: it is the
suite's slowest test), Chinese by default, today's English with REPLYLOOP_LANGUAGE=en."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from replyloop.demo import (RoundStats, heldout_notes, review_breakdown, round_line, round_table,
                            summary_rows)

# names that stay as they are in Chinese: models, metrics, file names, commands, products
TECHNICAL = {"team-current", "retrained", "chrF", "Slack", "intake", "report", "md", "tmp", "demo", "n", "M"}


def _rounds() -> list[RoundStats]:
    one = RoundStats(round=1, models="team-current", drafts=20, terminology=7, promises=3, approved=5, edited=15,
                     by_kind={"recurring": {"drafts": 12, "violations": 9, "approved": 2, "decided": 12},
                              "known": {"drafts": 4, "violations": 0, "approved": 3, "decided": 4},
                              "new": {"drafts": 4, "violations": 1, "approved": 0, "decided": 4}},
                     heldout_chrf=0.2134, heldout_embedding=0.7012, heldout_n=27)
    two = RoundStats(round=2, models="retrained", drafts=20, terminology=0, promises=1, approved=14, edited=6,
                     by_kind={"recurring": {"drafts": 12, "violations": 0, "approved": 11, "decided": 12},
                              "known": {"drafts": 4, "violations": 0, "approved": 3, "decided": 4}},
                     heldout_chrf=0.2201, heldout_embedding=0.6987, heldout_n=27)
    return [one, two]


def _people():
    by_phase = {"round 1": Counter(approve=5, edit=15, reject=1), "canary": Counter(approve=4, edit=2),
                "round 2": Counter(approve=14, edit=6, reject=1)}
    total = Counter()
    for c in by_phase.values():
        total.update(c)
    return SimpleNamespace(counts=total, by_phase=by_phase)


def _summary(people) -> list[tuple[str, str]]:
    return summary_rows(base_reused=False, imported=150, samples=172, approved=22, questions=54,
                        reviews=review_breakdown(people), blocked=3, warned=5,
                        runs=Counter(succeeded=1), models=Counter(champion=1, retired=1, rejected=1),
                        blocked_reason="2 block violations (full-compensation)", champion="retrained",
                        report=Path("/tmp/reports/2026-W49/report.md"))


def _render() -> list[str]:
    """Every text the demo's tables, round lines and notes show, from the hand-made inputs."""
    rounds, people = _rounds(), _people()
    header, rows = round_table(rounds)
    changes = [{"metric": "chrF", "change": 0.0067, "margin": 0.0301, "n": 27},
               {"metric": "embedding", "change": -0.0025, "margin": 0.0102, "n": 27}]
    down = [{"metric": "chrF", "change": -0.0512, "margin": 0.0201, "n": 27}]
    texts = [*header, *(cell for row in rows for cell in row), *(x for row in _summary(people) for x in row),
             round_line(rounds[0], 1), round_line(rounds[1], 2), round_line(RoundStats(round=3)),
             *heldout_notes(changes, 1_234_567), *heldout_notes(down, 1_234_567)]
    return [t for t in texts if t]


def _english_words(texts: list[str]) -> list[str]:
    words = []
    for text in texts:
        # the legacy candidate's gate reason is the gate's own text, and a path is a path
        text = text.replace("2 block violations (full-compensation)", "").replace("/tmp/reports/2026-W49/report.md", "")
        words += [w for w in re.findall(r"[A-Za-z][A-Za-z-]*", text) if w not in TECHNICAL]
    return words


def test_the_demo_tables_and_notes_are_chinese_by_default(chinese):
    texts = _render()
    assert _english_words(texts) == [], _english_words(texts)
    header, rows = round_table(_rounds())
    assert header == ["", "第 1 轮", "第 2 轮"]
    table = {row[0]: row[1:] for row in rows}
    assert table["术语违规 / 每 100 条草稿"] == ["35.0", "0.0"]  # 7 and 0 in 20 drafts
    assert table["违禁承诺违规 / 每 100 条草稿"] == ["15.0", "5.0"]
    assert table["无需编辑直接通过"] == ["25%（5/20）", "70%（14/20）"]
    assert table["  重复问题"] == ["违规 75/100，通过率 17%（n=12）", "违规 0/100，通过率 92%（n=12）"]
    assert table["  新问题"][1] == "-"  # round 2 had none
    assert table["留出集一致性（chrF）"] == ["0.213（n=27）", "0.220（n=27）"]
    summary = dict(_summary(_people()))
    assert summary["基础模型"] == "本次运行中预训练"
    assert summary["数据集中的样本"] == "导入 150 条 -> 共 172 条（+{approved} 条在 Slack 中通过）".format(approved=22)
    assert summary["被规则标记的草稿"] == "拦截 3，警告 5"
    assert summary["模型"] == "冠军 1，驳回 1，已退役 1"
    assert summary["训练运行"] == "成功 1"
    assert summary["审核决定"] == ("共计：通过 23，编辑后通过 23，驳回 2（第 1 轮：通过 5，编辑后通过 15，驳回 1；"
                               "灰度：通过 4，编辑后通过 2，驳回 0；第 2 轮：通过 14，编辑后通过 6，驳回 1）")
    assert summary["旧版候选模型"] == "被评估门禁拦截：2 block violations (full-compensation)"
    assert round_line(_rounds()[0], 1).startswith("第 1 轮：team-current 起草了 20 条客户问题草稿")
    assert "（通过率 25%）；驳回无关消息 1 条" in round_line(_rounds()[0], 1)
    notes = heldout_notes([{"metric": "chrF", "change": 0.0067, "margin": 0.0301, "n": 27}], 1_234_567)
    assert notes[0] == "留出集 chrF：+0.007（± 0.030，2 个标准误），基于 27 个从未训练过的问题：在噪声范围内"
    assert "1.2M 参数的模型" in notes[1]


def test_the_demo_tables_and_notes_stay_todays_english_with_the_override():
    assert os.environ["REPLYLOOP_LANGUAGE"] == "en"  # tests/conftest.py
    header, rows = round_table(_rounds())
    assert header == ["", "Round 1", "Round 2"]
    table = {row[0]: row[1:] for row in rows}
    assert table["Terminology violations / 100 drafts"] == ["35.0", "0.0"]
    assert table["Approved without edit"] == ["25% (5/20)", "70% (14/20)"]
    assert table["  recurring questions"] == ["75 violations/100, 17% approved (n=12)",
                                              "0 violations/100, 92% approved (n=12)"]
    assert table["Held-out consistency, embedding"] == ["0.701", "0.699"]
    summary = dict(_summary(_people()))
    assert summary["Samples in the dataset"] == "150 imported -> 172 (+22 approved in Slack)"
    assert summary["Models"] == "1 champion, 1 rejected, 1 retired"
    assert summary["Training runs"] == "1 succeeded"
    assert summary["Review decisions"] == ("23 approved, 23 edited, 2 rejected in all (round 1: 5 approved, "
                                           "15 edited, 1 rejected; canary: 4 approved, 2 edited, 0 rejected; "
                                           "round 2: 14 approved, 6 edited, 1 rejected)")
    assert summary["Legacy candidate"] == "blocked by the gate: 2 block violations (full-compensation)"
    assert round_line(_rounds()[0], 2) == ("round 1: 20 customer drafts by team-current: 7 terminology and 3 "
                                           "banned-promise violations; 5 approved without edit, 15 edited "
                                           "(25% approved); 2 off-topic messages rejected")
    assert round_line(_rounds()[1], 1).endswith("; 1 off-topic message rejected")
    notes = heldout_notes([{"metric": "chrF", "change": -0.0512, "margin": 0.0201, "n": 27}])
    assert notes[0] == "held-out chrF: -0.051 (± 0.020, 2 standard errors) on 27 questions never trained on: down"
    assert notes[1].startswith("held-out drafts are noise for a model this small")


def test_demo_refuses_a_non_empty_workdir_in_chinese(tmp_path):
    """The real CLI, without the override: a new user's language (zh-CN) before any workspace exists."""
    (tmp_path / "keep.txt").write_text("mine")
    env = {k: v for k, v in os.environ.items() if k != "REPLYLOOP_LANGUAGE"}
    env["REPLYLOOP_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-m", "replyloop", "demo", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "Error:" in result.stderr and "不为空：请换一个 --workdir，或加 --force 替换它" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert not json.dumps(result.stderr).count("is not empty")
