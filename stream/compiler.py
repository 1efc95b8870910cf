"""Compile a detection's IR (stream.ir) into one Python callable: the per-event predicates.

A matcher is `match(event, low) -> bool` where `event` is the flat event and
`low` is its `LowerCased` view: each scalar field's lower-cased text, computed
on first use and shared by all rules evaluated on the event. Compilation merges
OR-lists of string values (and of numbers) on one field into a single predicate
(set lookup, startswith/endswith tuples, one alternation) and orders AND
children so cheap, selective checks run first. Fields are looked up by name,
dotted path, or name with its spaces (`_lookup`). Regexes get a literal guard
(`regex_guard`) or, for `c.*c.*c`, a counter (`repeated_literal`).

The prefilter's needles live in stream.needles, the `matched` explanations in stream.explain.
"""
from __future__ import annotations

import re
import re._constants as _sre_constants
import re._parser as _sre_parser
from typing import Any, Callable

from sigstream.stream import values as V
from sigstream.stream.needles import ROUTING_FIELDS, STRING_KINDS, _required_literals, regex_ignores_case

Matcher = Callable[[dict, dict], bool]
MISSING = object()

class LowerCased(dict):
    """field -> lower-cased text of the event's scalar value (None: absent, null or nested).

    Filled lazily: an event is lowered only in the fields its candidate rules read.
    `spaced`: the event's names-without-spaces (see `_lookup`), computed on the first
    field a rule misses.
    """

    __slots__ = ("event", "spaced")

    def __init__(self, event: dict):
        self.event = event
        self.spaced: dict[str, str] | None = None

    def __missing__(self, field: str) -> str | None:
        v = self.event.get(field)
        t = type(v)
        if t is str:
            s = v.lower()
        elif t is int or t is float:
            s = str(v)
        elif t is bool:
            s = "true" if v else "false"
        else:
            s = None
        self[field] = s
        return s


def compile_detection(ir: tuple) -> Matcher:
    """IR tree -> matcher callable."""
    kind = ir[0]
    if kind == "and":
        return _all([compile_detection(c) for c in sorted(ir[1], key=_and_order)])
    if kind == "or":
        return _any(_compile_or_children(ir[1]))
    if kind == "not":
        inner = compile_detection(ir[1])
        return lambda ev, low: not inner(ev, low)
    if kind == "const":
        value = ir[1]
        return lambda ev, low: value
    if kind == "field":
        return field_matcher(ir[1], ir[2])
    if kind == "kw":
        return keyword_matcher(ir[1])
    raise ValueError(f"unknown IR node {kind!r}")


def _and_order(node: tuple) -> int:
    """Cheap and selective first; checks the router already guaranteed last."""
    kind = node[0]
    if kind == "field":
        if node[1] in ROUTING_FIELDS:
            return 5
        return 0 if node[2][0] in STRING_KINDS else 1
    if kind == "kw":
        return 2
    if kind == "or":
        return 2
    if kind == "and":
        return 3
    return 4  # not, const


def _all(fs: list[Matcher]) -> Matcher:
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        a, b = fs
        return lambda ev, low: a(ev, low) and b(ev, low)
    if len(fs) == 3:
        a, b, c = fs
        return lambda ev, low: a(ev, low) and b(ev, low) and c(ev, low)
    if len(fs) == 4:  # e.g. selection, filter, and the log source's Channel and EventID
        a, b, c, d = fs
        return lambda ev, low: a(ev, low) and b(ev, low) and c(ev, low) and d(ev, low)
    if len(fs) == 5:
        a, b, c, d, e = fs
        return lambda ev, low: a(ev, low) and b(ev, low) and c(ev, low) and d(ev, low) and e(ev, low)
    t = tuple(fs)

    def match_all(ev: dict, low: dict) -> bool:
        for f in t:
            if not f(ev, low):
                return False
        return True
    return match_all


def _any(fs: list[Matcher]) -> Matcher:
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        a, b = fs
        return lambda ev, low: a(ev, low) or b(ev, low)
    if len(fs) == 3:
        a, b, c = fs
        return lambda ev, low: a(ev, low) or b(ev, low) or c(ev, low)
    t = tuple(fs)

    def match_any(ev: dict, low: dict) -> bool:
        for f in t:
            if f(ev, low):
                return True
        return False
    return match_any


def _mergeable(node: tuple) -> bool:
    """A case-insensitive string comparison, foldable into a per-field any-of."""
    if node[0] == "field":
        spec = node[2]
    elif node[0] == "kw":
        spec = node[1]
    else:
        return False
    return (spec[0] in STRING_KINDS and not spec[2]) or (spec[0] == "wild" and not spec[3])


