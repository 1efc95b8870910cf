"""Plain-data form of a Sigma detection (the IR).

pySigma parses rules and applies pipelines; this module turns the resulting
condition tree into nested tuples that pickle cheaply (the compile cache) and
that the compiler turns into Python callables. Nothing here looks at events.

Nodes:
    ("and", (child, ...))    ("or", (child, ...))    ("not", child)
    ("const", bool)
    ("field", field, spec, origin)    one field compared with one value
    ("kw", spec, origin)              a keyword: the value searched for in every field's value

Specs (the value side):
    ("eq"|"contains"|"startswith"|"endswith", text, cased)
    ("wild", regex_source, longest_literal, cased)
    ("num", number)   ("bool", bool)   ("null",)   ("exists", bool)
    ("re", pattern, flags, risky)   ("cidr", network)   ("cmp", op, number)
    ("fieldref", other_field, starts_with, ends_with)   ("ts", part, number)

Case-insensitive texts are stored lower-cased. `origin` is (selection, label, value as written)
and only serves explanations ("why did this match").

Keywords are a full-text search (the specification: "searching for keywords across an entire
event"; list strings "are applied to the full log message"): a keyword matches when it occurs
anywhere in one of the event's values, as if written `*keyword*`. `keyword_spec` states that in
the spec itself: texts and numbers become ("contains", text, cased), wildcard patterns get a
leading and trailing `.*`; regular expressions already search, other specs stay as they are.
"""
from __future__ import annotations

import re
import re._constants as _sre_constants
import re._parser as _sre_parser
from typing import Any, Callable

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.modifiers import reverse_modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
)

from sigstream.stream.errors import RuleProblem

IR_VERSION = 11  # bump when the IR shape or its semantics change (invalidates caches)

Placeholders = dict[str, list[str]]

_RE_FLAGS = {
    SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
    SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
    SigmaRegularExpressionFlag.DOTALL: re.DOTALL,
}
_CMP_OPS = {
    CompareOperators.LT: "lt",
    CompareOperators.LTE: "lte",
    CompareOperators.GT: "gt",
    CompareOperators.GTE: "gte",
    CompareOperators.NEQ: "neq",
}
class IRError(RuleProblem):
    """A rule construct that sigstream cannot evaluate (the reason is user-facing)."""


def condition_to_ir(tree: Any, placeholders: Placeholders | None = None,
                    detections: Any = None) -> tuple:
    """Translate a parsed (post-pipeline) pySigma condition tree into IR. `detections` (the
    rule's SigmaDetections) names each field's modifiers in explanations where the tree lost
    the link to its detection item."""
    return _Translator(placeholders or {}, detections).node(tree)


class _Translator:
    def __init__(self, placeholders: Placeholders, detections: Any = None):
        self.placeholders = placeholders
        self.detections = detections

    def node(self, n: Any) -> tuple:
        if isinstance(n, ConditionAND):
            return _flatten("and", [self.node(a) for a in n.args])
        if isinstance(n, ConditionOR):
            return _flatten("or", [self.node(a) for a in n.args])
        if isinstance(n, ConditionNOT):
            return ("not", self.node(n.args[0]))
        if isinstance(n, ConditionFieldEqualsValueExpression):
            origin = _origin(n, n.field, self.detections)
            return self.values(n.value, lambda spec, shown: ("field", n.field, spec, origin + (shown,)))
        if isinstance(n, ConditionValueExpression):
            origin = _origin(n, None, self.detections)
            return self.values(n.value,
                               lambda spec, shown: ("kw", keyword_spec(spec), origin + (shown,)))
        if n is None:  # an empty detection
            return ("const", False)
        raise IRError(f"unsupported condition element {type(n).__name__}")

    def values(self, value: Any, leaf: Callable[[tuple], tuple]) -> tuple:
        """One Sigma value (possibly an expansion) -> leaf or OR of leaves."""
        if isinstance(value, SigmaExpansion):
            return _flatten("or", [self.values(v, leaf) for v in value.values])
        if isinstance(value, SigmaString) and value.contains_placeholder():
            expanded = value.replace_placeholders(self._placeholder_values)
            return _flatten("or", [leaf(string_spec(s), str(s)) for s in expanded])
        if isinstance(value, SigmaRegularExpression) and value.regexp.contains_placeholder():
            expanded = value.regexp.replace_placeholders(self._placeholder_values)
            return _flatten("or", [leaf(regex_spec(str(s), value.flags), str(s)) for s in expanded])
        return leaf(value_spec(value), _shown(value))

    def _placeholder_values(self, p: Placeholder):
        if p.name not in self.placeholders:
            raise IRError(
                f"unresolved placeholder %{p.name}% (give its values with --placeholders FILE)"
            )
        return iter(self.placeholders[p.name])


