"""CLI: ``replyloop report weekly``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, workspace

report_app = typer.Typer(help="Reports for supervisors.", no_args_is_help=True)


@report_app.command("weekly")
def weekly(
    week: Optional[str] = typer.Option(None, "--week", help="ISO week such as 2026-W48 (default: the last complete week, in scheduler.timezone)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: report.out_dir/<week>)."),
    post: bool = typer.Option(False, "--post", help="Post the summary and the charts to slack.report_channel."),
    config: Optional[Path] = ConfigOption,
):
    """Write the weekly consistency report (report.md, numbers.csv, charts) and optionally post it.

    Example: replyloop report weekly --week 2026-W48 --post
    """
    from replyloop.evaluation.report import fmt_num, fmt_pct, fmt_pp, build_weekly_report

    cfg, store = workspace(config)
    client = None
    if post:  # a missing token fails before the work, not after it
        from replyloop.evaluation.report_slack import make_client

        client = make_client(cfg)
    with store:
        report = build_weekly_report(cfg, store, week=week, out=out)
    typer.echo(f"Weekly report {report.label} written to {report.out_dir}")
    if report.empty:
        typer.echo(f"No activity in {report.label}.")
    consistency = report.consistency_at(report.label)
    typer.echo(f"automation {fmt_pct(report.this_week.automation_rate)} ({fmt_pp(report.automation_change)}),"
               f" consistency {fmt_num(consistency and consistency.mean_similarity)}"
               f" ({fmt_num(report.consistency_change, signed=True)}),"
               f" chrF {fmt_num(consistency and consistency.mean_chrf)}"
               f" ({fmt_num(report.chrf_change, signed=True)}),"
               f" {report.drafts_flagged} flagged drafts, {len(report.approved_violation_drafts)} approved"
               " with violations")
    for short, category in report.chart_labels.items():
        typer.echo(f"chart label {short} = {category} (no CJK font found)")
    if post:
        from replyloop.evaluation.report_slack import post_weekly_report

        result = post_weekly_report(cfg, report, client=client)
        typer.echo(f"Posted to {result.channel} (ts {result.ts}) with {len(result.file_ids)} chart(s)")


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
