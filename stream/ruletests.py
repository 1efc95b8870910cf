"""Rule test cases that live next to rules: `<rule>.tests.yml`.

Format:

    rule: proc_creation_win_x.yml      # optional; default: the rule file of the same stem
    cases:
      - name: encoded launch by mshta
        expect: match                  # match | no_match
        event: {EventID: 1, Channel: ..., Image: ..., CommandLine: ...}

Each case runs its event through the engine with only that rule file loaded,
so log-source routing, the prefilter and the rule's own logic are all tested.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml

from sigstream.stream.engine import Engine
from sigstream.stream.rules import RuleSelection, find_rule_files, load_rules

TEST_SUFFIXES = (".tests.yml", ".tests.yaml")
EXPECTATIONS = ("match", "no_match")


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


def discover(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(rule file, test file) pairs under `paths`, and rule files without tests."""
    pairs, untested = [], []
    explicit_tests = []
    rule_paths = []
    for p in map(Path, paths):
        if p.is_file() and p.name.endswith(TEST_SUFFIXES):
            explicit_tests.append(p)
        else:
            rule_paths.append(p)
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


def run_tests(paths: Iterable[str | Path], prepare: Callable[[dict], dict] = lambda e: e,
              use_cache: bool = True, enrich: Callable[[dict], None] | None = None) -> RuleTestReport:
    """Run every test file found for the rules under `paths`.

    `prepare` turns a case's event into a normalised event (the CLI passes the
    connectors' normaliser so cases may also be written as raw EVTX JSON); `enrich`
    is passed to the engine (the CLI passes stream.enrich.enrich, as `hunt` does).
    """
    pairs, untested = discover(paths)
    results: list[CaseResult] = []
    errors: list[str] = []
    for rule_file, test_file in pairs:
        try:
            spec = yaml.safe_load(test_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            errors.append(f"{test_file}: cannot read test file: {e}")
            continue
        if spec.get("rule"):
            rule_file = test_file.parent / spec["rule"]
        if not rule_file.exists():
            errors.append(f"{test_file}: rule file {rule_file} not found")
            continue
        loaded = load_rules([rule_file], selection=RuleSelection(statuses=frozenset(
            {"stable", "test", "experimental", "deprecated", "unsupported"})), use_cache=use_cache)
        if loaded.errors or not loaded.rules:
            reasons = "; ".join(e.reason for e in loaded.errors) or "no rule in file"
            errors.append(f"{rule_file}: rule does not load: {reasons}")
            continue
        engine = Engine(loaded.rules, enrich=enrich)
        cases = spec.get("cases") or []
        if not cases:
            errors.append(f"{test_file}: no cases")
        for i, case in enumerate(cases, 1):
            results.append(_run_case(engine, case, i, str(test_file), str(rule_file), prepare))
    return RuleTestReport(results, untested, errors)


def _run_case(engine: Engine, case: dict, i: int, test_file: str, rule_file: str,
              prepare: Callable[[dict], dict]) -> CaseResult:
    name = str(case.get("name") or f"case {i}")
    expect = case.get("expect")
    if expect not in EXPECTATIONS or not isinstance(case.get("event"), dict):
        return CaseResult(test_file, rule_file, name, False,
                          f"a case needs expect: match|no_match and an event mapping (got {expect!r})")
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
