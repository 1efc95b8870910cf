"""The matching engine: compiled rules, routed by log source, prefiltered by literals.

Per event: find the bucket of rules for its (Channel, EventID) (built once per
key and cached), scan the event's values for the bucket's needles (ignoring
case), and run the few candidate rules on a lazily lower-cased view of it.
`match_all` evaluates every rule on every event (no routing, no prefilter) and
exists to check the index.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from sigstream.stream.cache import default_cache_dir
from sigstream.stream.compiler import LowerCased, Matcher, compile_detection
from sigstream.stream.explain import Explainer, compile_explainer
from sigstream.stream.needles import FOLD_ASCII, FOLD_UNICODE, needle_folding, needles
from sigstream.stream.prefilter import Bucket, NeedleIndex
from sigstream.stream.routing import UNROUTABLE, LogsourceRouter, event_key, route_of
from sigstream.stream.rules import Rule

log = logging.getLogger(__name__)
MAX_BUCKETS = 4096  # distinct (channel, event id) keys kept; beyond that, built per event


@dataclass(slots=True)
class CompiledRule:
    rule: Rule
    match: Matcher
    index: int
    _explainer: Explainer | None = None  # compiled on the rule's first alert

    def explain(self, event: dict, low: dict | None = None) -> list[dict]:
        """Why this rule matched `event` (`low`: its LowerCased view, if at hand)."""
        if self._explainer is None:
            self._explainer = compile_explainer(self.rule.ir)
        return self._explainer(event, LowerCased(event) if low is None else low)


@dataclass(slots=True)
class EngineError:
    rule: Rule
    reason: str


_SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))
_is_str = frozenset((str,)).__contains__  # applied to types, in C (itertools.compress)
# A needle that can occur in the text of a number, bool or null ("123", "true", "none"):
# only then does the scan need those values.
_NUMBER_LIKE = re.compile(r"[0-9.+\-e]+")
_SCALAR_WORDS = ("true", "false", "none", "-inf", "nan")


def needs_non_strings(needles: Iterable[str]) -> bool:
    """Could any of these needles occur in str() of an int, float, bool or None?"""
    return any(_NUMBER_LIKE.fullmatch(n) or any(n in w for w in _SCALAR_WORDS) or "\n" in n
               for n in needles)  # a needle with a newline could span two values


def event_text(ev: dict, non_strings: bool = True) -> str:
    """Every value of the event, one per line, as the needle scan reads it (case as is).

    Values nested in lists/dicts are included; the scan may over-select
    (e.g. "None" for null), never miss. `non_strings=False` leaves out top-level
    numbers, bools and nulls, for needles that cannot occur in them (needs_non_strings).
    """
    values = ev.values()
    if _SCALAR_TYPES.issuperset(map(type, values)):  # the common case, at C speed
        if non_strings:
            return "\n".join(map(str, values))
        return "\n".join(compress(values, map(_is_str, map(type, values))))
    out: list[str] = []
    for v in values:
        _collect_text(v, out)
    return "\n".join(out)


def _collect_text(v: Any, out: list[str]) -> None:
    if type(v) is dict:
        for x in v.values():
            _collect_text(x, out)
    elif type(v) is list:
        for x in v:
            _collect_text(x, out)
    elif v is not None:
        out.append(str(v))


class Engine:
    def __init__(self, rules: Sequence[Rule], on_error: Callable[[EngineError], None] | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 enrich: Callable[[dict], None] | None = None):
        """`enrich`, if given, adds derived fields to each event (in place) before matching."""
        self.errors: list[EngineError] = []
        self.error_count = 0
        self._enrich = enrich
        self._on_error = on_error
        self.rules: list[CompiledRule] = []
        routes, rule_needles = [], []
        for rule in rules:
            try:
                matcher = compile_detection(rule.ir)
            except Exception as e:  # IR that cannot be compiled: report, keep the rest
                self._error(EngineError(rule, f"cannot compile: {e}"))
                continue
            self.rules.append(CompiledRule(rule, matcher, len(self.rules)))
            routes.append(route_of(rule.ir))
            rule_needles.append(needles(rule.ir))
        self._needles = rule_needles
        folding = [needle_folding(r.rule.ir) if self._needles[r.index] else 0 for r in self.rules]
        self._fold = {level: frozenset(i for i, f in enumerate(folding) if f == level)
                      for level in (FOLD_ASCII, FOLD_UNICODE)}
        self._router = LogsourceRouter(routes)
        cache = Path(cache_dir or default_cache_dir()) if use_cache else None
        self._index = NeedleIndex(enumerate(rule_needles), cache)
        self._cache = cache
        self._buckets: dict[tuple[Any, Any], Bucket] = {}
        self._last: tuple[dict, dict] | None = None

    MAX_KEPT_ERRORS = 1000  # a long-running processor keeps the latest ones; error_count counts all

    def _error(self, err: EngineError) -> None:
        self.error_count += 1
        self.errors.append(err)
        if len(self.errors) > self.MAX_KEPT_ERRORS:
            del self.errors[: len(self.errors) - self.MAX_KEPT_ERRORS // 2]
        if self._on_error:
            self._on_error(err)

    def _bucket(self, channel: Any, event_id: Any) -> Bucket:
        key = event_key(channel, event_id)
        members = range(len(self.rules)) if key == UNROUTABLE else self._router.rules_for(*key)
        non_strings = needs_non_strings(n for i in members for n in (self._needles[i] or ()))
        return Bucket(self._index, members, self._fold, non_strings)

    def match(self, event: dict) -> list[CompiledRule]:
        """The rules that match this (normalised) event, in load order."""
        if self._enrich is not None:
            self._enrich(event)
        key = (event.get("Channel"), event.get("EventID"))
        try:
            bucket = self._buckets[key]
        except KeyError:
            bucket = self._bucket(*key)
            if len(self._buckets) < MAX_BUCKETS:
                self._buckets[key] = bucket
        except TypeError:  # unhashable Channel/EventID values
            bucket = self._bucket(*key)
        if not bucket.members:
            return []
        low = LowerCased(event)
        rules = self.rules
        self._last = (event, low)
        text = event_text(event, bucket.non_strings)
        candidates = bucket.candidates(text, self._needles.__getitem__, self._cache)
        return self._run(map(rules.__getitem__, candidates), event, low)

    def explain(self, hit: CompiledRule, event: dict) -> list[dict]:
        """Why `hit` matched `event`; reuses the lower-cased values if `event` was the last matched."""
        last = self._last
        low = last[1] if last is not None and last[0] is event else None
        return hit.explain(event, low)

    def match_all(self, event: dict) -> list[CompiledRule]:
        """Brute force: every rule, no routing, no prefilter (reference for tests)."""
        if self._enrich is not None:
            self._enrich(event)
        return self._run(self.rules, event, LowerCased(event))

    def _run(self, candidates: Iterable[CompiledRule], event: dict, low: dict) -> list[CompiledRule]:
        hits = []
        for r in candidates:
            try:
                if r.match(event, low):
                    hits.append(r)
            except Exception as e:  # one odd value must not stop the stream
                log.debug("rule %s failed on event: %s", r.rule.id, e)
                self._error(EngineError(r.rule, f"evaluation failed: {type(e).__name__}: {e}"))
        return hits

    def stats(self) -> dict[str, Any]:
        return {"rules": len(self.rules), "buckets": len(self._buckets),
                "prefilter": self._index.backend,
                "unfiltered_rules": sum(1 for n in self._needles if n is None)}
