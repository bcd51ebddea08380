"""Logs that never print a token: every record is formatted, then Slack-token-shaped strings
(``xoxb-…``, ``xapp-…``) and the configured secrets are replaced by ``[redacted]``.

The filter sits on the handlers (a logger's own filters do not see the records of its
children: ``bot.review``, ``bot.intake``, ``slack_bolt.App``…), so whatever logger a record
comes from, it is redacted before it is written."""

from __future__ import annotations

import logging
import re

from replyloop.config import Secrets

TOKEN_RE = re.compile(r"\bx(?:ox[abposre]|app)-[A-Za-z0-9-]+")
REDACTED = "[redacted]"


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Secrets | None = None):
        super().__init__()
        values = []
        if secrets is not None:
            values = [secrets.slack_bot_token, secrets.slack_app_token, secrets.slack_signing_secret,
                      secrets.intake_token]
        self.values = sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return TOKEN_RE.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error path
            return True
        clean = self.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def _handlers() -> list[logging.Handler]:
    """Every handler now configured: the root's, each logger's, and logging's last resort."""
    handlers = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        handlers.extend(getattr(logger, "handlers", ()))
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    return handlers


def _replace_filter(target: logging.Filterer, new: RedactingFilter) -> None:
    for f in list(target.filters):
        if isinstance(f, RedactingFilter):
            target.removeFilter(f)
    target.addFilter(new)


def install_redaction(secrets: Secrets | None) -> RedactingFilter:
    """Attach one redacting filter (for ``secrets``) to every handler configured now (call it
    after logging is configured). A later call keeps redacting the secrets of earlier ones
    (a client built without secrets must not undo the bot's redaction)."""
    handlers = set(_handlers())
    redactor = RedactingFilter(secrets)
    known = {v for h in handlers for f in h.filters if isinstance(f, RedactingFilter) for v in f.values}
    redactor.values = sorted(known | set(redactor.values), key=len, reverse=True)
    for handler in handlers:
        _replace_filter(handler, redactor)
    return redactor


def redacting_logger(name: str, secrets: Secrets | None) -> logging.Logger:
    """``logging.getLogger(name)``, for a library that is given a logger (bolt, slack_sdk), with
    redaction on that logger and on every handler (``install_redaction``)."""
    logger = logging.getLogger(name)
    redactor = install_redaction(secrets)
    _replace_filter(logger, redactor)
    return logger
