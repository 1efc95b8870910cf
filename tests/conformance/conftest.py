"""Conformance tests run against the shared corpora beside the project (../shared/corpora).

They skip, saying why, when the corpora are absent (e.g. a clone elsewhere).
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"
SIGMA = CORPORA / "sigma"
WINDOWS_RULE_DIRS = ("rules/windows", "rules-emerging-threats", "rules-threat-hunting")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/conformance" in str(item.fspath):
            item.add_marker(pytest.mark.conformance)


@pytest.fixture(scope="session")
def sigma_dir() -> Path:
    if not (SIGMA / "rules").is_dir():
        pytest.skip(f"SigmaHQ corpus not found at {SIGMA} (shared corpora absent)")
    return SIGMA


@pytest.fixture(scope="session")
def attack_samples() -> Path:
    path = CORPORA / "evtx-attack-samples"
    if not path.is_dir():
        pytest.skip(f"EVTX attack samples not found at {path} (shared corpora absent)")
    return path


@pytest.fixture(scope="session")
def windows_rules(sigma_dir, tmp_path_factory):
    """The SigmaHQ Windows set, every status, loaded once (cold: its own cache dir)."""
    from sigstream.stream.rules import RuleSelection, load_rules

    every_status = RuleSelection(statuses=frozenset(
        {"stable", "test", "experimental", "deprecated", "unsupported"}))
    return load_rules([sigma_dir / d for d in WINDOWS_RULE_DIRS], selection=every_status,
                      cache_dir=tmp_path_factory.mktemp("rule-cache"))


@pytest.fixture(scope="session")
def windows_engine(windows_rules, tmp_path_factory):
    from sigstream.stream.engine import Engine

    return Engine(windows_rules.rules, cache_dir=tmp_path_factory.mktemp("needle-cache"))


@pytest.fixture(scope="session")
def attack_events(attack_samples):
    from sigstream.connectors.readers import find_event_files, read_events

    errors = []
    events = [ev for ev, _ in read_events(find_event_files([attack_samples]), on_error=errors.append)]
    return events, errors
