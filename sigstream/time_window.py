"""`hunt --from/--to`: which events fall in a window of event time.

    window = TimeWindow.parse("2026-11-24", "24h", now=time.time())
    window.place(event) -> INSIDE | OUTSIDE | UNTIMED

Decisions:

- A bound is ISO 8601 (a date, or a date and time; UTC unless it carries an offset), or
  a span back from `now`: `90s`, `30m`, `24h`, `7d`, `2w`.
- `--from` is inclusive. `--to` is inclusive too: a date alone means the whole of that
  day (`--from 2026-11-24 --to 2026-11-24` is that day), a time means up to and
  including that microsecond.
- The event's time is `stream.event_time.event_time` (TimeCreated, UtcTime, @timestamp).
  An event with no readable time is UNTIMED: the caller keeps it (dropping events
  silently would hide detections) and says how many there were.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping

from sigstream.stream.event_time import event_time, iso_utc

INSIDE, OUTSIDE, UNTIMED = 0, 1, 2
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_US = 1e-6


def parse_bound(text: str, now: float, *, end: bool = False) -> float:
    """One bound -> epoch seconds. `end`: the exclusive end of a `--to` (see module doc).
    Raises ValueError with a message for the user."""
    m = _SPAN.match(text)
    if m:
        t = now - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
        return t + _US if end else t
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        if len(s) == 10:   # a date alone: the start of the day, or (end) of the next one
            d = date.fromisoformat(s)
            dt = datetime(d.year, d.month, d.day, tzinfo=timezone.utc) + timedelta(days=1 if end else 0)
            return dt.timestamp()
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a date/time (ISO 8601, e.g. 2026-11-24 or "
                         "2026-11-24T09:00:00+01:00) nor a span back from now (e.g. 24h, 7d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp() + (_US if end else 0.0)


@dataclass(frozen=True)
class TimeWindow:
    start: float | None = None   # inclusive, epoch seconds
    end: float | None = None     # exclusive

    @classmethod
    def parse(cls, start: str | None, end: str | None, *, now: float) -> "TimeWindow | None":
        """None when neither bound is given. ValueError if a bound is unreadable or the
        window is empty."""
        if start is None and end is None:
            return None
        w = cls(parse_bound(start, now) if start is not None else None,
                parse_bound(end, now, end=True) if end is not None else None)
        if w.start is not None and w.end is not None and w.end <= w.start:
            raise ValueError(f"--to ({end}) is before --from ({start}): no event can match")
        return w

    def place(self, event: Mapping[str, Any]) -> int:
        t = event_time(event)
        if t is None:
            return UNTIMED
        if (self.start is not None and t < self.start) or (self.end is not None and t >= self.end):
            return OUTSIDE
        return INSIDE

    def describe(self) -> str:
        return (f"{iso_utc(self.start) if self.start is not None else '…'} .. "
                f"{iso_utc(self.end) if self.end is not None else '…'}")
