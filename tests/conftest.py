"""Test-suite wide hooks: the ``windows`` marker, ``tests/fakes`` importable as ``fakes``, and
one progress line per test file under pytest-xdist (``file_progress.py``)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import file_progress  # noqa: E402  (importable thanks to the line above)


def pytest_configure(config):
    if file_progress.wanted(config):
        config.pluginmanager.register(file_progress.FileProgress(config), "sigstream-file-progress")


def pytest_collection_modifyitems(config, items):
    if sys.platform == "win32":
        return
    skip = pytest.mark.skip(reason=f"needs a real Windows host (ETW / event log); this is {sys.platform}")
    for item in items:
        if "windows" in item.keywords:
            item.add_marker(skip)
