"""CLI: ``replyloop models list | show | register | promote | canary | rollback | reject`` and ``replyloop draft``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, console, print_json, workspace

models_app = typer.Typer(help="The model registry: candidates, canary, champion, rollback.", no_args_is_help=True)

ByOption = typer.Option("cli", "--by", help="Who makes the change (written to the audit log).")
ReasonOption = typer.Option("", "--reason", help="Why (written to the audit log).")


def _registry(config: Optional[Path]):
    from replyloop.registry import Registry

    cfg, store = workspace(config)
    return cfg, store, Registry(store, keep_adapters=cfg.file.training.keep_adapters)


def _line(row: dict) -> str:
    extra = f" {row['canary_percent']}%" if row["status"] == "canary" else ""
    return f"model {row['id']} {row['name']}: {row['status']}{extra}"


@models_app.command("list")
def list_(
    status: Optional[str] = typer.Option(None, "--status", help="Only models with this status."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
):
    """All registered models with their status and latest evaluation.

    Example: replyloop models list --status retired
    """
    from replyloop.cli.tables import print_table

    _, store, registry = _registry(config)
    with store:
        rows = registry.list(status)
        evals = {r["id"]: registry.latest_evaluation(r["id"]) for r in rows}
    if as_json:
        print_json([{**r, "latest_evaluation": evals[r["id"]]} for r in rows])
        return
    if not rows:
        typer.echo("No models registered yet (train one, then `replyloop models register DIR`).")
        return
    print_table(("model", "name", "status", "canary %", "snapshot", "mean", "gate", "promoted", "adapter"),
                [(r["id"], r["name"], r["status"], r["canary_percent"] or "", r["snapshot_hash"] or "",
                  f"{evals[r['id']]['mean_similarity']:.3f}" if evals[r["id"]] else "",
                  ("pass" if evals[r["id"]]["gate_passed"] else "FAIL") if evals[r["id"]] else "",
                  f"{r['promoted_at'] or ''} {r['promoted_by'] or ''}".strip(),
                  "deleted" if r["adapter_deleted_at"] else (r["adapter_path"] or "")) for r in rows],
                console=console)


@models_app.command("show")
def show(
    model: str = typer.Argument(..., help="Model id or name."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
):
    """One model: its row, review rates of its drafts, and its latest evaluation summary.

    Example: replyloop models show 3
    """
    _, store, registry = _registry(config)
    with store:
        row = registry.get(model)
        rates = registry.review_rates(row["id"])
        ev = store.one("SELECT id, summary_md, gate_passed, created_at FROM evaluations WHERE model_id = ?"
                       " ORDER BY created_at DESC, id DESC LIMIT 1", (row["id"],))
    if as_json:
        print_json({**row, "review_rates": rates, "latest_evaluation": ev})
        return
    typer.echo(_line(row))
    for key in ("adapter_path", "base_model", "snapshot_hash", "run_id", "promoted_by", "promoted_at",
                "retired_at", "created_at"):
        if row.get(key) is not None:
            typer.echo(f"  {key}: {row[key]}")
    typer.echo(f"  metrics: {json.dumps(row['metrics'], ensure_ascii=False)}")
    rate = rates["approval_without_edit_rate"]
    typer.echo(f"  reviews: {rates['reviews']} (approved {rates['approved']}, edited {rates['edited']},"
               f" rejected {rates['rejected']}; approved without edit {'n/a' if rate is None else f'{rate:.0%}'})")
    if ev:
        typer.echo(f"\nLatest evaluation {ev['id']} ({ev['created_at']}):\n")
        typer.echo(ev["summary_md"])
    else:
        typer.echo("  not evaluated yet")


@models_app.command("register")
def register_(
    adapter_dir: Path = typer.Argument(..., help="A trained adapter directory with manifest.json."),
    name: Optional[str] = typer.Option(None, "--name", help="Letters, digits, . _ - (not only digits; 64 at most). Default: the directory name, made safe."),
    run_id: Optional[int] = typer.Option(None, "--run-id", help="The training run that produced it."),
    by: str = ByOption,
    config: Optional[Path] = ConfigOption,
):
    """Register a trained adapter as a candidate.

    Example: replyloop models register adapters/run-12
    """
    _, store, registry = _registry(config)
    with store:
        row = registry.register(adapter_dir, run_id=run_id, name=name, actor=by)
    typer.echo(_line(row))


@models_app.command("promote")
def promote(
    model: str = typer.Argument(..., help="Model id or name (a candidate or the canary)."),
    force: bool = typer.Option(False, "--force", help="Promote even though the gate failed or did not run."),
    reason: str = ReasonOption,
    by: str = ByOption,
    config: Optional[Path] = ConfigOption,
):
    """Make a model the champion; the old champion is retired and kept for rollback.

    Refuses when the model's latest evaluation failed the gate (or it has none), unless --force.

    Example: replyloop models promote 4 --reason "canary approval rate 92%"
    """
    _, store, registry = _registry(config)
    with store:
        old = registry.champion()
        row = registry.promote(model, by, force=force, reason=reason)
    typer.echo(f"Promoted {_line(row)}" + (f" (retired model {old['id']} {old['name']})" if old else ""))


@models_app.command("canary")
def canary(
    model: str = typer.Argument(..., help="Model id or name (a candidate, or the canary to change its share)."),
    percent: int = typer.Option(..., "--percent", min=1, max=100, help="Share of conversations it drafts."),
    force: bool = typer.Option(False, "--force", help="Start even though the gate failed or did not run."),
    reason: str = ReasonOption,
    by: str = ByOption,
    config: Optional[Path] = ConfigOption,
):
    """Let a challenger draft N% of new conversations (chosen by a hash of the conversation id).

    Example: replyloop models canary 4 --percent 10
    """
    _, store, registry = _registry(config)
    with store:
        row = registry.start_canary(model, percent, by, force=force, reason=reason)
    typer.echo(f"Canary: {_line(row)}")


@models_app.command("rollback")
def rollback(
    reason: str = ReasonOption,
    by: str = ByOption,
    config: Optional[Path] = ConfigOption,
):
    """Stop the canary, or (with no canary) put the previous champion back.

    Example: replyloop models rollback --reason "complaints about refund replies"
    """
    _, store, registry = _registry(config)
    with store:
        had_canary = registry.canary()
        row = registry.rollback(by, reason=reason)
    if had_canary:
        typer.echo(f"Stopped canary model {had_canary['id']} {had_canary['name']} (rejected);"
                   f" champion: {_line(row)}")
    else:
        typer.echo(f"Rolled back; champion: {_line(row)}")


@models_app.command("reject")
def reject(
    model: str = typer.Argument(..., help="Model id or name (a candidate or the canary)."),
    reason: str = typer.Option(..., "--reason", help="Why (written to the audit log)."),
    by: str = ByOption,
    config: Optional[Path] = ConfigOption,
):
    """Mark a candidate or the canary as rejected.

    Example: replyloop models reject 5 --reason "tone too informal"
    """
    _, store, registry = _registry(config)
    with store:
        row = registry.reject(model, by, reason)
    typer.echo(f"Rejected {_line(row)}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")

    @app.command("draft")
    def draft(
        question: str = typer.Argument(..., help="The customer question."),
        conversation: Optional[str] = typer.Option(None, "--conversation", help="Conversation id (decides canary routing)."),
        model: Optional[str] = typer.Option(None, "--model", help="Draft with this model instead of routing."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ):
        """Draft a reply with the champion (or the canary, for its share of conversations).

        Example: replyloop draft "快递三天没更新了怎么办" --conversation wx-1842
        """
        from replyloop.drafting import Drafter

        cfg, store = workspace(config)
        with store:
            result = Drafter(cfg, store).draft(question, conversation, model=model)
        if as_json:
            print_json(result.to_dict())
            return
        typer.echo(result.text)
        typer.echo(f"-- model {result.model_id} {result.model_name}, policy: {result.verdict}, "
                   f"generation {result.generate_s * 1000:.0f} ms"
                   + (f" (model load {result.load_s * 1000:.0f} ms before it)" if result.backend == "local" else ""))
        for v in result.violations:
            typer.echo(f"   {v.get('severity')}: {v.get('rule')}: {v.get('message')}")
