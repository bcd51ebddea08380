"""Where replyloop keeps its workspace.

The workspace (config, database, adapters, reports) is the directory named by
``REPLYLOOP_HOME``; without it, the current directory. Tests point it at a temp dir.
"""

import os
from pathlib import Path

CONFIG_NAME = "replyloop.yaml"


def home() -> Path:
    """The workspace directory (``$REPLYLOOP_HOME`` or the current directory)."""
    value = os.environ.get("REPLYLOOP_HOME")
    return Path(value).expanduser().resolve() if value else Path.cwd()


def default_config_path() -> Path:
    return home() / CONFIG_NAME


def package_dir() -> Path:
    return Path(__file__).resolve().parent


def samples_dir() -> Path:
    return package_dir() / "samples"


def default_policies_dir() -> Path:
    from replyloop import policies
    return Path(policies.__file__).resolve().parent
