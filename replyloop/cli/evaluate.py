"""CLI: ``replyloop eval MODEL [--against champion|none|MODEL] [--json]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, print_json, workspace


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        model: str = typer.Argument(..., help="Model id, name, or an adapter directory (registered if new)."),
        against: str = typer.Option("champion", "--against", help="champion, none, or a model id / name to compare with."),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Default: evaluation.max_new_tokens."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Default: evaluation.batch_size."),
        snapshot: Optional[str] = typer.Option(None, "--snapshot", help="Held-out set of this snapshot (for adapters trained outside the store; default: the model's own)."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ):
        """Score a model's drafts on the held-out questions of its snapshot and apply the promotion gate.

        Exits with code 1 when the gate fails.

        Example: replyloop eval adapters/run-12 --against champion
        """
        from replyloop.evaluation.evaluate import evaluate_model
        from replyloop.errors import NotFoundError
        from replyloop.registry import Registry

        cfg, store = workspace(config)
        with store:
            registry = Registry(store, keep_adapters=cfg.file.training.keep_adapters)
            try:
                row = registry.get(model)
            except NotFoundError:
                if not (Path(model) / "manifest.json").is_file():
                    raise
                row = registry.register(model)
                typer.echo(f"Registered {model} as model {row['id']} ({row['name']})", err=True)
            report = evaluate_model(cfg, store, row["id"], against=against, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, snapshot=snapshot)
        if as_json:
            print_json(report.to_dict())
        else:
            typer.echo(report.summary_markdown(verdict=False))
            typer.echo(report.gate.verdict())
        if not report.gate.passed:
            raise typer.Exit(1)
