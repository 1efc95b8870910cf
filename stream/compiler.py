"""Compile a detection's IR (stream.ir) into one Python callable.

A matcher is `match(event, low) -> bool` where `event` is the flat event and
`low` is its `LowerCased` view: each scalar field's lower-cased text, computed
on first use and shared by all rules evaluated on the event. Compilation merges
OR-lists of string values (and of numbers) on one field into a single predicate
(set lookup, startswith/endswith tuples, one alternation) and orders AND
children so cheap, selective checks run first.

`needles(ir)` gives literal texts of which at least one must occur in the
event's lower-cased text for the rule to match (None: no such guarantee); the
prefilter uses them to skip rules.
"""
from __future__ import annotations

import re
import re._constants as _sre_constants
import re._parser as _sre_parser
from typing import Any, Callable

from sigstream.stream import values as V

Matcher = Callable[[dict, dict], bool]
MISSING = object()

STRING_KINDS = ("eq", "contains", "startswith", "endswith")
ROUTING_FIELDS = frozenset({"Channel", "EventID"})
MIN_NEEDLE = 3


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


# --- prefilter needles ------------------------------------------------------------------

# How needles depend on `re`'s Unicode case folding, which str.lower() lacks: a needle
# taken from a case-insensitive regex can be missing from the lower-cased text of a value
# the regex matches ("ſ" matches "s", "ı" and "İ" match "i"; Greek "ς" matches "σ"...).
FOLD_NONE, FOLD_ASCII, FOLD_UNICODE = 0, 1, 2  # ASCII needles only see the few chars below
ASCII_FOLD_CHARS = "\u0130\u0131\u017f\u212a"  # non-ASCII chars re(?i) equates with ASCII letters


def needles(ir: tuple) -> frozenset[str] | None:
    """Literals of which one must appear in the event text if the rule matches."""
    return _needles(ir)[0]


def needle_folding(ir: tuple) -> int:
    """FOLD_NONE, FOLD_ASCII or FOLD_UNICODE: whether the needles of `ir` come from a
    case-insensitive regex, and then whether any of them is non-ASCII."""
    return _needles(ir)[1]


def _needles(ir: tuple) -> tuple[frozenset[str] | None, int]:
    kind = ir[0]
    if kind == "and":
        best: tuple[frozenset[str] | None, int] = (None, FOLD_NONE)
        for c in ir[1]:
            n = _needles(c)
            if n[0] is not None and (best[0] is None or _needle_score(n[0]) > _needle_score(best[0])):
                best = n
        return best
    if kind == "or":
        acc: set[str] = set()
        fold = FOLD_NONE
        for c in ir[1]:
            n, f = _needles(c)
            if n is None:
                return None, FOLD_NONE
            acc |= n
            fold = max(fold, f)
        return frozenset(acc), fold
    if kind == "field":
        if ir[1] in ROUTING_FIELDS:
            return None, FOLD_NONE
        return _spec_needle(ir[2])
    if kind == "kw":
        return _spec_needle(ir[1])
    if kind == "const" and ir[1] is False:
        return frozenset(), FOLD_NONE  # never matches: no needle needed
    return None, FOLD_NONE


def _spec_needle(spec: tuple) -> tuple[frozenset[str] | None, int]:
    if spec[0] in STRING_KINDS:
        text = spec[1].lower()
    elif spec[0] == "wild":
        text = spec[2].lower()
    elif spec[0] == "re":
        found = regex_needles(spec[1], spec[2])
        if found is None or not regex_ignores_case(spec[1], spec[2]):
            return found, FOLD_NONE
        return found, FOLD_ASCII if all(n.isascii() for n in found) else FOLD_UNICODE
    else:
        return None, FOLD_NONE
    return (frozenset((text,)) if _useful(text) else None), FOLD_NONE


RARE_CHARS = "^`"  # cmd and PowerShell escape characters: rare in event data


def _useful(needle: str) -> bool:
    # counted in bytes: a single non-ASCII character (homoglyph, emoji) is selective enough,
    # and so are two characters with an escape character among them ("^^")
    if len(needle) >= 2 and any(c in RARE_CHARS for c in needle):
        return True
    return len(needle.encode("utf-8")) >= (MIN_NEEDLE if needle.isascii() else 2)


