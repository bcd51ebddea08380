"""The one way replyloop builds a Slack Web API client (the bot, the pipeline's notifier, the
weekly report): base URL from the config, token from the environment, a logger that never
prints a token, and retries on 429 (honouring Retry-After), 5xx and connection errors.

Every call the client makes is counted in its ``health`` (``SlackHealth``): failures by method,
the failures since the last success and the last error. ``GET /health`` reports Slack as
degraded from it, and ``GET /metrics`` exports the counts (``bot.metrics``).

Start-up checks (``replyloop serve``): ``verify_token`` (``auth.test``: a rejected token is a
``ConfigError``, exit 2; an unreachable Slack is ``SlackUnreachable``, which serve retries) and
``resolve_channels`` (channel names to ids with ``conversations.list``)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from replyloop.config import Config, Secrets
from replyloop.errors import ConfigError

# what Slack answers auth.test (or any method) with when the token itself is wrong
REJECTED_TOKEN_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                                   "token_expired", "not_allowed_token_type", "no_permission"})
CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,}")  # public (C) and old private (G) channel ids


class SlackUnreachable(Exception):
    """Slack could not be reached (connection refused, DNS, timeout, 5xx after the retries)"""


@dataclass
class SlackHealth:
    """What the Web API calls of one client have been answering (thread-safe)."""

    calls: dict[str, int] = field(default_factory=dict)     # method -> calls
    errors: dict[str, int] = field(default_factory=dict)    # method -> failed calls
    consecutive_failures: int = 0                           # since the last call that succeeded
    last_error: str | None = None
    last_error_method: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self, method: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.consecutive_failures = 0
            self.last_ok_at = time.time()

    def failed(self, method: str, error: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.errors[method] = self.errors.get(method, 0) + 1
            self.consecutive_failures += 1
            self.last_error, self.last_error_method, self.last_error_at = error, method, time.time()

    def snapshot(self) -> dict:
        """``{"state": "ok" | "degraded", "failures": ..., "consecutive_failures": ..., "last_error": ...}``:
        degraded while the latest calls failed (until one succeeds)."""
        with self._lock:
            out = {"state": "degraded" if self.consecutive_failures else "ok",
                   "failures": sum(self.errors.values()), "consecutive_failures": self.consecutive_failures}
            if self.last_error is not None:
                out["last_error"] = f"{self.last_error_method}: {self.last_error}"
                out["last_error_at"] = _iso(self.last_error_at)
            return out

    def errors_by_method(self) -> dict[str, int]:
        with self._lock:
            return dict(self.errors)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def slack_error(exc: Exception) -> str:
    """Slack's error code (``channel_not_found``) when it answered, else the exception."""
    response = getattr(exc, "response", None)
    try:
        return str(response.get("error")) if response is not None and response.get("error") else str(exc)
    except Exception:
        return str(exc)


def _client_class():
    from slack_sdk import WebClient

    from replyloop.bot.keepalive import KeptAlive

    class TrackedWebClient(WebClient):
        """slack_sdk's WebClient counting every call's outcome in ``self.health``, its calls sent
        over kept-alive connections (``bot.keepalive``)."""

        health: SlackHealth

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.connections = KeptAlive(self.timeout, self.ssl)

        def _perform_urllib_http_request_internal(self, url, req):
            if self.proxy is not None or not url.lower().startswith(("http://", "https://")):
                return super()._perform_urllib_http_request_internal(url, req)
            self.connections.timeout, self.connections.context = self.timeout, self.ssl  # read per call, as urlopen
            return self.connections.send(url, req)

        def close(self) -> None:
            self.connections.close()

        def api_call(self, api_method: str, **kwargs):
            try:
                response = super().api_call(api_method, **kwargs)
            except Exception as exc:
                self.health.failed(api_method, _describe(exc))
                raise
            self.health.ok(api_method)
            return response

    return TrackedWebClient


def _describe(exc: Exception) -> str:
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        return slack_error(exc)
    return f"unreachable ({type(exc).__name__}: {exc})"


