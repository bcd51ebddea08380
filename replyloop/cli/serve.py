"""CLI: ``replyloop serve`` runs the Slack app (Socket Mode by default, or HTTP mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption
from replyloop.i18n import _


def serve(
    http: Optional[bool] = typer.Option(None, "--http/--socket",
                                        help="HTTP mode (Slack posts to /slack/events) or Socket Mode; default: slack.socket_mode."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port for /slack/events, /intake, /health (default: slack.http_port; 0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 behind a proxy)."),
    no_scheduler: bool = typer.Option(False, "--no-scheduler", help="Do not run the scheduled jobs (threshold, canary, weekly report)."),
    config: Optional[Path] = ConfigOption,
):
    """Run the Slack bot and the scheduler: review cards, /retrain, intake, App Home (Ctrl-C stops it).

    At start it recovers from a crash (a run whose process died is marked failed, its partial
    output removed). Only one `serve` may run per workspace.

    At start it checks the bot token (auth.test: a rejected token exits 2; an unreachable Slack
    is retried) and looks the configured channels up (names become ids). Log lines follow
    logging.format (text, logfmt or json).

    Needs SLACK_BOT_TOKEN, and SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode);
    REPLYLOOP_INTAKE_TOKEN enables POST /intake.

    Example: replyloop serve --http --port 3000
    """
    import logging
    import signal
    import threading

    from replyloop.bot.server import serve as run
    from replyloop.cli.common import workspace
    from replyloop.config import Secrets

    from replyloop.bot.logs import configure_logging

    cfg, store = workspace(config)
    configure_logging(cfg.file.logging.format, getattr(logging, cfg.file.logging.level.upper()))
    http_mode = (not cfg.file.slack.socket_mode) if http is None else http
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_args: stop.set())

    def ready(server) -> None:  # a line scripts read (benchmarks, tests): stable English, like a log line
        mode = "HTTP mode: Slack events at /slack/events" if http_mode else "Socket Mode"
        typer.echo(f"Listening on {server.url} ({mode}; intake at /intake, health at /health, metrics at /metrics)")
        import sys
        sys.stdout.flush()

    from replyloop.bot.jobs import JobRunner, pipeline_starter
    from replyloop.locking import RunLock
    from replyloop.pipeline import recover

    with store:
        instance = RunLock(store, name="serve")
        instance.acquire(take_over_stale=True)  # one bot per workspace: a second one refuses to start
        stop_heartbeat = None
        try:
            stop_heartbeat = instance.keep_alive()  # so a serve on another host sees this one is alive
            cleaned = recover(store)
            if cleaned:
                typer.echo(_("Recovered after a crash: run(s) {runs} marked failed, partial output removed; the "
                             "champion is unchanged.").format(runs=", ".join(map(str, cleaned))))
            scheduler = None if no_scheduler else JobRunner(cfg)
            try:
                run(cfg, store, Secrets.from_env(), http=http_mode, port=port, host=host, ready=ready, stop=stop,
                    scheduler=scheduler, start_pipeline=pipeline_starter(cfg, store))
            except OSError as exc:  # cli16: a busy port, an unreachable Slack: an Error line, no traceback
                raise _start_error(exc, host, cfg.file.slack.http_port if port is None else port,
                                   cfg.file.slack.api_base_url) from None
        finally:
            if stop_heartbeat is not None:
                stop_heartbeat()
            instance.release()


def _start_error(exc: OSError, host: str, port: int, api_url: str):
    """The ReplyloopError for an OSError that stopped ``serve``: the port (exit 2) or Slack (exit 1)."""
    import errno
    import urllib.error

    from replyloop.errors import ReplyloopError, UsageError

    if isinstance(exc, urllib.error.URLError):
        return ReplyloopError(_("cannot reach Slack at {url} ({reason}): check the network or proxy, then start "
                                "`replyloop serve` again").format(url=api_url, reason=exc.reason))
    if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return UsageError(_("cannot listen on {address}: {reason} (another `replyloop serve` or program uses it? "
                            "choose another --port or slack.http_port)").format(address=f"{host}:{port}",
                                                                               reason=exc.strerror))
    return ReplyloopError(_("serve stopped: {reason}").format(reason=exc.strerror or exc))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
