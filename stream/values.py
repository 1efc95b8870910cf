"""Value predicates: one Sigma value spec (see stream.ir) -> a test on one event value.

Two kinds of predicate exist, chosen per spec:
- `low` predicates take the lower-cased text of an event value (the engine
  builds it once per event), used by every case-insensitive string spec, numbers
  and booleans;
- `raw` predicates take the event value's own text (case kept), used by
  `cased`, regular expressions, CIDR, comparisons and timestamp parts.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable

import ahocorasick

Pred = Callable[[str], bool]


def text_of(v: Any) -> str:
    """The text form of a scalar event value (bools as JSON spells them)."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    return v if type(v) is str else str(v)


# --- case-insensitive (lower-cased input) ---------------------------------------------

def string_pred(kind: str, text: str) -> Pred:
    if kind == "eq":
        return text.__eq__
    if kind == "contains":
        return lambda s: text in s
    if kind == "startswith":
        return lambda s: s.startswith(text)
    if kind == "endswith":
        return lambda s: s.endswith(text)
    raise ValueError(kind)


def any_of_pred(eqs: set[str], starts: list[str], ends: list[str], contains: list[str],
                wilds: list[str]) -> Pred:
    """One predicate for an OR of string values on one field (the common Sigma list)."""
    preds: list[Pred] = []
    if eqs:
        preds.append(frozenset(eqs).__contains__)
    if starts:
        t = tuple(starts)
        preds.append(lambda s: s.startswith(t))
    if ends:
        t2 = tuple(ends)
        preds.append(lambda s: s.endswith(t2))
    if contains:
        preds.append(contains_pred(contains))
    if wilds:
        preds.append(wild_pred("|".join(f"(?:{w})" for w in wilds)))
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda s: a(s) or b(s)
    return lambda s: any(p(s) for p in preds)


def contains_pred(needles: list[str]) -> Pred:
    if len(needles) == 1:
        n = needles[0]
        return lambda s: n in s
    if len(needles) <= 4:
        t = tuple(needles)
        return lambda s: any(map(s.__contains__, t))  # map: the loop runs in C
    # many needles: one Aho-Corasick automaton (builds far faster than a regex alternation)
    automaton = ahocorasick.Automaton()
    for n in set(needles):
        automaton.add_word(n, None)
    automaton.make_automaton()

    def pred(s: str) -> bool:
        for _ in automaton.iter(s):
            return True
        return False
    return pred


def wild_pred(regex: str) -> Pred:
    """Full match of a wildcard pattern; compiled on first use (most rules never run)."""
    compiled = None
    if len(regex) > 4 and regex.startswith(".*") and regex.endswith(".*"):
        # `*x*` (keywords, contains with a ? inside): a search for the middle, which `re`
        # finds by its literal prefix instead of backtracking from the end of the value
        # (".*" is always a whole token of string_spec's regexes, see stream.ir.keyword_spec)
        middle = regex[2:-2]

        def search(s: str) -> bool:
            nonlocal compiled
            if compiled is None:
                compiled = re.compile(middle, re.DOTALL).search
            return compiled(s) is not None
        return search

    def pred(s: str) -> bool:
        nonlocal compiled
        if compiled is None:
            compiled = re.compile(regex, re.DOTALL).fullmatch
        return compiled(s) is not None
    return pred


def number_pred(n: int | float) -> Pred:
    """`EventID: 4104` matches 4104, "4104" and "4104.0"."""
    text = str(n).lower()

    def pred(s: str) -> bool:
        if s == text:
            return True
        try:
            return float(s) == n
        except ValueError:
            return False
    return pred


def numbers_pred(ns: list[int | float]) -> Pred:
    """Any of several numbers (an OR-list on one field), as number_pred matches one."""
    texts = frozenset(str(n).lower() for n in ns)
    values = frozenset(ns)  # 443.0 in {443}: equal numbers hash alike

    def pred(s: str) -> bool:
        if s in texts:
            return True
        try:
            return float(s) in values
        except ValueError:
            return False
    return pred


def bool_pred(b: bool) -> Pred:
    return ("true" if b else "false").__eq__


# --- case-kept (raw text input) --------------------------------------------------------

def cased_pred(kind: str, text: str, regex: str | None = None) -> Pred:
    if kind == "wild":
        return wild_pred(regex)  # the regex was built from the unlowered parts
    return string_pred(kind, text)


REGEX_TIMEOUT = 0.25  # seconds, for patterns that risk catastrophic backtracking


