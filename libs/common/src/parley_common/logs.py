"""JSON log lines that carry the trace and span ids of the current OpenTelemetry span."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

__all__ = [
    "JsonFormatter",
    "bind_log_fields",
    "configure_logging",
    "current_log_fields",
    "log_fields",
]

_fields: ContextVar[dict[str, Any] | None] = ContextVar("parley_log_fields", default=None)


@contextlib.contextmanager
def log_fields(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add `fields` to every log line written in this block (and in tasks started within)::

    with log_fields(request_id=request_id):
        ...
    """
    merged = {**(_fields.get() or {}), **fields}
    token = _fields.set(merged)
    try:
        yield merged
    finally:
        _fields.reset(token)


def current_log_fields() -> dict[str, Any]:
    """The fields the current `log_fields` block adds (a copy)."""
    return dict(_fields.get() or {})


def bind_log_fields(**fields: Any) -> None:
    """Add fields to the enclosing `log_fields` block, seen by its owner too (a request id
    learnt deep in a handler reaches the access log line); nothing outside any block."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


# Attributes every LogRecord has; anything else passed through `extra=` is emitted as a field.
_RESERVED = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            line["trace_id"] = format(ctx.trace_id, "032x")
            line["span_id"] = format(ctx.span_id, "016x")
        for key, value in (_fields.get() or {}).items():
            line.setdefault(key, value)
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "httpx", "httpcore", "pymongo", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
