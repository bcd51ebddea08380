"""Loggers that never print a token: every record is formatted, then Slack-token-shaped strings
(``xoxb-…``, ``xapp-…``) and the configured secrets are replaced by ``[redacted]``."""

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


def redacting_logger(name: str, secrets: Secrets | None) -> logging.Logger:
    """``logging.getLogger(name)`` with a redacting filter attached (once)."""
    logger = logging.getLogger(name)
    for f in list(logger.filters):
        if isinstance(f, RedactingFilter):
            logger.removeFilter(f)
    logger.addFilter(RedactingFilter(secrets))
    return logger
