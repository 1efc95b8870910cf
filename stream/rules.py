"""Loading Sigma rules: files and directories in, rules with their detection IR out.

pySigma does the parsing (modifiers, conditions, meta filters, correlations) and
the log-source pipelines; this module collects errors per rule instead of
stopping, applies meta filters before pipelines, translates each condition into
IR (stream.ir) and caches the result per file content (stream.cache), so a
second load of the SigmaHQ set skips YAML and pySigma entirely.

Correlation rules (stream.correlation evaluates them) are parsed per file into
`Correlation` records and resolved once the whole set is loaded
(`resolve_correlations`): references by rule id or `name`, chains of
correlations, cycles, aliases. A correlation that does not resolve is an error;
everything else still loads. Decisions:

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
  helper, suppressed. A correlation that is not selected does not run and
  suppresses nothing.
- Condition thresholds keep the number written in the rule (`gte: 2.5`), where
  pySigma truncates to int. Ranges (`gt` + `lte`) are rejected by pySigma 1.5 and
  so stay errors; the evaluator takes several operators if that changes.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from sigstream.stream import modifiers
from sigstream.stream.ir import IR_VERSION, IRError, Placeholders, condition_to_ir

try:  # the C loader is about 5x faster
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

modifiers.register()

LEVELS = ("informational", "low", "medium", "high", "critical")
HIDDEN_STATUSES = frozenset({"deprecated", "unsupported"})
RULE_SUFFIXES = (".yml", ".yaml")
_FILTER_DOC = re.compile(rb"^filter\s*:", re.MULTILINE)
# Shape of the cached Rule/Correlation records; part of the cache salt (with IR_VERSION).
RECORD_VERSION = 2

CORRELATION_TYPES = ("event_count", "value_count", "temporal", "temporal_ordered",
                     "value_sum", "value_avg", "value_percentile", "value_median")
VALUE_TYPES = frozenset({"value_count", "value_sum", "value_avg", "value_percentile", "value_median"})
TEMPORAL_TYPES = frozenset({"temporal", "temporal_ordered"})
CONDITION_OPS = ("gt", "gte", "lt", "lte", "eq", "neq")


@dataclass
class Rule:
    """One Sigma detection rule, ready to compile (plain data, picklable)."""
    id: str | None
    title: str
    level: str | None
    status: str | None
    description: str | None
    tags: tuple[str, ...]
    references: tuple[str, ...]
    author: str | None
    date: str | None
    logsource: dict[str, str]
    falsepositives: tuple[str, ...]
    ir: tuple
    path: str = ""
    name: str | None = None   # the Sigma `name:`, how correlations may refer to the rule

    def meta(self) -> dict[str, Any]:
        """The rule's metadata as it appears in alerts."""
        return {
            "id": self.id, "name": self.name, "title": self.title, "level": self.level,
            "status": self.status, "tags": list(self.tags), "description": self.description,
            "references": list(self.references), "author": self.author, "date": self.date,
            "logsource": self.logsource, "falsepositives": list(self.falsepositives),
            "path": self.path,
        }


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


@dataclass
class RuleError:
    path: str
    rule_id: str | None
    title: str | None
    reason: str

    def __str__(self) -> str:
        who = f"{self.title!r}" if self.title else "rule"
        if self.rule_id:
            who += f" [{self.rule_id}]"
        return f"{self.path}: {who}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rule_id": self.rule_id, "title": self.title,
                "reason": self.reason}


@dataclass
class FileResult:
    """What one rule file yields (the unit of the compile cache)."""
    rules: list[Rule] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)

    def set_path(self, path: str) -> "FileResult":
        for item in (*self.rules, *self.correlations, *self.errors):
            item.path = path
        return self


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


@dataclass
class LoadedRules:
    rules: list[Rule] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)   # resolved, to run
    errors: list[RuleError] = field(default_factory=list)
    skipped: int = 0          # valid rules left out by the selection
    files: int = 0
    cache_hits: int = 0
    # rule_key() of the rules and correlations that must not alert on their own (generate:
    # false, or helpers a selected correlation needs but the selection left out)
    suppressed: frozenset[str] = frozenset()

    def is_suppressed(self, item: "Rule | Correlation | Mapping[str, Any]") -> bool:
        return rule_key(item) in self.suppressed