class RegexTimeout(Exception):
    """A risky regular expression ran out of time on one value."""


def regex_pred(pattern: str, flags: int, risky: bool = False,
               guard: tuple[tuple[str, ...], ...] | None = None) -> Pred:
    """Unanchored search on the case-kept value; compiled on first use.

    `guard`: requirements (tuples of alternative literals) a value must all meet to match.
    """
    if guard:
        return _guarded(regex_pred(pattern, flags, risky), guard)
    compiled = None
    if risky:
        import regex  # supports a time limit, unlike re

        def guarded(s: str) -> bool:
            nonlocal compiled
            if compiled is None:
                compiled = regex.compile(pattern, flags).search
            try:
                return compiled(s, timeout=REGEX_TIMEOUT) is not None
            except TimeoutError:
                raise RegexTimeout(
                    f"regex {pattern!r} gave up after {REGEX_TIMEOUT}s on a {len(s)}-char value"
                ) from None
        return guarded

    def pred(s: str) -> bool:
        nonlocal compiled
        if compiled is None:
            compiled = re.compile(pattern, flags).search
        return compiled(s) is not None
    return pred


def _guarded(inner: Pred, guard: tuple[tuple[str, ...], ...]) -> Pred:
    """`inner` behind cheap substring checks (stream.compiler.regex_guard); the common
    shapes get their own closure, with the loops in C where possible."""
    times = Counter(alts[0] for alts in guard if len(alts) == 1)
    once = tuple(t for t, n in times.items() if n == 1)
    counted = tuple((t, n) for t, n in times.items() if n > 1)
    one_of = tuple(dict.fromkeys(alts for alts in guard if len(alts) > 1))
    if not counted and not one_of:
        if len(once) == 1:
            g = once[0]
            return lambda s: g in s and inner(s)
        return lambda s: all(map(s.__contains__, once)) and inner(s)
    if not once and not one_of and len(counted) == 1:
        t, n = counted[0]
        return lambda s: s.count(t) >= n and inner(s)
    if not once and not counted and len(one_of) == 1:
        alts = one_of[0]
        return lambda s: any(map(s.__contains__, alts)) and inner(s)
    return lambda s: (all(map(s.__contains__, once)) and all(s.count(t) >= n for t, n in counted)
                      and all(any(map(s.__contains__, alts)) for alts in one_of) and inner(s))


def repeated_char_pred(char: str, times: int, dotall: bool) -> Pred:
    """re.search(f"{c}.*{c}...", s) (stream.compiler.repeated_literal), without backtracking:
    `.` stops at a newline unless DOTALL, so one line must hold the `times` characters."""
    def pred(s: str) -> bool:
        if s.count(char) < times:
            return False
        if dotall or "\n" not in s:
            return True
        return any(line.count(char) >= times for line in s.split("\n"))
    return pred


def cidr_pred(network: str) -> Pred:
    net = ipaddress.ip_network(network)

    def pred(s: str) -> bool:
        try:
            addr = ipaddress.ip_address(s.strip().split("%", 1)[0])
        except ValueError:
            return False
        return addr.version == net.version and addr in net
    return pred


_CMP = {
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "neq": lambda a, b: a != b,
}


def compare_pred(op: str, n: int | float) -> Pred:
    cmp = _CMP[op]

    def pred(s: str) -> bool:
        try:
            return cmp(float(s), n)
        except ValueError:
            return False
    return pred


_TS_PARTS: dict[str, Callable[[datetime], int]] = {
    "minute": lambda d: d.minute,
    "hour": lambda d: d.hour,
    "day": lambda d: d.day,
    "week": lambda d: d.isocalendar()[1],
    "month": lambda d: d.month,
    "year": lambda d: d.year,
}


def parse_timestamp(s: str) -> datetime | None:
    """ISO-8601 (with Z, offset or a space), or epoch seconds/milliseconds -> UTC datetime."""
    s = s.strip()
    try:
        num = float(s)
    except ValueError:
        pass
    else:
        if num > 1e11:  # milliseconds
            num /= 1000.0
        return datetime.fromtimestamp(num, tz=timezone.utc)
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is None:
        return d.replace(tzinfo=timezone.utc)
    return d.astimezone(timezone.utc)


def timestamp_pred(part: str, n: int) -> Pred:
    get = _TS_PARTS[part]

    def pred(s: str) -> bool:
        d = parse_timestamp(s)
        return d is not None and get(d) == n
    return pred
