"""Rule lint: problems that load fine in pySigma but make a rule wrong or hard to run.

Pure checks over parsed rule documents; lines are found (yaml node marks, via
stream.rule_errors) only for the documents that have a problem, so linting SigmaHQ
costs one fast YAML load per file. What loading rejects (stream.rules) is not repeated
here: loading calls `logsource_issue` and `DuplicateIds` itself, so `hunt`/`run` and
`check` agree on what is an error.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import yaml

from sigstream.stream.attack_names import TACTIC_NAMES
from sigstream.stream.rule_errors import RuleError, _Lines

try:  # the C loader is about 5x faster
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    """One lint finding: `file:line: level: message` (line 0: unknown)."""
    path: str
    line: int
    level: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.level}: {self.message}"

    @property
    def sort_key(self) -> tuple[str, int]:
        return self.path, self.line

    @classmethod
    def of_error(cls, e: RuleError) -> "Problem":
        """A loading error as a lint problem (its location moved out of the message)."""
        who = f"{e.title!r}" if e.title else "rule"
        if e.rule_id:
            who += f" [{e.rule_id}]"
        return cls(e.path, e.line or 0, ERROR, f"{who}: {e.reason}")


# ------------------------------------------------------------------ log sources

# Sigma taxonomy log sources for product windows that are valid but that the built-in
# pipelines give no Channel/EventID condition (SigmaHQ uses them; ETW-based or rare).
TAXONOMY_CATEGORIES = frozenset({"file_access", "file_rename", "clipboard_change"})
TAXONOMY_SERVICES = frozenset({
    "iis-configuration", "ldap", "smbclient-connectivity", "smbserver-connectivity",
    "kernel-shimengine", "hyper-v-worker", "ntfs", "application-experience",
})


@dataclass(frozen=True)
class LogsourceCatalog:
    """The product windows categories and services the processing pipeline maps to events."""
    categories: frozenset[str]
    services: frozenset[str]

    @classmethod
    def of(cls, pipeline: Any) -> "LogsourceCatalog":
        """Read from a pySigma pipeline's log-source conditions (built-in and --pipeline items)."""
        from sigma.processing.conditions import LogsourceCondition

        cats: set[str] = set()
        svcs: set[str] = set()
        for item in getattr(pipeline, "items", ()):
            for cond in getattr(item, "rule_conditions", None) or ():
                if isinstance(cond, LogsourceCondition) and cond.product in (None, "windows"):
                    if cond.category:
                        cats.add(cond.category)
                    if cond.service:
                        svcs.add(cond.service)
        return cls(frozenset(cats), frozenset(svcs))


@dataclass(frozen=True)
class Issue:
    level: str
    key: str          # the logsource key it is about
    message: str


def logsource_issue(logsource: Mapping[str, Any], catalog: LogsourceCatalog) -> Issue | None:
    """A product windows rule whose category or service no pipeline knows gets no log-source
    condition and so is checked against every event: an error for a near-miss of a known name
    (a typo), a warning for a valid but unmapped one or a name unlike any known (possibly a
    log source newer than this list: rejecting it would drop a valid rule)."""
    if str(logsource.get("product") or "").lower() != "windows":
        return None
    for key, mapped, taxonomy in (("category", catalog.categories, TAXONOMY_CATEGORIES),
                                  ("service", catalog.services, TAXONOMY_SERVICES)):
        value = logsource.get(key)
        if not value or value in mapped:
            continue
        if value in taxonomy:
            return Issue(WARNING, key, f"log source {key} {value!r} is not mapped by the log-source "
                                       "pipelines: the rule is checked against every event")
        close = difflib.get_close_matches(str(value), sorted(mapped | taxonomy), n=1)
        if not close:   # not a near-miss of a known name: maybe newer than this taxonomy list
            return Issue(WARNING, key, f"unknown log source {key} {value!r} for product windows: "
                                       "no pipeline maps it, so the rule is checked against "
                                       "every event; a --pipeline may map it")
        return Issue(ERROR, key, f"unknown log source {key} {value!r} for product windows "
                                 f"(did you mean {close[0]!r}?); a --pipeline may map it")
    return None


# ------------------------------------------------------------------ duplicate ids

class DuplicateIds:
    """Rule ids in load order: the first definition wins, later ones are duplicates.
    `source(path)` gives a file's bytes, read only to locate a duplicate."""

    def __init__(self, source: Callable[[str], bytes | None]):
        self.source = source
        self.first: dict[str, tuple[str, int]] = {}      # id -> (path, occurrence in it)
        self.seen: dict[tuple[str, str], int] = {}        # (path, id) -> occurrences so far
        self.lines: dict[tuple[str, str], list[int]] = {}

    def check(self, path: str, rule_id: str | None) -> tuple[str, int | None] | None:
        """(message, line) when `rule_id` was defined before; None (and remembered) if not."""
        if not rule_id:
            return None
        rid = rule_id.lower()
        n = self.seen.get((path, rid), 0)
        self.seen[path, rid] = n + 1
        if rid not in self.first:
            self.first[rid] = (path, n)
            return None
        first_path, first_n = self.first[rid]
        if first_path == path and self._is_collection(path):
            return None   # a legacy `action: global` collection gives its id to each of its rules
        first_line = self._line(first_path, rid, first_n)
        where = f"{first_path}:{first_line}" if first_line else first_path
        return f"duplicate rule id {rule_id} (first defined in {where})", self._line(path, rid, n)

    def _is_collection(self, path: str) -> bool:
        return bool(_GLOBAL_ACTION.search(self.source(path) or b""))

    def _line(self, path: str, rid: str, n: int) -> int | None:
        if (path, rid) not in self.lines:
            data = self.source(path)
            self.lines[path, rid] = id_lines(data, rid) if data is not None else []
        lines = self.lines[path, rid]
        return lines[min(n, len(lines) - 1)] if lines else None


