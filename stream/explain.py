"""The `matched` explanations of an alert: which selection, field and value matched.

`compile_explainer(ir)` is compiled per rule on its first alert (stream.engine)
and run per alert. Leaves under the ANDs of a matched rule are listed without
being evaluated again; other parts compile their matchers (stream.compiler) on
first use.
"""
from __future__ import annotations

from typing import Any, Callable

from sigstream.stream.compiler import MISSING, Matcher, _lookup, _mergeable, _spec_pred, compile_detection

Explainer = Callable[[dict, dict], list[dict]]
_Step = Callable[[dict, dict, list], bool]


# Fields that say which log an event came from, not what happened in it. A rule may test
# them in its own selections (`EventID: 21`); they are listed after the deciding conditions.
LOGSOURCE_FIELDS = frozenset({"EventID", "Channel", "Provider_Name", "Provider", "ProviderName",
                              "Provider_Guid", "EventSourceName", "SourceName"})


def is_logsource_entry(entry: dict) -> bool:
    """An explanation entry on a log-source field (EventID, Channel, Provider...)."""
    return str(entry.get("field") or "").split("|")[0] in LOGSOURCE_FIELDS


def compile_explainer(ir: tuple) -> Explainer:
    """IR -> `explain(event, low)` for an event the rule matched: the positive leaves
    (which selection/field/value matched). Compiled once per alerting rule, run per alert.

    Order: the rule's deciding conditions in condition order, then conditions on log-source
    fields (LOGSOURCE_FIELDS) written in the rule's selections. Conditions the log-source
    pipelines added (origin "logsource", from pySigma's `_cond_*` identifiers) are not listed."""
    step = _explain_step(ir, True)
    if not _tests_logsource_field(ir):
        def explain_event(ev: dict, low: dict) -> list[dict]:
            out: list[dict] = []
            step(ev, low, out)
            return out
        return explain_event

    def explain_ordered(ev: dict, low: dict) -> list[dict]:
        out: list[dict] = []
        step(ev, low, out)
        out.sort(key=is_logsource_entry)   # stable: condition order within each group
        return out
    return explain_ordered


def explain(ir: tuple, ev: dict, low: dict) -> list[dict]:
    """compile_explainer(ir)(ev, low), for one-off use."""
    return compile_explainer(ir)(ev, low)


def _tests_logsource_field(node: tuple) -> bool:
    """Does a listed leaf (a rule selection's, not a pipeline's) test a log-source field?"""
    kind = node[0]
    if kind in ("and", "or"):
        return any(_tests_logsource_field(c) for c in node[1])
    if kind == "not":
        return _tests_logsource_field(node[1])
    if kind == "field":
        origin = node[3]
        return origin[0] != "logsource" and str(origin[1]).split("|")[0] in LOGSOURCE_FIELDS
    return False


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
