"""CLI: ``replyloop report weekly``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, workspace
from replyloop.i18n import _, week_label

report_app = typer.Typer(help="Reports for supervisors.", no_args_is_help=True)


@report_app.command("weekly")
def weekly(
    week: Optional[str] = typer.Option(None, "--week", help="ISO week such as 2026-W48 (default: the last complete week, in scheduler.timezone)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: report.out_dir/<week>)."),
    post: bool = typer.Option(False, "--post", help="Post the summary and the charts to slack.report_channel."),
    raw_csv: bool = typer.Option(False, "--raw-csv", help="numbers.csv: write cells exactly as stored, without the quote that stops a spreadsheet running =, +, -, @ cells as formulas (for programs, never for a spreadsheet)."),
    config: Optional[Path] = ConfigOption,
):
    """Write the weekly consistency report (report.md, numbers.csv, charts) and optionally post it.

    A numbers.csv cell that begins with = + - @ | % a tab or CR gets a leading ' so that a
    spreadsheet shows it as text instead of running it (--raw-csv turns that off).

    Example: replyloop report weekly --week 2026-W48 --post
    """
    from replyloop.cli.common import num, pct, pp
    from replyloop.evaluation.report import build_weekly_report

    cfg, store = workspace(config)
    client = None
    if post:  # a missing token fails before the work, not after it
        from replyloop.evaluation.report_slack import make_client

        client = make_client(cfg)
    with store:
        report = build_weekly_report(cfg, store, week=week, out=out, csv_safe=not raw_csv)
    label = week_label(report.week.year, report.week.week)
    typer.echo(_("Weekly report {week} written to {path}").format(week=label, path=report.out_dir))
    if report.empty:
        typer.echo(_("No activity in {week}.").format(week=label))
    consistency = report.consistency_at(report.label)
    typer.echo(_("automation {automation} ({automation_change}), consistency {consistency} ({consistency_change}), "
                 "chrF {chrf} ({chrf_change}), {flagged} flagged drafts, {approved} approved with violations").format(
        automation=pct(report.this_week.automation_rate), automation_change=pp(report.automation_change),
        consistency=num(consistency and consistency.mean_similarity),
        consistency_change=num(report.consistency_change, signed=True),
        chrf=num(consistency and consistency.mean_chrf), chrf_change=num(report.chrf_change, signed=True),
        flagged=report.drafts_flagged, approved=len(report.approved_violation_drafts)))
    for short, category in report.chart_labels.items():
        typer.echo(_("chart label {short} = {category} (no CJK font found)").format(short=short, category=category))
    if post:
        from replyloop.evaluation.report_slack import post_weekly_report

        result = post_weekly_report(cfg, report, client=client)
        typer.echo(_("Posted to {channel} (ts {ts}) with {count} chart(s)").format(
            channel=result.channel, ts=result.ts, count=len(result.file_ids)))


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
