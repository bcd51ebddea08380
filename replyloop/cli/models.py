"""CLI: ``replyloop models list | show | register | promote | canary | rollback | reject`` and ``replyloop draft``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, console, num, pct, print_json, when, word, workspace
from replyloop.i18n import N_, _

models_app = typer.Typer(help="The model registry: candidates, canary, champion, rollback.", no_args_is_help=True)

ByOption = typer.Option("cli", "--by", help="Who makes the change (written to the audit log).")
ReasonOption = typer.Option("", "--reason", help="Why (written to the audit log).")


def _registry(config: Optional[Path]):
    from replyloop.registry import Registry

    cfg, store = workspace(config)
    return cfg, store, Registry(store, keep_adapters=cfg.file.training.keep_adapters)


def _line(row: dict) -> str:
    extra = f" {row['canary_percent']}%" if row["status"] == "canary" else ""
    return _("model {id} {name}: {status}").format(id=row["id"], name=row["name"], status=word(row["status"])) + extra


# the fields `models show` prints, as people read them
FIELDS = {
    "adapter_path": N_("adapter_path"), "base_model": N_("base_model"), "snapshot_hash": N_("snapshot_hash"),
    "run_id": N_("run_id"), "promoted_by": N_("promoted_by"), "promoted_at": N_("promoted_at"),
    "retired_at": N_("retired_at"), "created_at": N_("created_at"),
}
TIMES = ("promoted_at", "retired_at", "created_at")


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

    cfg, store, registry = _registry(config)
    with store:
        rows = registry.list(status)
        evals = {r["id"]: registry.latest_evaluation(r["id"]) for r in rows}
    if as_json:
        print_json([{**r, "latest_evaluation": evals[r["id"]]} for r in rows])
        return
    if not rows:
        typer.echo(_("No models registered yet (train one, then `replyloop models register DIR`)."))
        return
    tz = cfg.file.scheduler.timezone
    print_table((_("model"), _("name"), _("status"), _("canary %"), _("snapshot"), _("mean"), _("gate"),
                 _("promoted"), _("adapter")),
                [(r["id"], r["name"], word(r["status"]), r["canary_percent"] or "", r["snapshot_hash"] or "",
                  num(evals[r["id"]]["mean_similarity"]) if evals[r["id"]] else "",
                  (_("pass") if evals[r["id"]]["gate_passed"] else _("FAIL")) if evals[r["id"]] else "",
                  f"{when(r['promoted_at'], tz)} {r['promoted_by'] or ''}".strip(),
                  _("deleted") if r["adapter_deleted_at"] else (r["adapter_path"] or "")) for r in rows],
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
    cfg, store, registry = _registry(config)
    with store:
        row = registry.get(model)
        rates = registry.review_rates(row["id"])
        ev = store.one("SELECT id, summary_md, gate_passed, created_at FROM evaluations WHERE model_id = ?"
                       " ORDER BY created_at DESC, id DESC LIMIT 1", (row["id"],))
    if as_json:
        print_json({**row, "review_rates": rates, "latest_evaluation": ev})
        return
    tz = cfg.file.scheduler.timezone
    typer.echo(_line(row))
    for key, label in FIELDS.items():
        if row.get(key) is not None:
            typer.echo("  " + _("{field}: {value}").format(field=_(label),
                                                          value=when(row[key], tz) if key in TIMES else row[key]))
    typer.echo("  " + _("metrics: {metrics}").format(metrics=json.dumps(row["metrics"], ensure_ascii=False)))
    rate = rates["approval_without_edit_rate"]
    typer.echo("  " + _("reviews: {reviews} (approved {approved}, edited {edited}, rejected {rejected}; approved "
                        "without edit {rate})").format(
        reviews=rates["reviews"], approved=rates["approved"], edited=rates["edited"], rejected=rates["rejected"],
        rate=_("n/a") if rate is None else pct(rate, 0)))
    if ev:
        typer.echo("\n" + _("Latest evaluation {id} ({created_at}):").format(
            id=ev["id"], created_at=when(ev["created_at"], tz)) + "\n")
        typer.echo(ev["summary_md"])
    else:
        typer.echo("  " + _("not evaluated yet"))


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
    _cfg, store, registry = _registry(config)
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
    _cfg, store, registry = _registry(config)
    with store:
        old = registry.champion()
        row = registry.promote(model, by, force=force, reason=reason)
    line = _("Promoted {model}").format(model=_line(row))
    if old:
        line += " " + _("(retired model {id} {name})").format(id=old["id"], name=old["name"])
    typer.echo(line)


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
    _cfg, store, registry = _registry(config)
    with store:
        row = registry.start_canary(model, percent, by, force=force, reason=reason)
    typer.echo(_("Canary: {model}").format(model=_line(row)))


@models_app.command("rollback")
def rollback(
    reason: str = ReasonOption,
    by: str = ByOption,
    config: Optional[Path] = ConfigOption,
):
    """Stop the canary, or (with no canary) put the previous champion back.

    Example: replyloop models rollback --reason "complaints about refund replies"
    """
    _cfg, store, registry = _registry(config)
    with store:
        had_canary = registry.canary()
        row = registry.rollback(by, reason=reason)
    if had_canary:
        typer.echo(_("Stopped canary model {id} {name} (rejected); champion: {model}").format(
            id=had_canary["id"], name=had_canary["name"], model=_line(row)))
    else:
        typer.echo(_("Rolled back; champion: {model}").format(model=_line(row)))


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
    _cfg, store, registry = _registry(config)
    with store:
        row = registry.reject(model, by, reason)
    typer.echo(_("Rejected {model}").format(model=_line(row)))


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
        line = "-- " + _("model {id} {name}, policy: {verdict}, generation {ms} ms").format(
            id=result.model_id, name=result.model_name, verdict=word(result.verdict),
            ms=f"{result.generate_s * 1000:.0f}")
        if result.backend == "local":
            line += " " + _("(model load {ms} ms before it)").format(ms=f"{result.load_s * 1000:.0f}")
        typer.echo(line)
        for v in result.violations:
            typer.echo(f"   {word(v.get('severity'))}: {v.get('rule')}: {v.get('message')}")
