"""Text normalisation shared by dedupe, snapshots and splits."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), case-folded, whitespace collapsed and trimmed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compact(text: str) -> str:
    """``normalize`` with all whitespace removed (``怎么 退货`` equals ``怎么退货``)."""
    return _SPACE.sub("", normalize(text))


def dedupe_key(prompt: str, response: str) -> str:
    """Two samples are duplicates when prompt and response match after ``compact``."""
    return sha256(compact(prompt) + "\x1f" + compact(response))
