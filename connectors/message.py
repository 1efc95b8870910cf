"""One consumed record, the same for the Kafka and the in-process transports.

The stream processor sees only this (never kafka-python types): value and key
bytes, where it came from, and its headers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Message:  # read-only by convention: not frozen, a frozen dataclass is 4x slower to create
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    headers: Headers = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None
