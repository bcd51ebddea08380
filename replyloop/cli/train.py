"""CLI: ``replyloop train --config FILE``, ``replyloop train merge``, ``replyloop train export``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.i18n import _

train_app = typer.Typer(invoke_without_command=True)


@train_app.callback()
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="Training config (lora-scripts-style YAML)."),
    resume: bool = typer.Option(False, "--resume",
                                help="Resume from the latest output_dir/checkpoint-<step>/ (resume_from_checkpoint: true)."),
):
    """Fine-tune a LoRA adapter from a lora-scripts-style YAML config.

    Writes output_dir/ (adapter_model.safetensors, adapter_config.json, manifest.json)
    atomically, with checkpoints in output_dir/checkpoint-<step>/; relative paths start from the
    directory you run this in (inputs also from the config's folder). Progress goes to a bar on a
    terminal, `replyloop-progress {json}` lines otherwise; notes (`Note: ...`) to stderr.

    Example: replyloop train --config configs/cs_lora.yaml
    """
    from replyloop.cli.common import workspace_language

    workspace_language()  # the words below in the workspace's ui.language
    if ctx.invoked_subcommand is not None:
        if config is not None:
            raise typer.BadParameter(_("--config goes with `replyloop train`, not with a subcommand"), param_hint="--config")
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from replyloop.training.config import load_train_config
    from replyloop.training.recipe import run_training

    cfg = load_train_config(config, resume=resume)
    result = run_training(cfg)
    if result.manifest.get("objective", "sft") != "sft":  # train18: dpo / kto
        from replyloop.training.preference import summary_line

        typer.echo(summary_line(result))
        return
    m = result.manifest["metrics"]
    from replyloop.cli.common import num

    eval_loss = _("n/a") if m["eval_loss"] is None else num(m["eval_loss"], 4)
    typer.echo(_("Wrote {path}: {steps} steps, train loss {train_loss}, held-out loss {eval_loss} (best step "
                 "{best_step}), {truncated} sample(s) truncated").format(
        path=result.output_dir, steps=m["steps"], train_loss=num(m["train_loss"], 4), eval_loss=eval_loss,
        best_step=m["best_step"], truncated=m["truncated"]))


@train_app.command("merge")
def merge(
    adapter: Path = typer.Argument(..., help="Adapter directory (from `replyloop train`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the merged model."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Default: the adapter's manifest."),
):
    """Merge an adapter into its base model for serving (merge_and_unload).

    Example: replyloop train merge adapters/run-7 --out serving/model-7
    """
    from replyloop.training.merge import merge_adapter

    target = merge_adapter(adapter, out, base_model=base_model)
    typer.echo(_("Wrote merged model to {path}").format(path=target))


@train_app.command("export")
def export(
    adapter: Path = typer.Argument(..., help="Adapter directory (from `replyloop train`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to copy the adapter to."),
):
    """Copy an adapter with its manifest (weights, adapter_config.json, manifest.json).

    Example: replyloop train export adapters/run-7 --out /mnt/share/run-7
    """
    from replyloop.training.merge import export_adapter

    target = export_adapter(adapter, out)
    typer.echo(_("Exported adapter to {path}").format(path=target))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
