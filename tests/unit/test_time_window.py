"""sigstream.time_window: the `hunt --from/--to` bounds and which events fall inside."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from sigstream.time_window import INSIDE, OUTSIDE, UNTIMED, TimeWindow, parse_bound

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc).timestamp()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("text, end, expected", [
    ("2026-11-24", False, ts("2026-11-24T00:00:00+00:00")),
    ("2026-11-24", True, ts("2026-11-25T00:00:00+00:00")),              # a date: the whole day
    ("2026-11-24T09:30", False, ts("2026-11-24T09:30:00+00:00")),       # naive: UTC
    ("2026-11-24T09:30:00Z", False, ts("2026-11-24T09:30:00+00:00")),
    ("2026-11-24T09:30:00+02:00", False, ts("2026-11-24T07:30:00+00:00")),
    ("2026-11-24T09:30:00Z", True, ts("2026-11-24T09:30:00+00:00") + 1e-6),  # inclusive
    ("24h", False, NOW - 86400),
    ("7d", False, NOW - 7 * 86400),
    ("30m", False, NOW - 1800),
    ("2w", False, NOW - 14 * 86400),
])
def test_parse_bound(text, end, expected):
    assert parse_bound(text, NOW, end=end) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "24x", ""])
def test_parse_bound_rejects(text):
    with pytest.raises(ValueError, match="not a date/time"):
        parse_bound(text, NOW)


def test_no_bounds_is_no_window():
    assert TimeWindow.parse(None, None, now=NOW) is None


def test_empty_window_is_an_error():
    with pytest.raises(ValueError, match="before --from"):
        TimeWindow.parse("2026-11-25", "2026-11-24", now=NOW)


def test_place():
    w = TimeWindow.parse("2026-11-24T10:00:00Z", "2026-11-24T11:00:00Z", now=NOW)
    assert w.place({"TimeCreated": "2026-11-24T09:59:59.999999Z"}) == OUTSIDE
    assert w.place({"TimeCreated": "2026-11-24T10:00:00.000000Z"}) == INSIDE
    assert w.place({"TimeCreated": "2026-11-24T11:00:00.000000Z"}) == INSIDE
    assert w.place({"TimeCreated": "2026-11-24T11:00:00.000001Z"}) == OUTSIDE
    assert w.place({"UtcTime": "2026-11-24 10:30:00.000"}) == INSIDE     # Sysmon's own field
    assert w.place({"TimeCreated": "garbage"}) == UNTIMED
    assert w.place({}) == UNTIMED