_GLOBAL_ACTION = re.compile(rb"^action\s*:\s*global\b", re.MULTILINE)


def id_lines(data: bytes, rule_id: str) -> list[int]:
    """1-based lines of the `id:` keys whose value is `rule_id`, in file order."""
    out = []
    for doc in _Lines(data).docs:
        if isinstance(doc, yaml.MappingNode):
            for k, v in doc.value:
                if (isinstance(k, yaml.ScalarNode) and k.value == "id" and isinstance(v, yaml.ScalarNode)
                        and v.value.lower() == rule_id.lower()):
                    out.append(k.start_mark.line + 1)
    return out


# ------------------------------------------------------------------ metadata

TACTICS = frozenset(name.lower().replace(" ", "-") for name in TACTIC_NAMES.values()) | {
    "stealth", "defense-impairment"}   # ATT&CK v18 split defense-evasion
_ATTACK_ID = re.compile(r"t\d{4}(\.\d{3})?|(g|s|m|ds)\d{4}")
_TAG_HELP = ("expected attack.tNNNN, attack.tNNNN.NNN, a tactic such as attack.execution, "
             "attack.gNNNN or attack.sNNNN")


def attack_tag_problem(tag: str) -> str | None:
    """Why an `attack.` tag breaks the Sigma tag convention, or None."""
    if not tag.lower().startswith("attack."):
        return None
    name = tag[len("attack."):]
    if _ATTACK_ID.fullmatch(name) or name in TACTICS or name.replace("_", "-") in TACTICS:
        return None
    if _ATTACK_ID.fullmatch(name.lower()) or name.lower() in TACTICS:
        return f"ATT&CK tag {tag!r} is not lower case (did you mean 'attack.{name.lower()}'?)"
    if re.fullmatch(r"t\d{4}\.\d{1,2}", name, re.I):
        major, minor = name.lower().split(".")
        return (f"malformed ATT&CK tag {tag!r}: sub-technique ids have 3 digits "
                f"(did you mean 'attack.{major}.{int(minor):03d}'?)")
    if re.fullmatch(r"[a-z_-]+", name, re.I):
        close = difflib.get_close_matches(name.lower().replace("_", "-"), sorted(TACTICS), n=1)
        hint = f" (did you mean 'attack.{close[0]}'?)" if close else ""
        return f"unknown ATT&CK tactic in tag {tag!r}{hint}"
    return f"malformed ATT&CK tag {tag!r}: {_TAG_HELP}"


@dataclass
class _Found:
    level: str
    message: str
    hint: tuple = ()      # where in the document (rule_errors hint); () = its first line
    doc: int = 0
    rule: Mapping[str, Any] = field(default_factory=dict)   # the document, with a collection's global part


def lint_document(d: Mapping[str, Any], catalog: LogsourceCatalog | None = None) -> list[_Found]:
    """Problems of one rule or correlation document that loading does not reject."""
    if "filter" in d or d.get("action") in ("global", "reset"):
        return []
    found: list[_Found] = []
    if not d.get("id"):
        found.append(_Found(ERROR, "rule has no id (alert ids and de-duplication depend on it)"))
    if "level" not in d:
        found.append(_Found(WARNING, "rule has no level (its alerts have none; "
                                     "--level treats it as informational)"))
    tags = d.get("tags")
    for tag in tags if isinstance(tags, list) else ():
        reason = attack_tag_problem(str(tag))
        if reason:
            found.append(_Found(WARNING, reason, ("tags", str(tag))))
    logsource = d.get("logsource")
    if catalog is not None and isinstance(logsource, Mapping):
        issue = logsource_issue(logsource, catalog)
        if issue and issue.level == WARNING:   # errors: loading rejects the rule and says why
            found.append(_Found(WARNING, issue.message, ("logsource", issue.key)))
    return found


def lint_file(path: str, data: bytes, catalog: LogsourceCatalog | None = None) -> list[Problem]:
    """Lint problems of one rule file (YAML errors are loading's: nothing here then)."""
    try:
        docs = list(yaml.load_all(data, Loader=_YamlLoader))
    except yaml.YAMLError:
        return []
    pending: list[_Found] = []
    shared: dict[str, Any] = {}   # a legacy collection's `action: global` document
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            continue
        if d.get("action") in ("global", "reset"):
            shared = d if d.get("action") == "global" else {}
            continue
        rule = {**shared, **d} if shared else d
        for f in lint_document(rule, catalog):
            f.doc, f.rule = i, rule
            pending.append(f)
    if not pending:
        return []
    lines = _Lines(data)
    return [Problem(path, lines.find(f.hint, doc=f.doc) or 0, f.level, _who(f.rule) + f.message)
            for f in pending]


def _who(d: Mapping[str, Any]) -> str:
    title, rid = d.get("title"), d.get("id")
    who = f"{str(title)!r}" if title else "rule"
    return who + (f" [{rid}]" if rid else "") + ": "


@dataclass
class Report:
    """What `check` prints: problems sorted by file and line; counts for the summary."""
    problems: list[Problem] = field(default_factory=list)

    def add(self, items: Iterable[Problem]) -> None:
        self.problems.extend(items)

    def sorted(self) -> list[Problem]:
        return sorted(set(self.problems), key=lambda p: (*p.sort_key, p.level, p.message))

    def count(self, level: str) -> int:
        return sum(p.level == level for p in set(self.problems))
