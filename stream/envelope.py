"""The message format on Kafka event topics: an envelope around one normalised event.

    {"v": 1, "event_id": "...", "source": "sysmon", "collector_id": "...",
     "ingest_time": "2026-11-25T17:00:00.000000Z", "event": {...normalised event...}}

Keys are the host (`Computer`) so one host's events stay ordered on one
partition. `event_id` is stable for the same event log record, so consumers
can de-duplicate redeliveries and replays.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import orjson

from sigstream.stream.errors import EventProblem

ENVELOPE_VERSION = 1
MAX_MESSAGE_BYTES = 4 * 1024 * 1024   # larger messages are dead-lettered, not parsed
# What identifies an event across re-reads: the event log's own record identity.
_EVENT_IDENTITY = ("Computer", "Channel", "EventRecordID", "EventID", "TimeCreated")
# Event topic per source, chosen by channel (lower-cased).
SOURCE_BY_CHANNEL = {
    "microsoft-windows-sysmon/operational": "sysmon",
    "microsoft-windows-powershell/operational": "powershell",
    "powershellcore/operational": "powershell",
    "windows powershell": "powershell",
    "security": "security",
    "system": "system",
    "microsoft-windows-wmi-activity/operational": "wmi",
    "microsoft-windows-windows defender/operational": "defender",
}


class EnvelopeError(EventProblem):
    """A message that is not a valid sigstream event envelope (the reason is user-facing)."""


def event_fingerprint(event: dict) -> str:
    """A stable id of an event: its record identity when it has one, else its content."""
    if event.get("EventRecordID") is not None and event.get("Computer") is not None:
        key = "|".join(str(event.get(k)) for k in _EVENT_IDENTITY)
    else:
        key = orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def source_of(event: dict) -> str:
    channel = event.get("Channel")
    return SOURCE_BY_CHANNEL.get(channel.lower(), "other") if isinstance(channel, str) else "other"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wrap(event: dict, collector_id: str, ingest_time: str | None = None) -> dict[str, Any]:
    return {
        "v": ENVELOPE_VERSION,
        "event_id": event_fingerprint(event),
        "source": source_of(event),
        "collector_id": collector_id,
        "ingest_time": ingest_time or utc_now_iso(),
        "event": event,
    }


def encode(envelope: dict[str, Any]) -> bytes:
    return orjson.dumps(envelope, default=str)


def host_key(event: dict) -> bytes:
    host = event.get("Computer")
    return (host if isinstance(host, str) and host else "unknown").encode("utf-8", "surrogatepass")


def decode(value: bytes | None) -> dict[str, Any]:
    """bytes -> envelope; EnvelopeError with the reason for anything unusable."""
    if value is None:
        raise EnvelopeError("empty message (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise EnvelopeError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise EnvelopeError(f"not JSON (or not UTF-8): {e}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError(f"JSON {type(doc).__name__}, expected an envelope object")
    event = doc.get("event")
    if not isinstance(event, dict):
        raise EnvelopeError("envelope has no 'event' object")
    if doc.get("v") != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {doc.get('v')!r}")
    if not isinstance(doc.get("event_id"), str):
        doc["event_id"] = event_fingerprint(event)
    return doc
