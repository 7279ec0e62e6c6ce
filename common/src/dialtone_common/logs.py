"""Logging: one line per record, ``key=value`` context, the call id on every call-scoped line."""

from __future__ import annotations

import logging
import sys
from typing import Any


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d} {record.levelname:<5} {record.name}: {record.getMessage()}"
        ctx = getattr(record, "ctx", None)
        if ctx:
            base += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup(level: str = "INFO", service: str = "") -> None:
    """Configure the root logger once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("nats", "websockets", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class CallLog(logging.LoggerAdapter):
    """A logger that stamps every line with the call id (and any other context)."""

    def __init__(self, logger: logging.Logger, **ctx: Any) -> None:
        super().__init__(logger, ctx)

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        extra = kwargs.pop("extra", None) or {}
        kwargs["extra"] = {"ctx": {**(self.extra or {}), **extra}}
        return msg, kwargs
