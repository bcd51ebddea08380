"""CLI: ``replyloop init``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from replyloop import paths
from replyloop.config import load_config, write_default_config, write_training_template
from replyloop.i18n import _
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
            config = load_config(config_path)  # its ui.language: the words below are in it
            typer.echo(_("{path} already exists; keeping it (use --force to overwrite).").format(path=config_path))
        else:
            write_default_config(root, overwrite=force)
            config = load_config(config_path)
            typer.echo(_("Wrote {path}").format(path=config_path))
        written = write_training_template(config)
        if written is not None:
            typer.echo(_("Wrote {path}: set base_model there to a local model directory").format(path=written))
        else:
            typer.echo(_("{path} already exists; keeping it.").format(path=config.train_config_path))
        with Store(config.db_path) as store:
            typer.echo(_("Database {path} ready").format(path=config.db_path))
            if samples:
                from replyloop.dataio import read_samples

                result = store.add_samples(read_samples(paths.samples_dir() / "cs_samples.csv"), source="import")
                typer.echo(_("Imported {added} sample(s), skipped {duplicates} duplicate(s)").format(
                    added=result.added, duplicates=result.duplicates))
