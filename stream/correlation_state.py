"""Per-correlation evaluation state for stream.correlation: a correlation prepared for
evaluation (`_Spec`: thresholds, slots, aliases, the DNF of an extended condition, its
open groups) and the state of one group (`_Sliding` for "at least" conditions decided at
each match, `_Fixed` for windows decided when they end, `_Temporal` for which rules
matched and in what order), with the value helpers they share: canonical group values,
exact numeric coercion (Fraction), percentile, the sample of contributing matches, and
`Ref` (what a result keeps of a match). All of it is JSON-able through `to_json` /
`from_json` (stream.correlation's snapshot). The semantics are documented in
stream.correlation.
"""
from __future__ import annotations

import functools
import json
import math
import operator
from collections import OrderedDict, deque
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

from sigstream.stream.correlation_rules import TEMPORAL_TYPES, Correlation, _canonical_ref
from sigstream.stream.event_time import iso_utc

if TYPE_CHECKING:  # stream.correlation imports this module
    from sigstream.stream.correlation import Match

US = 1_000_000
SAMPLE_HALF = 50                                   # events listed: first 50 + last 50
HOST_FIELDS = frozenset({"computer", "computername", "hostname", "host", "host.name"})
_AT_LEAST = frozenset({"gt", "gte"})
_NON_MONOTONE_TYPES = frozenset({"value_avg", "value_percentile", "value_median"})
_OPS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
        "eq": operator.eq, "neq": operator.ne}
MAX_TERMS = 256


class Ref(NamedTuple):
    """What a result keeps of a contributing match."""
    rule_id: str | None
    rule_name: str | None
    time_us: int                    # the time it was counted at (integer microseconds)
    alert_id: str
    host: str | None
    record_id: Any
    event_us: int | None = None     # its own event time, when late (counted at a later time)

    def to_dict(self) -> dict[str, Any]:
        d = {"rule_id": self.rule_id, "rule_name": self.rule_name, "host": self.host,
             "record_id": self.record_id,
             "time": iso_utc((self.time_us if self.event_us is None else self.event_us) / US),
             "alert_id": self.alert_id}
        if self.event_us is not None:
            d["late"] = True
        return d


# ------------------------------------------------------------------ values

def _canon(v: Any) -> Any:
    """A group or distinct value, hashable and JSON-able."""
    if v is None or type(v) in (str, int, float):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, sort_keys=True, default=str, separators=(",", ":"))


def _number(v: Any) -> Fraction | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return Fraction(v)
    if isinstance(v, float):
        return Fraction(v) if math.isfinite(v) else None
    if isinstance(v, str):
        s = v.strip()
        try:
            if s[:2].lower() == "0x" or s[:3].lower() == "-0x":
                return Fraction(int(s, 16))
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def field_value(fields: Mapping[str, Any], name: str) -> Any:
    """A field as correlations read it: the flat name, else a dotted path into objects."""
    v = fields.get(name)
    if v is None and "." in name and name not in fields:
        cur: Any = fields
        for part in name.split("."):
            if not isinstance(cur, Mapping):
                return None
            cur = cur.get(part)
        return cur
    return v


