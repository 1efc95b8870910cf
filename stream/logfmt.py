"""Structured logs: one JSON object per line, for every sigstream process.

    {"ts": "2026-11-25T17:00:00.123Z", "level": "info", "logger": "...", "msg": "...", ...fields}

Fields come from `extra={"fields": {...}}` (the convention in sigstream) and from any
other `extra` keys; an exception adds "exc". Used by the command line (`--log-format
json`) and by the endpoint agent's log file.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k == "fields" and isinstance(v, dict):
                doc.update(v)
            elif k not in _STANDARD and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()
