"""Logs that never print a token: every record is formatted, then Slack-token-shaped strings
(``xoxb-…``, ``xapp-…``) and the configured secrets are replaced by ``[redacted]``.

The filter sits on the handlers (a logger's own filters do not see the records of its
children: ``bot.review``, ``bot.intake``, ``slack_bolt.App``…), so whatever logger a record
comes from, it is redacted before it is written.

Formats (``logging.format`` in replyloop.yaml; ``configure_logging``): one line per record,

    text    2026-12-02 01:02:03,456 WARNING bot.review: posting the card failed: invalid_auth draft_id=12
    logfmt  ts=2026-12-02T01:02:03.456Z level=warning logger=bot.review msg="posting the card failed: invalid_auth" draft_id=12
    json    {"ts": "2026-12-02T01:02:03.456Z", "level": "warning", "logger": "bot.review", "msg": "...", "draft_id": 12}

``draft_id`` and ``run_id`` (``FIELDS``) come from ``extra={"draft_id": ...}`` on the call or
from ``log_fields(draft_id=...)`` around the work. In logfmt and json a traceback is folded
into the one line (``exc=``); in text it follows on the next lines, as Python prints it."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from datetime import datetime, timezone

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


# -- structured one-line logs ------------------------------------------------------------------

FIELDS = ("draft_id", "run_id")
FORMATS = ("text", "logfmt", "json")
_fields: contextvars.ContextVar[dict] = contextvars.ContextVar("replyloop_log_fields", default={})


@contextlib.contextmanager
def log_fields(**fields):
    """Put ``draft_id=`` / ``run_id=`` on every log line written inside the block (this thread or
    task; ``Bot.after_ack`` carries them to the work pool). ``None`` values are left out."""
    token = _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


def record_fields(record: logging.LogRecord) -> dict:
    """The id fields of a record: its ``extra=`` first, then the enclosing ``log_fields``."""
    out = dict(_fields.get())
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    return {k: out[k] for k in FIELDS if k in out}


def _utc(record: logging.LogRecord) -> str:
    t = datetime.fromtimestamp(record.created, timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _logfmt_value(value) -> str:
    text = str(value)
    if text and not re.search(r'[\s"=\\]', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class TextFormatter(logging.Formatter):
    """The classic format, with the id fields appended (``draft_id=12``)."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = record_fields(record)
        return line + "".join(f" {k}={v}" for k, v in fields.items())


def _parts(formatter: logging.Formatter, record: logging.LogRecord) -> dict:
    """One record's fields for a structured line: ts, level, logger, msg, its draft_id / run_id, exc."""
    parts = {"ts": _utc(record), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage(), **record_fields(record)}
    exc = _exception_text(formatter, record)
    if exc:
        parts["exc"] = exc
    return parts


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _parts(self, record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_parts(self, record), ensure_ascii=False, default=str)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


def formatter(name: str) -> logging.Formatter:
    return {"text": TextFormatter, "logfmt": LogfmtFormatter, "json": JsonFormatter}[name]()


def configure_logging(fmt: str = "text", level: int = logging.INFO, stream=None) -> logging.Handler:
    """One stderr handler on the root logger in ``fmt`` (text | logfmt | json), replacing the
    root's handlers; the redaction filters of earlier ``install_redaction`` calls stay on."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    known = {v for h in _handlers() for f in h.filters if isinstance(f, RedactingFilter) for v in f.values}
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    redactor = RedactingFilter()
    redactor.values = sorted(known, key=len, reverse=True)
    handler.addFilter(redactor)
    return handler


class _DropMessage(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.message


def drop_message(logger: logging.Logger, message: str) -> None:
    """Never log ``message`` (exactly) on ``logger``: a library's warning that says nothing here."""
    if not any(isinstance(f, _DropMessage) and f.message == message for f in logger.filters):
        logger.addFilter(_DropMessage(message))
