"""CLI: ``replyloop demo``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        workdir: Path = typer.Option(Path("replyloop-demo"), "--workdir", help="Where the demo workspace is created (kept afterwards)."),
        force: bool = typer.Option(False, "--force", help="Replace the workdir if it is not empty (its cached base model is kept)."),
        quick: bool = typer.Option(False, "--quick", help="Smaller sizes (fewer questions, shorter training)."),
    ):
        """Run the whole loop on embedded defaults: tiny model, local fake Slack, no GPU, no network.

        Creates a workspace, pre-trains (once, cached in the workspace) a tiny model on the
        team's legacy replies, trains a first champion, blocks a candidate that promises 全额赔付,
        runs two rounds of reviews with simulated supervisors in between which the scheduler
        retrains and judges the canary, writes the weekly report, and prints each round's
        violations, approval rate and held-out consistency. Leaves the workspace for `replyloop models list`,
        `replyloop data stats`, ...

        Example: replyloop demo --workdir /tmp/replyloop-demo
        """
        import logging
        import warnings

        from rich.console import Console
        from rich.table import Table

        from replyloop.demo import DemoSettings, round_table, run_demo
        from replyloop.i18n import _, fmt_number

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("apscheduler", "slack_bolt", "bot", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        console = Console()
        with console.status("replyloop demo", spinner="dots") as status:
            def say(text: str) -> None:
                console.print(text, markup=False, highlight=False)
                status.update(text.strip()[:80])

            summary = run_demo(workdir, DemoSettings.quick() if quick else DemoSettings(), force=force, say=say)
        table = Table(title=_("replyloop demo: done in {seconds} s").format(seconds=fmt_number(summary.seconds)))
        table.add_column(_("What"))
        table.add_column(_("Result"), overflow="fold")  # paths wrap instead of being cut off
        for what, result in summary.rows:
            table.add_row(what, result)
        console.print(table)
        header, rows = round_table(summary.rounds)
        rounds = Table(title=_("Rounds of reviews (computed from the drafts and the supervisors' decisions)"))
        for i, name in enumerate(header):
            rounds.add_column(name, overflow="fold", ratio=2 if i == 0 else 3)
        for row in rows:
            rounds.add_row(*row)
        console.print(rounds)
        for note in summary.notes:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        if summary.report_dir:
            console.print(_("Weekly report: {path}").format(path=summary.report_dir / "report.md"), markup=False,
                          highlight=False, soft_wrap=True)
        console.print(_("Workspace: {path}").format(path=summary.workdir) + "\n" + _("Try:  {commands}").format(
            commands=f"cd {summary.workdir} && replyloop models list && replyloop data stats && "
                     "replyloop retrain --dry-run"), markup=False, highlight=False)