def web_client(config: Config, secrets: Secrets | None = None, max_retries: int = 3,
               health: SlackHealth | None = None, logger_name: str = "bot.slack_sdk"):
    """``max_retries=0``: no retries at all (slack_sdk's default connection retry removed too)."""
    from slack_sdk.http_retry.builtin_handlers import (
        ConnectionErrorRetryHandler,
        RateLimitErrorRetryHandler,
        ServerErrorRetryHandler,
    )

    from replyloop.bot.logs import redacting_logger

    secrets = secrets or Secrets.from_env()
    if not secrets.slack_bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is not set (the bot's xoxb- token)")
    base = config.file.slack.api_base_url
    client = _client_class()(token=secrets.slack_bot_token, base_url=base if base.endswith("/") else base + "/",
                             timeout=30, logger=redacting_logger(logger_name, secrets))
    client.health = health or SlackHealth()
    if max_retries <= 0:
        client.retry_handlers.clear()
        return client
    client.retry_handlers.extend([
        RateLimitErrorRetryHandler(max_retry_count=max_retries),
        ServerErrorRetryHandler(max_retry_count=max_retries),
        ConnectionErrorRetryHandler(max_retry_count=max_retries),
    ])
    return client


def health_of(client) -> SlackHealth | None:
    return getattr(client, "health", None)


def verify_token(client) -> dict:
    """``auth.test``: the bot's identity (``user_id``, ``team``...). Raises ConfigError for a
    token Slack rejects, SlackUnreachable when Slack does not answer (or answers 5xx)."""
    from slack_sdk.errors import SlackApiError

    try:
        return dict(client.auth_test().data)
    except SlackApiError as exc:
        error = slack_error(exc)
        status = getattr(exc.response, "status_code", 200)
        if error in REJECTED_TOKEN_ERRORS:
            raise ConfigError(f"Slack rejected SLACK_BOT_TOKEN: auth.test answered {error!r} (copy the Bot User "
                              "OAuth Token, xoxb-..., from OAuth & Permissions; reinstall the app if it was "
                              "revoked)") from None
        if status >= 500 or error in ("fatal_error", "internal_error", "service_unavailable", "ratelimited"):
            raise SlackUnreachable(f"auth.test answered {error!r} (HTTP {status})") from None
        raise ConfigError(f"auth.test answered {error!r}: the bot token cannot be used") from None
    except Exception as exc:  # connection refused, DNS, timeout (after the client's retries)
        raise SlackUnreachable(f"{type(exc).__name__}: {exc}") from None


# -- channel names -> ids ---------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    is_member: bool
    is_private: bool


def _list_channels(client) -> list[Channel]:
    """Every channel the bot can see (public, and private ones it is in), all pages."""
    out: list[Channel] = []
    cursor = None
    while True:
        resp = client.conversations_list(types="public_channel,private_channel", exclude_archived=True,
                                         limit=1000, cursor=cursor)
        for c in resp.get("channels") or []:
            out.append(Channel(c.get("id", ""), c.get("name", ""), bool(c.get("is_member")),
                               bool(c.get("is_private"))))
        cursor = ((resp.get("response_metadata") or {}).get("next_cursor")) or None
        if not cursor:
            return out


def _scope_error(error: str) -> ConfigError:
    return ConfigError(f"looking up the channels answered {error!r}: add channels:read and groups:read to the "
                       "app's bot scopes (bot/manifest.yaml) and reinstall it")


# the channels the config names; the bot must be in each (to post without chat:write.public, to
# upload the report's charts, to receive the intake channel's messages)
CHANNEL_KEYS = ("review_channel", "report_channel", "intake_channel")


def resolve_channels(config: Config, client) -> dict[str, Channel]:
    """Look up ``slack.review_channel``, ``report_channel`` and ``intake_channel`` (ids with
    ``conversations.info``; names, with or without ``#``, with one ``conversations.list``;
    public or private) and replace names by ids in ``config``. Raises ConfigError naming every key whose channel is not found or does
    not have the bot in it. Other Slack errors propagate (serve retries)."""
    from slack_sdk.errors import SlackApiError

    slack = config.file.slack
    wanted = {key: getattr(slack, key).strip().lstrip("#") for key in CHANNEL_KEYS if getattr(slack, key).strip()}
    if not wanted:
        return {}
    found: dict[str, Channel] = {}
    problems = []
    names = {key: value for key, value in wanted.items() if not CHANNEL_ID.fullmatch(value)}
    for key, value in wanted.items():  # an id: conversations.info (is the bot in it?)
        if key in names:
            continue
        try:
            info = client.conversations_info(channel=value).get("channel") or {}
        except SlackApiError as exc:
            error = slack_error(exc)
            if error != "channel_not_found":
                raise _scope_error(error) if error == "missing_scope" else exc
            problems.append(f"slack.{key}: channel {value!r} not found (a private channel is visible only once "
                            "the bot is in it: /invite @replyloop there)")
            continue
        channel = Channel(value, str(info.get("name") or value), bool(info.get("is_member")),
                          bool(info.get("is_private")))
        if not channel.is_member:
            problems.append(f"slack.{key}: the bot is not in #{channel.name} ({channel.id}): /invite @replyloop there")
            continue
        found[key] = channel
    if names:  # names: one conversations.list (all pages)
        try:
            by_name = {c.name: c for c in _list_channels(client)}
        except SlackApiError as exc:
            error = slack_error(exc)
            raise _scope_error(error) if error == "missing_scope" else exc
        for key, value in names.items():
            channel = by_name.get(value)
            if channel is None:
                problems.append(f"slack.{key}: channel {value!r} not found (a private channel is listed only "
                                "once the bot is in it: /invite @replyloop there)")
            elif not channel.is_member:
                problems.append(f"slack.{key}: the bot is not in #{channel.name} ({channel.id}): "
                                "/invite @replyloop there")
            else:
                found[key] = channel
    if problems:
        raise ConfigError("; ".join(problems))
    for key, channel in found.items():
        setattr(slack, key, channel.id)
    return found
