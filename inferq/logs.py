"""How inferq processes log: the usual text lines, or one JSON object a line (``INFERQ_LOG_FORMAT=json``); secrets
redacted in both, in the formatter, so that no path to the output (a message, its arguments, an exception's text
or traceback, a structured field) can carry one.

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``process``, and the structured
fields of the line: those bound for a stretch of work (`context`: a worker binds ``job_id`` and ``chunk`` while it
runs a chunk) and those a call passes in ``extra`` (a chunk's last line: ``model``, ``task``, ``queue``,
``outcome``, ``succeeded``, ``failed``, ``seconds``, ``mates``), plus ``exception`` with the traceback where there is
one. Any process can use it (`configure`); a worker installs it on the handlers Celery sets up (`use_format`).

Redacted (`redact`): the password of any URL (``redis://:***@host``, ``postgresql://user:***@host/db``), a
``password=`` pair of a connection string, API keys (``iq_***``) and webhook signing secrets (``whsec_***``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Literal

LogFormat = Literal["text", "json"]

#: What a secret becomes.
REDACTED = "***"

#: (pattern, replacement) pairs applied to every string that reaches the output.
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A URL's password: scheme://user:PASSWORD@host (the password may itself hold an unescaped '@').
    (re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s/]+(?=@)"), rf"\g<head>{REDACTED}"),
    # A libpq-style connection string's password=... (or password: ...).
    (
        re.compile(r"(?P<head>\bpassword\s*[=:]\s*)(?:'[^']*'|\"[^\"]*\"|[^\s,;&]+)", re.IGNORECASE),
        rf"\g<head>{REDACTED}",
    ),
    # API keys (iq_<id>_<secret>) and Standard Webhooks signing secrets (whsec_<base64>).
    (re.compile(r"\biq_[A-Za-z0-9_\-]{8,}"), f"iq_{REDACTED}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_\-]+"), f"whsec_{REDACTED}"),
)

#: The attributes every `logging.LogRecord` has: anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

#: The fields bound to the current stretch of work (`context`).
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "inferq_log_context", default=MappingProxyType({})
)


def redact(text: str) -> str:
    """``text`` without the secrets it held (see the module's docstring)."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every line logged in this block (in this thread or task): ``job_id``, ``chunk`` …"""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module's docstring), secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        entry.update(_context.get())
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(_redacted(entry), ensure_ascii=False, default=str)


class RedactingFormatter(logging.Formatter):
    """Another formatter's text lines, secrets redacted."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def formatter(log_format: LogFormat, current: logging.Formatter | None = None) -> logging.Formatter:
    """The formatter of ``log_format``; text keeps ``current``'s layout (Celery's lines, say)."""
    if log_format == "json":
        return JsonFormatter()
    if isinstance(current, RedactingFormatter | JsonFormatter):
        current = current.inner if isinstance(current, RedactingFormatter) else None
    return RedactingFormatter(current)


def use_format(logger: logging.Logger, log_format: LogFormat) -> None:
    """Give each of ``logger``'s handlers the formatter of ``log_format`` (a worker calls this on the handlers Celery
    has just set up)."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(log_format, handler.formatter))


def configure(log_format: LogFormat, level: str | int = "INFO") -> None:
    """A process of its own (not a Celery worker): one handler on stderr for the root logger, in ``log_format``."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
