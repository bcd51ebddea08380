"""Every table of the weekly report adds up to its headline: drafts of the old system and drafts
with no model get a row, and a champion retired during the week is named as such (real SQLite
store, the report written to disk and read back from numbers.csv and report.md)."""

from __future__ import annotations

import csv

from test_report import NOW, W48, WEEK, _audit, _model, _review


def _seed(store):
    v1 = _model(store, "v1", "retired")
    v2 = _model(store, "v2", "champion")
    _audit(store, "2026-11-10T02:00:00+00:00", "model.promote", v1, {"from": "candidate", "to": "champion"})
    _audit(store, "2026-11-23T02:00:00+00:00", "model.promote", v2, {"from": "candidate", "to": "champion"})
    t = iter(W48 * 6)
    plan = [("物流查询", "approve", v1, None), ("物流查询", "reject", v1, None),           # retired champion
            ("登录异常", "approve", v2, None), ("登录异常", "edit", v2, None), ("支付失败", "approve", v2, None),
            ("物流查询", "approve", None, "legacy-gpt"), ("物流查询", "approve", None, "legacy-gpt"),
            ("支付失败", "approve", None, "legacy-gpt"), ("登录异常", "edit", None, "legacy-gpt"),   # old system
            (None, "approve", None, None), ("支付失败", "reject", None, None)]                 # no model
    for i, (category, decision, model_id, model_name) in enumerate(plan):
        did = _review(store, next(t), category, decision, model_id, draft=f"回复{i}。",
                      final=f"改过的回复{i}。" if decision == "edit" else None)
        if model_name:
            store.db.execute("UPDATE drafts SET model_name = ? WHERE id = ?", (model_name, did))
    return v1, v2, len(plan), sum(p[1] == "approve" for p in plan)


def test_every_table_adds_up_to_the_headline(workspace, tmp_path):
    from replyloop.evaluation.report import build_weekly_report

    config, store = workspace
    v1, v2, reviewed, approved = _seed(store)
    report = build_weekly_report(config, store, week=WEEK, out=tmp_path / "r", now=NOW)
    this = report.this_week
    assert (this.reviewed, this.approved) == (reviewed, approved) == (11, 7)

    rates = {m.name: m for m in report.model_rates}
    assert sum(m.reviews for m in rates.values()) == this.reviewed
    assert sum(m.approved for m in rates.values()) == this.approved
    assert {name: (m.role, m.reviews, m.approved) for name, m in rates.items()} == {
        "v2": ("champion", 3, 2), "v1": ("retired champion", 2, 1), "legacy-gpt": ("old system", 4, 3),
        "(no model)": ("no model", 2, 1)}
    per_category = report.decisions_by_category[WEEK]
    assert sum(n.reviewed for n in per_category.values()) == this.reviewed
    assert sum(n.approved for n in per_category.values()) == this.approved
    assert sum(n.edited for n in per_category.values()) == this.edited == 2

    # the files say the same
    with open(tmp_path / "r" / "numbers.csv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["week"] == WEEK]
    per_model = [float(r["value"]) for r in rows if r["section"] == "model_rates" and r["metric"] == "reviews"]
    assert sum(per_model) == this.reviewed
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert f"| v1 (#{v1}) | retired champion | 2 | 1 |" in md
    assert "| legacy-gpt | old system | 4 | 3 |" in md and "| (no model) | no model | 2 | 1 |" in md
    assert "| other |" not in md
    assert f"({this.approved} of {this.reviewed} reviewed drafts)" in md
