"""CLI: ``replyloop outbox list|retry`` (delivered replies, dead letters) and
``replyloop automation list|pin|unpin`` (earned automation per intent)."""

from __future__ import annotations

from typing import List, Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, num, print_json, word, workspace
from replyloop.i18n import _

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

    _cfg, store = workspace(config_path)
    with store:
        rows = outbox.list_events(store, None if state == "all" else state, limit)
        counts = outbox.counts(store)
    if as_json:
        print_json({"counts": counts, "events": rows})
        return
    typer.echo(_("{delivered} delivered, {pending} pending, {dead} dead-lettered").format(
        delivered=counts["delivered"], pending=counts["pending"], dead=counts["dead"]))
    for r in rows:
        where = r["url"] or _("Slack thread")
        line = _("#{id} {event_id} {target} {state} attempts={attempts} -> {where}").format(
            id=r["id"], event_id=r["event_id"], target=r["target"], state=word(r["state"]), attempts=r["attempts"],
            where=where)
        if r["last_error"]:
            line += "  " + _("last error: {error}").format(error=r["last_error"])
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

    _cfg, store = workspace(config_path)
    with store:
        n = outbox.retry(store, ids or [], all_dead=all_dead)
    typer.echo(_("{count} event(s) queued for delivery again").format(count=n))


def _status_line(s) -> str:
    lower = _("n/a") if s.lower is None else num(s.lower, 2)
    pin = _(", pinned {pin}").format(pin=word(s.pinned)) if s.pinned else ""
    audits = _(", audits {approved}/{audits}").format(approved=s.audits_approved, audits=s.audits) if s.audits else ""
    reason = f" ({s.reason})" if s.reason and s.state == "revoked" else ""
    return _("{intent}: {state}{pin} - {approved}/{reviews} approved without edit, lower bound {lower}{audits}"
             "{reason}").format(intent=s.intent, state=word(s.state), pin=pin, approved=s.approved,
                                reviews=s.reviews, lower=lower, audits=audits, reason=reason)


@automation_app.command("list")
def automation_list(as_json: bool = JsonOption, config_path=ConfigOption):
    """Every intent (category) with its evidence: reviews, approvals without edit, the Wilson lower
    bound, its state (manual, automatic, revoked), pin and audits.

    Example: replyloop automation list
    """
    from replyloop.automation import Automation

    cfg, store = workspace(config_path)
    with store:
        rows = Automation(cfg, store).intents()
    if as_json:
        print_json({"enabled": cfg.file.automation.enabled, "level": cfg.file.automation.level,
                    "intents": [r.to_dict() for r in rows]})
        return
    if not cfg.file.automation.enabled:
        typer.echo(_("automation is off (automation.enabled: false): every draft goes to review"))
    for r in rows:
        typer.echo(_status_line(r))


@automation_app.command("pin")
def automation_pin(
    intent: str = typer.Argument(..., help="The intent (category)."),
    allow: bool = typer.Option(False, "--allow", help="Allow automation again (lifts a revocation) instead of pinning to manual."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the audit log)."),
    actor: str = typer.Option("cli", "--by", help="Who (kept in the audit log)."),
    config_path=ConfigOption,
):
    """Pin an intent to manual review, or --allow it to be automatic whenever its evidence earns it.

    Example: replyloop automation pin 退款 --reason "new refund policy this week"
    """
    from replyloop.automation import Automation

    cfg, store = workspace(config_path)
    with store:
        typer.echo(_status_line(Automation(cfg, store).pin(intent, actor, allow=allow, reason=reason)))


@automation_app.command("unpin")
def automation_unpin(
    intent: str = typer.Argument(..., help="The intent (category)."),
    actor: str = typer.Option("cli", "--by", help="Who (kept in the audit log)."),
    config_path=ConfigOption,
):
    """Remove an intent's pin: its evidence decides again (a revocation stays until --allow).

    Example: replyloop automation unpin 物流查询
    """
    from replyloop.automation import Automation

    cfg, store = workspace(config_path)
    with store:
        typer.echo(_status_line(Automation(cfg, store).unpin(intent, actor)))


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")
    app.add_typer(automation_app, name="automation")
