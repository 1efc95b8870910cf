"""One line per finished test file when pytest-xdist runs the tests.

Without xdist pytest already prints a line per file. With xdist it prints one stream of dots
from all workers, which says nothing about which file is running or which one failed; this
plugin (registered by tests/conftest.py on the xdist controller) drops the dots and writes

    [  612/1801] tests/unit/test_cli.py: 96 passed, 1 skipped in 12.3 s

when the last test of a file has finished. Failures are still detailed in the final summary.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import pytest

# worst outcome of a test's setup, call and teardown reports wins
RANK = {"passed": 0, "xpassed": 1, "skipped": 2, "xfailed": 2, "failed": 3, "error": 4}


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _outcome(report: pytest.TestReport) -> str:
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return "xpassed" if hasattr(report, "wasxfail") else "passed"


class FileProgress:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.tests: Counter[str] = Counter()         # file -> tests collected
        self.outcomes: dict[str, str] = {}           # nodeid -> worst outcome so far
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.seconds: Counter[str] = Counter()
        self.finished = 0

    def pytest_xdist_node_collection_finished(self, node, ids):
        if not self.tests:                           # every worker collects the same ids
            self.tests.update(_file(i) for i in ids)

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report, config):
        category, _letter, word = yield
        return category, "", word                    # no dot: the file line says it

    def pytest_runtest_logreport(self, report: pytest.TestReport):
        path = _file(report.nodeid)
        self.seconds[path] += report.duration
        outcome = _outcome(report)
        if RANK[outcome] >= RANK[self.outcomes.get(report.nodeid, "passed")]:
            self.outcomes[report.nodeid] = outcome
        if report.when != "teardown":
            return
        self.counts[path][self.outcomes.pop(report.nodeid)] += 1
        self.finished += 1
        if sum(self.counts[path].values()) == self.tests.get(path):
            self._file_line(path)

    def _file_line(self, path: str) -> None:
        counts = self.counts[path]
        parts = ", ".join(f"{counts[k]} {k}" for k in RANK if counts[k])
        total = sum(self.tests.values())
        bad = counts["failed"] or counts["error"]
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"[{self.finished:>{len(str(total))}}/{total}] {path}: {parts} "
                            f"in {self.seconds[path]:.1f} s", red=bool(bad), green=not bad)


def wanted(config: pytest.Config) -> bool:
    """On the xdist controller (not a worker), unless -v asks for a line per test."""
    return (getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")
            and config.get_verbosity() <= 0)
