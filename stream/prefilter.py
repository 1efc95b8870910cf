"""Literal prefilter: Aho-Corasick scans pick the rules worth evaluating per event.

Each rule contributes needles (stream.compiler.needles): lower-cased literals
of which one must occur in the event for the rule to match. Rules without
needles are always candidates. Like the router, the prefilter may over-select,
never miss.

Rules routed to exactly one (Channel, EventID) get one automaton per key. Rules
with looser routes (any channel or any event id) would otherwise be copied into
every key's automaton, so they share one automaton whose hits each bucket
narrows to its own members.
"""
from __future__ import annotations

from typing import Iterable

from operator import itemgetter

import ahocorasick

_second = itemgetter(1)

RuleNeedles = Iterable[tuple[int, "frozenset[str] | None"]]


class NeedleIndex:
    """The needles of a set of rules in one automaton."""

    def __init__(self, rule_needles: RuleNeedles):
        by_needle: dict[str, list[int]] = {}
        unfiltered = []
        for idx, needles in rule_needles:
            if needles is None:
                unfiltered.append(idx)
            for n in needles or ():
                by_needle.setdefault(n, []).append(idx)
        self.unfiltered = tuple(unfiltered)
        self.needle_rules: list[tuple[int, ...]] = list(map(tuple, by_needle.values()))
        self._iter = None
        if by_needle:
            automaton = ahocorasick.Automaton()
            for i, needle in enumerate(by_needle):
                automaton.add_word(needle, i)
            automaton.make_automaton()
            self._iter = automaton.iter

    def scan(self, text: str) -> set[int]:
        """Ids of the needles that occur in `text`."""
        if self._iter is None:
            return set()
        return set(map(_second, self._iter(text)))


class Bucket:
    """The candidate rules for one (channel, event id) key."""

    __slots__ = ("exact", "wild", "wild_members", "_wild_by_needle", "empty")

    def __init__(self, exact: RuleNeedles, wild: NeedleIndex, wild_members: Iterable[int]):
        self.exact = NeedleIndex(exact)
        self.wild = wild
        self.wild_members = frozenset(wild_members)
        self._wild_by_needle: dict[int, tuple[int, ...]] = {}
        self.empty = not self.exact.unfiltered and not self.exact.needle_rules and not self.wild_members

    def candidates(self, text: str) -> list[int]:
        exact = self.exact
        rules = set(exact.unfiltered)
        for v in exact.scan(text):
            rules.update(exact.needle_rules[v])
        if self.wild_members:
            members = self.wild_members
            rules.update(members.intersection(self.wild.unfiltered))
            cache = self._wild_by_needle
            for v in self.wild.scan(text):
                rs = cache.get(v)
                if rs is None:
                    rs = cache[v] = tuple(i for i in self.wild.needle_rules[v] if i in members)
                rules.update(rs)
        return sorted(rules)
