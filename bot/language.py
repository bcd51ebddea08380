"""Which language one Slack user reads (issue 22): their Slack locale, else the workspace's.

Slack gives a user's locale only through ``users.info`` with ``include_locale`` (scope
``users:read``). It is looked up lazily — when the first string of a request is translated,
which for clicks is after the ack — and cached per user for an hour, so a click never waits
for it twice. A failed lookup (missing scope, Slack down, rate-limited,
slower than 2 s) falls back to ``ui.language`` at once — no retries, since an edit modal waits for it and Slack
expires its trigger_id after 3 s — and is tried again after 5 minutes (after Retry-After, for
all users, when Slack rate-limited it).

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
FAILED_TTL_SECONDS = 300.0  # a failed lookup is tried again after 5 minutes, not after the hour
LOOKUP_TIMEOUT_S = 2.0  # an edit modal waits for the lookup: views.open must come within 3 s of the click


def _lookup_client(client, timeout: float):
    """A client for ``users.info`` alone: a short timeout and no retries. The bot's client retries a
    429 after its Retry-After and a 500 with backoff (a minute in all), which is right for a card
    update but would make a modal open long after its trigger_id expired (3 s)."""
    try:
        from slack_sdk import WebClient
    except ImportError:  # pragma: no cover - slack_sdk is a dependency
        return client
    if not isinstance(client, WebClient):
        return client
    return WebClient(token=client.token, base_url=client.base_url, timeout=timeout,  # type: ignore[arg-type]
                     ssl=client.ssl, proxy=client.proxy, headers=dict(client.headers or {}),
                     logger=getattr(client, "_logger", None), retry_handlers=[])


class UserLanguages:
    """user id -> language from Slack's locale, cached (``ui.per_user_locale``)."""

    def __init__(self, client, enabled: bool = True, ttl: float = TTL_SECONDS, timeout: float = LOOKUP_TIMEOUT_S):
        self.client, self.enabled, self.ttl = _lookup_client(client, timeout), enabled, ttl
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()
        self._warned = False
        self._paused_until = 0.0  # Slack rate-limited users.info: no lookups (the workspace's language) until then

    def lookup(self, user_id: str | None) -> str | None:
        """The user's language, or None (then the workspace's applies)."""
        if not (self.enabled and user_id):
            return None
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(user_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        if now < self._paused_until:
            return None
        found, ttl = None, self.ttl
        try:
            resp = self.client.users_info(user=user_id, include_locale=True)
            found = i18n.normalize((resp.get("user") or {}).get("locale"))
        except Exception as exc:  # missing users:read, rate limit, timeout, Slack down: the workspace default
            ttl = min(self.ttl, FAILED_TTL_SECONDS)
            response = getattr(exc, "response", None)
            if getattr(response, "status_code", None) == 429:
                try:
                    wait = float((response.headers or {}).get("Retry-After") or (response.headers or {}).get(
                        "retry-after") or 60)
                except (TypeError, ValueError):
                    wait = 60.0
                self._paused_until = time.monotonic() + min(max(wait, 1.0), FAILED_TTL_SECONDS)
            if not self._warned:
                self._warned = True
                log.warning("users.info failed (%s): the workspace language (ui.language) is used", exc)
        with self._lock:
            self._cache[user_id] = (found, now + ttl)
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
