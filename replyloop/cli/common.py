"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from replyloop.config import Config, load_config
from replyloop.store import Store

console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(
    None, "--config", "-c", help="Workspace config file (default: $REPLYLOOP_HOME/replyloop.yaml or ./replyloop.yaml)."
)
JsonOption = typer.Option(False, "--json", help="Machine-readable JSON output.")


def workspace(config_path: Optional[Path]) -> tuple[Config, Store]:
    """Load the config and open (and migrate) the store it names."""
    config = load_config(config_path)
    return config, Store(config.db_path)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))
