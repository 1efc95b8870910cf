"""Log-source routing: which rules can apply to an event, by (Channel, EventID).

The sysmon and windows pipelines turn a rule's logsource into conditions on
`Channel` and `EventID`; `route_of` reads them back out of the IR as the sets of
values a matching event must have. The router indexes rules by those sets, so
an event only meets rules of its own log source. It may over-select (the rule
still checks its own conditions), never miss.
"""
from __future__ import annotations

from typing import Any, Iterable

Route = tuple[frozenset[str] | None, frozenset[int] | None]  # (channels, event ids); None: any


def route_of(ir: tuple) -> Route:
    kind = ir[0]
    if kind == "and":
        channels: frozenset[str] | None = None
        eids: frozenset[int] | None = None
        for c in ir[1]:
            ch, ei = route_of(c)
            if ch is not None:
                channels = ch if channels is None else channels & ch
            if ei is not None:
                eids = ei if eids is None else eids & ei
        return channels, eids
    if kind == "or":
        routes = [route_of(c) for c in ir[1]]
        return _union(r[0] for r in routes), _union(r[1] for r in routes)
    if kind == "field":
        field, spec = ir[1], ir[2]
        if field == "Channel" and spec[0] == "eq":
            return frozenset((spec[1].lower(),)), None
        if field == "EventID":
            eid = _as_int(spec[1]) if spec[0] in ("num", "eq") else None
            if eid is not None:
                return None, frozenset((eid,))
    if kind == "const" and ir[1] is False:
        return frozenset(), frozenset()
    return None, None


def _union(sets: Iterable[frozenset | None]) -> frozenset | None:
    acc: set = set()
    for s in sets:
        if s is None:
            return None
        acc |= s
    return frozenset(acc)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        text = v.strip()
        if text.isdigit():
            return int(text)
        try:  # "1.0" equals 1 for Sigma number comparison
            f = float(text)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None
    return None


UNROUTABLE = ("<unroutable>", -1)


def event_key(channel: Any, event_id: Any) -> tuple[str | None, int | None]:
    """The routing key of an event (channel compared case-insensitively).

    UNROUTABLE for values the index cannot place (a list-valued Channel, an EventID
    that is no integer): such events meet every rule.
    """
    if channel is not None and not isinstance(channel, str):
        return UNROUTABLE
    eid = _as_int(event_id)
    if eid is None and event_id is not None:
        return UNROUTABLE
    return (channel.lower() if channel is not None else None, eid)


class LogsourceRouter:
    """Rule indexes by (channel, event id), with wildcards for unconstrained rules."""

    def __init__(self, routes: list[Route]):
        self._index: dict[tuple[str | None, int | None], list[int]] = {}
        for i, (channels, eids) in enumerate(routes):
            for ch in (channels if channels is not None else (None,)):
                for eid in (eids if eids is not None else (None,)):
                    self._index.setdefault((ch, eid), []).append(i)

    def rules_for(self, channel: str | None, event_id: int | None) -> list[int]:
        return sorted({*self.exact(channel, event_id), *self.loose(channel, event_id)})

    def exact(self, channel: str | None, event_id: int | None) -> list[int]:
        """Rules routed to exactly this channel and event id."""
        if channel is None or event_id is None:
            return []
        return self._index.get((channel, event_id), [])

    def loose(self, channel: str | None, event_id: int | None) -> set[int]:
        """Rules that accept any channel or any event id and fit this key."""
        found: set[int] = set()
        for k in {(channel, None), (None, event_id), (None, None)}:
            found.update(self._index.get(k, ()))
        return found

    def loose_rules(self) -> set[int]:
        return {i for (ch, eid), idxs in self._index.items() if ch is None or eid is None
                for i in idxs}
