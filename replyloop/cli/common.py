"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from replyloop.config import Config, load_config
from replyloop.i18n import N_, _, fmt_datetime, fmt_number, fmt_percent
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


# -- i18n22: words and numbers people read in the terminal (README "Language") --------------------
# Stored values (a model's status, a verdict, a state) stay English in --json; the terminal shows
# them in the process's language. Unknown values are shown as they are.
WORDS = {
    # model status
    "candidate": N_("candidate"), "canary": N_("canary"), "champion": N_("champion"),
    "retired": N_("retired"), "rejected": N_("rejected"),
    # policy verdicts and severities
    "block": N_("block"), "warn": N_("warn"), "pass": N_("pass"),
    # outbox states
    "pending": N_("pending"), "delivered": N_("delivered"), "dead": N_("dead"),
    # automation states and pins
    "manual": N_("manual"), "automatic": N_("automatic"), "revoked": N_("revoked"), "allowed": N_("allowed"),
    # rule proposal status
    "open": N_("open"), "accepted": N_("accepted"), "dismissed": N_("dismissed"),
    # kinds of personal data masked by an export
    "phone": N_("phone"), "email": N_("email"), "id_card": N_("id_card"), "order": N_("order"),
    # drift check status
    "ok": N_("ok"), "alarm": N_("alarm"), "skipped": N_("skipped"),
}


def word(value) -> str:
    """A stored status / verdict / state word in the display language."""
    msgid = WORDS.get(value) if isinstance(value, str) else None
    return _(msgid) if msgid else ("" if value is None else str(value))


def num(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A score for people (``0.466``, ``+0.012``); ``–`` when there is none."""
    if value is None:
        return "–"
    text = fmt_number(value, digits)
    return "+" + text if signed and value >= 0 else text


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage (``42.4%``); ``–`` when there is none."""
    return "–" if value is None else fmt_percent(value, digits)


def pp(value: float | None) -> str:
    """A change of a share in percentage points (``+1.2 pp`` / ``+1.2 个百分点``)."""
    if value is None:
        return "–"
    text = fmt_number(value * 100, 1)
    return _("{change} pp").format(change="+" + text if value >= 0 else text)


def when(value, tz: str | None = None) -> str:
    """A stored ISO timestamp for people, in the workspace's timezone (``scheduler.timezone``) and
    the locale's words; "" for none, the text as it is when it is not a timestamp."""
    if not value:
        return ""
    from replyloop.timeutil import parse

    try:
        moment = parse(str(value))
    except ValueError:
        return str(value)
    return fmt_datetime(moment, tz)


def workspace_language(config_path: Optional[Path] = None) -> None:
    """For a command that does not need the workspace (``train``, ``check --policies``): speak the
    workspace's ``ui.language`` when there is a readable config; without one, the default."""
    from replyloop.errors import ReplyloopError

    try:
        load_config(config_path)
    except ReplyloopError:
        pass  # no workspace, or a broken config: the commands that use it report that
