"""CSV cells that a spreadsheet cannot run as a formula (CSV / formula injection).

Customers write the prompts (through ``/intake``), so an exported cell may begin with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return: ``=HYPERLINK(...)``, ``-2+3+cmd|' /C calc'!A0``.
Excel, LibreOffice and Google Sheets run such a cell as a formula. Following OWASP, such a
cell is written with a leading single quote (``'=HYPERLINK(...)``), which spreadsheets show
as text; ``defusedcsv`` does it for ``= + - @ | %`` (and escapes ``|`` inside those cells as
``\\|``); tab and carriage return are added here. Plain numbers (``-12.5``) are left alone.

``unescape`` undoes exactly that on import, so ``data export`` then ``data import`` gives back
the same text: a cell that begins with a single quote followed by one of those characters
loses the quote (a value that really begins with ``'=`` loses its quote too: export it with
``--raw-csv`` or as JSONL to keep it).
"""

from __future__ import annotations

import csv
from typing import Any, TextIO

from defusedcsv import csv as defusedcsv

# what defusedcsv prefixes (it also escapes "|" in those cells), and what we add to it
DEFUSED_FIRST = "=+-@|%"
EXTRA_FIRST = "\t\r"


def _quote_tab_cr(value: Any) -> Any:
    """The quote for a cell that begins with a tab or CR (defusedcsv handles the rest)."""
    if isinstance(value, str) and value and value[0] in EXTRA_FIRST:
        return "'" + value
    return value


def unescape(value: str) -> str:
    """A cell read back: the quote ``escape`` added is removed (see the module docstring)."""
    if len(value) > 1 and value[0] == "'":
        first = value[1]
        if first in EXTRA_FIRST:
            return value[1:]
        if first in DEFUSED_FIRST:
            return value[1:].replace("\\|", "|")
    return value


class _SafeWriter:
    def __init__(self, fh: TextIO, **fmtparams):
        self._writer = defusedcsv.writer(fh, **fmtparams)

    def writerow(self, row):
        return self._writer.writerow([_quote_tab_cr(v) for v in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def writer(fh: TextIO, safe: bool = True, **fmtparams):
    """``csv.writer(fh)``; with ``safe`` (the default) a cell that could run as a formula gets a
    leading single quote (module docstring)."""
    return _SafeWriter(fh, **fmtparams) if safe else csv.writer(fh, **fmtparams)
