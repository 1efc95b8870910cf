"""Loading Sigma rules: files and directories in, rules with their detection IR out.

pySigma does the parsing (modifiers, conditions, meta filters, correlations) and
the log-source pipelines; this module collects errors per rule instead of
stopping, applies meta filters before pipelines, translates each condition into
IR (stream.ir) and caches the result per file content (stream.cache), so a
second load of the SigmaHQ set skips YAML and pySigma entirely.

Correlation rules are parsed per file into `Correlation` records and resolved
once the whole set is loaded; stream.correlation_rules holds the records, the
resolution and the suppression decisions (re-exported here), stream.correlation
evaluates them.

Errors are `RuleError`s located by file and line (stream.rule_errors). Besides what pySigma
rejects, a second rule with an id already loaded and a windows rule whose log-source
category/service no pipeline maps nor the Sigma taxonomy knows are errors (stream.rule_lint).
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from sigstream.stream import modifiers
from sigstream.stream.correlation_rules import (
    CONDITION_OPS,
    CORRELATION_TYPES,
    TEMPORAL_TYPES,
    VALUE_TYPES,
    Correlation,
    _canonical_ref,
    correlation_of,
    plan_correlations,
    resolve_correlations,
    rule_key,
)
from sigstream.stream.ir import IR_VERSION, Placeholders, condition_to_ir
from sigstream.stream.rule_errors import RuleError, _correlation_locator, _Errors, _problem, rule_line
from sigstream.stream.rule_lint import ERROR, DuplicateIds, LogsourceCatalog, logsource_issue

__all__ = [
    "LEVELS", "HIDDEN_STATUSES", "RULE_SUFFIXES", "RECORD_VERSION", "Rule", "RuleError",
    "FileResult", "LoadedRules", "RuleSelection", "find_rule_files", "load_rules",
    "load_rule_text", "logsource_catalog", "rule_line",
    # stream.correlation_rules, imported from here by older code
    "CONDITION_OPS", "CORRELATION_TYPES", "TEMPORAL_TYPES", "VALUE_TYPES", "Correlation",
    "resolve_correlations", "rule_key", "_canonical_ref",
]

try:  # the C loader is about 5x faster
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

modifiers.register()

LEVELS = ("informational", "low", "medium", "high", "critical")
HIDDEN_STATUSES = frozenset({"deprecated", "unsupported"})
RULE_SUFFIXES = (".yml", ".yaml")
_FILTER_DOC = re.compile(rb"^filter\s*:", re.MULTILINE)
# Shape of the cached Rule/Correlation/RuleError records; part of the cache salt (with
# IR_VERSION). 3: RuleError.line; Correlation moved to stream.correlation_rules.
# 5: windows rules with an unknown log-source category/service are errors.
RECORD_VERSION = 5


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
class FileResult:
    """What one rule file yields (the unit of the compile cache)."""
    rules: list[Rule] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)

    def set_path(self, path: str) -> "FileResult":
        for item in (*self.rules, *self.correlations, *self.errors):
            item.path = path
        return self


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
        if self.products and rule.logsource.get("product", "").lower() not in self.products:
            return False
        return self._accepts_meta(rule)

    def accepts_correlation(self, corr: Correlation) -> bool:
        """As `accepts`, without the product filter (a correlation has no log source)."""
        return self._accepts_meta(corr)

    def _accepts_meta(self, item: "Rule | Correlation") -> bool:
        if self.min_level and LEVELS.index(item.level or "informational") < LEVELS.index(self.min_level):
            return False
        status = item.status or "experimental"
        if self.statuses is None:
            if status in HIDDEN_STATUSES:
                return False
        elif status not in self.statuses:
            return False
        if self.rule_ids and (item.id or "") not in self.rule_ids:
            return False
        if self.tags and not self.tags.intersection(t.lower() for t in item.tags):
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
    ids = DuplicateIds(lambda p: raw.get(Path(p)))
    for f in files:
        _add(out, results[f].set_path(str(f)), selection, unselected, correlations, ids)
    _finish_correlations(out, unselected, correlations, selection or RuleSelection(),
                         lambda p: raw.get(Path(p)))
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


def logsource_catalog(pipelines: Sequence[str | Path] = ()) -> LogsourceCatalog:
    """The windows log sources the built-in pipelines and `pipelines` map (for `check`)."""
    return _FileCompiler(pipelines, None, []).logsources


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
    _add(out, result.set_path(name), sel, unselected, correlations, DuplicateIds({name: data}.get))
    _finish_correlations(out, unselected, correlations, sel, {name: data}.get)
    return out


def _add(out: LoadedRules, result: FileResult, selection: RuleSelection | None,
         unselected: list[Rule], correlations: list[Correlation], ids: DuplicateIds) -> None:
    sel = selection or RuleSelection()
    for r in result.rules:
        # one id, one rule: a second definition would alert twice with the same alert id
        duplicate = ids.check(r.path, r.id)
        if duplicate:
            out.errors.append(RuleError(r.path, r.id, r.title, *duplicate))
        elif sel.accepts(r):
            out.rules.append(r)
        else:
            out.skipped += 1
            unselected.append(r)
    correlations.extend(result.correlations)
    out.errors.extend(result.errors)


def _finish_correlations(out: LoadedRules, unselected: list[Rule], correlations: list[Correlation],
                         selection: RuleSelection, source: Callable[[str], bytes | None]) -> None:
    """Resolve the correlations; keep the selected ones and what they need; suppression.
    `source(path)`: a rule file's bytes, read again only to locate correlation errors."""
    if not correlations:
        return
    resolved, errors = resolve_correlations(out.rules + unselected, correlations,
                                            locate=_correlation_locator(source))
    out.errors.extend(errors)
    running, helpers, suppressed = plan_correlations(out.rules, unselected, resolved,
                                                     selection.accepts_correlation)
    out.rules.extend(helpers)
    out.skipped -= len(helpers)
    out.correlations = running
    out.suppressed = suppressed


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


