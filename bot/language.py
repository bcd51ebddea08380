"""Which language one Slack user reads (issue 22): their Slack locale, else the workspace's.

Slack gives a user's locale only through ``users.info`` with ``include_locale`` (scope
``users:read``). It is looked up lazily — when the first string of a request is translated,
which for clicks is after the ack — and cached per user for an hour, so a click never waits
for it twice. A failed lookup (missing scope, Slack down) falls back to ``ui.language``.

What one user sees alone follows their locale: modals, ephemeral notices, App Home,
``/retrain`` and ``/reply`` answers. What a channel reads (review cards and their updates,
pipeline, canary and alarm messages, the weekly report) is in the workspace's language:
wrap it in ``with i18n.workspace():``.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from replyloop import i18n

log = logging.getLogger("replyloop.bot.language")

TTL_SECONDS = 3600.0


class UserLanguages:
    """user id -> language from Slack's locale, cached (``ui.per_user_locale``)."""

    def __init__(self, client, enabled: bool = True, ttl: float = TTL_SECONDS):
        self.client, self.enabled, self.ttl = client, enabled, ttl
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()
        self._warned = False

    def lookup(self, user_id: str | None) -> str | None:
        """The user's language, or None (then the workspace's applies)."""
        if not (self.enabled and user_id):
            return None
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(user_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = None
        try:
            resp = self.client.users_info(user=user_id, include_locale=True)
            found = i18n.normalize((resp.get("user") or {}).get("locale"))
        except Exception as exc:  # missing users:read, rate limit, Slack unreachable: the workspace default
            if not self._warned:
                self._warned = True
                log.warning("users.info failed (%s): the workspace language (ui.language) is used", exc)
        with self._lock:
            self._cache[user_id] = (found, now + self.ttl)
        return found

    def lazy(self, user_id: str | None):
        """A language resolved on first use (for ``i18n.language``)."""
        return i18n.Lazy(lambda: self.lookup(user_id))


def user_of(body: dict) -> str | None:
    """The acting user of a Slack request body: interactive payloads, slash commands, events."""
    user = body.get("user")
    if isinstance(user, dict):
        return user.get("id")
    if isinstance(user, str):
        return user
    event = body.get("event")
    if isinstance(event, dict) and isinstance(event.get("user"), str):
        return event["user"]
    return body.get("user_id")


class ContextExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in a copy of the submitter's context (the request's language
    and log fields reach bolt's listener threads)."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def speaks(bot, user_id: str | None):
    """``with speaks(bot, user):`` translate for that Slack user inside the block (their locale,
    looked up on first use, else ``ui.language``). ``_App.dispatch`` (bot/app.py) already wraps
    every request so; this names the user explicitly where a listener's text is for them."""
    languages = getattr(bot, "languages", None)
    return i18n.language(languages.lazy(user_id) if languages is not None else None)
