"""The one way replyloop builds a Slack Web API client (the bot, the pipeline's notifier, the
weekly report): base URL from the config, token from the environment, a logger that never
prints a token, and retries on 429 (honouring Retry-After), 5xx and connection errors."""

from __future__ import annotations

from replyloop.config import Config, Secrets
from replyloop.errors import ConfigError


def web_client(config: Config, secrets: Secrets | None = None, max_retries: int = 3):
    from slack_sdk import WebClient
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
    client = WebClient(token=secrets.slack_bot_token, base_url=base if base.endswith("/") else base + "/",
                       timeout=30, logger=redacting_logger("bot.slack_sdk", secrets))
    client.retry_handlers.extend([
        RateLimitErrorRetryHandler(max_retry_count=max_retries),
        ServerErrorRetryHandler(max_retry_count=max_retries),
        ConnectionErrorRetryHandler(max_retry_count=max_retries),
    ])
    return client


def slack_error(exc: Exception) -> str:
    """Slack's error code (``channel_not_found``) when it answered, else the exception."""
    response = getattr(exc, "response", None)
    try:
        return str(response.get("error")) if response is not None and response.get("error") else str(exc)
    except Exception:
        return str(exc)
