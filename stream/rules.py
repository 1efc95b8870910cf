"""Loading Sigma rules: files and directories in, rules with their detection IR out.

pySigma does the parsing (modifiers, conditions, meta filters, correlations) and
the log-source pipelines; this module collects errors per rule instead of
stopping, applies meta filters before pipelines, translates each condition into
IR (stream.ir) and caches the result per file content (stream.cache), so a
second load of the SigmaHQ set skips YAML and pySigma entirely.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

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

    def meta(self) -> dict[str, Any]:
        """The rule's metadata as it appears in alerts."""
        return {
            "id": self.id, "title": self.title, "level": self.level, "status": self.status,
            "tags": list(self.tags), "description": self.description,
            "references": list(self.references), "author": self.author, "date": self.date,
            "logsource": self.logsource, "falsepositives": list(self.falsepositives),
            "path": self.path,
        }


@dataclass
class Correlation:
    """A correlation rule: parsed and listed, not evaluated yet."""
    id: str | None
    title: str
    type: str
    rules: tuple[str, ...]
    path: str = ""


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


@dataclass
class LoadedRules:
    rules: list[Rule] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)
    skipped: int = 0          # valid rules left out by the selection
    files: int = 0
    cache_hits: int = 0


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
    for f in files:
        _add(out, results[f].set_path(str(f)), selection)
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
    _add(out, result.set_path(name), selection or RuleSelection(statuses=None))
    return out


def _add(out: LoadedRules, result: FileResult, selection: RuleSelection | None) -> None:
    sel = selection or RuleSelection()
    for r in result.rules:
        if sel.accepts(r):
            out.rules.append(r)
        else:
            out.skipped += 1
    out.correlations.extend(result.correlations)
    out.errors.extend(result.errors)


def _salt(compiler: "_FileCompiler", raw: dict[Path, bytes], filters: list[Any]) -> str:
    """Everything besides a file's own bytes that changes its compiled form."""
    import sigma

    h = hashlib.sha256()
    h.update(f"ir{IR_VERSION}|{getattr(sigma, '__version__', '')}|".encode())
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
        # and they are listed, not evaluated, so the references are not resolved here.
        for d in (d for d in docs if "correlation" in d):
            items.append(self._parse_one(path, d, result, SigmaCorrelationRule.from_dict))
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
        if isinstance(item, SigmaCorrelationRule):
            refs = tuple(str(r.reference) for r in item.rules)
            result.correlations.append(Correlation(rid, title, item.type.name.lower(), refs))
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


def _rule_meta(rule: Any) -> dict[str, Any]:
    ls = rule.logsource
    logsource = {k: v for k, v in (("product", ls.product), ("category", ls.category),
                                   ("service", ls.service)) if v}
    return {
        "id": _s(rule.id),
        "title": rule.title,
        "level": rule.level.name.lower() if rule.level else None,
        "status": rule.status.name.lower() if rule.status else None,
        "description": rule.description,
        "tags": tuple(f"{t.namespace}.{t.name}" for t in rule.tags),
        "references": tuple(rule.references or ()),
        "author": rule.author,
        "date": rule.date.isoformat() if rule.date else None,
        "logsource": logsource,
        "falsepositives": tuple(str(x) for x in (rule.falsepositives or ())),
    }


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def _s(v: Any) -> str | None:
    return None if v is None else str(v)
