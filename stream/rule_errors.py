"""Rule errors: where a rule that does not load is (file and line) and why.

`RuleError` is what loading reports per broken rule. The line is the offending key's
where it is known (the `Field|modifier:` key, `condition:`, a correlation's reference),
else the line where the rule's YAML document starts; for invalid YAML, the line the
parser reports. Lines come from yaml's node marks, composed once per file and only when
that file has an error, so the fast loading path (plain `yaml.load_all`) is untouched.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

try:  # the C loader is about 5x faster
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

from sigstream.stream.correlation_rules import Correlation, KeyPath


@dataclass
class RuleError:
    """A rule that does not load: where (file, 1-based line when known) and why."""
    path: str
    rule_id: str | None
    title: str | None
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        who = f"{self.title!r}" if self.title else "rule"
        if self.rule_id:
            who += f" [{self.rule_id}]"
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {who}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "rule_id": self.rule_id,
                "title": self.title, "reason": self.reason}



# ------------------------------------------------------------------ error reasons and lines

# Where in a rule's YAML document an error is, from the top: a key, or an item of a list
# (str); or a predicate on keys and scalar values, searched below (depth first).
Hint = tuple[Any, ...]

_KEY_OF_ERROR: dict[str, Hint] = {  # pySigma's exception classes -> the key they are about
    **{f"Sigma{k}Error": (k.lower(),) for k in (
        "Title", "Name", "Status", "Level", "Date", "Modified", "Description", "Author",
        "References", "Related", "FalsePositives", "Fields", "License", "Scope", "Logsource",
        "Detection")},
    **dict.fromkeys(("SigmaModifierError", "SigmaValueError", "SigmaRegularExpressionError",
                     "SigmaTypeError", "SigmaPlaceholderError", "IRError"), ("detection",)),
    "SigmaIdentifierError": ("id",), "SigmaTagError": ("tags",),
    "SigmaConditionError": ("detection", "condition"),
    "SigmaCorrelationTypeError": ("correlation", "type"),
    "SigmaTimespanError": ("correlation", "timespan"),
    "SigmaCorrelationConditionError": ("correlation", "condition"),
    "SigmaCorrelationRuleError": ("correlation",),
    "SigmaFilterError": ("filter",), "SigmaFilterConditionError": ("filter", "condition"),
    "SigmaFilterRuleReferenceError": ("filter", "rules"),
}
_UNKNOWN_MODIFIER = re.compile(r"Unknown modifier '([^']*)'")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)+)'|(%[^%\s]+%)")


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def _problem(e: Exception) -> tuple[str, Hint]:
    """An exception from parsing or compiling a rule -> (reason, where in the document)."""
    reason = _reason(e)
    hint = next((_KEY_OF_ERROR[c.__name__] for c in type(e).__mro__ if c.__name__ in _KEY_OF_ERROR), ())
    m = _UNKNOWN_MODIFIER.search(reason)
    if m:
        from sigma.modifiers import modifier_mapping

        name = m.group(1)
        close = difflib.get_close_matches(name.lower(), sorted(modifier_mapping), n=1)
        if close:
            reason += f" (did you mean {close[0]!r}?)"
        return reason, ("detection", lambda key: name in key.split("|")[1:])
    q = _QUOTED.search(reason)
    if q and hint == ("detection",):   # the value or field named in the reason
        text = q.group(1) or q.group(2)
        return reason, (*hint, lambda s: text in s)
    return reason, hint


class _Errors:
    """One file's errors. Lines not known when an error is added are read once, when the
    file is done (`located`), and only if there is such an error."""

    def __init__(self, path: str, data: bytes):
        self.path, self.data = path, data
        self.items: list[RuleError] = []
        self.pending: list[tuple[RuleError, int | None, Hint]] = []

    def add(self, rule_id: str | None, title: str | None, reason: str, hint: Hint = (), *,
            doc: int | None = None, line: int | None = None) -> None:
        err = RuleError(self.path, rule_id, title, reason, line)
        self.items.append(err)
        if line is None:
            self.pending.append((err, doc, hint))

    def located(self) -> list[RuleError]:
        if self.pending:
            lines = _Lines(self.data)
            for err, doc, hint in self.pending:
                err.line = lines.find(hint, doc=doc, rule_id=err.rule_id, title=err.title)
            self.pending = []
        return self.items


class _Lines:
    """A file's YAML documents as nodes with marks (composed once, only to locate errors)."""

    def __init__(self, data: bytes):
        self.docs: list[yaml.Node] = []
        try:
            for node in yaml.compose_all(data, Loader=_YamlLoader):
                self.docs.append(node)
        except yaml.YAMLError:  # the documents before a syntax error keep their lines
            pass

    def find(self, hint: Hint, *, doc: int | None = None, rule_id: str | None = None,
             title: str | None = None, name: str | None = None) -> int | None:
        """1-based line of the deepest key of `hint` found in the document (given by its
        position, else by its id, name or title); its first line if none is; None
        without the document."""
        node = self.docs[doc] if doc is not None and doc < len(self.docs) else self._by_meta(
            rule_id, name, title)
        if node is None:
            return None
        line = node.start_mark.line + 1
        for step in hint:
            found = _child(node, step) if isinstance(step, str) else _search(node, step, set())
            if found is None:
                break
            key, node = found
            line = key.start_mark.line + 1
        return line

    def _by_meta(self, rule_id: str | None, name: str | None, title: str | None) -> yaml.Node | None:
        for key, want in (("id", rule_id), ("name", name), ("title", title)):
            if want is None:
                continue
            for d in self.docs:
                found = _child(d, key)
                if found is not None and isinstance(found[1], yaml.ScalarNode) and found[1].value == want:
                    return d
        return None


def _child(node: yaml.Node, step: str) -> tuple[yaml.Node, yaml.Node] | None:
    """(key, value) of a mapping's key `step`, or (item, item) of a list's scalar `step`."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == step:
                return k, v
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            if isinstance(v, yaml.ScalarNode) and v.value == step:
                return v, v
    return None


def _search(node: yaml.Node, pred: Callable[[str], bool], seen: set[int],
            ) -> tuple[yaml.Node, yaml.Node] | None:
    """The first key or scalar below `node`, in file order, that `pred` accepts."""
    if id(node) in seen:   # an alias seen before
        return None
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        return (node, node) if pred(node.value) else None
    children = node.value if isinstance(node, yaml.MappingNode) else [(None, v) for v in node.value]
    for k, v in children:
        if isinstance(k, yaml.ScalarNode) and pred(k.value):
            return k, v
        found = _search(v, pred, seen)
        if found is not None:
            return found
    return None


def _correlation_locator(source: Callable[[str], bytes | None]) -> Callable[[Correlation, KeyPath], int | None]:
    """Lines of correlation errors found after loading: each file read and composed once."""
    files: dict[str, _Lines | None] = {}

    def locate(c: Correlation, where: KeyPath) -> int | None:
        if c.path not in files:
            data = source(c.path)
            files[c.path] = _Lines(data) if data is not None else None
        lines = files[c.path]
        return lines.find(where, rule_id=c.id, name=c.name, title=c.title) if lines else None
    return locate


def rule_line(path: str | Path, rule_id: str | None, title: str | None = None) -> int | None:
    """The 1-based line where a rule's YAML document starts (found by id, else title);
    None when the file or the rule is not there. Reads the file: for error messages."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return _Lines(data).find((), rule_id=rule_id, title=title)