@dataclass
class RuleSelection:
    min_level: str | None = None
    statuses: frozenset[str] | None = None   # None: everything but deprecated/unsupported
    rule_ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()   # logsource products, e.g. {"windows"}

    def accepts(self, rule: Rule) -> bool:
        if self.min_level and LEVELS.index(rule.level or "informational") < LEVELS.index(self.min_level):
            return False
        status = rule.status or "experimental"
        if self.statuses is None:
            if status in HIDDEN_STATUSES:
                return False
        elif status not in self.statuses:
            return False
        if self.rule_ids and (rule.id or "") not in self.rule_ids:
            return False
        if self.tags and not self.tags.intersection(t.lower() for t in rule.tags):
            return False
        if self.products and rule.logsource.get("product", "").lower() not in self.products:
            return False
        return True

    def accepts_correlation(self, corr: Correlation) -> bool:
        """As `accepts`, without the product filter (a correlation has no log source)."""
        if self.min_level and LEVELS.index(corr.level or "informational") < LEVELS.index(self.min_level):
            return False
        status = corr.status or "experimental"
        if self.statuses is None:
            if status in HIDDEN_STATUSES:
                return False
        elif status not in self.statuses:
            return False
        if self.rule_ids and (corr.id or "") not in self.rule_ids:
            return False
        if self.tags and not self.tags.intersection(t.lower() for t in corr.tags):
            return False
        return True