def _load_yaml_docs(data: bytes, errs: "_Errors") -> list[tuple[int, dict]]:
    """The mapping documents of a YAML file with their positions in it (0-based); a
    syntax error keeps the documents before it."""
    docs: list[Any] = []
    try:
        for d in yaml.load_all(data, Loader=_YamlLoader):
            docs.append(d)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context_mark is not None and mark is not None and mark.index >= len(data.rstrip()):
            # an unclosed quote or bracket is found at the end of the file: point at its start
            mark, problem = context_mark, f"{context}, {problem}" if context else problem
        line = mark.line + 1 if mark else None            # yaml's marks are 0-based
        where = f" (line {line}, column {mark.column + 1})" if mark else ""
        errs.add(None, None, f"invalid YAML{where}: {problem}", line=line)
    good = []
    for i, d in enumerate(docs):
        if d is None:
            continue
        if not isinstance(d, dict):
            errs.add(None, None, f"YAML document {i + 1} is a {type(d).__name__}, not a rule mapping",
                     doc=i)
            continue
        good.append((i, d))
    return good


def _collect_filters(raw: dict[Path, bytes]) -> tuple[list[Any], list[RuleError]]:
    """Meta filters (`filter:` documents) from every file that may hold one."""
    from sigma.filters import SigmaFilter

    filters, errors = [], []
    for f, data in raw.items():
        if not _FILTER_DOC.search(data):
            continue
        errs = _Errors(str(f), data)
        for i, d in _load_yaml_docs(data, errs):
            if "filter" not in d:
                continue
            try:
                filters.append(SigmaFilter.from_dict(d))
            except Exception as e:  # pySigma raises many exception types here
                reason, hint = _problem(e)
                errs.add(_s(d.get("id")), _s(d.get("title")), f"invalid filter: {reason}",
                         doc=i, hint=hint or ("filter",))
        errors.extend(errs.located())
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
        self.logsources = LogsourceCatalog.of(pipeline)
        self.fingerprint = repr(sorted(self.placeholders.items())) + "|".join(texts)

    def compile_file(self, path: str, data: bytes) -> FileResult:
        from sigma.collection import SigmaCollection
        from sigma.correlations import SigmaCorrelationRule

        result = FileResult()
        errs = _Errors(path, data)
        docs = _load_yaml_docs(data, errs)
        # Correlations are parsed alone: their rule references may point to other files,
        # so they are resolved once the whole set is loaded (resolve_correlations).
        for i, d in docs:
            if "correlation" in d:
                item = self._parse_one(d, i, errs, SigmaCorrelationRule.from_dict)
                if item is not None:
                    self._compile_correlation(item, d, i, errs, result)
        rule_docs = [(i, d) for i, d in docs if "correlation" not in d and "filter" not in d]
        items: list[tuple[Any, int | None]] = []
        if rule_docs:
            try:
                parsed = SigmaCollection.from_dicts([d for _, d in rule_docs], collect_errors=True).rules
                # every document gives a rule but the collection actions `global` and `reset`
                where = [i for i, d in rule_docs if d.get("action") in (None, "repeat")]
                items.extend(zip(parsed, where if len(where) == len(parsed) else [None] * len(parsed)))
            except Exception:  # one bad document: parse each alone so the others still load
                for i, d in rule_docs:
                    items.append((self._parse_one(
                        d, i, errs,
                        lambda doc, collect_errors: SigmaCollection.from_dicts(
                            [doc], collect_errors=collect_errors).rules[0]), i))
        for item, i in items:
            if item is not None:
                self._compile_item(item, i, errs, result)
        result.errors = errs.located()
        return result

    @staticmethod
    def _parse_one(doc: dict, index: int, errs: "_Errors", parse: Any) -> Any:
        try:
            return parse(doc, collect_errors=True)
        except Exception as e:  # pySigma raises many exception types here
            reason, hint = _problem(e)
            errs.add(_s(doc.get("id")), _s(doc.get("title")), reason, doc=index, hint=hint)
            return None

    def _compile_item(self, item: Any, index: int | None, errs: "_Errors", result: FileResult) -> None:
        rid, title = _s(item.id), item.title
        if item.errors:
            for e in item.errors:
                errs.add(rid, title, *_problem(e), doc=index)
            return
        try:
            meta = _rule_meta(item)
            issue = logsource_issue(meta["logsource"], self.logsources)
            if issue and issue.level == ERROR:   # no log-source condition: it would match far too much
                errs.add(rid, title, issue.message, ("logsource", issue.key), doc=index)
                return
            for flt in self.filters:
                item = flt.apply_on_rule(item)
            self.pipeline.apply(item)
            trees = [c.parse() for c in item.detection.parsed_condition]
            irs = [condition_to_ir(t, self.placeholders, item.detection) for t in trees]
        except Exception as e:  # IRError, pySigma's own errors (SigmaError and others)
            errs.add(rid, title, *_problem(e), doc=index)
            return
        ir = irs[0] if len(irs) == 1 else ("or", tuple(irs))
        result.rules.append(Rule(ir=ir, **meta))

    @staticmethod
    def _compile_correlation(item: Any, doc: dict, index: int, errs: "_Errors",
                             result: FileResult) -> None:
        rid, title = _s(item.id), item.title
        if item.errors:
            for e in item.errors:
                errs.add(rid, title, *_problem(e), doc=index)
            return
        try:
            result.correlations.append(correlation_of(item, doc, _base_meta(item)))
        except ValueError as e:
            errs.add(rid, title, str(e), doc=index, hint=("generate",))


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



def _s(v: Any) -> str | None:
    return None if v is None else str(v)