def regex_needles(pattern: str, flags: int = 0, min_bytes: int = MIN_NEEDLE) -> frozenset[str] | None:
    """Literals (lower-cased) one of which any match of the regex must contain (None: none known)."""
    try:
        parsed = _sre_parser.parse(pattern, flags)
    except Exception:
        return None
    return _seq_needles(list(parsed), min_bytes)


_INLINE_IGNORECASE = re.compile(r"\(\?[aiLmsux]*i[aiLmsux]*[:)]")


def regex_ignores_case(pattern: str, flags: int) -> bool:
    """re.IGNORECASE given as a flag, or inline anywhere, global `(?i)` or scoped `(?i:...)`."""
    return bool(flags & re.IGNORECASE) or bool(_INLINE_IGNORECASE.search(pattern))


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


def _required_literals(items: list, min_bytes: int = 1,
                       lower: bool = False) -> list[frozenset[str]]:
    """Every literal requirement a match must meet, from the top-level sequence and its
    groups: each a set of alternatives (one for a literal run; the branches' best needles
    for an alternation), of which the matched text contains one."""
    c = _sre_constants
    out: list[frozenset[str]] = []
    run: list[str] = []

    def end_run() -> None:
        if run:
            text = "".join(run)
            out.append(frozenset((text.lower() if lower else text,)))
            run.clear()

    for op, av in items:
        if op is c.LITERAL:
            run.append(chr(av))
            continue
        end_run()
        if op is c.SUBPATTERN:
            out.extend(_required_literals(list(av[3]), min_bytes, lower))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] >= 1:
            out.extend(_required_literals(list(av[2]), min_bytes, lower))
        elif op is c.BRANCH:
            alts = [_seq_needles(list(branch), min_bytes, lower) for branch in av[1]]
            if all(alts):
                out.append(frozenset().union(*alts))
    end_run()
    return out


def _seq_needles(items: list, min_bytes: int = MIN_NEEDLE, lower: bool = True) -> frozenset[str] | None:
    """The best-scoring requirement whose literals are all at least `min_bytes` long."""
    best: frozenset[str] | None = None
    for cand in _required_literals(items, min_bytes, lower):
        if all(len(n.encode("utf-8")) >= min_bytes for n in cand) and (
                best is None or _needle_score(cand) > _needle_score(best)):
            best = cand
    return best


# Text found in almost every Windows event: needles inside it select nearly everything.
_UBIQUITOUS = "\n".join((
    "c:\\windows\\system32\\svchost.exe", "c:\\windows\\syswow64\\", "c:\\program files (x86)\\",
    "c:\\users\\", "c:\\programdata\\", "microsoft corporation",
    "microsoft\u00ae windows\u00ae operating system", "nt authority\\system", "c:\\windows\\explorer.exe",
    ".dll", "microsoft-windows-", "\\windows\\system32\\cmd.exe",
    # shells and LOLBins: in a large share of process creations (Image, ParentImage, command
    # lines), so a rule's command-line needles select far fewer events than its image name
    "\\powershell.exe", "\\powershell_ise.exe", "\\pwsh.exe", "pwsh.dll", "\\cmd.exe",
    "\\rundll32.exe", "\\regsvr32.exe", "\\mshta.exe", "\\wscript.exe", "\\cscript.exe",
    "\\msiexec.exe", "\\conhost.exe", "\\wmic.exe", "\\net.exe", "\\net1.exe", "\\reg.exe",
    "\\schtasks.exe", "\\sc.exe", "\\certutil.exe", "\\bitsadmin.exe", "\\wmiprvse.exe",
    "\\taskhostw.exe", "\\dllhost.exe", "\\services.exe", "\\lsass.exe", "\\winlogon.exe",
))


def _needle_score(n: frozenset[str]) -> tuple[int, int, int]:
    """Prefer needle sets without ubiquitous needles, then longest shortest needle, then fewer."""
    if not n:
        return (2, 1 << 30, 0)
    rare = not any(x in _UBIQUITOUS for x in n)
    return (int(rare), min(len(x) for x in n), -len(n))


# --- explanations -----------------------------------------------------------------------

Explainer = Callable[[dict, dict], list[dict]]
_Step = Callable[[dict, dict, list], bool]


