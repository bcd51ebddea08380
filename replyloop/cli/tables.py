"""Tables for the terminal that never cut a cell.

``print_table(columns, rows)`` draws a rich table when every cell fits whole in the terminal's
width (``COLUMNS`` or the terminal; 80 off a terminal); otherwise it prints one record per
block, each value whole on its own ``name: value`` line (the terminal wraps long ones). An id,
a model name, a hash or a rewritten text is therefore never shown as ``rl-202…``.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape


def table_that_fits(columns: Sequence[str], rows: Sequence[Sequence[object]], console,
                    justify_right: Sequence[str] = (), styles: dict[int, str] | None = None):
    """A rich Table of ``rows`` when it fits whole in ``console.width``, else None. ``styles``
    maps a row index to a rich style for that row."""
    from rich.table import Table

    table = Table()
    for name in columns:
        table.add_column(name, no_wrap=True, justify="right" if name in justify_right else "left")
    for i, row in enumerate(rows):
        table.add_row(*(escape(_cell(v)) for v in row), style=(styles or {}).get(i))
    if console.measure(table, options=console.options.update_width(10**6)).maximum <= console.width:
        return table
    return None


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def print_records(lines: Sequence[str], console) -> None:
    """Lines printed as they are (no markup), wrapped by the terminal, never cut."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]], console=None,
                justify_right: Sequence[str] = ()) -> str:
    """Print ``rows`` (one value per column; None or "" for an empty cell) as a table when it
    fits, else one record per block (``column value`` then ``  column: value`` lines). Returns
    the mode used, "table" or "records"."""
    from rich.console import Console

    console = console or Console()
    table = table_that_fits(columns, rows, console, justify_right)
    if table is not None:
        console.print(table)
        return "table"
    lines: list[str] = []
    for i, row in enumerate(rows):
        if i:
            lines.append("")
        (head, first), *rest = zip(columns, map(_cell, row))
        lines.append(f"{head} {first}")
        lines.extend(f"  {name}: {value}" for name, value in rest if value != "")
    print_records(lines, console)
    return "records"


def _plain_inline(text: str) -> str:
    """Markdown emphasis and code marks dropped (``**all**`` -> ``all``, `` `hash` `` -> ``hash``)."""
    return text.replace("**", "").replace("`", "")


def print_markdown(markdown: str, console=None) -> None:
    """A Markdown summary (an evaluation's, written for Slack and files) for the terminal: headings
    and emphasis as plain text, each pipe table through ``print_table`` (whole cells, or one record
    per block when it does not fit). Only the Markdown replyloop itself writes is expected."""
    from rich.console import Console

    console = console or Console()
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([_plain_inline(c.strip()) for c in lines[i].strip().strip("|").split("|")])
                i += 1
            header, rows = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            print_table(header, rows, console)
            continue
        text = line.lstrip("#").strip() if line.startswith("#") else line
        print_records([_plain_inline(text)], console)
        i += 1
