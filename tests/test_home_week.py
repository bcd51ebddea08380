"""App Home's "this week" is the weekly report's week: Monday 00:00 in scheduler.timezone
(Asia/Shanghai here), not Monday 00:00 UTC (real SQLite store, the real report collector)."""

from __future__ import annotations

import datetime as dt

from test_report import _review

NOW = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.timezone.utc)  # Monday 11:00 in Shanghai, week 2026-W49


def test_app_home_counts_the_week_the_report_counts(workspace):
    from replyloop.bot import cards, status
    from replyloop.evaluation.report import collect_weekly_report

    config, store = workspace
    assert config.file.scheduler.timezone == "Asia/Shanghai"
    _review(store, "2026-11-29T15:30:00+00:00", "物流查询", "approve")  # Sunday 23:30 local: last week
    _review(store, "2026-11-29T16:30:00+00:00", "物流查询", "approve")  # Monday 00:30 local: this week
    _review(store, "2026-11-29T20:00:00+00:00", "物流查询", "edit", final="改过的回复。")
    home = status.home(store, config, now=NOW)
    assert home["week_start"] == "2026-11-30T00:00+08:00"
    [row] = home["approvals_this_week"]
    assert (row["approved"], row["edited"]) == (1, 1)
    week = collect_weekly_report(config, store, "2026-W49", now=NOW + dt.timedelta(days=7)).this_week
    assert (week.approved, week.edited, week.reviewed) == (1, 1, 2)
    view = cards.home_view(home)
    assert any("This week (since Nov 30, 2026)" in b.get("text", {}).get("text", "") for b in view["blocks"])
