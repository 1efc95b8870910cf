"""Test-suite wide hooks: the ``windows`` marker, and ``tests/fakes`` importable as ``fakes``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    if sys.platform == "win32":
        return
    skip = pytest.mark.skip(reason=f"needs a real Windows host (ETW / event log); this is {sys.platform}")
    for item in items:
        if "windows" in item.keywords:
            item.add_marker(skip)
