"""Literal prefilter: one Aho-Corasick scan per event picks the rules worth evaluating.

Each rule contributes needles (stream.compiler.needles): lower-cased literals
of which one must occur in the event for the rule to match. Rules without
needles are always candidates. Like the router, it may over-select, never miss.
"""
from __future__ import annotations

import ahocorasick


class NeedleIndex:
    def __init__(self, rule_needles: list[tuple[int, frozenset[str] | None]]):
        self.always: list[int] = []
        by_needle: dict[str, list[int]] = {}
        for idx, needles in rule_needles:
            if needles is None:
                self.always.append(idx)
            else:
                for n in needles:
                    by_needle.setdefault(n, []).append(idx)
        self.needle_rules: list[tuple[int, ...]] = []
        self._automaton = None
        if by_needle:
            a = ahocorasick.Automaton()
            for i, (needle, idxs) in enumerate(by_needle.items()):
                a.add_word(needle, i)
                self.needle_rules.append(tuple(idxs))
            a.make_automaton()
            self._automaton = a
        self._always_set = frozenset(self.always)

    @property
    def needle_count(self) -> int:
        return len(self.needle_rules)

    def candidates(self, text: str) -> list[int]:
        """Rule positions that may match an event whose lower-cased text is `text`."""
        if self._automaton is None:
            return self.always
        found = {v for _, v in self._automaton.iter(text)}
        if not found:
            return self.always
        rules = set(self._always_set)
        needle_rules = self.needle_rules
        for v in found:
            rules.update(needle_rules[v])
        return sorted(rules)
