"""Structured logging: one JSON object per line, carrying the service name and the request id."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "x-request-id"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


# A request id a caller may choose: it goes into logs, gRPC metadata and response headers as it is.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_safe_request_id(value: str) -> bool:
    return _SAFE_REQUEST_ID.fullmatch(value) is not None


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = request_id_var.get()
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every log record of the process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%SZ",
    )
    formatter.converter = time.gmtime  # timestamps are UTC
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class LogRate:
    """At most `per_second` records per key (a token bucket per key, holding one second's worth), so a flood of
    cheap, identical events (cache hits at 1,000/s) cannot make the log the request path's largest cost. The next
    record let through says how many were held back before it, so the log still accounts for every event; exact
    counts live in the metrics. `per_second` 0 lets every record through.

    Written here because the logging module has no rate limit and a bucket per key is a few lines; no library
    found does only this.
    """

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self._buckets: dict[str, tuple[float, float, int]] = {}  # key: (tokens, last refill, held back)

    def admit(self, key: str) -> int | None:
        """None: hold this record back; otherwise how many records of this key were held back before it."""
        if self.per_second <= 0:
            return 0
        now = self.clock()
        tokens, last, held = self._buckets.get(key, (self.per_second, now, 0))
        tokens = min(self.per_second, tokens + (now - last) * self.per_second)
        if tokens < 1:
            self._buckets[key] = (tokens, now, held + 1)
            return None
        self._buckets[key] = (tokens - 1, now, 0)
        return held