def find_rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """Rule files: files as given, directories searched recursively for *.yml/*.yaml."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.suffix in RULE_SUFFIXES
                                and f.is_file() and not f.name.endswith((".tests.yml", ".tests.yaml"))))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"rule path not found: {p}")
    return found


def load_rules(
    paths: Iterable[str | Path],
    *,
    pipelines: Sequence[str | Path] = (),
    placeholders: Placeholders | None = None,
    selection: RuleSelection | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Any = None,
) -> LoadedRules:
    """Load every rule under `paths`; broken rules become errors, the rest load."""
    from sigstream.stream.cache import RuleCache  # local: keeps `import stream.rules` light

    files = find_rule_files(paths)
    raw = {f: f.read_bytes() for f in files}
    filters, filter_errors = _collect_filters(raw)
    compiler = _FileCompiler(pipelines, placeholders, filters)
    salt = _salt(compiler, raw, filters)
    cache = RuleCache(cache_dir, salt) if use_cache else None

    out = LoadedRules(files=len(files))
    out.errors.extend(filter_errors)
    keys = {f: hashlib.sha256(raw[f]).hexdigest() for f in files}
    results: dict[Path, FileResult] = {}
    for f in files:
        cached = cache.get(keys[f]) if cache else None
        if cached is not None:
            results[f] = cached
            out.cache_hits += 1
    misses = [f for f in files if f not in results]
    for f, result in _compile_files(compiler, misses, raw, progress):
        results[f] = result
        if cache:
            cache.put(keys[f], result)
    unselected: list[Rule] = []
    correlations: list[Correlation] = []
    for f in files:
        _add(out, results[f].set_path(str(f)), selection, unselected, correlations)
    _finish_correlations(out, unselected, correlations, selection or RuleSelection())
    if cache:
        cache.save()
    return out


PARALLEL_MIN_FILES = 200  # below this, starting worker processes costs more than it saves


def _compile_files(compiler: "_FileCompiler", files: list[Path], raw: dict[Path, bytes],
                   progress: Any) -> Iterable[tuple[Path, FileResult]]:
    """Compile cache misses; a large cold load is spread over the CPU cores."""
    workers = min(os.cpu_count() or 1, 8)
    # fork only a single-threaded process (a Kafka client's threads could hold locks)
    if (len(files) < PARALLEL_MIN_FILES or workers < 2 or threading.active_count() > 1
            or "fork" not in mp.get_all_start_methods()):
        for f in files:
            yield f, compiler.compile_file(str(f), raw[f])
            if progress is not None:
                progress()
        return
    global _WORKER_COMPILER
    _WORKER_COMPILER = compiler  # inherited by the forked workers
    chunks = [files[i::workers] for i in range(workers)]
    with mp.get_context("fork").Pool(workers) as pool:
        for chunk_results in pool.imap_unordered(_compile_chunk, [[(str(f), raw[f]) for f in c] for c in chunks]):
            for path, result in chunk_results:
                yield Path(path), result
                if progress is not None:
                    progress()
    _WORKER_COMPILER = None


_WORKER_COMPILER: "_FileCompiler | None" = None


def _compile_chunk(items: list[tuple[str, bytes]]) -> list[tuple[str, FileResult]]:
    assert _WORKER_COMPILER is not None
    return [(path, _WORKER_COMPILER.compile_file(path, data)) for path, data in items]


def load_rule_text(text: str, *, placeholders: Placeholders | None = None,
                   pipelines: Sequence[str | Path] = (), name: str = "<string>",
                   selection: RuleSelection | None = None) -> LoadedRules:
    """Load rules from YAML text (tests, stdin); no cache."""
    data = text.encode()
    filters, filter_errors = _collect_filters({Path(name): data})
    result = _FileCompiler(pipelines, placeholders, filters).compile_file(name, data)
    out = LoadedRules(files=1)
    out.errors.extend(filter_errors)
    sel = selection or RuleSelection(statuses=None)
    unselected: list[Rule] = []
    correlations: list[Correlation] = []
    _add(out, result.set_path(name), sel, unselected, correlations)
    _finish_correlations(out, unselected, correlations, sel)
    return out


def _add(out: LoadedRules, result: FileResult, selection: RuleSelection | None,
         unselected: list[Rule], correlations: list[Correlation]) -> None:
    sel = selection or RuleSelection()
    for r in result.rules:
        if sel.accepts(r):
            out.rules.append(r)
        else:
            out.skipped += 1
            unselected.append(r)
    correlations.extend(result.correlations)
    out.errors.extend(result.errors)


def _finish_correlations(out: LoadedRules, unselected: list[Rule], correlations: list[Correlation],
                         selection: RuleSelection) -> None:
    """Resolve the correlations; keep the selected ones and what they need; suppression."""
    if not correlations:
        return
    resolved, errors = resolve_correlations(out.rules + unselected, correlations)
    out.errors.extend(errors)
    index = _RefIndex(out.rules + unselected, resolved)
    selected_rules = {id(r) for r in out.rules}
    running = [c for c in resolved if selection.accepts_correlation(c)]
    needed: dict[int, Correlation] = {id(c): c for c in running}
    stack = list(running)
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
            elif id(target) not in selected_rules:  # a helper rule
                selected_rules.add(id(target))
                out.rules.append(target)
                out.skipped -= 1
                suppressed.add(rule_key(target) or "")
            if not corr.generate:
                suppressed.add(rule_key(target) or "")
    out.correlations = [c for c in resolved if id(c) in needed]
    suppressed.discard("")
    out.suppressed = frozenset(suppressed)


def _salt(compiler: "_FileCompiler", raw: dict[Path, bytes], filters: list[Any]) -> str:
    """Everything besides a file's own bytes that changes its compiled form."""
    import sigma

    h = hashlib.sha256()
    h.update(f"ir{IR_VERSION}|rec{RECORD_VERSION}|{getattr(sigma, '__version__', '')}|".encode())
    h.update(compiler.fingerprint.encode())
    for f, data in raw.items():
        if _FILTER_DOC.search(data):
            h.update(data)
    return h.hexdigest()


def _load_yaml_docs(path: str, data: bytes) -> tuple[list[dict], list[RuleError]]:
    """The mapping documents of a YAML file; a syntax error keeps the documents before it."""
    docs: list[Any] = []
    errors: list[RuleError] = []
    try:
        for d in yaml.load_all(data, Loader=_YamlLoader):
            docs.append(d)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        errors.append(RuleError(path, None, None, f"invalid YAML{where}: {problem}"))
    good = []
    for i, d in enumerate(docs, 1):
        if d is None:
            continue
        if not isinstance(d, dict):
            errors.append(RuleError(path, None, None,
                                    f"YAML document {i} is a {type(d).__name__}, not a rule mapping"))
            continue
        good.append(d)
    return good, errors


