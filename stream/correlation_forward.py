"""Correlation over a partitioned stream: forward base matches by family, evaluate per family.

    event processor (N members)                     correlation consumer (N members)
    Detector(engine, stages=[CorrelationForwarder])  <prefix>.correlation-input
      base alert a correlation references    ---->   key = family key   -> PartitionState
      -> compact record, one per family                                    -> FamilyEvaluator
                                                                             (EventTimeBuffer + Correlator)
                                                                           -> correlation alerts

Partitioning (the trade-off)
----------------------------
Correlations form *families*: the connected components of the graph "correlation X
references correlation Y" (a chained correlation and everything it references, down to
the base rules, is one family). A family is evaluated wholly by ONE owner: the record key
on the repartition topic is the family key (a hash of the sorted ids of its
correlations), so all of a family's matches land on one partition, in one consumer,
in one Correlator. Consequences:
- N processors give the same correlation alerts as one (and as `hunt`): each family sees
  every match of its rules, whatever host or event partition it came from, and chains
  stay local (a result feeds its chained correlation in the same Correlator).
- Parallelism of correlation = the number of families (not the number of groups): one
  family's load cannot be spread over several consumers. Keying by (family, group) would
  spread it, but a chained correlation may group by other fields than the correlations
  it references, so a chain could then span partitions; we keep correctness simple.
- Forwarded records are small: only the fields the family's correlations read (group-by
  fields, alias target fields, the condition's value field), not the whole event.

Crash safety (see connectors/correlation_kafka.py for the loop): a `PartitionState`
holds the evaluators of one repartition partition and the offset of the last record it
applied; `snapshot()` / `PartitionState.restore()` carry it as JSON (the Correlator's
snapshot, the EventTimeBuffer's held matches, the de-duplication window and the applied
offset). A record at or below the applied offset is skipped, so re-delivery after a
restore is idempotent.

De-duplication: the event processors are at-least-once, so the same base match (same
`alert_id`: stable per rule + event) can be forwarded twice (a crash or a rebalance
re-processes the records after the last commit). A family evaluator ignores an
`alert_id` it has seen within its de-duplication horizon (2 x lateness + the longest
timespan of the family, in event time, behind the latest event time seen); the seen ids
are part of the snapshot. A duplicate older than that is not recognised and is counted
again (as a late match): a documented limit, reached only when re-processing spans more
event time than the horizon.

Pure: no Kafka import, no clock; `now` (processing time, for `detected_at`) is passed in.
"""
from __future__ import annotations

import hashlib
import heapq
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson

from sigstream.stream.correlation_state import field_value
from sigstream.stream.correlation import Correlator, CorrelationResult, Match
from sigstream.stream.correlation_alert import correlation_alert
from sigstream.stream.correlation_stage import CorrelationIntake, is_suppressed
from sigstream.stream.detector import iso_utc
from sigstream.stream.event_time import EventTimeBuffer
from sigstream.stream.rules import Correlation, _canonical_ref

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SNAPSHOT_VERSION = 1


# ------------------------------------------------------------------ families

def _ident(c: Correlation) -> str:
    return c.id or (f"name:{c.name}" if c.name else f"title:{c.title}")


def _ref_keys(c: Correlation) -> set[str]:
    """How other correlations may refer to c (canonical id, name)."""
    keys = set()
    if c.id:
        keys.add(_canonical_ref(c.id)[1])
    if c.name:
        keys.add(c.name)
    return keys


@dataclass(frozen=True)
class Family:
    """Correlations evaluated together (a connected component of the references graph)."""
    key: str                                # the repartition record key (text)
    correlations: tuple[Correlation, ...]   # in load order (the Correlator's order)
    fields: tuple[str, ...]                 # the event fields they read (sorted)

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()

    @property
    def max_timespan_s(self) -> float:
        return max((c.timespan_s for c in self.correlations), default=0.0)


