"""Structured logs: one JSON object per line, with the request id when there is one.

Log calls pass context as ``extra={"request_id": ..., "model": ...}``; every extra
field lands in the JSON object. The hot path logs nothing on success."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time

import orjson

logger = logging.getLogger("s2loop.service")

_STD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message"}
)

_PREFIX = f"{os.getpid():x}{int(time.time()) & 0xFFFF:04x}"
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """Unique within the process and across restarts in practice; cheap (no uuid)."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "info", json: bool = True) -> None:
    """Route the service's and uvicorn's loggers to stderr (JSON lines by default)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
