"""Rule test cases that live next to rules: `<rule>.tests.yml`.

Format:

    rule: proc_creation_win_x.yml      # optional; default: the rule file of the same stem
    cases:
      - name: encoded launch by mshta
        expect: match                  # match | no_match
        event: {EventID: 1, Channel: ..., Image: ..., CommandLine: ...}

Each single-event case runs its event through the engine with only that rule file
loaded, so log-source routing, the prefilter and the rule's own logic are all tested.

Correlation rules are tested with event sequences (`events:`), in the tests file next
to the correlation:

    cases:
      - name: three encoded launches in five minutes
        expect: match                  # the correlation fires at least once | no_match: never
        count: 2                       # optional, with match: exactly this many firings
        correlation: name-or-id        # optional: which correlation of the file (default: all of it)
        events:                        # run in order, then end of input
          - {EventID: 1, Channel: ..., Computer: WKS-1, TimeCreated: '2026-11-24T10:04:00Z', ...}

The rules a correlation references are looked up in the whole rule set of the run
(every rule path given to `run_tests`, plus the directory, recursively, of a tests file
named explicitly), loaded once with correlations resolved; the
events go through the shared Detector (reassembly, matching, enrichment, the
correlation stage with unlimited lateness, as `hunt`) and the case counts the results
of the file's correlation(s). A result counts even when the correlation is itself a
suppressed helper of a chained correlation (it fires, it just does not alert alone).
Events need an event time (TimeCreated, UtcTime or @timestamp): a referenced rule's
match without one fails the case, since it can never be placed in a window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from sigstream.stream.engine import Engine
from sigstream.stream.rules import LoadedRules, RuleSelection, find_rule_files, load_rules

TEST_SUFFIXES = (".tests.yml", ".tests.yaml")
EXPECTATIONS = ("match", "no_match")
SEQUENCE_KEYS = frozenset({"name", "description", "expect", "events", "count", "correlation"})
ALL_STATUSES = RuleSelection(statuses=frozenset(
    {"stable", "test", "experimental", "deprecated", "unsupported"}))


@dataclass
class CaseResult:
    test_file: str
    rule_file: str
    name: str
    passed: bool
    detail: str = ""


@dataclass
class RuleTestReport:
    results: list[CaseResult]
    untested_rules: list[str]
    errors: list[str]            # broken test files or rules

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors


def tests_file_for(rule_file: Path) -> Path | None:
    for suffix in TEST_SUFFIXES:
        candidate = rule_file.with_name(rule_file.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def _split_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    explicit_tests, rule_paths = [], []
    for p in map(Path, paths):
        if p.is_file() and p.name.endswith(TEST_SUFFIXES):
            explicit_tests.append(p)
        else:
            rule_paths.append(p)
    return explicit_tests, rule_paths


def discover(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(rule file, test file) pairs under `paths`, and rule files without tests."""
    pairs, untested = [], []
    explicit_tests, rule_paths = _split_paths(paths)
    for rule_file in find_rule_files(rule_paths):
        t = tests_file_for(rule_file)
        if t is None:
            untested.append(str(rule_file))
        else:
            pairs.append((rule_file, t))
    for t in explicit_tests:
        stem = t.name[: -len(next(s for s in TEST_SUFFIXES if t.name.endswith(s)))]
        pairs.append((t.with_name(stem + ".yml"), t))
    return pairs, untested


def _is_sequence_case(case: Any) -> bool:
    return isinstance(case, dict) and "events" in case


def _has_correlation(rule_file: Path) -> bool:
    """Does the rule file hold a correlation document? (False if it does not parse:
    the ordinary loading path reports that.)"""
    try:
        return any(isinstance(d, dict) and "correlation" in d
                   for d in yaml.safe_load_all(rule_file.read_text()))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False