def _collect_filters(raw: dict[Path, bytes]) -> tuple[list[Any], list[RuleError]]:
    """Meta filters (`filter:` documents) from every file that may hold one."""
    from sigma.filters import SigmaFilter

    filters, errors = [], []
    for f, data in raw.items():
        if not _FILTER_DOC.search(data):
            continue
        docs, errs = _load_yaml_docs(str(f), data)
        errors.extend(errs)
        for d in docs:
            if "filter" not in d:
                continue
            try:
                filters.append(SigmaFilter.from_dict(d))
            except Exception as e:  # pySigma raises many exception types here
                errors.append(RuleError(str(f), _s(d.get("id")), _s(d.get("title")),
                                        f"invalid filter: {e}"))
    return filters, errors


class _FileCompiler:
    """YAML bytes -> FileResult, through pySigma, filters, pipelines and IR translation."""

    def __init__(self, pipelines: Sequence[str | Path], placeholders: Placeholders | None,
                 filters: list[Any]):
        from sigma.pipelines.sysmon import sysmon_pipeline
        from sigma.pipelines.windows import windows_logsource_pipeline
        from sigma.processing.pipeline import ProcessingPipeline

        self.placeholders = placeholders or {}
        self.filters = filters
        pipeline = sysmon_pipeline() + windows_logsource_pipeline()
        texts = []
        for p in pipelines:
            text = Path(p).read_text()
            texts.append(text)
            pipeline = pipeline + ProcessingPipeline.from_yaml(text)
        self.pipeline = pipeline
        self.fingerprint = repr(sorted(self.placeholders.items())) + "|".join(texts)

    def compile_file(self, path: str, data: bytes) -> FileResult:
        from sigma.collection import SigmaCollection
        from sigma.correlations import SigmaCorrelationRule

        result = FileResult()
        docs, errors = _load_yaml_docs(path, data)
        result.errors.extend(errors)
        items: list[Any] = []
        # Correlations are parsed alone: their rule references may point to other files,
        # so they are resolved once the whole set is loaded (resolve_correlations).
        for d in (d for d in docs if "correlation" in d):
            item = self._parse_one(path, d, result, SigmaCorrelationRule.from_dict)
            if item is not None:
                self._compile_correlation(path, item, d, result)
        rule_docs = [d for d in docs if "correlation" not in d and "filter" not in d]
        if rule_docs:
            try:
                items.extend(SigmaCollection.from_dicts(rule_docs, collect_errors=True).rules)
            except Exception:  # one bad document: parse each alone so the others still load
                for d in rule_docs:
                    items.append(self._parse_one(
                        path, d, result,
                        lambda doc, collect_errors: SigmaCollection.from_dicts(
                            [doc], collect_errors=collect_errors).rules[0]))
        for item in items:
            if item is not None:
                self._compile_item(path, item, result)
        return result

    @staticmethod
    def _parse_one(path: str, doc: dict, result: FileResult, parse: Any) -> Any:
        try:
            return parse(doc, collect_errors=True)
        except Exception as e:  # pySigma raises many exception types here
            result.errors.append(RuleError(path, _s(doc.get("id")), _s(doc.get("title")), _reason(e)))
            return None

    def _compile_item(self, path: str, item: Any, result: FileResult) -> None:
        from sigma.correlations import SigmaCorrelationRule

        rid, title = _s(item.id), item.title
        if item.errors:
            for e in item.errors:
                result.errors.append(RuleError(path, rid, title, _reason(e)))
            return
        if isinstance(item, SigmaCorrelationRule):  # pragma: no cover - compile_file routes them
            self._compile_correlation(path, item, {}, result)
            return
        try:
            meta = _rule_meta(item)
            for flt in self.filters:
                item = flt.apply_on_rule(item)
            self.pipeline.apply(item)
            trees = [c.parse() for c in item.detection.parsed_condition]
            irs = [condition_to_ir(t, self.placeholders) for t in trees]
        except IRError as e:
            result.errors.append(RuleError(path, rid, title, str(e)))
            return
        except Exception as e:  # pySigma's own errors (SigmaError and others) carry the reason
            result.errors.append(RuleError(path, rid, title, _reason(e)))
            return
        ir = irs[0] if len(irs) == 1 else ("or", tuple(irs))
        result.rules.append(Rule(ir=ir, **meta))

    @staticmethod
    def _compile_correlation(path: str, item: Any, doc: dict, result: FileResult) -> None:
        rid, title = _s(item.id), item.title
        if item.errors:
            for e in item.errors:
                result.errors.append(RuleError(path, rid, title, _reason(e)))
            return
        try:
            result.correlations.append(_correlation_of(item, doc))
        except ValueError as e:
            result.errors.append(RuleError(path, rid, title, str(e)))


