"""De-duplication / suppression of alerts: same rule + host + key within a window -> one alert.

    dd = Deduplicator(DedupPolicy.from_dict({"default": {"window": "5m", "key": ["Image"]},
                                             "levels": {"critical": {"window": 0}},
                                             "rules": {"<rule id>": {"window": "1h", "key": ["TargetObject"]}}}))
    out = dd.offer(alert, now)      # the alert (first of its group) or None (suppressed, counted)
    updates = dd.expire(now)        # groups whose window ended with more than one alert

The first alert of a group goes out at once (a responder must not wait for a window), with
`dedup: {count: 1, ...}`. When the window closes and more alerts arrived meanwhile, `expire`
returns ONE update: the first alert again (same alert_id) with `dedup.count` = n,
`first_seen`/`last_seen` and `final: true`. Consumers upsert by alert_id; the responder
ignores updates. Windows are fixed, starting at a group's first alert. Time is always passed in
(epoch seconds): nothing here reads a clock. Precedence: rule id, then level, then default;
a window of 0 turns de-duplication off.
"""
from __future__ import annotations

import copy
import heapq
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """300, "300", "300s", "5m", "1h", "1.5d" -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (e.g. 30s, 5m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class DedupSpec:
    window_s: float = 0.0              # 0: no de-duplication
    key: tuple[str, ...] = ()          # event fields added to rule + host

    @classmethod
    def from_dict(cls, d: dict | None) -> "DedupSpec":
        d = d or {}
        unknown = set(d) - {"window", "key"}
        if unknown:
            raise ValueError(f"unknown dedup setting(s): {', '.join(sorted(unknown))}")
        key = d.get("key") or ()
        return cls(parse_duration(d.get("window", 0)), (key,) if isinstance(key, str) else tuple(key))


@dataclass
class DedupPolicy:
    default: DedupSpec = field(default_factory=DedupSpec)
    levels: dict[str, DedupSpec] = field(default_factory=dict)
    rules: dict[str, DedupSpec] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "DedupPolicy":
        d = d or {}
        return cls(DedupSpec.from_dict(d.get("default")),
                   {str(k).lower(): DedupSpec.from_dict(v) for k, v in (d.get("levels") or {}).items()},
                   {str(k).lower(): DedupSpec.from_dict(v) for k, v in (d.get("rules") or {}).items()})

    def spec_for(self, alert: dict) -> DedupSpec:
        rule = alert.get("rule") or {}
        for rid in (rule.get("id"), rule.get("title")):
            if rid and str(rid).lower() in self.rules:
                return self.rules[str(rid).lower()]
        return self.levels.get(str(rule.get("level") or "").lower(), self.default)


@dataclass
class _Group:
    first: dict
    start: float
    end: float
    last: float
    count: int = 1


class Deduplicator:
    def __init__(self, policy: DedupPolicy, max_groups: int = 100_000):
        self.policy = policy
        self.max_groups = max_groups
        self._groups: dict[tuple, _Group] = {}
        self._ends: list[tuple[float, int, tuple]] = []    # (end, seq, key) heap, lazily cleaned
        self._seq = 0
        self._ready: list[dict] = []                      # updates closed during offer()
        self.suppressed = 0

    @staticmethod
    def group_key(alert: dict, spec: DedupSpec) -> tuple:
        rule = alert.get("rule") or {}
        ev = alert.get("event") or {}
        return (rule.get("id") or rule.get("title"), str(alert.get("host") or "").lower(),
                tuple(str(ev.get(f)) for f in spec.key))

    def offer(self, alert: dict, now: float) -> dict | None:
        spec = self.policy.spec_for(alert)
        if spec.window_s <= 0:
            return alert
        key = self.group_key(alert, spec)
        group = self._groups.get(key)
        if group is not None and now < group.end:
            group.count += 1
            group.last = max(group.last, now)
            self.suppressed += 1
            return None
        if group is not None:
            self._close(key)
        if len(self._groups) >= self.max_groups:
            self._close_earliest()
        out = copy.copy(alert)
        out["dedup"] = {"count": 1, "first_seen": iso(now), "last_seen": iso(now),
                        "window_s": spec.window_s, "key": list(key[2])}
        self._groups[key] = _Group(out, now, now + spec.window_s, now)
        self._seq += 1
        heapq.heappush(self._ends, (now + spec.window_s, self._seq, key))
        return out

    def expire(self, now: float) -> list[dict]:
        """Close every group whose window has ended; the updates for groups with count > 1."""
        while self._ends and self._ends[0][0] <= now:
            end, _, key = heapq.heappop(self._ends)
            group = self._groups.get(key)
            if group is not None and group.end == end:
                self._close(key)
        ready, self._ready = self._ready, []
        return ready

    def close_all(self) -> list[dict]:
        """Close every open group (shutdown); the updates for groups with count > 1."""
        for key in list(self._groups):
            self._close(key)
        self._ends.clear()
        ready, self._ready = self._ready, []
        return ready

    def _close_earliest(self) -> None:
        while self._ends:
            end, _, key = heapq.heappop(self._ends)
            group = self._groups.get(key)
            if group is not None and group.end == end:
                self._close(key)
                return

    def _close(self, key: tuple) -> None:
        group = self._groups.pop(key)
        if group.count > 1:
            update = copy.copy(group.first)
            update["dedup"] = dict(group.first["dedup"], count=group.count,
                                   last_seen=iso(group.last), final=True)
            self._ready.append(update)

    def __len__(self) -> int:
        return len(self._groups)


class DedupSink:
    """An AlertSink (connectors.sinks) in front of another one; `clock` is passed in."""

    def __init__(self, inner: Any, dedup: Deduplicator, clock: Any):
        self.inner, self.dedup, self.clock = inner, dedup, clock

    def add(self, alert: dict) -> None:
        now = self.clock()
        for update in self.dedup.expire(now):
            self.inner.add(update)
        out = self.dedup.offer(alert, now)
        if out is not None:
            self.inner.add(out)

    def flush(self) -> None:
        for update in self.dedup.expire(self.clock()):
            self.inner.add(update)
        self.inner.flush()

    def close(self) -> None:
        for update in self.dedup.close_all():
            self.inner.add(update)
        self.inner.close()
