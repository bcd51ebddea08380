"""CLI: ``replyloop serve`` runs the Slack app (Socket Mode by default, or HTTP mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption


def serve(
    http: Optional[bool] = typer.Option(None, "--http/--socket",
                                        help="HTTP mode (Slack posts to /slack/events) or Socket Mode; default: slack.socket_mode."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port for /slack/events, /intake, /health (default: slack.http_port; 0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 behind a proxy)."),
    config: Optional[Path] = ConfigOption,
):
    """Run the Slack bot: review cards, /retrain, intake, App Home (Ctrl-C stops it).

    Needs SLACK_BOT_TOKEN, and SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode);
    REPLYLOOP_INTAKE_TOKEN enables POST /intake.

    Example: replyloop serve --http --port 3000
    """
    import logging
    import signal
    import threading

    from bot.server import serve as run
    from replyloop.cli.common import workspace
    from replyloop.config import Secrets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, store = workspace(config)
    http_mode = (not cfg.file.slack.socket_mode) if http is None else http
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def ready(server) -> None:
        mode = "HTTP mode: Slack events at /slack/events" if http_mode else "Socket Mode"
        typer.echo(f"Listening on {server.url} ({mode}; intake at /intake, health at /health)")
        import sys
        sys.stdout.flush()

    with store:
        run(cfg, store, Secrets.from_env(), http=http_mode, port=port, host=host, ready=ready, stop=stop)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