def _base_meta(rule: Any) -> dict[str, Any]:
    """The metadata every Sigma rule and correlation has."""
    return {
        "id": _s(rule.id),
        "name": _s(rule.name),
        "title": rule.title,
        "level": rule.level.name.lower() if rule.level else None,
        "status": rule.status.name.lower() if rule.status else None,
        "description": rule.description,
        "tags": tuple(f"{t.namespace}.{t.name}" for t in rule.tags),
        "references": tuple(rule.references or ()),
        "author": rule.author,
        "date": rule.date.isoformat() if rule.date else None,
        "falsepositives": tuple(str(x) for x in (rule.falsepositives or ())),
    }


def _rule_meta(rule: Any) -> dict[str, Any]:
    ls = rule.logsource
    logsource = {k: v for k, v in (("product", ls.product), ("category", ls.category),
                                   ("service", ls.service)) if v}
    return {**_base_meta(rule), "logsource": logsource}


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


def _correlation_of(item: Any, doc: dict) -> Correlation:
    """A parsed pySigma correlation (and its YAML document) -> Correlation."""
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
    meta = _base_meta(item)
    return Correlation(
        type=item.type.name.lower(), rules=refs, group_by=tuple(item.group_by or ()),
        timespan_s=float(item.timespan.seconds), timespan=str(item.timespan.spec),
        condition=condition, expression=expression, expression_text=expression_text,
        aliases=aliases, generate=bool(generate), **meta)


# ------------------------------------------------------------------ resolving correlations

def _canonical_ref(ref: str) -> tuple[str, str]:
    """("id", canonical uuid) for a reference in UUID form, else ("name", ref)."""
    try:
        return "id", str(uuid.UUID(ref))
    except (ValueError, AttributeError, TypeError):
        return "name", ref


class _RefIndex:
    """Rules and correlations by id and by name."""

    def __init__(self, rules: Sequence[Rule], correlations: Sequence[Correlation]):
        self.by: dict[tuple[str, str], list[Rule | Correlation]] = {}
        for item in (*rules, *correlations):
            if item.id:
                self.by.setdefault(("id", _canonical_ref(item.id)[1]), []).append(item)
            if item.name:
                self.by.setdefault(("name", item.name), []).append(item)

    def lookup(self, ref: str) -> list[Rule | Correlation]:
        found = self.by.get(_canonical_ref(ref), [])
        return list({id(x): x for x in found}.values())


def _expression_refs(tree: tuple) -> list[str]:
    if tree[0] == "rule":
        return [tree[1]]
    if tree[0] == "not":
        return _expression_refs(tree[1])
    return [r for sub in tree[1] for r in _expression_refs(sub)]


