"""Read a UTF-8 text file (a BOM is allowed) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from replyloop.errors import DataFormatError


def read_bytes(path: Path, error: type[Exception] = DataFormatError) -> bytes:
    """The file's bytes; a missing or unreadable file or a directory raises ``error`` naming ``path``."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a file") from None
    except OSError as exc:  # permission denied, a path through a file, ...
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_utf8(path: Path, error: type[Exception] = DataFormatError) -> str:
    """The file's text; a missing or unreadable file, a directory or non-UTF-8 bytes raise
    ``error`` naming ``path``."""
    try:
        return read_bytes(path, error).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason})") from None
