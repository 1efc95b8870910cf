"""Sinks: where alerts go, and where collected events go when not to Kafka.

Alert sinks have a tiny contract: add(alert), flush(), close(). The hunt command,
the stream processor and the tests assemble the same sinks.

Event sinks (publish(event), flush(timeout_s), close(timeout_s), stats) have the
contract of :class:`connectors.kafka.KafkaEventPublisher`; :class:`EnvelopeLineSink`
is the one for ``--sink stdout`` / ``--sink file://PATH`` of ``sigstream collect``
and ``sigstream agent``.
"""
from __future__ import annotations

import csv
import io
from typing import IO, Any, Protocol

import orjson

from sigstream.stream.alert_summary import CSV_COLUMNS, csv_row
from sigstream.stream.envelope import encode, wrap


class AlertSink(Protocol):
    def add(self, alert: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class ListSink:
    """Keeps alerts in memory (tests, embedded runs)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def add(self, alert: dict[str, Any]) -> None:
        self.alerts.append(alert)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """One alert per line, orjson-encoded (non-JSON values rendered as strings)."""

    def __init__(self, out: IO[bytes]):
        self.out = out

    def add(self, alert: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(alert, default=str) + b"\n")

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        self.flush()


class CsvSink:
    """A flat table for spreadsheets (columns: stream.alert_summary.csv_row); the full event
    stays in the JSONL format."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self._writer = csv.writer(self._text)
        self._writer.writerow(CSV_COLUMNS)

    def add(self, alert: dict[str, Any]) -> None:
        self._writer.writerow(csv_row(alert))

    def flush(self) -> None:
        self._text.flush()

    def close(self) -> None:
        self.flush()
        self._text.detach()


class EnvelopeLineSink:
    """Events wrapped in envelopes, one JSON line each, to a binary stream."""

    def __init__(self, out: IO[bytes], collector_id: str, close_stream: bool = False):
        self.out, self.collector_id, self._close = out, collector_id, close_stream
        self.count = 0

    def publish(self, event: dict[str, Any]) -> None:
        self.out.write(encode(wrap(event, self.collector_id)) + b"\n")
        self.count += 1

    def flush(self, timeout_s: float = 0) -> bool:
        self.out.flush()
        return True

    def close(self, timeout_s: float = 0) -> None:
        self.out.flush()
        if self._close:
            self.out.close()

    @property
    def stats(self) -> dict[str, int]:
        return {"published": self.count, "spooled": 0, "dropped": 0}
