"""CLI: ``replyloop init``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop import paths
from replyloop.config import load_config, write_default_config, write_training_template
from replyloop.store import Store


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        directory: Optional[Path] = typer.Argument(None, help="Workspace directory (default: $REPLYLOOP_HOME or .)."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing replyloop.yaml."),
        samples: bool = typer.Option(False, "--samples", help="Also import the shipped sample Q&A set."),
    ):
        """Create a workspace: replyloop.yaml, train.yaml (training.config), the SQLite database,
        and (optionally) sample data. An existing train.yaml is kept, even with --force.

        Example: replyloop init ./cs-workspace --samples
        """
        root = directory or paths.home()
        config_path = root / paths.CONFIG_NAME
        if config_path.exists() and not force:
            typer.echo(f"{config_path} already exists; keeping it (use --force to overwrite).")
        else:
            write_default_config(root, overwrite=force)
            typer.echo(f"Wrote {config_path}")
        config = load_config(config_path)
        written = write_training_template(config)
        if written is not None:
            typer.echo(f"Wrote {written}: set base_model there to a local model directory")
        else:
            typer.echo(f"{config.train_config_path} already exists; keeping it.")
        with Store(config.db_path) as store:
            typer.echo(f"Database {config.db_path} ready")
            if samples:
                from replyloop.dataio import read_samples

                result = store.add_samples(read_samples(paths.samples_dir() / "cs_samples.csv"), source="import")
                typer.echo(f"Imported {result.added} sample(s), skipped {result.duplicates} duplicate(s)")