def family_key(correlations: Iterable[Correlation]) -> str:
    """sha256 of the sorted identities of the family's correlations (first 32 hex digits)."""
    ident = "\n".join(sorted(_ident(c) for c in correlations))
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def fields_read(correlations: Iterable[Correlation]) -> tuple[str, ...]:
    """Every event field a correlation may read: group-by names, the condition's value
    field(s), and every alias target (the alias name itself is used for unmapped rules)."""
    out: set[str] = set()
    for c in correlations:
        names = list(c.group_by)
        vf = c.value_field
        if vf is not None:
            names += [vf] if isinstance(vf, str) else list(vf)
        for n in names:
            out.add(n)
            out.update((c.aliases.get(n) or {}).values())
    return tuple(sorted(out))


def correlation_families(correlations: Sequence[Correlation]) -> list[Family]:
    """The families of a resolved correlation set (stream.rules), in load order."""
    n = len(correlations)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_ref: dict[str, list[int]] = {}
    for i, c in enumerate(correlations):
        for k in _ref_keys(c):
            by_ref.setdefault(k, []).append(i)
    for i, c in enumerate(correlations):
        for ref in c.rules:
            for j in by_ref.get(_canonical_ref(ref)[1], ()):
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in sorted(groups.values()):
        cs = tuple(correlations[i] for i in members)
        out.append(Family(family_key(cs), cs, fields_read(cs)))
    return out


# ------------------------------------------------------------------ records

def encode_record(match: Match, fields: Sequence[str]) -> bytes:
    """The repartition record of a base match: identity, time and only `fields` (flat)."""
    picked = {}
    for name in fields:
        v = field_value(match.fields, name)
        if v is not None:
            picked[name] = v
    rid = match.record_id
    if rid is not None and type(rid) not in (str, int, float, bool):
        rid = str(rid)
    return orjson.dumps({"v": RECORD_VERSION, "rule_id": match.rule_id, "rule_name": match.rule_name,
                         "time": match.time, "event_time": iso_utc(match.time),
                         "alert_id": match.alert_id, "host": match.host, "record_id": rid,
                         "fields": picked}, default=str)


