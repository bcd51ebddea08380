"""CLI: ``replyloop outbox list|retry`` (delivered replies, dead letters) and
``replyloop automation list|pin|unpin`` (earned automation per intent)."""

from __future__ import annotations

from typing import List, Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, print_json, workspace

outbox_app = typer.Typer(help="Delivery of decided replies: the outbox and its dead letters.", no_args_is_help=True)
automation_app = typer.Typer(help="Earned automation per intent: which intents are approved automatically.",
                             no_args_is_help=True)


@outbox_app.command("list")
def outbox_list(
    state: str = typer.Option("dead", "--state", help="dead, pending, delivered or all."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = JsonOption,
    config_path=ConfigOption,
):
    """List outbox events (default: the dead-lettered ones) with their last error.

    Example: replyloop outbox list --state pending
    """
    from replyloop import outbox

    _, store = workspace(config_path)
    with store:
        rows = outbox.list_events(store, None if state == "all" else state, limit)
        counts = outbox.counts(store)
    if as_json:
        print_json({"counts": counts, "events": rows})
        return
    typer.echo(f"{counts['delivered']} delivered, {counts['pending']} pending, {counts['dead']} dead-lettered")
    for r in rows:
        where = r["url"] or "Slack thread"
        line = f"#{r['id']} {r['event_id']} {r['target']} {r['state']} attempts={r['attempts']} -> {where}"
        if r["last_error"]:
            line += f"  last error: {r['last_error']}"
        typer.echo(line)


@outbox_app.command("retry")
def outbox_retry(
    ids: Optional[List[int]] = typer.Argument(None, help="Outbox ids (from `replyloop outbox list`)."),
    all_dead: bool = typer.Option(False, "--all-dead", help="Every dead-lettered event."),
    config_path=ConfigOption,
):
    """Send dead-lettered events again (the running `replyloop serve` picks them up at once).

    Example: replyloop outbox retry --all-dead
    """
    from replyloop import outbox

    _, store = workspace(config_path)
    with store:
        n = outbox.retry(store, ids or [], all_dead=all_dead)
    typer.echo(f"{n} event(s) queued for delivery again")


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")
