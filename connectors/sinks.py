"""Alert sinks: where alerts go. Tiny contract: add(alert), flush(), close().

The hunt command, the stream processor and the tests assemble the same sinks.
"""
from __future__ import annotations

import csv
import io
from typing import IO, Any, Protocol

import orjson


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


CSV_COLUMNS = (
    "alert_id", "event_time", "host", "rule_id", "rule_title", "level", "tags",
    "EventID", "Image", "CommandLine", "TargetObject", "Details", "matched",
    "source_path", "source_position",
)


class CsvSink:
    """A flat table for spreadsheets; the full event stays in the JSONL format."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self._writer = csv.writer(self._text)
        self._writer.writerow(CSV_COLUMNS)

    def add(self, alert: dict[str, Any]) -> None:
        rule, ev, src = alert["rule"], alert["event"], alert.get("source") or {}
        matched = "; ".join(f"{m['selection']}:{m['field']}={m['value']}" for m in alert["matched"])
        self._writer.writerow([
            alert["alert_id"], alert.get("event_time"), alert.get("host"), rule["id"],
            rule["title"], rule["level"], " ".join(rule["tags"]), ev.get("EventID"),
            ev.get("Image"), ev.get("CommandLine"), ev.get("TargetObject"), ev.get("Details"),
            matched, src.get("path"), src.get("position"),
        ])

    def flush(self) -> None:
        self._text.flush()

    def close(self) -> None:
        self.flush()
        self._text.detach()