def compile_explainer(ir: tuple) -> Explainer:
    """IR -> `explain(event, low)` for an event the rule matched: the positive leaves
    (which selection/field/value matched). Compiled once per alerting rule, run per alert."""
    step = _explain_step(ir, True)

    def explain_event(ev: dict, low: dict) -> list[dict]:
        out: list[dict] = []
        step(ev, low, out)
        return out
    return explain_event


def explain(ir: tuple, ev: dict, low: dict) -> list[dict]:
    """compile_explainer(ir)(ev, low), for one-off use."""
    return compile_explainer(ir)(ev, low)


def _explain_step(node: tuple, holds: bool) -> _Step:
    """`holds`: the node is known to hold (the rule matched and every node above is an AND),
    so its leaves are listed without being evaluated again."""
    kind = node[0]
    if kind == "and":
        children = tuple(_explain_step(c, holds) for c in node[1])
        if holds:
            def each(ev: dict, low: dict, out: list) -> bool:
                for c in children:
                    c(ev, low, out)
                return True
            return each
        return _explain_group(children, all)
    if kind == "or":
        if _is_value_list(node[1]):
            return _explain_values(node[1])
        return _explain_group(tuple(_explain_step(c, False) for c in node[1]), any)
    if kind == "not":
        if holds:
            return lambda ev, low, out: True
        inner = _lazy_matcher(node[1])
        return lambda ev, low, out: not inner(ev, low)
    origin = node[3] if kind == "field" else node[2] if kind == "kw" else ("logsource",)
    match = (lambda ev, low: True) if holds else _lazy_matcher(node)
    if origin[0] == "logsource":
        return lambda ev, low, out: match(ev, low)
    selection, field_name, value = origin[0], origin[1], origin[2]
    event_field = node[1] if kind == "field" else None

    def leaf(ev: dict, low: dict, out: list) -> bool:
        if not match(ev, low):
            return False
        entry = {"selection": selection, "field": field_name, "value": value}
        if event_field is not None:
            v = _lookup(ev, event_field, low)
            entry["event_value"] = None if v is MISSING else _short(v)
        out.append(entry)
        return True
    return leaf


def _explain_group(children: tuple[_Step, ...], combine: Callable[[Any], bool]) -> _Step:
    def group(ev: dict, low: dict, out: list) -> bool:
        mark = len(out)
        ok = combine([c(ev, low, out) for c in children])  # every child: collect all leaves
        if not ok:
            del out[mark:]
        return ok
    return group


def _lazy_matcher(node: tuple) -> Matcher:
    """compile_detection(node) on first use: most parts of an explainer never run."""
    compiled: Matcher | None = None

    def match(ev: dict, low: dict) -> bool:
        nonlocal compiled
        if compiled is None:
            compiled = compile_detection(node)
        return compiled(ev, low)
    return match


def _is_value_list(children: tuple) -> bool:
    """An OR of case-insensitive string values on one field (a Sigma value list)?"""
    if len(children) < 2:
        return False
    field = children[0][1] if children[0][0] == "field" else None
    return field is not None and all(
        c[0] == "field" and c[1] == field and _mergeable(c) and c[3][0] != "logsource"
        for c in children)


def _explain_values(children: tuple) -> _Step:
    """A value list, explained reading the field once: every value that holds."""
    field = children[0][1]
    values = tuple((_spec_pred(c[2])[0], c[3]) for c in children)
    fallback: list[_Step] = []  # lists, dotted paths, non-strings: leaf by leaf, built when needed

    def value_list(ev: dict, low: dict, out: list) -> bool:
        s = low[field]
        if s is None:
            if not fallback:
                fallback.extend(_explain_step(c, False) for c in children)
            return any([c(ev, low, out) for c in fallback])
        found = False
        for pred, origin in values:
            if pred(s):
                if not found:
                    event_value = _short(ev[field])
                    found = True
                out.append({"selection": origin[0], "field": origin[1], "value": origin[2],
                            "event_value": event_value})
        return found
    return value_list


def _short(v: Any, limit: int = 300) -> Any:
    if type(v) is str and len(v) > limit:
        return v[:limit] + f"... ({len(v)} chars)"
    return v