def _compile_or_children(children: tuple) -> list[Matcher]:
    groups: dict[Any, list[tuple]] = {}
    numbers: dict[str, list[int | float]] = {}
    rest: list[tuple] = []
    for c in children:
        if _mergeable(c):
            key = c[1] if c[0] == "field" else None  # None: keywords
            groups.setdefault(key, []).append(c)
        elif c[0] == "field" and c[2][0] == "num":
            numbers.setdefault(c[1], []).append(c[2][1])
        else:
            rest.append(c)
    out: list[Matcher] = []
    for field, values in numbers.items():  # e.g. a list of ports: one set lookup
        out.append(_low_field(field, V.numbers_pred(values)))
    for key, nodes in groups.items():
        if len(nodes) == 1:
            out.append(compile_detection(nodes[0]))
            continue
        pred = _any_of([n[2] if n[0] == "field" else n[1] for n in nodes])
        out.append(_low_field(key, pred) if key is not None else _low_keyword(pred))
    out.extend(compile_detection(c) for c in rest)
    return out


def _any_of(specs: list[tuple]) -> V.Pred:
    buckets: dict[str, list[str]] = {"eq": [], "startswith": [], "endswith": [], "contains": [],
                                     "wild": []}
    for spec in specs:
        buckets[spec[0]].append(spec[1])
    return V.any_of_pred(set(buckets["eq"]), buckets["startswith"], buckets["endswith"],
                         buckets["contains"], buckets["wild"])


# --- leaves -----------------------------------------------------------------------------

def _spec_pred(spec: tuple) -> tuple[V.Pred, bool]:
    """(predicate, works on lower-cased text?) for a value spec."""
    kind = spec[0]
    if kind in STRING_KINDS:
        return V.string_pred(kind, spec[1]), not spec[2]
    if kind == "wild":
        return V.wild_pred(spec[1]), not spec[3]
    if kind == "num":
        return V.number_pred(spec[1]), True
    if kind == "bool":
        return V.bool_pred(spec[1]), True
    if kind == "re":
        counted = repeated_literal(spec[1], spec[2])
        if counted is not None:
            return V.repeated_char_pred(*counted), False
        return V.regex_pred(spec[1], spec[2], spec[3], regex_guard(spec[1], spec[2])), False
    if kind == "cidr":
        return V.cidr_pred(spec[1]), False
    if kind == "cmp":
        return V.compare_pred(spec[1], spec[2]), False
    if kind == "ts":
        return V.timestamp_pred(spec[1], spec[2]), False
    raise ValueError(f"spec {kind!r} has no value predicate")


def field_matcher(field: str, spec: tuple) -> Matcher:
    kind = spec[0]
    if kind == "null":
        return lambda ev, low: _lookup(ev, field, low) in (MISSING, None)
    if kind == "exists":
        want = spec[1]
        # the specification: presence only, "be it empty or null"
        return lambda ev, low: (_lookup(ev, field, low) is not MISSING) is want
    if kind == "fieldref":
        return _fieldref(field, spec[1], spec[2], spec[3])
    pred, lowered = _spec_pred(spec)
    return _low_field(field, pred) if lowered else _raw_field(field, pred)


def keyword_matcher(spec: tuple) -> Matcher:
    pred, lowered = _spec_pred(spec)
    return _low_keyword(pred) if lowered else _raw_keyword(pred)


def _low_field(field: str, pred: V.Pred) -> Matcher:
    def match(ev: dict, low: dict) -> bool:
        s = low[field]
        if s is not None:
            return pred(s)
        return _slow(ev, field, pred, True, low)
    return match


def _raw_field(field: str, pred: V.Pred) -> Matcher:
    def match(ev: dict, low: dict) -> bool:
        v = ev.get(field)
        if type(v) is str:
            return pred(v)
        return _slow(ev, field, pred, False, low)
    return match


def _slow(ev: dict, field: str, pred: V.Pred, lowered: bool, low: dict) -> bool:
    """Lists (any element), dotted paths into nested values, names without their spaces,
    non-string scalars."""
    v = _lookup(ev, field, low)
    if v is MISSING or v is None or type(v) is dict:
        return False
    items = v if type(v) is list else (v,)
    for item in items:
        if item is None or type(item) in (dict, list):
            continue
        text = V.text_of(item)
        if pred(text.lower() if lowered else text):
            return True
    return False


def _lookup(ev: dict, field: str, low: dict | None = None) -> Any:
    """The event's value of `field` (MISSING: absent): the key itself, else a dotted path
    into nested dicts, else a key that is `field` with spaces (Windows Defender's `New Value`
    for a rule's `NewValue`: the specification's field naming strips spaces).
    `low`: the event's LowerCased view, which caches the names without spaces."""
    v = ev.get(field, MISSING)
    if v is not MISSING:
        return v
    if "." in field:
        node: Any = ev
        for part in field.split("."):
            if type(node) is not dict or part not in node:
                break
            node = node[part]
        else:
            return node
    # only reached for a field the event lacks: events without spaced names pay one check
    try:
        spaced = low.spaced  # type: ignore[union-attr]
    except AttributeError:  # no LowerCased view at hand
        spaced = spaced_names(ev)
    else:
        if spaced is None:
            spaced = low.spaced = spaced_names(ev)  # type: ignore[union-attr]
    if spaced:
        name = spaced.get(field)
        if name is not None:
            return ev[name]
    return MISSING


