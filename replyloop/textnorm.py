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


def dedupe_key(prompt: str, response: str) -> str:
    """Two samples are duplicates when prompt and response match after ``normalize``."""
    return sha256(normalize(prompt) + "\x1f" + normalize(response))