def _check_correlation(c: Correlation) -> str | None:
    """What is wrong with a correlation on its own (without its references), or None."""
    if c.type not in CORRELATION_TYPES:
        return f"unknown correlation type {c.type!r} (one of {', '.join(CORRELATION_TYPES)})"
    if not c.rules:
        return "no rules to correlate"
    if not c.timespan_s or c.timespan_s <= 0:
        return "timespan must be greater than zero"
    unknown = [k for k in c.condition if k not in CONDITION_OPS and k not in ("field", "percentile")]
    if unknown:
        return f"unknown condition operator(s) {', '.join(map(str, unknown))} (one of {', '.join(CONDITION_OPS)})"
    for op, th in c.ops.items():
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not math.isfinite(th):
            return f"condition {op}: {th!r} is not a number"
    if c.expression is not None:
        if c.type not in TEMPORAL_TYPES:
            return "an extended condition (rule expression) is only for temporal correlations"
        if c.ops:
            return "both an extended condition and a count condition"
        if set(_expression_refs(c.expression)) != set(c.rules):
            return "the extended condition must name exactly the correlation's rules"
    elif not c.ops:
        return "condition needs one of " + ", ".join(CONDITION_OPS)
    fld = c.value_field
    if c.type in VALUE_TYPES:
        if fld is None or fld == "" or fld == ():
            return f"{c.type} needs condition.field"
        if not isinstance(fld, str) and c.type != "value_count":
            return f"{c.type} takes one field in condition.field, not a list"
    if c.type == "value_percentile":
        p = c.condition.get("percentile")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            return "value_percentile needs condition.percentile between 0 and 100"
    return None


def resolve_correlations(rules: Sequence[Rule], correlations: Sequence[Correlation],
                         ) -> tuple[list[Correlation], list[RuleError]]:
    """Check correlations against the whole loaded rule set (run after loading everything).

    Returns the correlations that can run, in the given order, and one located error per
    correlation that cannot: invalid type/operator/field, unknown or ambiguous reference,
    a rule listed twice, an alias for a rule outside `rules`, a reference cycle, or a
    reference to a correlation that itself has errors. Pure: the records are not changed.
    """
    index = _RefIndex(rules, correlations)
    errors: dict[int, str] = {}
    targets: dict[int, list[Rule | Correlation]] = {}
    for c in correlations:
        problem = _check_correlation(c)
        resolved: list[Rule | Correlation] = []
        for ref in c.rules if problem is None else ():
            found = index.lookup(ref)
            if not found:
                problem = f"unknown rule reference {ref!r} (no rule or correlation has this id or name)"
            elif len(found) > 1:
                problem = f"ambiguous rule reference {ref!r}: {len(found)} rules have this id or name"
            elif any(found[0] is t for t in resolved):
                problem = f"rule {ref!r} is listed twice"
            if problem:
                break
            resolved.append(found[0])
        for alias, mapping in (c.aliases.items() if problem is None else ()):
            for ref in mapping:
                found = index.lookup(ref)
                if len(found) != 1 or not any(found[0] is t for t in resolved):
                    problem = (f"alias {alias!r} maps rule {ref!r}, which is not among the "
                               f"correlation's rules")
                    break
            if problem:
                break
        for g in (c.group_by if problem is None else ()):
            if not isinstance(g, str) or not g:
                problem = f"invalid group-by field {g!r}"
                break
        if problem:
            errors[id(c)] = problem
        else:
            targets[id(c)] = resolved
    # cycles: depth-first over correlation -> correlation edges
    state: dict[int, int] = {}   # 1 on the current path, 2 done

    def visit(c: Correlation, path: list[Correlation]) -> None:
        state[id(c)] = 1
        path.append(c)
        for t in targets.get(id(c), ()):
            if not isinstance(t, Correlation):
                continue
            if state.get(id(t)) == 1:
                cycle = path[next(i for i, x in enumerate(path) if x is t):]
                names = " -> ".join(_label(x) for x in [*cycle, t])
                for x in cycle:
                    errors.setdefault(id(x), f"reference cycle: {names}")
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
            bad = next((t for t in targets[id(c)] if isinstance(t, Correlation) and id(t) in errors), None)
            if bad is not None:
                errors[id(c)] = f"references correlation {_label(bad)}, which has errors"
                changed = True
    ok = [c for c in correlations if id(c) not in errors]
    errs = [RuleError(c.path, c.id, c.title, errors[id(c)]) for c in correlations if id(c) in errors]
    return ok, errs


def _label(c: Correlation) -> str:
    return repr(c.name or c.id or c.title)


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def _s(v: Any) -> str | None:
    return None if v is None else str(v)
