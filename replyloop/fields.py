"""Length and character limits of every field that enters the store from outside: customer
questions (HTTP ``/intake``, ``data import --as-questions``) and samples (``data import``).

One set of rules for every entry point, so a value refused by one is refused by all. A bad
value raises ``FieldError`` naming the field (``.field``); readers add the file and line
(``.where``), the HTTP intake answers 400 with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from replyloop.errors import FieldError

# the longest value of each field, in characters
MAX_LENGTH = {
    "conversation_id": 200,
    "question": 4000,
    "prompt": 4000,
    "draft": 8000,
    "response": 8000,
    "category": 64,
    "intent": 64,
}
TEXT_FIELDS = ("question", "prompt", "draft", "response")  # free text: tabs and line breaks allowed
LABEL_FIELDS = ("category", "intent")                    # short labels from a safe character set
LABEL_PUNCTUATION = " -_.&+()·、（）"
MAX_INT_DIGITS = 200  # a conversation_id may come as a JSON integer; a 5000-digit one is refused

# controls (C0 but tab / LF / CR, and DEL) and lone surrogates (a JSON "\ud800"): never stored
_BAD_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# in one-line values also tab, line breaks, C1 controls (NEL) and the Unicode line / paragraph separators
_BAD_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# something visible: not whitespace, not a zero-width / invisible formatting character
_VISIBLE = re.compile(r"[^\s\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
                      r"\u2060-\u2064\u206a-\u206f\u3164\ufeff\uffa0]")
# the invisible characters of ``_VISIBLE`` that are not whitespace
_INVISIBLE = r"\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u206a-\u206f\u3164\ufeff\uffa0"
# text the import's column-wise check leaves to the row-by-row one: a refused character, or an
# invisible one (a value of only such characters is empty); without these, a value is empty
# exactly when ``str.strip`` leaves nothing (``\s`` and ``str.strip`` agree on whitespace)
_BAD_OR_INVISIBLE_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff" + _INVISIBLE + "]")
_LABEL = re.compile(r"[^\W_]|[" + re.escape(LABEL_PUNCTUATION) + r"]")
_LABEL_TEXT = re.compile(r"(?:[^\W_]|[" + re.escape(LABEL_PUNCTUATION) + r"])+")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _describe(ch: str) -> str:
    if "\ud800" <= ch <= "\udfff":
        return f"a lone surrogate (U+{ord(ch):04X}: not valid Unicode)"
    if ch == "\x00":
        return "a NUL character (U+0000)"
    if ch in "\u2028\u2029":
        return f"a line separator (U+{ord(ch):04X})"
    return f"a control character (U+{ord(ch):04X})"


def _rules(name: str) -> tuple[int | None, re.Pattern, bool]:
    return MAX_LENGTH.get(name), (_BAD_IN_TEXT if name in TEXT_FIELDS else _BAD_IN_LINE), name in LABEL_FIELDS


_RULES: dict[str, tuple[int | None, re.Pattern, bool]] = {}


def clean(name: str, value: object, required: bool = False) -> str | None:
    """``value`` of the field ``name`` checked and trimmed: a string within the field's length and
    character limits (None for a missing or blank optional field). Raises FieldError."""
    if value is None or value == "":
        if required:
            raise FieldError(name, f"empty {name}")
        return None
    rules = _RULES.get(name)
    if rules is None:
        rules = _RULES[name] = _rules(name)
    limit, bad_chars, label = rules
    if type(value) is not str:
        if name == "conversation_id" and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 10 ** MAX_INT_DIGITS:  # before str(): a huge int would be slow or refused
                raise FieldError(name, f"{name} is a number of more than {MAX_INT_DIGITS} digits")
            value = str(value)
        elif isinstance(value, str):
            value = str(value)
        else:
            raise FieldError(name, f"{name} must be a string, not {_kind(value)}")
    if limit is not None and len(value) > limit * 2:  # far too long: refuse before scanning it
        raise FieldError(name, f"{name} is longer than {limit} characters ({len(value)})")
    bad = bad_chars.search(value)
    if bad:
        raise FieldError(name, f"{name} contains {_describe(bad.group())} at character {bad.start() + 1}")
    value = value.strip()
    if not _VISIBLE.search(value):
        if required or value:  # only zero-width / invisible characters is empty too
            raise FieldError(name, f"empty {name}" + (" (only invisible characters)" if value else ""))
        return None
    if limit is not None and len(value) > limit:
        raise FieldError(name, f"{name} is longer than {limit} characters ({len(value)})")
    if label and (not _LABEL_TEXT.fullmatch(value) or not value.strip(".")):
        odd = next((ch for ch in value if not _LABEL.match(ch)), None)
        raise FieldError(name, f"{name} may hold only letters, digits, spaces and "
                               f"{' '.join(LABEL_PUNCTUATION.strip())}"
                               + (f" (found {odd!r})" if odd else " (not only dots)"))
    return value


def unknown_fields(data: Mapping, allowed: tuple[str, ...]) -> None:
    """Refuse keys outside ``allowed`` (the HTTP intake: a typo must not be dropped silently)."""
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise FieldError(unknown[0], f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