def value_spec(v: Any) -> tuple:
    """The spec tuple for one (non-expansion) Sigma value."""
    if isinstance(v, SigmaString):  # SigmaCasedString is a subclass
        return string_spec(v)
    if isinstance(v, SigmaTimestampPart):  # before SigmaNumber: it is a subclass
        return ("ts", v.timestamp_part.name.lower(), v.number)
    if isinstance(v, SigmaNumber):
        return ("num", v.number)
    if isinstance(v, SigmaBool):
        return ("bool", v.boolean)
    if isinstance(v, SigmaNull):
        return ("null",)
    if isinstance(v, SigmaExists):
        return ("exists", bool(v.exists))
    if isinstance(v, SigmaRegularExpression):
        return regex_spec(str(v.regexp), v.flags)
    if isinstance(v, SigmaCIDRExpression):
        return ("cidr", str(v.network))
    if isinstance(v, SigmaCompareExpression):
        return ("cmp", _CMP_OPS[v.op], v.number.number)
    if isinstance(v, SigmaFieldReference):
        return ("fieldref", v.field, bool(v.starts_with), bool(v.ends_with))
    raise IRError(f"value type {type(v).__name__} cannot be evaluated on events")


def keyword_spec(spec: tuple) -> tuple:
    """A keyword's spec as a search anywhere in a value (implicit `*` on both sides).

    `|startswith`/`|endswith` add nothing to a keyword (pySigma gives `kw*`/`*kw`, and the
    implicit wildcards make both `*kw*`); a number is searched as its decimal text.
    """
    kind = spec[0]
    if kind in ("eq", "startswith", "endswith"):
        return ("contains", spec[1], spec[2])
    if kind == "num":
        return ("contains", str(spec[1]).lower(), False)
    if kind == "wild":
        # string_spec builds the regex from re.escape()d literals, "." (?) and ".*" (*): a
        # literal "." or "*" is always escaped, so these tests see exactly the wildcard tokens
        regex = spec[1]
        if not regex.startswith(".*"):
            regex = ".*" + regex
        if not regex.endswith(".*"):
            regex += ".*"
        return ("wild", regex, spec[2], spec[3])
    return spec


def _shown(v: Any) -> str:
    if isinstance(v, SigmaRegularExpression):
        return str(v.regexp)
    if isinstance(v, SigmaCompareExpression):
        return str(v.number.number)
    if isinstance(v, SigmaFieldReference):
        return v.field
    if isinstance(v, SigmaNull):
        return "null"
    if isinstance(v, SigmaExists):
        return str(bool(v.exists)).lower()
    return str(v)


def regex_spec(pattern: str, flags: Any) -> tuple:
    py_flags = 0
    for f in flags:
        py_flags |= _RE_FLAGS[f]
    try:
        re.compile(pattern, py_flags)
    except re.error as e:
        raise IRError(f"invalid regular expression {pattern!r}: {e}") from None
    # nested open-ended quantifiers can backtrack exponentially: evaluated with a time limit
    return ("re", pattern, py_flags, regex_is_risky(pattern, py_flags))


def regex_is_risky(pattern: str, flags: int = 0) -> bool:
    """An unbounded quantifier inside a repeated group, e.g. (a+)+ or ((a+)b?)+ ."""
    try:
        parsed = _sre_parser.parse(pattern, flags)
    except Exception:
        return True
    return _nested_repeat(list(parsed), False)