def decode_record(value: bytes) -> Match:
    """A repartition record -> Match; ValueError if it is not one."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("v") != RECORD_VERSION:
        raise ValueError("not a correlation input record (version %r)" % (d.get("v") if isinstance(d, dict) else None))
    t = d.get("time")
    if type(t) not in (int, float) or not math.isfinite(t):
        raise ValueError("no event time")
    fields = d.get("fields")
    if not isinstance(fields, dict) or not d.get("alert_id"):
        raise ValueError("no fields or alert_id")
    return Match(d.get("rule_id"), d.get("rule_name"), float(t), fields, str(d["alert_id"]),
                 d.get("host"), d.get("record_id"))


def _match_json(m: Match) -> dict[str, Any]:
    return {"rule_id": m.rule_id, "rule_name": m.rule_name, "time": m.time, "fields": dict(m.fields),
            "alert_id": m.alert_id, "host": m.host, "record_id": m.record_id}


def _match_of(j: Mapping[str, Any]) -> Match:
    return Match(j["rule_id"], j["rule_name"], j["time"], j["fields"], j["alert_id"], j["host"],
                 j["record_id"])


# ------------------------------------------------------------------ the forwarder stage

Send = Callable[[bytes, bytes, int], Any]   # send(key, value, timestamp_ms)


class CorrelationForwarder(CorrelationIntake):
    """A Detector stage for the Kafka event processor: base alerts that correlations
    reference -> one compact record per family on the repartition topic (via `send`).

    Suppressed base rules (`generate: false`) are forwarded but not emitted, as in
    CorrelationStage. `holds_state` is False: the records are in the producer, which the
    Processor flushes as its `state` output before committing offsets.
    """

    def __init__(self, correlations: Sequence[Correlation], send: Send, *,
                 suppressed: frozenset[str] = frozenset()):
        super().__init__(suppressed)
        self.families = correlation_families(correlations)
        self._wants = [(f, Correlator(f.correlations)) for f in self.families]
        self.send = send
        self.forwarded = 0

    def targets(self, rule_id: str | None, name: str | None) -> list[Family]:
        return [f for f, c in self._wants if c.wants(rule_id, name)]

    def feed(self, alerts: list[dict], event: dict | None, now: float) -> list[dict]:
        if not alerts:
            return alerts
        matches, out = self.take(alerts, self.targets)
        for match, families in matches:
            ts = int(round(match.time * 1000))
            for f in families:
                self.send(f.key_bytes, encode_record(match, f.fields), ts)
                self.forwarded += 1
        return out

    def tick(self, now: float) -> list[dict]:
        return []

    def finish(self, now: float) -> list[dict]:
        return []

    @property
    def holds_state(self) -> bool:
        return False


# ------------------------------------------------------------------ evaluation

class FamilyEvaluator:
    """One family's correlations over its matches: de-duplication by alert_id, the
    event-time reorder buffer, the Correlator (as CorrelationStage, but fed Matches)."""

    def __init__(self, family: Family, *, suppressed: frozenset[str] = frozenset(),
                 lateness_s: float = 300.0, max_groups: int = 100_000):
        self.family = family
        self.suppressed = suppressed
        self.lateness_s = lateness_s
        self.correlator = Correlator(family.correlations, max_groups=max_groups)
        self.buffer = EventTimeBuffer(lateness_s)
        self.horizon_s = 2 * lateness_s + family.max_timespan_s
        self._held: dict[str, Match] = {}          # alert_id -> match, in the buffer
        self._seen: dict[str, float] = {}          # alert_id -> time (de-duplication)
        self._seen_heap: list[tuple[float, str]] = []
        self.duplicates = 0
        self.alerts = 0

    def feed(self, match: Match, now: float) -> list[dict]:
        if match.alert_id in self._seen:
            self.duplicates += 1
            return []
        self._seen[match.alert_id] = match.time
        heapq.heappush(self._seen_heap, (match.time, match.alert_id))
        self._held[match.alert_id] = match
        self.buffer.add(match)
        out = self._results(self.buffer.release(), now, final=False)
        self._expire_seen()
        return out

    def finish(self, now: float) -> list[dict]:
        return self._results(self.buffer.flush(), now, final=True)

    @property
    def holds_state(self) -> bool:
        return bool(self.buffer.held) or self.correlator.groups_open > 0

    def _expire_seen(self) -> None:
        if self.buffer.max_seen is None or not math.isfinite(self.horizon_s):
            return
        cutoff = self.buffer.max_seen - self.horizon_s
        heap = self._seen_heap
        while heap and heap[0][0] < cutoff:
            _, aid = heapq.heappop(heap)
            if aid not in self._held:
                self._seen.pop(aid, None)

    def _results(self, matches: list, now: float, final: bool) -> list[dict]:
        results: list[CorrelationResult] = []
        for m in matches:
            self._held.pop(m.alert_id, None)
            results += self.correlator.feed(m)
        if final:
            results += self.correlator.flush()
        detected_at = iso_utc(now)
        out = [correlation_alert(r, detected_at=detected_at) for r in results
               if not is_suppressed(self.suppressed, r.correlation)]
        self.alerts += len(out)
        return out

    def snapshot(self) -> dict[str, Any]:
        held = sorted(self._held.values(), key=lambda m: (m.time, m.alert_id))
        return {"correlator": self.correlator.snapshot(),
                "buffer": {"held": [_match_json(m) for m in held], "max_seen": self.buffer.max_seen,
                           "last_released": self.buffer.last_released, "late": self.buffer.late,
                           "forced": self.buffer.forced},
                "seen": sorted([t, a] for a, t in self._seen.items()),
                "duplicates": self.duplicates}

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Load a snapshot() into this fresh evaluator."""
        skipped = self.correlator.restore(snap["correlator"])
        if skipped:
            log.warning("correlation state of %s not restored (the rule changed): %s",
                        self.family.key, skipped)
        b = snap["buffer"]
        for j in b["held"]:
            m = _match_of(j)
            self._held[m.alert_id] = m
            self.buffer.add(m)
        self.buffer.max_seen = b["max_seen"]
        self.buffer.last_released = b["last_released"]
        self.buffer.late, self.buffer.forced = b["late"], b["forced"]
        for t, a in snap["seen"]:
            self._seen[a] = t
            self._seen_heap.append((t, a))
        heapq.heapify(self._seen_heap)
        self.duplicates = snap.get("duplicates", 0)


