"""CLI: ``replyloop retrain``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, print_json, workspace


def register(app: typer.Typer) -> None:
    @app.command("retrain")
    def retrain(
        now: bool = typer.Option(False, "--now", help="Run even if fewer than min_new_samples are new."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show whether a run is due and what would run; change nothing."),
        recover: bool = typer.Option(False, "--recover", help="Clean up after a crashed run (failed status, partial output, stale lock)."),
        post: bool = typer.Option(False, "--post", help="Also post progress and the result to the Slack review channel."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ):
        """Run the retrain pipeline: snapshot, train, evaluate, gate, canary / promote.

        Without --now it runs only when due (enough new approved samples, min_interval_hours
        passed), so it can be called from cron. Exit code 1 when the run failed or was refused.

        Example: replyloop retrain --now
        """
        from replyloop.pipeline import check_due, recover as recover_runs, run_pipeline

        cfg, store = workspace(config)
        with store:
            if recover:
                cleaned = recover_runs(store)
                typer.echo(f"Recovered {len(cleaned)} run(s): {', '.join(map(str, cleaned)) or 'none'}")
                return
            if not now and not dry_run:
                due = check_due(cfg, store)
                if not due.due:
                    if as_json:
                        print_json({"status": "skipped", "reason": due.reason})
                    else:
                        typer.echo(f"Not due: {due.reason}. Use --now to run anyway.")
                    return
            notify = typer.echo
            if post:
                from bot.jobs import slack_notifier

                slack = slack_notifier(cfg)

                def notify(text: str) -> None:
                    typer.echo(text)
                    slack(text)

            result = run_pipeline(cfg, store, trigger="cli", notify=None if as_json else notify, dry_run=dry_run)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str))
        elif dry_run:
            typer.echo(result.message)
        if result.status == "failed":
            raise typer.Exit(1)