def _same_file(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return str(a) == str(b)


class _RuleSet:
    """The whole rule set of a run, loaded once (only if a correlation is tested)."""

    def __init__(self, rule_paths: list[Path], use_cache: bool, enrich: Callable[[dict], None] | None):
        self.rule_paths, self.use_cache, self.enrich = rule_paths, use_cache, enrich
        self._loaded: LoadedRules | None = None
        self._engine: Engine | None = None

    @property
    def loaded(self) -> LoadedRules:
        if self._loaded is None:
            self._loaded = load_rules(self.rule_paths, selection=ALL_STATUSES, use_cache=self.use_cache)
        return self._loaded

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.loaded.rules, enrich=self.enrich)
        return self._engine


def run_tests(paths: Iterable[str | Path], prepare: Callable[[dict], dict] = lambda e: e,
              use_cache: bool = True, enrich: Callable[[dict], None] | None = None) -> RuleTestReport:
    """Run every test file found for the rules under `paths`.

    `prepare` turns a case's event into a normalised event (the CLI passes the
    connectors' normaliser so cases may also be written as raw EVTX JSON); `enrich`
    is passed to the engine (the CLI passes stream.enrich.enrich, as `hunt` does).
    """
    paths = list(paths)
    pairs, untested = discover(paths)
    explicit_tests, rule_paths = _split_paths(paths)
    # the rule set correlations are resolved against: every rule path given, plus the
    # directory of each test file named explicitly (each rule file once)
    whole: list[Path] = []
    seen: set[Path] = set()
    for f in find_rule_files(rule_paths + sorted({t.parent for t in explicit_tests})):
        if f.resolve() not in seen:
            seen.add(f.resolve())
            whole.append(f)
    rule_set = _RuleSet(whole, use_cache, enrich)
    results: list[CaseResult] = []
    errors: list[str] = []
    for rule_file, test_file in pairs:
        try:
            spec = yaml.safe_load(test_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            errors.append(f"{test_file}: cannot read test file: {e}")
            continue
        if not isinstance(spec, dict):
            errors.append(f"{test_file}: a test file is a mapping with `cases:`")
            continue
        if spec.get("rule"):
            rule_file = test_file.parent / spec["rule"]
        if not rule_file.exists():
            errors.append(f"{test_file}: rule file {rule_file} not found")
            continue
        cases = spec.get("cases") or []
        if not isinstance(cases, list):
            errors.append(f"{test_file}: `cases` must be a list")
            continue
        if not cases:
            errors.append(f"{test_file}: no cases")
        if _has_correlation(rule_file) or any(_is_sequence_case(c) for c in cases):
            results += _run_correlation_file(rule_set, rule_file, test_file, cases, prepare, errors)
            continue
        loaded = load_rules([rule_file], selection=ALL_STATUSES, use_cache=use_cache)
        if loaded.errors or not loaded.rules:
            reasons = "; ".join(e.reason for e in loaded.errors) or "no rule in file"
            errors.append(f"{rule_file}: rule does not load: {reasons}")
            continue
        engine = Engine(loaded.rules, enrich=enrich)
        for i, case in enumerate(cases, 1):
            results.append(_run_case(engine, case, i, str(test_file), str(rule_file), prepare))
    return RuleTestReport(results, untested, errors)


def _case_name(case: Any, i: int) -> str:
    return str(case.get("name") or f"case {i}") if isinstance(case, dict) else f"case {i}"


def _run_case(engine: Engine, case: Any, i: int, test_file: str, rule_file: str,
              prepare: Callable[[dict], dict]) -> CaseResult:
    name = _case_name(case, i)
    expect = case.get("expect") if isinstance(case, dict) else None
    if expect not in EXPECTATIONS or not isinstance(case.get("event"), dict):
        return CaseResult(test_file, rule_file, name, False,
                          f"a case needs expect: match|no_match and an event mapping (got {expect!r}); "
                          f"event sequences (`events:`) are for correlation rules")
    try:
        event = prepare(case["event"])
    except Exception as e:
        return CaseResult(test_file, rule_file, name, False, f"event cannot be normalised: {e}")
    hits = engine.match(event)
    matched = bool(hits)
    if matched == (expect == "match"):
        return CaseResult(test_file, rule_file, name, True)
    if matched:
        why = "; ".join(f"{m['selection']}: {m['field']}={m['value']!r}"
                        for m in hits[0].explain(event))
        return CaseResult(test_file, rule_file, name, False, f"expected no match, but matched ({why})")
    return CaseResult(test_file, rule_file, name, False, "expected a match, got none")


# ------------------------------------------------------------------ correlation cases

def _run_correlation_file(rule_set: _RuleSet, rule_file: Path, test_file: Path, cases: list,
                          prepare: Callable[[dict], dict], errors: list[str]) -> list[CaseResult]:
    """The cases of a tests file whose rule file holds correlation rules (or that has
    `events:` cases): sequences through the whole set's Detector; single events
    against the base rules of the same file, if it has any."""
    loaded = rule_set.loaded
    own_errors = [e for e in loaded.errors if _same_file(e.path, rule_file)]
    if own_errors:
        hint = ""
        if any("unknown rule reference" in e.reason for e in own_errors):
            hint = (" (referenced rules are looked up among the rule paths given to `test`, and the "
                    "directory of a tests file named explicitly: add the rule directory)")
        errors.append(f"{rule_file}: rule does not load: " + "; ".join(e.reason for e in own_errors) + hint)
        return []
    correlations = [c for c in loaded.correlations if _same_file(c.path, rule_file)]
    base_rules = [r for r in loaded.rules if _same_file(r.path, rule_file)]
    if not correlations and not base_rules:
        errors.append(f"{rule_file}: rule does not load: no rule in file "
                      f"(or not among the rule paths given)")
        return []
    engine = None
    out = []
    for i, case in enumerate(cases, 1):
        if _is_sequence_case(case):
            out.append(_run_sequence_case(rule_set, correlations, case, i, str(test_file),
                                          str(rule_file), prepare))
        elif base_rules:
            engine = engine or Engine(base_rules, enrich=rule_set.enrich)
            out.append(_run_case(engine, case, i, str(test_file), str(rule_file), prepare))
        else:
            out.append(CaseResult(str(test_file), str(rule_file), _case_name(case, i), False,
                                  "a correlation rule is tested with an event sequence: "
                                  "expect: match|no_match and `events:` (a list of events)"))
    return out


def _sequence_problem(case: dict, correlations: list) -> str | None:
    unknown = sorted(set(map(str, case)) - SEQUENCE_KEYS)
    if unknown:
        return (f"unknown key(s) {', '.join(unknown)} in a sequence case "
                f"(allowed: {', '.join(sorted(SEQUENCE_KEYS))})")
    expect = case.get("expect")
    if expect not in EXPECTATIONS:
        return f"a case needs expect: match|no_match (got {expect!r})"
    events = case.get("events")
    if not isinstance(events, list) or not events:
        return "`events` must be a non-empty list of event mappings"
    for n, ev in enumerate(events, 1):
        if not isinstance(ev, dict):
            return f"event {n} of `events` is not a mapping (got {type(ev).__name__})"
    if "count" in case:
        count = case["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return f"`count` must be a whole number >= 0 (got {count!r})"
        if expect == "match" and count == 0:
            return "`count: 0` contradicts expect: match (use expect: no_match)"
        if expect == "no_match" and count != 0:
            return f"`count: {count}` contradicts expect: no_match"
    if not correlations:
        return "an event sequence tests a correlation rule, and the rule file holds none"
    return None


def _pick(correlations: list, ref: Any) -> list:
    ref = str(ref)
    return [c for c in correlations if ref in (c.id, c.name, c.title)]


class _Recorder:
    """A Detector stage in front of the correlation stage: notes the base alerts."""

    def __init__(self, wants: Callable[[Any, Any], bool]):
        self.wants = wants
        self.seen: dict[str, int] = {}
        self.untimed: list[tuple[int, str]] = []
        self.position = 0
        self.holds_state = False

    def feed(self, alerts: list[dict], event: dict | None, now: float) -> list[dict]:
        from sigstream.stream.correlation import match_from_alert
        for a in alerts:
            rule = a.get("rule") or {}
            label = rule.get("name") or rule.get("title") or str(rule.get("id"))
            self.seen[label] = self.seen.get(label, 0) + 1
            if self.wants(rule.get("id"), rule.get("name")) and match_from_alert(a) is None:
                self.untimed.append((self.position, label))
        return alerts

    def tick(self, now: float) -> list[dict]:
        return []

    def finish(self, now: float) -> list[dict]:
        return []


def _run_sequence_case(rule_set: _RuleSet, correlations: list, case: dict, i: int, test_file: str,
                       rule_file: str, prepare: Callable[[dict], dict]) -> CaseResult:
    from sigstream.stream.correlation_stage import correlation_stages
    from sigstream.stream.detector import Detector

    name = _case_name(case, i)

    def fail(detail: str) -> CaseResult:
        return CaseResult(test_file, rule_file, name, False, detail)

    problem = _sequence_problem(case, correlations)
    if problem:
        return fail(problem)
    targets = correlations
    if case.get("correlation") is not None:
        targets = _pick(correlations, case["correlation"])
        if not targets:
            return fail(f"`correlation: {case['correlation']}` names no correlation of {rule_file} "
                        f"(its correlations: {', '.join(c.name or c.id or c.title for c in correlations)})")
    loaded = rule_set.loaded
    stages = correlation_stages(loaded.correlations, loaded.suppressed, lateness_s=math.inf)
    (stage,) = stages
    fired: list = []
    target_ids = {id(c) for c in targets}
    stage.on_result = lambda r: fired.append(r) if id(r.correlation) in target_ids else None
    recorder = _Recorder(stage.correlator.wants)
    detector = Detector(rule_set.engine, stages=[recorder, stage])
    now = 0.0
    for n, raw in enumerate(case["events"], 1):
        try:
            event = prepare(dict(raw))
        except Exception as e:
            return fail(f"event {n} cannot be normalised: {e}")
        recorder.position = n
        try:
            detector.detect(event, {"path": test_file, "position": n}, now)
        except Exception as e:  # noqa: BLE001 - reported as the case's failure
            return fail(f"event {n}: detection failed: {type(e).__name__}: {e}")
    recorder.position = len(case["events"]) + 1
    detector.finish(now)
    if recorder.untimed:
        where = ", ".join(f"event {n} ({label})" for n, label in recorder.untimed)
        return fail(f"{where} matched a correlated rule but has no event time "
                    f"(TimeCreated, UtcTime or @timestamp)")
    n_fired = len(fired)
    expect, count = case["expect"], case.get("count")
    ok = (n_fired == 0) if expect == "no_match" else \
        (n_fired == count if count is not None else n_fired >= 1)
    if ok:
        return CaseResult(test_file, rule_file, name, True)
    seen = ", ".join(f"{k} x{v}" for k, v in sorted(recorder.seen.items())) or "none"
    if n_fired:
        groups = "; ".join(f"{r.correlation.name or r.correlation.title} {dict(r.group)} value={r.value}"
                           for r in fired[:5])
        want = "no firing" if expect == "no_match" else f"exactly {count}"
        return fail(f"expected {want}, but the correlation fired {n_fired} time(s) ({groups}); "
                    f"base rule matches: {seen}")
    refs = sorted({ref for c in targets for ref in c.rules})
    return fail("expected the correlation to fire"
                + (f" {count} time(s)" if count is not None else "")
                + f", it did not; base rule matches in the sequence: {seen}; it needs: {', '.join(refs)}")