class PartitionState:
    """The evaluators of one repartition partition and the last offset applied to them."""

    def __init__(self, families: Sequence[Family] | Mapping[str, Family], *,
                 suppressed: frozenset[str] = frozenset(), lateness_s: float = 300.0):
        self.families = families if isinstance(families, Mapping) else {f.key: f for f in families}
        self.suppressed = suppressed
        self.lateness_s = lateness_s
        self.evaluators: dict[str, FamilyEvaluator] = {}
        self.applied = -1          # offset of the last record applied
        self.dirty = False         # changed since the last snapshot was taken
        self.skipped = 0           # re-delivered records at or below `applied`
        self.bad = 0               # undecodable records
        self.unknown = 0           # records of a family this rule set does not have
        self.records = 0

    def evaluator(self, key: str) -> FamilyEvaluator | None:
        ev = self.evaluators.get(key)
        if ev is None:
            fam = self.families.get(key)
            if fam is None:
                return None
            ev = self.evaluators[key] = FamilyEvaluator(fam, suppressed=self.suppressed,
                                                        lateness_s=self.lateness_s)
        return ev

    def apply(self, offset: int, key: bytes | None, value: bytes | None, now: float) -> list[dict]:
        """One repartition record; skipped (no output) if already applied."""
        if offset <= self.applied:
            self.skipped += 1
            return []
        self.applied = offset
        self.dirty = True
        self.records += 1
        try:
            match = decode_record(value or b"")
            fkey = (key or b"").decode()
        except (ValueError, UnicodeDecodeError) as e:
            self.bad += 1
            if self.bad == 1 or self.bad % 1000 == 0:
                log.warning("correlation input record at offset %d ignored: %s (%d so far)",
                            offset, e, self.bad)
            return []
        ev = self.evaluator(fkey)
        if ev is None:
            self.unknown += 1
            if self.unknown == 1:
                log.warning("correlation input for family %s, which the loaded rules do not "
                            "have: ignored (rules differ between processors?)", fkey)
            return []
        return ev.feed(match, now)

    def finish(self, now: float) -> list[dict]:
        """End of input: release every held match and decide every window."""
        out: list[dict] = []
        for key in sorted(self.evaluators):
            out += self.evaluators[key].finish(now)
        self.dirty = True
        return out

    @property
    def holds_state(self) -> bool:
        return any(ev.holds_state for ev in self.evaluators.values())

    def stats(self) -> dict[str, int]:
        evs = self.evaluators.values()
        return {"records": self.records, "skipped": self.skipped, "bad": self.bad,
                "unknown": self.unknown, "duplicates": sum(e.duplicates for e in evs),
                "held": sum(e.buffer.held for e in evs), "late": sum(e.buffer.late for e in evs),
                "groups_open": sum(e.correlator.groups_open for e in evs),
                "alerts": sum(e.alerts for e in evs)}

    def snapshot(self) -> dict[str, Any]:
        return {"version": SNAPSHOT_VERSION, "applied": self.applied,
                "families": {k: ev.snapshot() for k, ev in sorted(self.evaluators.items())}}

    def encode(self) -> bytes:
        return orjson.dumps(self.snapshot(), default=str)

    @classmethod
    def restore(cls, snap: Mapping[str, Any] | bytes | None, families: Sequence[Family] | Mapping[str, Family],
                **kw: Any) -> "PartitionState":
        """A state from a snapshot (bytes or dict); a fresh one for None."""
        st = cls(families, **kw)
        if snap is None:
            return st
        if isinstance(snap, (bytes, bytearray, memoryview)):
            snap = orjson.loads(bytes(snap))
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported correlation partition snapshot version {snap.get('version')!r}")
        st.applied = int(snap["applied"])
        for key, fsnap in snap.get("families", {}).items():
            ev = st.evaluator(key)
            if ev is None:
                log.warning("correlation state of family %s dropped: the loaded rules do not have it", key)
                continue
            ev.restore(fsnap)
        return st
