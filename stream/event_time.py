"""Event time: reading it from events, formatting it, and putting matches back in order.

    event_time(event) -> epoch seconds | None
    iso_utc(ts) -> "2026-11-24T09:11:45.412000Z"
    EventTimeBuffer(lateness_s): add / release / flush, in (time, alert_id) order

Pure: no clock is read; the caller passes everything about time in.

Decisions:

- `event_time` reads `TimeCreated` (the normalised events always have it: the record's
  system time), then Sysmon's `UtcTime`, then ECS `@timestamp`. ISO-8601 with `Z`, an
  offset or nothing (naive = UTC, as the normaliser), `T` or space, any number of
  fraction digits (more than 6 are cut, as Windows' 7-digit ticks); numbers are epoch
  seconds, or ms / us / ns when too large to be seconds. The canonical 27-character
  form (`YYYY-MM-DDTHH:MM:SS.ffffffZ`) takes a fast path that parses each second once.
  Anything else: None (the caller decides; the correlator needs a time).
- Reorder buffer: a match is held until the largest event time seen is `lateness_s`
  past it, then released in (time, alert_id) order (alert_id breaks ties, so the same
  input gives the same order whatever order it arrived in). A match older than the last
  released time is *late*: it can no longer be put in order. It is not dropped: it is
  counted (`late`), logged (the first one, then every 1000th), and released at once
  (first in the next `release()`), out of order. The correlator counts it in at its
  current time (see stream.correlation). `max_held` bounds memory: beyond it the oldest
  held match is released early (counted in `forced`).
"""
from __future__ import annotations

import calendar
import heapq
import logging
import math
from datetime import datetime, timezone
from typing import Any, Mapping

log = logging.getLogger(__name__)

TIME_FIELDS = ("TimeCreated", "UtcTime", "@timestamp")

_seconds_cache: dict[str, int] = {}   # "YYYY-MM-DDTHH:MM:SS" -> epoch seconds


def _canonical(v: str) -> float | None:
    """2026-11-24T09:11:45.412000Z, the normaliser's form."""
    head = v[:19]
    sec = _seconds_cache.get(head)
    if sec is None:
        try:
            sec = calendar.timegm((int(v[0:4]), int(v[5:7]), int(v[8:10]),
                                   int(v[11:13]), int(v[14:16]), int(v[17:19])))
        except ValueError:
            return None
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        _seconds_cache[head] = sec
    frac = v[20:26]
    if not frac.isdigit():
        return None
    return sec + int(frac) / 1_000_000


def _from_number(n: float) -> float | None:
    if not math.isfinite(n):
        return None
    a = abs(n)
    if a < 1e11:
        return float(n)
    if a < 1e14:
        return n / 1e3
    if a < 1e17:
        return n / 1e6
    return n / 1e9


def _cut_fraction(s: str) -> str:
    """Keep at most 6 fraction digits (Windows writes 7)."""
    dot = s.find(".", 17)
    if dot < 0:
        return s
    end = dot + 1
    while end < len(s) and s[end].isdigit():
        end += 1
    if end - dot - 1 <= 6:
        return s
    return s[:dot + 7] + s[end:]


def parse_time(value: Any) -> float | None:
    """One timestamp (ISO-8601 text or an epoch number) -> epoch seconds, or None."""
    t = type(value)
    if t is str:
        v = value
        if len(v) == 27 and v[26] == "Z" and v[19] == "." and v[10] == "T":
            return _canonical(v)
        s = v.strip()
        if not s:
            return None
        if s.endswith(" UTC"):
            s = s[:-4]
        try:
            dt = datetime.fromisoformat(_cut_fraction(s))
        except ValueError:
            try:
                return _from_number(float(s))
            except ValueError:
                return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if t is int or t is float:
        return _from_number(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    return None


def event_time(event: Mapping[str, Any]) -> float | None:
    """The event's time: TimeCreated, else UtcTime, else @timestamp; None if none parses."""
    for name in TIME_FIELDS:
        v = event.get(name)
        if v is not None:
            ts = parse_time(v)
            if ts is not None:
                return ts
    return None


def iso_utc(ts: float) -> str:
    """Epoch seconds -> 2026-11-24T09:11:45.412000Z (microseconds, rounded)."""
    us = round(ts * 1_000_000)
    whole, frac = divmod(us, 1_000_000)
    return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


class EventTimeBuffer:
    """Holds matches (anything with `.time` and `.alert_id`) until `lateness_s` of event
    time has passed them, then releases them sorted by (time, alert_id)."""

    def __init__(self, lateness_s: float, *, max_held: int = 1_000_000):
        if lateness_s < 0:
            raise ValueError("lateness_s must be >= 0")
        self.lateness_s = float(lateness_s)
        self.max_held = max_held
        self._heap: list[tuple[float, str, int, Any]] = []
        self._late: list[Any] = []
        self._seq = 0
        self.max_seen: float | None = None
        self.last_released: float | None = None
        self.late = 0        # matches that arrived after their turn (released out of order)
        self.forced = 0      # released before their lateness passed (max_held)

    @property
    def held(self) -> int:
        return len(self._heap) + len(self._late)

    @property
    def watermark(self) -> float | None:
        """Matches at or before this time are released."""
        return None if self.max_seen is None else self.max_seen - self.lateness_s

    def add(self, match: Any) -> bool:
        """Hold `match`; True if it is late (it will be released, out of order, at once)."""
        t = match.time
        if self.last_released is not None and t < self.last_released:
            self.late += 1
            if self.late == 1 or self.late % 1000 == 0:
                log.warning("late match: event time %s is %.3f s before the last released "
                            "match (%d late so far); counted in at once, out of order",
                            iso_utc(t), self.last_released - t, self.late)
            self._late.append(match)
            return True
        if self.max_seen is None or t > self.max_seen:
            self.max_seen = t
        self._seq += 1
        heapq.heappush(self._heap, (t, str(match.alert_id), self._seq, match))
        return False

    def release(self) -> list[Any]:
        """Late matches (arrival order), then every held match at or before the watermark."""
        out, self._late = self._late, []
        wm = self.watermark
        heap = self._heap
        while heap and (heap[0][0] <= wm or len(heap) > self.max_held):  # type: ignore[operator]
            if heap[0][0] > wm:  # type: ignore[operator]
                self.forced += 1
            item = heapq.heappop(heap)
            out.append(item[3])
            self.last_released = item[0]
        return out

    def flush(self) -> list[Any]:
        """End of input: everything, late ones first, then in (time, alert_id) order."""
        out, self._late = self._late, []
        while self._heap:
            item = heapq.heappop(self._heap)
            out.append(item[3])
            self.last_released = item[0]
        return out
