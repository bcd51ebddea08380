"""The language people read: gettext catalogs, locale-aware numbers and dates (issue 22).

Every string a person reads is wrapped once, where it is displayed::

    from replyloop.i18n import _
    header = _("Review draft #{draft_id}").format(draft_id=draft_id)

The message ids are the English strings. ``python -m replyloop.i18n update`` extracts them
(Babel) into ``replyloop/locale/replyloop.pot`` and merges them into the Chinese catalog
``replyloop/locale/zh_CN/LC_MESSAGES/replyloop.po``; ``python -m replyloop.i18n compile``
writes the ``.mo`` file that ships as package data and that stdlib ``gettext`` reads.

Which language: the workspace's ``ui.language`` (``zh-CN`` in a new workspace, or ``en``),
replaced for the whole process by ``$REPLYLOOP_LANGUAGE`` when set, and for one Slack user
by that user's locale (``with language(user_locale): ...``) when ``ui.per_user_locale`` is on.
Machine formats (``--json``, CSV column names, log lines, metric names) are never translated.

Strings defined at import time (module constants) are marked with ``N_()`` and translated
with ``_()`` where they are shown.
"""

from __future__ import annotations

import gettext
import os
import string
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator

DOMAIN = "replyloop"
LOCALE_DIR = Path(__file__).with_name("locale")
ENV_VAR = "REPLYLOOP_LANGUAGE"

# the languages replyloop speaks: the ui.language value -> the gettext / Babel locale name
LANGUAGES = {"zh-CN": "zh_CN", "en": "en"}
DEFAULT_LANGUAGE = "zh-CN"

class Lazy:
    """A language found on first use (a Slack user's locale needs a Web API call), once."""

    def __init__(self, resolve):
        self._resolve, self._done, self._value = resolve, False, None
        self._lock = threading.Lock()

    @property
    def value(self) -> str | None:
        with self._lock:
            if not self._done:
                try:
                    self._value = normalize(self._resolve())
                finally:
                    self._done = True
            return self._value


_current: ContextVar["str | Lazy | None"] = ContextVar("replyloop_language", default=None)
_workspace_language: str = DEFAULT_LANGUAGE


def normalize(tag: str | None) -> str | None:
    """A language tag as Slack, a config or an environment spells it -> ``zh-CN``, ``en`` or None.

    ``zh``, ``zh_CN``, ``zh-Hans``, ``zh-TW`` (only Simplified Chinese is translated) -> ``zh-CN``;
    ``en``, ``en-US``, ``en_GB.UTF-8`` -> ``en``; anything else (``ja-JP``, ``""``) -> None.
    """
    if not tag:
        return None
    base = str(tag).strip().split(".")[0].replace("_", "-").lower()
    if base == "zh" or base.startswith("zh-"):
        return "zh-CN"
    if base == "en" or base.startswith("en-"):
        return "en"
    return None


def set_workspace_language(tag: str | None) -> None:
    """The process's language once a workspace config is loaded (``ui.language``)."""
    global _workspace_language
    _workspace_language = normalize(tag) or DEFAULT_LANGUAGE


def current_language() -> str:
    """The language of what is displayed now: a ``language()`` block, else ``$REPLYLOOP_LANGUAGE``,
    else the loaded workspace's ``ui.language``."""
    chosen = _current.get()
    if isinstance(chosen, Lazy):
        chosen = chosen.value
    return chosen or workspace_language()


def workspace_language() -> str:
    """``$REPLYLOOP_LANGUAGE``, else the loaded workspace's ``ui.language``: what a channel reads."""
    return normalize(os.environ.get(ENV_VAR)) or _workspace_language


@contextmanager
def language(tag: "str | Lazy | None") -> Iterator[None]:
    """Display in ``tag`` inside the block (a Slack user's locale, maybe ``Lazy``); an unknown
    or empty tag falls back to the workspace's language."""
    token = _current.set(tag if isinstance(tag, Lazy) else (normalize(tag) or current_language()))
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def workspace() -> Iterator[None]:
    """Display in the workspace's language inside the block (channel messages)."""
    with language(workspace_language()):
        yield


@lru_cache(maxsize=None)
def translations(lang: str) -> gettext.NullTranslations:
    """The catalog of a language; English is the message ids themselves. A missing compiled
    catalog is an error, not a silent fallback to English."""
    if lang == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[LANGUAGES[lang]])


def _(message: str) -> str:
    """The translation of ``message`` in the current language."""
    return translations(current_language()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(current_language()).ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    """``message`` in a context, for a word whose translation depends on where it is shown
    (``pgettext("check --fix", "fixed")``: 修正后, not 已修复)."""
    return translations(current_language()).pgettext(context, message)


def N_(message: str) -> str:
    """Mark a string for extraction without translating it (module constants)."""
    return message


def placeholders(text: str) -> set[str]:
    """The ``str.format`` field names in a message: a translation must keep exactly these."""
    names = set()
    for _literal, field, _spec, _conv in string.Formatter().parse(text):
        if field is not None:
            names.add(field)
    return names


# -- numbers, percentages, dates ------------------------------------------------------------------

def babel_locale(lang: str | None = None) -> str:
    return LANGUAGES[lang or current_language()]


def fmt_number(value: float | int, digits: int = 0) -> str:
    """A number with the locale's grouping, ``digits`` decimals."""
    from babel.numbers import format_decimal

    pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
    return format_decimal(value, format=pattern, locale=babel_locale())


def fmt_percent(value: float, digits: int = 0) -> str:
    """A share (0.42) as a percentage in the locale (42%)."""
    from babel.numbers import format_percent

    pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "") + "%"
    return format_percent(value, format=pattern, locale=babel_locale())


def _zone(tz: str | None):
    if not tz:
        return timezone.utc
    from zoneinfo import ZoneInfo

    return ZoneInfo(tz)


def fmt_datetime(value: datetime, tz: str | None = None, format: str = "medium") -> str:
    """A moment in the workspace's timezone (``scheduler.timezone``), in the locale's words.
    A naive datetime is taken as UTC."""
    from babel.dates import format_datetime

    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return format_datetime(value, format=format, tzinfo=_zone(tz), locale=babel_locale())


def fmt_date(value: date | datetime, tz: str | None = None, format: str = "medium") -> str:
    from babel.dates import format_date

    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(_zone(tz)).date()
    return format_date(value, format=format, locale=babel_locale())


def week_label(year: int, week: int) -> str:
    """An ISO week as people read it: ``2026-W49`` / ``2026年第49周``."""
    return _("{year}-W{week:02d}").format(year=year, week=week)
