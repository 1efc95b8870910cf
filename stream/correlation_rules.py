"""Sigma correlation rules as records: parsing pySigma's result into `Correlation`,
resolving references across the whole loaded set, and which rules they suppress.

stream.rules loads files and calls in here; stream.correlation evaluates the resolved
records. Correlations are parsed per file and resolved once the whole set is loaded
(`resolve_correlations`): references by rule id or `name`, chains of correlations,
cycles, aliases. A correlation that does not resolve is an error; everything else
still loads. Decisions:

- A reference in UUID form names a rule id, anything else a `name` (as pySigma).
  A reference matching no rule, or more than one, is an error; so is a rule
  listed twice (by id and by name, say).
- An alias that maps a rule that is not among the correlation's `rules` is an
  error: it is almost always a typo, and it would silently leave that rule's
  events out of every group.
- `generate` is read in the `correlation` section (pySigma) and at the top level
  (the specification's JSON schema); both given and different is an error.
- Rules referenced by a running correlation with `generate: false` (the default)
  are suppressed: they are matched (the correlation needs them) but must not
  alert on their own (`LoadedRules.suppressed`, `LoadedRules.is_suppressed`). Like
  pySigma, one such correlation is enough to suppress a rule.
- The rule selection (`--min-level`, statuses, ids, tags) applies to correlations
  too (not the product filter: they have no log source). A rule or correlation a
  selected correlation needs but the selection left out is loaded anyway as a
  helper, suppressed (`plan_correlations`). A correlation that is not selected does
  not run and suppresses nothing.
- Condition thresholds keep the number written in the rule (`gte: 2.5`), where
  pySigma truncates to int. Ranges (`gt` + `lte`) are rejected by pySigma 1.5 and
  so stay errors; the evaluator takes several operators if that changes.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # stream.rules imports this module
    from sigstream.stream.rules import Rule, RuleError

CORRELATION_TYPES = ("event_count", "value_count", "temporal", "temporal_ordered",
                     "value_sum", "value_avg", "value_percentile", "value_median")
VALUE_TYPES = frozenset({"value_count", "value_sum", "value_avg", "value_percentile", "value_median"})
TEMPORAL_TYPES = frozenset({"temporal", "temporal_ordered"})
CONDITION_OPS = ("gt", "gte", "lt", "lte", "eq", "neq")

# Where in a correlation's YAML document a problem is: keys (and list items) from the top.
KeyPath = tuple[str, ...]
Locate = Callable[["Correlation", KeyPath], "int | None"]


@dataclass
class Correlation:
    """A Sigma correlation rule (plain data, picklable); stream.correlation evaluates it.

    `condition`: operator -> threshold ({"gte": 3}; several operators must all hold),
    plus "field" (a name, or a tuple of names for value_count) for the value types and
    "percentile" (0-100) for value_percentile. Temporal rules with an extended condition
    (`condition: a and not b`) have no operator; `expression` holds the parsed tree:
    ("rule", ref) | ("and", (e, ...)) | ("or", (e, ...)) | ("not", e).
    `aliases`: alias name -> {rule reference as written -> field name in that rule's events}.
    """
    id: str | None
    title: str
    type: str
    rules: tuple[str, ...]
    path: str = ""
    name: str | None = None
    group_by: tuple[str, ...] = ()
    timespan_s: float = 0.0
    timespan: str = ""                       # as written, e.g. "5m"
    condition: dict[str, Any] = field(default_factory=dict)
    expression: tuple | None = None
    expression_text: str | None = None
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    generate: bool = False
    level: str | None = None
    status: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    author: str | None = None
    date: str | None = None
    falsepositives: tuple[str, ...] = ()

    @property
    def ops(self) -> dict[str, float]:
        """The condition's operators and thresholds."""
        return {k: v for k, v in self.condition.items() if k in CONDITION_OPS}

    @property
    def value_field(self) -> str | tuple[str, ...] | None:
        return self.condition.get("field")

    def meta(self) -> dict[str, Any]:
        """The correlation's metadata as it appears in alerts (`rule` of a correlation alert)."""
        return {
            "id": self.id, "name": self.name, "title": self.title, "level": self.level,
            "status": self.status, "tags": list(self.tags), "description": self.description,
            "references": list(self.references), "author": self.author, "date": self.date,
            "logsource": None, "falsepositives": list(self.falsepositives), "path": self.path,
            "correlation_type": self.type,
        }


def rule_key(item: "Rule | Correlation | Mapping[str, Any]") -> str | None:
    """How a rule or correlation (or an alert's `rule` dict) is identified in
    `LoadedRules.suppressed`: its id, else "name:" + its name (None when it has neither:
    nothing can refer to it)."""
    if isinstance(item, Mapping):
        rid, name = item.get("id"), item.get("name")
    else:
        rid, name = item.id, item.name
    if rid:
        return str(rid)
    return f"name:{name}" if name else None


# ------------------------------------------------------------------ from pySigma

def _number_as_written(raw: Any, parsed: Any) -> Any:
    """The threshold as the rule writes it (pySigma makes it an int)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
        return raw
    return parsed


def _expression_tree(node: Any) -> tuple:
    """pySigma's extended-condition parse tree -> plain nested tuples (picklable)."""
    from sigma.correlations import (CorrelationConditionAND, CorrelationConditionNOT,
                                    CorrelationConditionOR, SigmaRuleReference)
    if isinstance(node, SigmaRuleReference):
        return ("rule", str(node.reference))
    if isinstance(node, CorrelationConditionNOT):
        return ("not", _expression_tree(node.args[0]))
    if isinstance(node, CorrelationConditionAND):
        return ("and", tuple(_expression_tree(a) for a in node.args))
    if isinstance(node, CorrelationConditionOR):
        return ("or", tuple(_expression_tree(a) for a in node.args))
    raise ValueError(f"unsupported correlation condition element {type(node).__name__}")


def correlation_of(item: Any, doc: dict, meta: Mapping[str, Any]) -> Correlation:
    """A parsed pySigma correlation (its YAML document, its common metadata) -> Correlation.

    ValueError: `generate` is not a boolean, or given twice with different values."""
    from sigma.correlations import SigmaExtendedCorrelationCondition

    section = doc.get("correlation") if isinstance(doc.get("correlation"), dict) else {}
    generate = item.generate
    if "generate" in doc:
        top = doc["generate"]
        if not isinstance(top, bool):
            raise ValueError("generate must be true or false")
        if "generate" in section and section["generate"] != top:
            raise ValueError("generate is given twice (top level and correlation section) "
                             "with different values")
        generate = top
    cond = item.condition
    expression = expression_text = None
    if isinstance(cond, SigmaExtendedCorrelationCondition):
        condition: dict[str, Any] = {}
        expression, expression_text = _expression_tree(cond.parsed), cond.expression
        refs = tuple(str(r.reference) for r in item.rules) if item.rules is not None \
            else tuple(cond.get_referenced_rules())
    else:
        op = cond.op.name.lower()
        raw = section.get("condition") if isinstance(section.get("condition"), dict) else {}
        condition = {op: _number_as_written(raw.get(op), cond.count)}
        if cond.fieldref is not None:
            condition["field"] = (cond.fieldref if isinstance(cond.fieldref, str)
                                  else tuple(str(f) for f in cond.fieldref))
        if cond.percentile is not None:
            condition["percentile"] = _number_as_written(raw.get("percentile"), cond.percentile)
        refs = tuple(str(r.reference) for r in item.rules or ())
    aliases = {str(a): {str(k): str(v) for k, v in m.items()}
               for a, m in item.aliases.to_dict().items()}
    return Correlation(
        type=item.type.name.lower(), rules=refs, group_by=tuple(item.group_by or ()),
        timespan_s=float(item.timespan.seconds), timespan=str(item.timespan.spec),
        condition=condition, expression=expression, expression_text=expression_text,
        aliases=aliases, generate=bool(generate), **meta)


# ------------------------------------------------------------------ resolving

def _canonical_ref(ref: str) -> tuple[str, str]:
    """("id", canonical uuid) for a reference in UUID form, else ("name", ref)."""
    try:
        return "id", str(uuid.UUID(ref))
    except (ValueError, AttributeError, TypeError):
        return "name", ref


class _RefIndex:
    """Rules and correlations by id and by name."""

    def __init__(self, rules: "Sequence[Rule]", correlations: Sequence[Correlation]):
        self.by: dict[tuple[str, str], list[Rule | Correlation]] = {}
        for item in (*rules, *correlations):
            if item.id:
                self.by.setdefault(("id", _canonical_ref(item.id)[1]), []).append(item)
            if item.name:
                self.by.setdefault(("name", item.name), []).append(item)

    def lookup(self, ref: str) -> "list[Rule | Correlation]":
        found = self.by.get(_canonical_ref(ref), [])
        return list({id(x): x for x in found}.values())


def _expression_refs(tree: tuple) -> list[str]:
    if tree[0] == "rule":
        return [tree[1]]
    if tree[0] == "not":
        return _expression_refs(tree[1])
    return [r for sub in tree[1] for r in _expression_refs(sub)]


def _check_correlation(c: Correlation) -> tuple[str, KeyPath] | None:
    """What is wrong with a correlation on its own (without its references) and where, or None."""
    if c.type not in CORRELATION_TYPES:
        return (f"unknown correlation type {c.type!r} (one of {', '.join(CORRELATION_TYPES)})",
                ("correlation", "type"))
    if not c.rules:
        return "no rules to correlate", ("correlation", "rules")
    if not c.timespan_s or c.timespan_s <= 0:
        return "timespan must be greater than zero", ("correlation", "timespan")
    cond = ("correlation", "condition")
    unknown = [k for k in c.condition if k not in CONDITION_OPS and k not in ("field", "percentile")]
    if unknown:
        return (f"unknown condition operator(s) {', '.join(map(str, unknown))} "
                f"(one of {', '.join(CONDITION_OPS)})", cond + (str(unknown[0]),))
    for op, th in c.ops.items():
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not math.isfinite(th):
            return f"condition {op}: {th!r} is not a number", cond + (op,)
    if c.expression is not None:
        if c.type not in TEMPORAL_TYPES:
            return "an extended condition (rule expression) is only for temporal correlations", cond
        if c.ops:
            return "both an extended condition and a count condition", cond
        if set(_expression_refs(c.expression)) != set(c.rules):
            return "the extended condition must name exactly the correlation's rules", cond
    elif not c.ops:
        return "condition needs one of " + ", ".join(CONDITION_OPS), cond
    fld = c.value_field
    if c.type in VALUE_TYPES:
        if fld is None or fld == "" or fld == ():
            return f"{c.type} needs condition.field", cond
        if not isinstance(fld, str) and c.type != "value_count":
            return f"{c.type} takes one field in condition.field, not a list", cond + ("field",)
    if c.type == "value_percentile":
        p = c.condition.get("percentile")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            return "value_percentile needs condition.percentile between 0 and 100", cond + ("percentile",)
    return None


def _resolve_refs(c: Correlation, index: _RefIndex,
                  ) -> tuple[list[tuple[str, "Rule | Correlation"]], tuple[str, KeyPath] | None]:
    """The correlation's (reference, target) pairs, or what is wrong with them and where."""
    resolved: list[tuple[str, Rule | Correlation]] = []
    for ref in c.rules:
        found = index.lookup(ref)
        where = ("correlation", "rules", ref)
        if not found:
            return resolved, (f"unknown rule reference {ref!r} (no rule or correlation has this "
                              f"id or name)", where)
        if len(found) > 1:
            return resolved, (f"ambiguous rule reference {ref!r}: {len(found)} rules have this "
                              f"id or name", where)
        if any(found[0] is t for _, t in resolved):
            return resolved, (f"rule {ref!r} is listed twice", where)
        resolved.append((ref, found[0]))
    for alias, mapping in c.aliases.items():
        for ref in mapping:
            found = index.lookup(ref)
            if len(found) != 1 or not any(found[0] is t for _, t in resolved):
                return resolved, (f"alias {alias!r} maps rule {ref!r}, which is not among the "
                                  f"correlation's rules", ("correlation", "aliases", alias, ref))
    for g in c.group_by:
        if not isinstance(g, str) or not g:
            return resolved, (f"invalid group-by field {g!r}", ("correlation", "group-by"))
    return resolved, None


def resolve_correlations(rules: "Sequence[Rule]", correlations: Sequence[Correlation],
                         locate: Locate | None = None,
                         ) -> "tuple[list[Correlation], list[RuleError]]":
    """Check correlations against the whole loaded rule set (run after loading everything).

    Returns the correlations that can run, in the given order, and one located error per
    correlation that cannot: invalid type/operator/field, unknown or ambiguous reference,
    a rule listed twice, an alias for a rule outside `rules`, a reference cycle, or a
    reference to a correlation that itself has errors. `locate(correlation, key path)`
    gives the error's line (stream.rules reads it from the file). Pure: the records are
    not changed.
    """
    from sigstream.stream.rules import RuleError  # stream.rules imports this module

    index = _RefIndex(rules, correlations)
    errors: dict[int, tuple[str, KeyPath]] = {}
    targets: dict[int, list[tuple[str, Rule | Correlation]]] = {}
    for c in correlations:
        problem = _check_correlation(c)
        if problem is None:
            targets[id(c)], problem = _resolve_refs(c, index)
        if problem:
            errors[id(c)] = problem
    # cycles: depth-first over correlation -> correlation edges
    state: dict[int, int] = {}   # 1 on the current path, 2 done

    def visit(c: Correlation, path: list[tuple[Correlation, str]]) -> None:
        state[id(c)] = 1
        for ref, t in targets.get(id(c), ()):
            if not isinstance(t, Correlation):
                continue
            path.append((c, ref))
            if state.get(id(t)) == 1:
                cycle = path[next(i for i, (x, _) in enumerate(path) if x is t):]
                names = " -> ".join(_label(x) for x in [*(x for x, _ in cycle), t])
                for x, xref in cycle:
                    errors.setdefault(id(x), (f"reference cycle: {names}",
                                              ("correlation", "rules", xref)))
            elif state.get(id(t)) is None:
                visit(t, path)
            path.pop()
        state[id(c)] = 2

    for c in correlations:
        if state.get(id(c)) is None:
            visit(c, [])
    changed = True   # a correlation built on a broken one cannot run either
    while changed:
        changed = False
        for c in correlations:
            if id(c) in errors:
                continue
            bad = next(((ref, t) for ref, t in targets[id(c)]
                        if isinstance(t, Correlation) and id(t) in errors), None)
            if bad is not None:
                errors[id(c)] = (f"references correlation {_label(bad[1])}, which has errors",
                                 ("correlation", "rules", bad[0]))
                changed = True
    ok = [c for c in correlations if id(c) not in errors]
    errs = [RuleError(c.path, c.id, c.title, errors[id(c)][0],
                      locate(c, errors[id(c)][1]) if locate else None)
            for c in correlations if id(c) in errors]
    return ok, errs


def _label(c: Correlation) -> str:
    return repr(c.name or c.id or c.title)


def plan_correlations(selected: "Sequence[Rule]", unselected: "Sequence[Rule]",
                      resolved: Sequence[Correlation], accepts: Callable[[Correlation], bool],
                      ) -> "tuple[list[Correlation], list[Rule], frozenset[str]]":
    """What runs: the resolved correlations `accepts` selects and those they need, in the
    given order; the unselected rules they need (helpers, in the order found); and the
    rule_key() of every rule and correlation that must not alert on its own (helpers, and
    what a `generate: false` correlation references)."""
    index = _RefIndex([*selected, *unselected], resolved)
    selected_ids = {id(r) for r in selected}
    running = [c for c in resolved if accepts(c)]
    needed: dict[int, Correlation] = {id(c): c for c in running}
    stack = list(running)
    helpers: list[Rule] = []
    suppressed: set[str] = set()
    while stack:
        corr = stack.pop()
        for ref in corr.rules:
            (target,) = index.lookup(ref)
            if isinstance(target, Correlation):
                if id(target) not in needed:       # a helper: runs, never alerts itself
                    needed[id(target)] = target
                    stack.append(target)
                    suppressed.add(rule_key(target) or "")
            elif id(target) not in selected_ids:    # a helper rule
                selected_ids.add(id(target))
                helpers.append(target)
                suppressed.add(rule_key(target) or "")
            if not corr.generate:
                suppressed.add(rule_key(target) or "")
    suppressed.discard("")
    return [c for c in resolved if id(c) in needed], helpers, frozenset(suppressed)
