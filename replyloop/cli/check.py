"""CLI: ``replyloop check`` -- run the policy rules on one reply or a JSONL file of replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from replyloop.cli.common import ConfigOption, JsonOption, console, word
from replyloop.i18n import _, pgettext


def _policies_dir(policies: Optional[Path], config: Optional[Path]) -> Path:
    """--policies, else the workspace's policies.dir when there is a workspace, else the shipped ones."""
    from replyloop import paths
    from replyloop.config import load_config

    if policies is not None:
        from replyloop.cli.common import workspace_language

        workspace_language(config)
        return policies
    if config is not None or paths.default_config_path().exists():
        return load_config(config).policies_dir
    return paths.default_policies_dir()


def read_replies(path: Path) -> list[tuple[str, str]]:
    """(id, text) from a JSONL file of ``{"id": ..., "text": ...}`` lines; DataFormatError names file:line."""
    from replyloop.dataio import jsonl_rows
    from replyloop.errors import DataFormatError
    from replyloop.textfile import read_utf8

    replies = []
    for number, obj in jsonl_rows(path, read_utf8(path), expected="an object with 'id' and 'text'"):
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataFormatError(_("{where}: 'text' must be a string").format(where=f"{path}:{number}"))
        reply_id = obj.get("id", number)
        if not isinstance(reply_id, (str, int)) or isinstance(reply_id, bool):
            raise DataFormatError(_("{where}: 'id' must be a string or an integer").format(where=f"{path}:{number}"))
        replies.append((reply_id, text))
    return replies


def _print_table(rows: list[dict]) -> None:
    """A table when every cell fits whole, else one block per reply: no rule name, message,
    match or fixed text is ever cut."""
    from replyloop.cli.tables import print_records, table_that_fits

    cells, styles = [], {}
    colour = {"block": "bold red", "warn": "yellow", "pass": "green"}
    for row in rows:
        rid = "-" if row["id"] is None else str(row["id"])
        styles[len(cells)] = colour[row["verdict"]]
        verdict = word(row["verdict"])
        if not row["violations"]:
            cells.append((rid, verdict, "", "", "", ""))
        for i, v in enumerate(row["violations"]):
            note = f"→ {v['suggestion']}" if v["suggestion"] else v["message"]
            cells.append((rid if i == 0 else "", verdict if i == 0 else "",
                          f"{v['rule']} ({word(v['severity'])})", f"{v['start']}-{v['end']}", v["match"], note))
        if row.get("fixed") is not None:
            cells.append(("", "", pgettext("check --fix", "fixed"), "", row["fixed"], ""))
    columns = (_("id"), _("verdict"), _("rule"), _("span"), _("match"), _("message / suggestion"))
    table = table_that_fits(columns, cells, console, styles=styles)
    if table is not None:
        console.print(table)
    else:
        lines: list[str] = []
        for row in rows:
            if lines:
                lines.append("")
            lines.append(_("reply {id}: {verdict}").format(id="-" if row["id"] is None else row["id"],
                                                            verdict=word(row["verdict"])))
            for v in row["violations"]:
                lines.append("  " + _("{rule} ({severity}) at {span} {match}: {message}").format(
                    rule=v["rule"], severity=word(v["severity"]), span=f"{v['start']}-{v['end']}",
                    match=repr(v["match"]), message=v["message"]))
                if v["suggestion"]:
                    lines.append(f"    → {v['suggestion']}")
            if row.get("fixed") is not None:
                lines.append("  " + _("fixed: {text}").format(text=row["fixed"]))
        print_records(lines, console)
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("block", "warn", "pass")}
    console.print(_("{count} reply(ies): {blocked} blocked, {warned} warned, {passed} passed").format(
        count=len(rows), blocked=counts["block"], warned=counts["warn"], passed=counts["pass"]), soft_wrap=True)


def check(
    text: Optional[str] = typer.Argument(None, help="The reply to check (or use --file)."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help='JSONL file of {"id": ..., "text": ...} lines.'),
    policies: Optional[Path] = typer.Option(None, "--policies", "-p",
                                            help="Policy directory (default: the workspace's policies.dir, else the shipped policies/)."),
    fix: bool = typer.Option(False, "--fix", help="Also print each reply with terminology rewritten to the preferred terms."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
):
    """Check replies against the banned-promise and terminology rules.

    Prints one verdict (block / warn / pass) per reply with its violations: a table, or JSON
    lines with --json. Exit code 1 when any reply is blocked, 0 otherwise, 2 on bad input.

    Example: replyloop check --json "我们保证全额赔付"
    """
    from replyloop.evaluation.policy import load_policies
    from replyloop.errors import DataFormatError

    directory = _policies_dir(policies, config)  # also the workspace's language, for what follows
    if (text is None) == (file is None):
        raise DataFormatError(_("give either TEXT or --file (exactly one)"))
    engine = load_policies(directory)
    replies = read_replies(file) if file is not None else [(None, text)]
    rows = []
    for reply_id, body in replies:
        row = {"id": reply_id, **engine.check(body).to_dict()}
        if fix:
            row["fixed"] = engine.fix(body)
        rows.append(row)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    else:
        _print_table(rows)
    if any(row["verdict"] == "block" for row in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