def _nested_repeat(items: list, in_repeat: bool) -> bool:
    c = _sre_constants
    for op, av in items:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            _, hi, sub = av
            if in_repeat and hi is c.MAXREPEAT:
                return True
            if _nested_repeat(list(sub), in_repeat or hi is c.MAXREPEAT or hi > 1):
                return True
        elif op is c.SUBPATTERN:
            if _nested_repeat(list(av[3]), in_repeat):
                return True
        elif op is c.BRANCH:
            if any(_nested_repeat(list(b), in_repeat) for b in av[1]):
                return True
        elif op in (c.ASSERT, c.ASSERT_NOT):
            if _nested_repeat(list(av[1]), in_repeat):
                return True
        elif op is getattr(c, "ATOMIC_GROUP", None):
            if _nested_repeat(list(av), in_repeat):
                return True
    return False


def string_spec(s: SigmaString) -> tuple:
    """Classify a Sigma string: plain/contains/startswith/endswith, or a wildcard regex."""
    cased = isinstance(s, SigmaCasedString)
    parts = list(s.s)
    norm = (lambda t: t) if cased else str.lower
    multi = SpecialChars.WILDCARD_MULTI
    strs = [p for p in parts if isinstance(p, str)]
    specials = [p for p in parts if not isinstance(p, str)]
    if not specials:
        return ("eq", norm("".join(strs)), cased)
    if len(strs) == 1 and all(p is multi for p in specials):
        text = norm(strs[0])
        if parts == [multi, strs[0], multi]:
            return ("contains", text, cased)
        if parts == [strs[0], multi]:
            return ("startswith", text, cased)
        if parts == [multi, strs[0]]:
            return ("endswith", text, cased)
    regex = []
    for p in parts:
        if isinstance(p, str):
            regex.append(re.escape(norm(p)))
        elif p is multi:
            regex.append(".*")
        else:
            regex.append(".")
    longest = max((norm(t) for t in strs), key=len, default="")
    return ("wild", "".join(regex), longest, cased)


def _flatten(op: str, children: list[tuple]) -> tuple:
    """Merge nested same-operator nodes; a single child stands alone."""
    flat: list[tuple] = []
    for c in children:
        if c[0] == op:
            flat.extend(c[1])
        else:
            flat.append(c)
    if len(flat) == 1:
        return flat[0]
    return (op, tuple(flat))


def _item_in(detections: Any, name: str, field: str | None, value: Any) -> Any:
    """The detection item of selection `name` with this field (the one holding `value` when
    several items share the field, as `Image|endswith` and `Image|contains` may)."""
    detection = (getattr(detections, "detections", None) or {}).get(name)
    found = []
    stack = [detection] if detection is not None else []
    while stack:
        d = stack.pop()
        for sub in getattr(d, "detection_items", ()):
            if isinstance(sub, SigmaDetectionItem):
                if sub.field == field:
                    found.append(sub)
            elif isinstance(sub, SigmaDetection):
                stack.append(sub)
    if len(found) > 1:
        holding = [d for d in found if any(_same_value(v, value) for v in d.value)]
        found = holding or found
    return found[0] if found else None


def _same_value(a: Any, b: Any) -> bool:
    # SigmaString's == raises on other value types (numbers, regular expressions, ...)
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a pySigma value type without a usable ==
        return False


def _origin(expr: Any, field: str | None, detections: Any = None) -> tuple[str, str]:
    """(selection name, 'Field|modifiers') for explanations."""
    item, node = None, expr.parent
    while node is not None and not isinstance(node, ConditionIdentifier):
        if item is None and isinstance(node, SigmaDetectionItem):
            item = node
        elif item is None and isinstance(node, SigmaDetection):
            # a value list was linked below the item: find the item by its field
            item = next((d for d in node.detection_items
                         if isinstance(d, SigmaDetectionItem) and d.field == field), None)
        node = getattr(node, "parent", None)
    if item is None and node is not None and detections is not None:
        # several items in one selection: pySigma puts their expressions under an AND whose
        # parent is the identifier, so the item (and its modifiers) is found by name here
        item = _item_in(detections, node.identifier, field, getattr(expr, "value", None))
    label = field or "keywords"
    if item is not None and item.modifiers:
        mods = [reverse_modifier_mapping.get(m.__name__, m.__name__) for m in item.modifiers]
        label = "|".join([label, *mods])
    selection = node.identifier if node is not None else "?"
    if selection.startswith("_cond_"):
        selection = "logsource"  # conditions added by the log source pipelines
    return (selection, label)
