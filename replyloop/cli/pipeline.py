"""CLI: ``replyloop retrain``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, print_json, workspace
from replyloop.errors import EXIT_GATE_FAILED, ConfigError
from replyloop.i18n import _, fmt_number
from replyloop.phrases import localized
from replyloop.messages import code_block, icon, message, to_plain


def _clock(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunDisplay:
    """What ``retrain`` shows while a run trains: the log path, then on a terminal a progress bar
    (step, loss, ETA) and off a terminal a plain line every ``every_s`` seconds (and at the first
    and last step)."""

    def __init__(self, stream=None, every_s: float = 10.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._progress = None
        self._task = None
        self._last_line = 0.0

    def _write(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def __call__(self, event: dict) -> None:
        stage = event.get("stage")
        if stage == "training":
            self._write(_("Training run #{run_id}; log: {path}").format(run_id=event["run_id"], path=event["log_path"]))
            return
        if stage == "evaluating":
            self.close()
            self._write(_("Training done; evaluating {model} on the held-out questions ...").format(
                model=event.get("model") or _("the new adapter")))
            return
        if "eval_loss" in event:
            self._write(_("step {step}: held-out loss {loss} (best {best} at step {best_step})").format(
                step=event.get("step"), loss=fmt_number(event["eval_loss"], 4),
                best=fmt_number(event.get("best_eval_loss", event["eval_loss"]), 4), best_step=event.get("best_step")))
            return
        if "loss" not in event or "step" not in event:
            return
        step, total = event["step"], event.get("total_steps")
        if self.tty:
            self._bar(step, total, event)
            return
        now = time.monotonic()
        if step in (1, total) or now - self._last_line >= self.every_s:
            self._last_line = now
            self._write(_("step {step}/{total}  loss {loss}  {speed} tokens/s  ETA {eta}").format(
                step=step, total=total or "?", loss=fmt_number(event["loss"], 4),
                speed=f"{event.get('tokens_per_s', 0):.0f}", eta=_clock(event.get("eta_s"))))

    def _bar(self, step: int, total, event: dict) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self._progress is None:
            self._progress = Progress(
                TextColumn(_("train")), BarColumn(), MofNCompleteColumn(),
                TextColumn(_("loss {value}").format(value="{task.fields[loss]}")),
                TextColumn(_("{value} tok/s").format(value="{task.fields[speed]}")), TimeElapsedColumn(),
                TextColumn(_("ETA {value}").format(value="{task.fields[eta]}")),
                console=Console(file=self.stream), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total, loss="-", speed="-", eta="?")
        self._progress.update(self._task, completed=step, total=total, loss=f"{event['loss']:.4f}",
                              speed=f"{event.get('tokens_per_s', 0):.0f}", eta=_clock(event.get("eta_s")))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


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
        passed), so it can be called from cron. Exit code 0 when the new model passed the gate
        (or no run was due), 3 when it failed the gate, 1 when the run failed or was refused,
        2 when the training config (training.config) is missing, unfilled or invalid.
        On a terminal training shows a progress bar (step, loss, ETA); otherwise plain lines.

        Example: replyloop retrain --now
        """
        from replyloop.pipeline import check_due, load_training_source, recover as recover_runs, run_pipeline

        cfg, store = workspace(config)
        with store:
            if recover:
                cleaned = recover_runs(store)
                typer.echo(_("Recovered {count} run(s): {runs}").format(
                    count=len(cleaned), runs=", ".join(map(str, cleaned)) or _("none")))
                return
            notify = lambda text: typer.echo(to_plain(text))  # noqa: E731
            if post:
                from replyloop.bot.jobs import slack_notifier

                slack = slack_notifier(cfg)

                def notify(text: str) -> None:
                    typer.echo(to_plain(text))
                    slack(text)

            if dry_run:
                result = run_pipeline(cfg, store, trigger="cli", dry_run=True)
                if as_json:
                    typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str))
                else:
                    typer.echo(result.message)
                if result.status == "config-error":
                    raise ConfigError(result.details["config_error"])
                return
            try:
                load_training_source(cfg)  # a config that cannot run fails here, before anything is recorded
            except ConfigError as exc:
                if post:
                    slack(message(icon("warning"), _("Retrain not started: the training config needs fixing."),
                                  code_block(str(exc))))
                raise
            if not now:
                due = check_due(cfg, store)
                if not due.due:
                    if as_json:
                        print_json({"status": "skipped", "reason": due.reason})
                    else:
                        typer.echo(_("Not due: {reason}. Use --now to run anyway.").format(reason=localized(due.reason)))
                    return
            display = None if as_json else RunDisplay()

            def say(text: str) -> None:
                if display is not None:
                    display.close()
                notify(text)

            try:
                result = run_pipeline(cfg, store, trigger="cli", notify=None if as_json else say, progress=display)
            finally:
                if display is not None:
                    display.close()
        if as_json:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str))
        if result.status == "config-error":
            raise typer.Exit(2)
        if result.status == "failed":
            raise typer.Exit(1)
        if result.status == "succeeded" and result.gate_passed is False:
            raise typer.Exit(EXIT_GATE_FAILED)  # cron sees a rejected candidate
