"""CLI: ``replyloop rules propose | list | accept | dismiss`` (rule proposals mined from edits) and
``replyloop reply "question"`` (the nearest approved answers, as ``/reply`` shows them)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, print_json, when, word, workspace
from replyloop.i18n import _, pgettext
from replyloop.phrases import localized

rules_app = typer.Typer(help="Rule proposals mined from supervisors' edits.", no_args_is_help=True)


def _public(p: dict) -> dict:
    keys = ("id", "kind", "avoid", "preferred", "count", "supervisors", "examples", "status", "dismissed_count",
            "decided_by", "decided_at", "file", "entry", "opened_at")
    return {k: p.get(k) for k in keys}


@rules_app.command("propose")
def propose(
    post: bool = typer.Option(False, "--post", help="Post each new proposal to slack.review_channel as a card."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
):
    """Mine the edits since the last run and open the proposals that meet the thresholds.

    A replacement or deletion recurring in at least proposals.min_occurrences edits by
    proposals.min_supervisors supervisors, and not flagged by the current policies, becomes a
    terminology or banned-phrase proposal.

    Example: replyloop rules propose --json
    """
    from replyloop.evaluation.proposals import describe, propose as run

    cfg, store = workspace(config)
    client = None
    if post:  # a missing token fails before the work
        from replyloop.bot.slackclient import web_client

        client = web_client(cfg)
    with store:
        result = run(cfg, store, actor="cli")
        posted = 0
        if client is not None and result.opened:
            from replyloop.bot.proposals import post_cards

            posted = post_cards(client, store, cfg.file.slack.review_channel, result.opened)
    if as_json:
        print_json({"reviews_read": result.reviews, "opened": [_public(p) for p in result.opened], "posted": posted})
        return
    typer.echo(_("{reviews} new edit(s) read; {opened} proposal(s) opened").format(
        reviews=result.reviews, opened=len(result.opened)))
    for p in result.opened:
        typer.echo("  " + describe(p))
    if post:
        typer.echo(_("Posted {count} card(s) to {channel}").format(count=posted, channel=cfg.file.slack.review_channel))


@rules_app.command("list")
def list_(
    status: Optional[str] = typer.Option(None, "--status", help="open, accepted or dismissed (default: all three)."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
):
    """List the rule proposals with their evidence and status.

    Example: replyloop rules list --status open
    """
    from replyloop.evaluation.proposals import describe, list_proposals
    from replyloop.errors import DataFormatError

    statuses = ("open", "accepted", "dismissed")
    if status is not None and status not in statuses:
        from replyloop.cli.common import workspace_language

        workspace_language(config)
        raise DataFormatError(_("--status: {value} is not one of {choices}").format(value=repr(status),
                                                                                  choices=", ".join(statuses)))
    cfg, store = workspace(config)
    with store:
        rows = list_proposals(store, (status,) if status else statuses)
    if as_json:
        print_json([_public(p) for p in rows])
        return
    if not rows:
        typer.echo(_("No rule proposals with status {status}.").format(status=word(status)) if status
                   else _("No rule proposals."))
    for p in rows:
        typer.echo(describe(p))
        for e in p["examples"]:
            typer.echo(f"    {e['draft']}  →  {e['final']}")


@rules_app.command("accept")
def accept(
    proposal_id: int = typer.Argument(..., help="The proposal's id (replyloop rules list)."),
    actor: str = typer.Option("cli", "--as", help="Who accepts it (recorded in the audit log)."),
    config: Optional[Path] = ConfigOption,
):
    """Accept a proposal: validate it against the policy set and write it into policies.dir.

    Example: replyloop rules accept 3 --as ana
    """
    from replyloop.evaluation.proposals import accept as do_accept

    _settle(config, proposal_id, lambda cfg, store: do_accept(cfg, store, proposal_id, actor),
            lambda result: _("Accepted rule proposal #{id}: wrote {path}").format(id=proposal_id, path=result.path))


@rules_app.command("dismiss")
def dismiss(
    proposal_id: int = typer.Argument(..., help="The proposal's id (replyloop rules list)."),
    actor: str = typer.Option("cli", "--as", help="Who dismisses it (recorded in the audit log)."),
    config: Optional[Path] = ConfigOption,
):
    """Dismiss a proposal; it is proposed again only when its count doubles.

    Example: replyloop rules dismiss 3 --as ana
    """
    from replyloop.evaluation.proposals import dismiss as do_dismiss

    _settle(config, proposal_id, lambda cfg, store: do_dismiss(store, proposal_id, actor),
            lambda result: _("Dismissed rule proposal #{id} (proposed again at {count} edits)").format(
                id=proposal_id, count=2 * result.proposal["count"]))


def _settle(config: Optional[Path], proposal_id: int, act, done) -> None:
    """Accept or dismiss: ``act(cfg, store)`` decides in the workspace; ``done(result)`` words a new
    decision, and a proposal decided before says who decided it and when."""
    cfg, store = workspace(config)
    with store:
        result = act(cfg, store)
    typer.echo(done(result) if result.created else _already(cfg, proposal_id, result.proposal))


def _already(cfg, proposal_id: int, p: dict) -> str:
    return _("Rule proposal #{id} is already {status} (by {by} at {at})").format(
        id=proposal_id, status=word(p["status"]), by=p["decided_by"],
        at=when(p["decided_at"], cfg.file.scheduler.timezone))


def reply(
    question: str = typer.Argument(..., help="The customer question to look up."),
    results: Optional[int] = typer.Option(None, "--results", "-n", help="How many answers (default: reply.results)."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
):
    """Show the approved answers nearest to a question (what /reply answers in Slack).

    Answers failing the current policies are never shown.

    Example: replyloop reply "收不到验证码怎么办"
    """
    from replyloop.answers import AnswerIndex, render_text

    cfg, store = workspace(config)
    with store:
        index = AnswerIndex.from_config(cfg, store)
        found = index.search(question, k=results)
    if as_json:
        print_json({"question": question, "answers": [a.to_dict() for a in found.answers],
                    "excluded": found.excluded, "explanation": found.explanation})
        return
    typer.echo(render_text(found))


def drift(
    post: bool = typer.Option(False, "--post", help="Post each alarm that fired to slack.review_channel."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
):
    """Run the drift alarms now (the daily job): champion approval rate, blocked drafts, review queue.

    Exit code 1 when an alarm fired, 0 otherwise.

    Example: replyloop drift --json
    """
    from replyloop.drift import check_drift

    cfg, store = workspace(config)
    client = None
    if post:
        from replyloop.bot.slackclient import web_client

        client = web_client(cfg)
    with store:
        report = check_drift(cfg, store)
    if client is not None:
        for alarm in report.alarms:
            client.chat_postMessage(channel=cfg.file.slack.review_channel, text=alarm.text)
    if as_json:
        print_json({"checks": [c.to_dict() for c in report.checks], "alarms": len(report.alarms)})
    else:
        for c in report.checks:
            typer.echo(_("{check}: {status}: {measured}; {against}").format(
                check=_drift_name(c.name), status=word(c.status), measured=localized(c.measured),
                against=localized(c.against)))
            if c.action:
                typer.echo("  " + _("what to do: {action}").format(action=localized(c.action)))
    if report.alarms:
        raise typer.Exit(1)


def _drift_name(name: str) -> str:
    """A drift check's name (an identifier in --json) for people."""
    return {"approval-rate": pgettext("drift check", "approval-rate"),
            "blocked-share": pgettext("drift check", "blocked-share"),
            "review-queue": pgettext("drift check", "review-queue")}.get(name, name)


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
    app.command("reply")(reply)
    app.command("drift")(drift)
