"""Sigma correlation rules, evaluated in memory over a stream of rule matches.

    c = Correlator(loaded.correlations)
    for m in matches_in_event_time_order:        # Match (match_from_alert(alert) builds one)
        results += c.feed(m)                      # CorrelationResult for each correlation that fires
    results += c.advance(now_event_time)          # optional: event time moved on without matches
    results += c.flush()                          # end of input

Pure: no clock, no I/O; event time comes with each Match (stream.event_time reads it
and puts late input back in order). Same input sequence, same results, in the same
order, however `advance` calls are interleaved: every decision depends on event times
only. `snapshot()` / `restore()` carry the state as JSON-able data.

This module owns the evaluator: the inputs and outputs (`Match`, `CorrelationResult`,
`Ref`, `match_from_alert`) and `Correlator` (dispatch to correlations, window closing,
chaining, results, counters, snapshots). stream.correlation_state holds each
correlation's prepared form and per-group state (sliding/fixed windows, temporal
chains) with the value helpers; stream.correlation_rules the `Correlation` records.

Semantics (specification: SigmaHQ sigma-specification, "Sigma Correlation Rules"; each
decision has a test in tests/unit/test_correlation.py):

- Window. "The time frame should not be restricted to boundaries" (spec, temporal): the
  timespan is a sliding window over event time, inclusive at both ends: two matches at
  most `timespan` apart are within it. Times are compared as integer microseconds, so
  boundaries are exact.
- Two ways to decide, chosen by the condition:
  * "at least" conditions (only `gt`/`gte`, on event_count, value_count, value_sum,
    temporal counts, and extended temporal conditions without `not`) can only become
    true as matches arrive. They are checked on the window ending at each match; the
    group fires as soon as it holds (`window: sliding`). Exact: some span-long window
    satisfies the condition iff one ending at a match does.
  * Everything else (`lt`, `lte`, `eq`, `neq`; value_avg/percentile/median whatever the
    operator; extended conditions with `not`) could be undone by the next match, and a
    sliding window would make `lt: 3` true at every first match. Such a group opens a
    window at its first match, [first, first + timespan], and the condition is decided
    once, when event time passes the window's end (`advance`, the next `feed`, or
    `flush`) (`window: fixed`). Like a SIEM's time bucket, but aligned to the data.
- Firing resets the group: the next alert needs new matches. Six failures with
  `gte: 3` give two alerts, not four; no match is counted in two alerts of the same
  correlation and group, and an alert is an incident, not a per-event echo.
- Firing order: results of a `feed` come in correlation order; a result that feeds a
  chained correlation is followed at once by that correlation's results (depth
  first). Windows closing in `advance` come in order of window end, upstream
  correlations first on ties.
- Grouping. `group-by` names fields; an alias (spec, "Field Name Aliases") names, per
  referenced rule, the field that holds the value in that rule's events (looked up by
  the match's rule id, then name). A rule the alias does not map uses the alias name
  itself as the field. Aliases also apply to `condition.field`. A dotted name falls back
  to nested objects. Values are compared as they are (type and case kept: "Alice" and
  "alice" are two groups; 1 and "1" too); lists/objects by their JSON text.
- A match without a group-by field (absent or null) is not counted for that
  correlation (`missing_group_field`), as Splunk `stats by` and Elastic terms
  aggregations leave such events out: putting them all in one "null" group would add up
  unrelated events. "" and "-" are values.
- Value types: value_count counts distinct non-null values of `condition.field` (a list
  of fields: distinct combinations); a match without the value is not counted
  (`missing_value`). value_sum/avg/percentile/median take numbers: int, float, or text
  holding a decimal or 0x-hex number; booleans, NaN/inf and other text are ignored and
  counted (`non_numeric_values`). Sums are exact (fractions), so the same matches give
  the same value in any replay. Percentile: linear interpolation between closest ranks
  (numpy's default); median = 50th percentile. A sliding value_count result lists one
  match per distinct value (its latest), not every match.
- temporal: the count is the number of different referenced rules matched in the window
  (default condition: all of them). temporal_ordered: the length of the longest chain of
  matches of different rules in the listed order (each later in the input than the one
  before; equal times count in input order, which stream.event_time makes (time,
  alert_id)). Extended conditions (`a and (b or not c)`, pySigma 1.5) are checked as a
  disjunction of terms; for temporal_ordered the positive rules of a term must appear in
  listed order; `not x`: no match of x in the window.
- Chaining: a result is a Match of its correlation (rule_id/rule_name = the
  correlation's id/name; fields = its group, under the group-by names; alert_id = the
  correlation alert's id) fed to the correlations that reference it, at the time its
  verdict became final (`decided_at`: the firing match's time, or the fixed window's
  end). Cycles are rejected when loading, so this ends.
- Late input (a match older than the latest time seen) is counted (`late`) and counted
  in at the latest time seen; its reference keeps its own time.
- Memory: state older than the timespan is dropped. At most `max_groups` open groups
  per correlation: a new group beyond that evicts the oldest one (least recently
  matched; for fixed windows the earliest to end, undecided), counted in
  `groups_dropped_by_cap`, warned once per correlation. At most `max_group_events`
  stored matches/values per group (oldest dropped, or new values ignored for fixed
  windows; `events_dropped_by_cap`). Each result lists at most 100 contributing matches
  (the first 50 and the last 50) plus the total.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sigstream.stream.correlation_rules import Correlation
from sigstream.stream.correlation_state import (
    US,
    Ref,
    _canon,
    _Fixed,
    field_value,
    _key,
    _number,
    _sample,
    _Sliding,
    _Spec,
)
from sigstream.stream.event_time import event_time, parse_time

__all__ = ["Correlator", "CorrelationResult", "Match", "Ref", "match_from_alert", "SNAPSHOT_VERSION"]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class Match:
    """One input: a base rule match, or a correlation result feeding a chained correlation."""
    rule_id: str | None
    rule_name: str | None
    time: float                     # event time, epoch seconds
    fields: Mapping[str, Any]       # the event (group-by and value fields are read here)
    alert_id: str
    host: str | None = None
    record_id: Any = None           # EventRecordID or similar



@dataclass(frozen=True)
class CorrelationResult:
    correlation: Correlation
    group: dict[str, Any]           # group-by name -> value
    first_time: float
    last_time: float
    decided_at: float               # event time the verdict became final
    value: Any                      # the count or aggregate the condition was checked on
    events: tuple[Ref, ...]         # contributing matches (at most 100)
    events_total: int
    host: str | None
    alert_id: str
    window: str                     # "sliding" | "fixed"

    @property
    def condition(self) -> dict[str, Any]:
        return dict(self.correlation.condition)

    def as_match(self) -> Match:
        c = self.correlation
        return Match(c.id, c.name, self.decided_at, dict(self.group), self.alert_id, self.host, None)


def match_from_alert(alert: Mapping[str, Any]) -> Match | None:
    """A native alert document (stream.alerts.build_alert) -> Match; None without event time."""
    event = alert.get("event") or {}
    t = event_time(event)
    if t is None:
        t = parse_time(alert.get("event_time"))
    if t is None:
        return None
    rule = alert.get("rule") or {}
    return Match(rule.get("id"), rule.get("name"), t, event, str(alert.get("alert_id")),
                 alert.get("host"), event.get("EventRecordID"))


# ------------------------------------------------------------------ the correlator

class Correlator:
    """Evaluates correlations (as resolved by stream.rules) over matches in event-time order."""

    def __init__(self, correlations: Sequence[Correlation], *, max_groups: int = 100_000,
                 max_group_events: int = 100_000):
        if max_groups < 1 or max_group_events < 1:
            raise ValueError("max_groups and max_group_events must be >= 1")
        self.max_groups = max_groups
        self.max_group_events = max_group_events
        self.specs: list[_Spec] = []
        self.errors: list[tuple[Correlation, str]] = []   # left out: could not be prepared
        for c in correlations:
            try:
                self.specs.append(_Spec(c, len(self.specs)))
            except (ValueError, KeyError, TypeError) as e:
                self.errors.append((c, str(e)))
                log.error("correlation %r left out: %s", c.title, e)
        self._by_ref: dict[str, list[tuple[_Spec, int]]] = {}
        self._target_cache: dict[tuple, tuple[tuple[_Spec, int], ...]] = {}
        for spec in self.specs:
            for ref, slot in spec.slots.items():
                self._by_ref.setdefault(ref, []).append((spec, slot))
        self._set_depths()
        self._fixed = [s for s in self.specs if not s.sliding]
        self._sliding = [s for s in self.specs if s.sliding]
        self.now: int | None = None      # latest event time seen (us)
        self.matches = 0
        self.results = 0
        self.late = 0

    def _set_depths(self) -> None:
        """Depth = longest chain of correlations below (ties in `advance`: upstream first)."""
        by_key: dict[str, list[_Spec]] = {}
        for s in self.specs:
            for k in (s.c.id and _key(s.c.id), s.c.name):
                if k:
                    by_key.setdefault(k, []).append(s)
        memo: dict[int, int] = {}

        def depth(s: _Spec, seen: frozenset) -> int:
            if s.index in memo:
                return memo[s.index]
            below = [u for ref in s.slots for u in by_key.get(ref, ()) if u.index not in seen]
            d = 1 + max((depth(u, seen | {u.index}) for u in below), default=-1)
            memo[s.index] = d
            return d

        for s in self.specs:
            s.depth = depth(s, frozenset({s.index}))

    # ---------------------------------------------------------- inputs

    def wants(self, rule_id: str | None, rule_name: str | None) -> bool:
        """Does any correlation reference this rule (by id or name)?"""
        return bool(self._targets(rule_id, rule_name))

    def feed(self, match: Match) -> list[CorrelationResult]:
        """One match (event times non-decreasing; an older one is counted as late)."""
        if match.time is None or not math.isfinite(match.time):
            raise ValueError(f"match {match.alert_id!r} has no event time")
        own_t = t = int(round(match.time * US))
        self.matches += 1
        if self.now is not None and t < self.now:
            self.late += 1
            t = self.now
        out = self._advance(t) if self._fixed or self.now is None or t > self.now else []
        out += self._dispatch(match, t, own_t)
        return out

    def advance(self, time: float) -> list[CorrelationResult]:
        """Event time moved on to `time`: decide the fixed windows that ended before it.

        A promise that no match older than `time` follows (one that does is late)."""
        t = int(round(time * US))
        if self.now is not None and t <= self.now:
            return []
        return self._advance(t)

    def flush(self) -> list[CorrelationResult]:
        """End of input: decide every open fixed window, forget everything."""
        out = self._advance(None)
        for spec in self.specs:
            spec.groups.clear()
        return out

    # ---------------------------------------------------------- machinery

    def _advance(self, t: int | None) -> list[CorrelationResult]:
        """Close fixed windows ending before t (None: all), in end order; expire sliding state."""
        if t is not None:
            self.now = t if self.now is None else max(self.now, t)
        out: list[CorrelationResult] = []
        while True:
            best: _Spec | None = None
            best_key: tuple = ()
            for spec in self._fixed:
                if spec.groups:
                    w = next(iter(spec.groups.values()))
                    k = (w.end, spec.depth, spec.index)
                    if (t is None or w.end < t) and (best is None or k < best_key):
                        best, best_key = spec, k
            if best is None:
                break
            key, w = best.groups.popitem(last=False)
            value, ok = w.evaluate(best)
            if ok:
                refs = list(w.head) + list(w.tail)
                host = (w.host if not w.mixed else None) if best.host_index is None else None
                r = self._result(best, key, value, refs, w.n, w.start, w.last, w.end, host, "fixed")
                out.append(r)
                out += self._dispatch(r.as_match(), w.end, w.end)
        if t is not None:
            for spec in self._sliding:
                self._expire_groups(spec, t)
        return out

    def _expire_groups(self, spec: _Spec, t: int) -> None:
        cutoff = t - spec.span
        groups = spec.groups
        while groups and next(iter(groups.values())).last < cutoff:
            groups.popitem(last=False)

    def _targets(self, rule_id: str | None, rule_name: str | None) -> tuple[tuple[_Spec, int], ...]:
        """(correlation, slot) pairs a rule feeds, one per correlation, in correlation order."""
        k = (rule_id, rule_name)
        found = self._target_cache.get(k)
        if found is None:
            pairs: list[tuple[_Spec, int]] = []
            if rule_id:
                pairs += self._by_ref.get(_key(rule_id), ())
            if rule_name:
                pairs += self._by_ref.get(rule_name, ())
            best: dict[int, tuple[_Spec, int]] = {}
            for spec, slot in sorted(pairs, key=lambda x: (x[0].index, x[1])):
                best.setdefault(spec.index, (spec, slot))
            found = tuple(best.values())
            if len(self._target_cache) > 65536:
                self._target_cache.clear()
            self._target_cache[k] = found
        return found

    def _dispatch(self, m: Match, t: int, own_t: int) -> list[CorrelationResult]:
        targets = self._targets(m.rule_id, m.rule_name)
        if not targets:
            return []
        out: list[CorrelationResult] = []
        for spec, slot in targets:
            r = self._add(spec, slot, m, t, own_t)
            if r is not None:
                out.append(r)
                out += self._dispatch(r.as_match(), t, t)
        return out

    def _add(self, spec: _Spec, slot: int, m: Match, t: int, own_t: int) -> CorrelationResult | None:
        cnt = spec.counters
        cnt["matches"] += 1
        key_values = []
        for g in spec.group_fields:
            v = field_value(m.fields, spec.field_for(g, m))
            if v is None:
                cnt["missing_group_field"] += 1
                return None
            key_values.append(_canon(v))
        key = tuple(key_values)
        payload: Any = None
        if spec.value_fields is not None:
            vals = [field_value(m.fields, spec.field_for(f, m)) for f in spec.value_fields]
            if spec.type == "value_count":
                if all(v is None for v in vals):
                    cnt["missing_value"] += 1
                    return None
                payload = _canon(vals[0]) if not spec.multi_field else _canon([_canon(v) for v in vals])
            else:
                payload = _number(vals[0])
                if payload is None:
                    cnt["missing_value" if vals[0] is None else "non_numeric_values"] += 1
                    return None
        cnt["counted"] += 1
        rid = m.record_id if m.record_id is None or type(m.record_id) in (str, int, float, bool) \
            else str(m.record_id)
        # windows use t (a late match counts at the latest time seen); event_us keeps its own
        ref = Ref(m.rule_id, m.rule_name, t, str(m.alert_id), m.host, rid,
                  None if own_t == t else own_t)
        groups = spec.groups
        state = groups.get(key)
        if state is None:
            if spec.sliding:
                self._expire_groups(spec, t)
            if len(groups) >= self.max_groups:
                groups.popitem(last=False)
                cnt["groups_dropped_by_cap"] += 1
                if not spec.warned_cap:
                    spec.warned_cap = True
                    log.warning("correlation %r: more than %d open groups; the oldest are dropped "
                                "(counted in groups_dropped_by_cap)", spec.c.title, self.max_groups)
            state = _Sliding() if spec.sliding else _Fixed(t, spec.span)
            groups[key] = state
        elif spec.sliding:
            groups.move_to_end(key)
        dropped = state.add(spec, slot, ref, payload, self.max_group_events)
        if dropped:
            cnt["events_dropped_by_cap"] += dropped
        if not spec.sliding:
            return None
        value, ok, refs = state.evaluate(spec, t)
        if not ok:
            return None
        del groups[key]   # fired: reset the group
        first = min(r.time_us for r in refs) if refs else t
        host = None
        if spec.host_index is None:
            hosts = {r.host for r in refs}
            host = hosts.pop() if len(hosts) == 1 else None
        return self._result(spec, key, value, refs, len(refs), first, t, t, host, "sliding")

    def _result(self, spec: _Spec, key: tuple, value: Any, refs: list[Ref], total: int,
                first: int, last: int, decided: int, host: str | None, window: str) -> CorrelationResult:
        group = dict(zip(spec.group_fields, key))
        if spec.host_index is not None:
            host = str(key[spec.host_index])
        events = _sample(refs)
        ident = json.dumps([spec.key, sorted(group.items()), sorted(r.alert_id for r in events), total],
                           default=str, separators=(",", ":"))
        spec.counters["results"] += 1
        self.results += 1
        return CorrelationResult(
            correlation=spec.c, group=group, first_time=first / US, last_time=last / US,
            decided_at=decided / US, value=value, events=events, events_total=total, host=host,
            alert_id=hashlib.sha256(ident.encode()).hexdigest()[:32], window=window)

    # ---------------------------------------------------------- state and counters

    @property
    def correlations(self) -> list[Correlation]:
        """The correlations evaluated (those given, less `errors`), in order."""
        return [s.c for s in self.specs]

    @property
    def groups_open(self) -> int:
        return sum(len(s.groups) for s in self.specs)

    @property
    def groups_dropped_by_cap(self) -> int:
        return sum(s.counters["groups_dropped_by_cap"] for s in self.specs)

    @property
    def stats(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        per: dict[str, Any] = {}
        for s in self.specs:
            per[s.key] = dict(s.counters, groups_open=len(s.groups))
            for k, v in s.counters.items():
                totals[k] = totals.get(k, 0) + v
        return {"matches": self.matches, "results": self.results, "late": self.late,
                "groups_open": self.groups_open,
                **{k: v for k, v in totals.items() if k not in ("matches", "results")},
                "per_correlation": per}

    def snapshot(self) -> dict[str, Any]:
        """All evaluation state as JSON-able data (counters excluded)."""
        return {"version": SNAPSHOT_VERSION, "now": self.now, "correlations": [
            {"key": s.key, "type": s.type, "timespan_s": s.c.timespan_s, "window": "sliding" if s.sliding else "fixed",
             "groups": [[list(k), g.to_json(s)] for k, g in s.groups.items()]}
            for s in self.specs]}

    def restore(self, snap: Mapping[str, Any]) -> list[str]:
        """Load a snapshot() into this (fresh) correlator; returns the keys of correlations
        in the snapshot that are gone or changed (their state is not restored)."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported correlation snapshot version {snap.get('version')!r}")
        self.now = snap.get("now")
        by_key = {s.key: s for s in self.specs}
        skipped = []
        for entry in snap.get("correlations", ()):
            s = by_key.get(entry["key"])
            if (s is None or s.type != entry["type"] or s.c.timespan_s != entry["timespan_s"]
                    or ("sliding" if s.sliding else "fixed") != entry["window"]):
                skipped.append(entry["key"])
                continue
            s.groups = OrderedDict(
                (tuple(k), _Sliding.from_json(s, g) if s.sliding else _Fixed.from_json(s, g))
                for k, g in entry["groups"])
        return skipped