_NO_SPACES: dict[str, str] = {}


def spaced_names(ev: dict) -> dict[str, str]:
    """{name without spaces: name} for the event's top-level names holding a space (the
    first such name wins; a name already without spaces is an ordinary key and wins anyway)."""
    try:
        if " " not in "".join(ev):
            return _NO_SPACES
    except TypeError:  # a name that is no string: look at each
        pass
    out: dict[str, str] = {}
    for k in ev:
        if type(k) is str and " " in k:
            out.setdefault(k.replace(" ", ""), k)
    return out


def _leaves(v: Any):
    if type(v) is dict:
        for x in v.values():
            yield from _leaves(x)
    elif type(v) is list:
        for x in v:
            yield from _leaves(x)
    elif v is not None:
        yield v


def _low_keyword(pred: V.Pred) -> Matcher:
    def match(ev: dict, low: dict) -> bool:
        for k, v in ev.items():
            if type(v) not in (dict, list):
                s = low[k]
                if s is not None and pred(s):
                    return True
            else:
                for leaf in _leaves(v):
                    if pred(V.text_of(leaf).lower()):
                        return True
        return False
    return match


def _raw_keyword(pred: V.Pred) -> Matcher:
    def match(ev: dict, low: dict) -> bool:
        for leaf in _leaves(ev):
            if pred(V.text_of(leaf)):
                return True
        return False
    return match


def _fieldref(field: str, other: str, starts: bool, ends: bool) -> Matcher:
    def scalar(ev: dict, low: dict, name: str) -> str | None:
        s = low[name]
        if s is None:
            v = _lookup(ev, name, low)
            if v is MISSING or v is None or type(v) in (dict, list):
                return None
            s = V.text_of(v).lower()
        return s

    def match(ev: dict, low: dict) -> bool:
        a = scalar(ev, low, field)
        b = scalar(ev, low, other)
        if a is None or b is None:
            return False
        if starts and ends:
            return b in a
        if starts:
            return a.startswith(b)
        if ends:
            return a.endswith(b)
        return a == b
    return match


# --- regexes ------------------------------------------------------------------------------

def repeated_literal(pattern: str, flags: int) -> tuple[str, int, bool] | None:
    """(char, n, dotall) if the regex is `c.*c.*c...` (n times c): SigmaHQ's obfuscation
    counters. `re` backtracks through every combination of the c's on a long value that
    matches; counting them per line gives the same answer in linear time."""
    try:
        parsed = _sre_parser.parse(pattern, flags)
    except Exception:
        return None
    items = list(parsed)
    c = _sre_constants
    if len(items) < 3 or len(items) % 2 == 0 or items[0][0] is not c.LITERAL:
        return None
    char = items[0][1]
    any_char = (c.MAX_REPEAT, (0, c.MAXREPEAT, [(c.ANY, None)]))
    for i, (op, av) in enumerate(items):
        if i % 2 == 0 and (op is not c.LITERAL or av != char):
            return None
        if i % 2 == 1 and (op is not any_char[0] or av[0] != 0 or av[1] != c.MAXREPEAT
                           or list(av[2]) != any_char[1][2]):
            return None
    text = chr(char)
    if parsed.state.flags & re.IGNORECASE and text.lower() != text.upper():
        return None  # a letter: re's case folding would count other characters too
    return text, len(items) // 2 + 1, bool(parsed.state.flags & re.DOTALL)


def regex_guard(pattern: str, flags: int) -> tuple[tuple[str, ...], ...] | None:
    """Case-exact literal requirements the value must meet before the regex is worth running
    (substring tests are far cheaper than a failing search): each requirement is a tuple of
    alternatives, of which the value must contain one; all requirements must hold. Each
    requirement is met by its own part of a match, so a literal required n times (as in
    `\\+.*\\+.*\\+`) appears n times and the value must contain it n times (str.count)."""
    try:
        parsed = _sre_parser.parse(pattern, flags)
    except Exception:
        return None
    ignorecase = regex_ignores_case(pattern, flags)
    reqs: list[tuple[str, ...]] = []
    for found in _required_literals(list(parsed)):
        alternatives = tuple(sorted(found))
        if ignorecase and any(not ch.isascii() or ch.isalpha() for g in alternatives for ch in g):
            continue  # re folds case (and Unicode) here; a substring test could wrongly reject
        if len(alternatives) == 1 or alternatives not in reqs:
            reqs.append(alternatives)
    return tuple(reqs) or None