def _percentile(values: list[Fraction], p: float) -> Fraction:
    xs = sorted(values)
    rank = Fraction(p) * (len(xs) - 1) / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def _num_out(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


def _ref_json(r: Ref) -> list:
    return list(r)


def _ref_of(j: list) -> Ref:
    return Ref(*j)


def _sample(refs: Sequence[Ref]) -> tuple[Ref, ...]:
    if len(refs) <= 2 * SAMPLE_HALF:
        return tuple(refs)
    return tuple(refs[:SAMPLE_HALF]) + tuple(refs[-SAMPLE_HALF:])


# ------------------------------------------------------------------ compiled correlation

def _dnf(tree: tuple, slot: Mapping[str, int], neg: bool = False) -> list[tuple[frozenset, frozenset]]:
    """Expression -> terms (positive slots, negated slots), negations pushed to the rules."""
    kind = tree[0]
    if kind == "rule":
        s = slot[_key(tree[1])]
        return [(frozenset(), frozenset({s}))] if neg else [(frozenset({s}), frozenset())]
    if kind == "not":
        return _dnf(tree[1], slot, not neg)
    parts = [_dnf(sub, slot, neg) for sub in tree[1]]
    if (kind == "or") != neg:    # or, or a negated and
        return [t for p in parts for t in p]
    terms: list[tuple[frozenset, frozenset]] = [(frozenset(), frozenset())]
    for p in parts:
        terms = [(a | c, b | d) for a, b in terms for c, d in p if not (a | c) & (b | d)]
        if len(terms) > MAX_TERMS:
            raise ValueError(f"extended condition too complex (more than {MAX_TERMS} terms)")
    return terms


@functools.lru_cache(maxsize=65536)
def _key(ref: str) -> str:
    """A reference or rule id as the index holds it (UUIDs canonical, names as they are)."""
    return _canonical_ref(ref)[1]


class _Spec:
    """A correlation prepared for evaluation, with its open groups."""

    def __init__(self, c: Correlation, index: int):
        self.c = c
        self.index = index
        self.key = c.id or (f"name:{c.name}" if c.name else f"title:{c.title}")
        self.type = c.type
        self.span = int(round(c.timespan_s * US))
        self.ops = tuple((op, th) for op, th in c.ops.items())
        self._checks = tuple((_OPS[op], th) for op, th in self.ops)
        self.slots: dict[str, int] = {}
        for i, ref in enumerate(c.rules):
            self.slots.setdefault(_key(ref), i)
        self.aliases = {a: {_key(r): f for r, f in m.items()} for a, m in c.aliases.items()}
        self.group_fields = c.group_by
        self.host_index = next((i for i, g in enumerate(c.group_by) if g.lower() in HOST_FIELDS), None)
        fld = c.value_field
        self.value_fields: tuple[str, ...] | None = (None if c.type not in
                                                     ("value_count", "value_sum", "value_avg",
                                                      "value_percentile", "value_median")
                                                     else (fld,) if isinstance(fld, str) else tuple(fld))
        self.multi_field = self.value_fields is not None and not isinstance(fld, str)
        self.percentile = 50 if c.type == "value_median" else c.condition.get("percentile")
        self.ordered = c.type == "temporal_ordered"
        self.temporal = c.type in TEMPORAL_TYPES
        self.terms: list[tuple[tuple[int, ...], frozenset]] | None = None
        if c.expression is not None:
            self.terms = [(tuple(sorted(p)), n) for p, n in _dnf(c.expression, self.slots)]
        has_not = bool(self.terms) and any(n for _, n in self.terms)
        if c.type in _NON_MONOTONE_TYPES or has_not:
            self.sliding = False
        elif self.terms is not None:
            self.sliding = True
        else:
            self.sliding = bool(self.ops) and all(op in _AT_LEAST for op, _ in self.ops)
        self.depth = 0
        self.groups: OrderedDict[tuple, Any] = OrderedDict()
        self.counters = dict(matches=0, counted=0, results=0, missing_group_field=0,
                             missing_value=0, non_numeric_values=0, groups_dropped_by_cap=0,
                             events_dropped_by_cap=0)
        self.warned_cap = False

    def holds(self, value: Any) -> bool:
        if value is None:
            return False
        for fn, th in self._checks:
            if not fn(value, th):
                return False
        return True

    def field_for(self, name: str, m: Match) -> str:
        mapping = self.aliases.get(name)
        if mapping:
            f = mapping.get(_key(m.rule_id)) if m.rule_id else None
            if f is None and m.rule_name is not None:
                f = mapping.get(m.rule_name)
            if f is not None:
                return f
        return name


# ------------------------------------------------------------------ group state

class _Temporal:
    """Which referenced rules matched, and (ordered) the best in-order chains."""
    __slots__ = ("latest", "chains")

    def __init__(self) -> None:
        self.latest: dict[int, Ref] = {}
        self.chains: dict[tuple[int, int], tuple[Ref, ...]] = {}

    def _offer(self, key: tuple[int, int], chain: tuple[Ref, ...], cutoff: int) -> None:
        cur = self.chains.get(key)
        if cur is None or cur[0].time_us < cutoff or chain[0].time_us > cur[0].time_us:
            self.chains[key] = chain

    def add(self, spec: _Spec, slot: int, ref: Ref, cutoff: int) -> None:
        self.latest[slot] = ref
        if not spec.ordered:
            return
        if spec.terms is None:   # chains over any in-order subset: key (last slot, length)
            best: dict[int, tuple[Ref, ...]] = {1: (ref,)}
            for (j, length), chain in self.chains.items():
                if j < slot and chain[0].time_us >= cutoff:
                    cur = best.get(length + 1)
                    if cur is None or chain[0].time_us > cur[0].time_us:
                        best[length + 1] = chain + (ref,)
            for length, chain in best.items():
                self._offer((slot, length), chain, cutoff)
            return
        for ti, (pos, _neg) in enumerate(spec.terms):   # key (term, prefix length)
            if slot not in pos:
                continue
            p = pos.index(slot)
            if p == 0:
                self._offer((ti, 1), (ref,), cutoff)
                continue
            prev = self.chains.get((ti, p))
            if prev is not None and prev[0].time_us >= cutoff:
                self._offer((ti, p + 1), prev + (ref,), cutoff)

    def evaluate(self, spec: _Spec, cutoff: int) -> tuple[int, bool, tuple[Ref, ...]]:
        present = {s: r for s, r in self.latest.items() if r.time_us >= cutoff}
        if spec.terms is None:
            if spec.ordered:
                best: tuple[Ref, ...] = ()
                for chain in self.chains.values():
                    if chain[0].time_us >= cutoff and (len(chain), chain[0].time_us) > (
                            len(best), best[0].time_us if best else -1):
                        best = chain
                return len(best), spec.holds(len(best)), best
            refs = tuple(sorted(present.values(), key=lambda r: r.time_us))
            return len(present), spec.holds(len(present)), refs
        for ti, (pos, neg) in enumerate(spec.terms):
            if any(s in present for s in neg):
                continue
            if not pos:
                return len(present), True, ()
            if spec.ordered:
                chain = self.chains.get((ti, len(pos)))
                if chain is not None and chain[0].time_us >= cutoff:
                    return len(present), True, chain
            elif all(s in present for s in pos):
                return len(present), True, tuple(sorted((present[s] for s in pos), key=lambda r: r.time_us))
        return len(present), False, ()

    def to_json(self) -> dict:
        return {"latest": [[s, _ref_json(r)] for s, r in self.latest.items()],
                "chains": [[a, b, [_ref_json(r) for r in ch]] for (a, b), ch in self.chains.items()]}

    @classmethod
    def from_json(cls, j: dict) -> "_Temporal":
        t = cls()
        t.latest = {s: _ref_of(r) for s, r in j["latest"]}
        t.chains = {(a, b): tuple(_ref_of(r) for r in ch) for a, b, ch in j["chains"]}
        return t


class _Sliding:
    """State of a group decided on the window ending at each match."""
    __slots__ = ("last", "entries", "distinct", "total", "temporal")

    def __init__(self) -> None:
        self.last = 0
        self.entries: deque = deque()          # event_count: Ref; value_sum: (Ref, Fraction)
        self.distinct: OrderedDict = OrderedDict()   # value_count: value -> latest Ref
        self.total = Fraction(0)
        self.temporal: _Temporal | None = None

    def add(self, spec: _Spec, slot: int, ref: Ref, payload: Any, cap: int) -> int:
        """Add a match (window start = ref time - span); the number of entries dropped by cap."""
        self.last = ref.time_us
        cutoff = ref.time_us - spec.span
        self.expire(spec, cutoff)
        dropped = 0
        if spec.temporal:
            if self.temporal is None:
                self.temporal = _Temporal()
            self.temporal.add(spec, slot, ref, cutoff)
        elif spec.type == "value_count":
            self.distinct[payload] = ref
            self.distinct.move_to_end(payload)
            while len(self.distinct) > cap:
                self.distinct.popitem(last=False)
                dropped += 1
        elif spec.type == "value_sum":
            self.entries.append((ref, payload))
            self.total += payload
            while len(self.entries) > cap:
                self.total -= self.entries.popleft()[1]
                dropped += 1
        else:
            self.entries.append(ref)
            while len(self.entries) > cap:
                self.entries.popleft()
                dropped += 1
        return dropped

    def expire(self, spec: _Spec, cutoff: int) -> None:
        if spec.type == "value_count":
            d = self.distinct
            while d and next(iter(d.values())).time_us < cutoff:
                d.popitem(last=False)
        elif spec.type == "value_sum":
            e = self.entries
            while e and e[0][0].time_us < cutoff:
                self.total -= e.popleft()[1]
        elif not spec.temporal:
            e = self.entries
            while e and e[0].time_us < cutoff:
                e.popleft()

    def evaluate(self, spec: _Spec, now: int) -> tuple[Any, bool, list[Ref]]:
        if spec.temporal:
            assert self.temporal is not None
            value, ok, refs = self.temporal.evaluate(spec, now - spec.span)
            return value, ok, list(refs)
        if spec.type == "value_count":
            return len(self.distinct), spec.holds(len(self.distinct)), list(self.distinct.values())
        if spec.type == "value_sum":
            value = _num_out(self.total)
            return value, spec.holds(value), [r for r, _ in self.entries]
        return len(self.entries), spec.holds(len(self.entries)), list(self.entries)

    def to_json(self, spec: _Spec) -> dict:
        j: dict[str, Any] = {"last": self.last}
        if spec.temporal:
            j["temporal"] = self.temporal.to_json() if self.temporal else None
        elif spec.type == "value_count":
            j["distinct"] = [[v, _ref_json(r)] for v, r in self.distinct.items()]
        elif spec.type == "value_sum":
            j["entries"] = [[_ref_json(r), x.numerator, x.denominator] for r, x in self.entries]
        else:
            j["entries"] = [_ref_json(r) for r in self.entries]
        return j

    @classmethod
    def from_json(cls, spec: _Spec, j: dict) -> "_Sliding":
        s = cls()
        s.last = j["last"]
        if spec.temporal:
            s.temporal = _Temporal.from_json(j["temporal"]) if j.get("temporal") else None
        elif spec.type == "value_count":
            s.distinct = OrderedDict((v, _ref_of(r)) for v, r in j["distinct"])
        elif spec.type == "value_sum":
            s.entries = deque((_ref_of(r), Fraction(n, d)) for r, n, d in j["entries"])
            s.total = sum((x for _, x in s.entries), Fraction(0))
        else:
            s.entries = deque(_ref_of(r) for r in j["entries"])
        return s


class _Fixed:
    """A window [start, start + span] opened by a group's first match, decided at its end."""
    __slots__ = ("start", "end", "last", "n", "head", "tail", "host", "mixed", "values",
                 "total", "temporal")

    def __init__(self, start: int, span: int) -> None:
        self.start, self.end, self.last, self.n = start, start + span, start, 0
        self.head: list[Ref] = []
        self.tail: deque[Ref] = deque(maxlen=SAMPLE_HALF)
        self.host: str | None = None
        self.mixed = False
        self.values: Any = None        # value_count: set; percentile/median: list of Fraction
        self.total = Fraction(0)       # value_sum / value_avg
        self.temporal: _Temporal | None = None

    def add(self, spec: _Spec, slot: int, ref: Ref, payload: Any, cap: int) -> int:
        if self.n == 0:
            self.host = ref.host
        elif ref.host != self.host:
            self.mixed = True
        self.n += 1
        self.last = ref.time_us
        (self.head if len(self.head) < SAMPLE_HALF else self.tail).append(ref)
        t = spec.type
        if spec.temporal:
            if self.temporal is None:
                self.temporal = _Temporal()
            self.temporal.add(spec, slot, ref, self.start)
        elif t == "value_count":
            if self.values is None:
                self.values = set()
            if payload not in self.values:
                if len(self.values) >= cap:
                    return 1
                self.values.add(payload)
        elif t in ("value_sum", "value_avg"):
            self.total += payload
        elif t in ("value_percentile", "value_median"):
            if self.values is None:
                self.values = []
            if len(self.values) >= cap:
                return 1
            self.values.append(payload)
        return 0

    def evaluate(self, spec: _Spec) -> tuple[Any, bool]:
        t = spec.type
        if spec.temporal:
            assert self.temporal is not None
            value, ok, _ = self.temporal.evaluate(spec, self.start)
            return value, ok
        if t == "value_count":
            value: Any = len(self.values or ())
        elif t == "value_sum":
            value = _num_out(self.total)
        elif t == "value_avg":
            value = _num_out(self.total / self.n) if self.n else None
        elif t in ("value_percentile", "value_median"):
            value = _num_out(_percentile(self.values, spec.percentile)) if self.values else None
        else:
            value = self.n
        return value, spec.holds(value)

    def to_json(self, spec: _Spec) -> dict:
        vals = self.values
        if isinstance(vals, set):
            vals = {"set": sorted(vals, key=lambda v: (str(type(v)), str(v)))}
        elif isinstance(vals, list):
            vals = {"list": [[x.numerator, x.denominator] for x in vals]}
        return {"start": self.start, "end": self.end, "last": self.last, "n": self.n,
                "head": [_ref_json(r) for r in self.head], "tail": [_ref_json(r) for r in self.tail],
                "host": self.host, "mixed": self.mixed, "values": vals,
                "total": [self.total.numerator, self.total.denominator],
                "temporal": self.temporal.to_json() if self.temporal else None}

    @classmethod
    def from_json(cls, spec: _Spec, j: dict) -> "_Fixed":
        w = cls(j["start"], 0)
        w.end, w.last, w.n = j["end"], j["last"], j["n"]
        w.head = [_ref_of(r) for r in j["head"]]
        w.tail = deque((_ref_of(r) for r in j["tail"]), maxlen=SAMPLE_HALF)
        w.host, w.mixed = j["host"], j["mixed"]
        vals = j["values"]
        if vals is None:
            w.values = None
        elif "set" in vals:
            w.values = set(vals["set"])
        else:
            w.values = [Fraction(n, d) for n, d in vals["list"]]
        w.total = Fraction(*j["total"])
        w.temporal = _Temporal.from_json(j["temporal"]) if j.get("temporal") else None
        return w
