"""Shared settings for the unit tests: never touch the user's compile cache."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_rule_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SIGSTREAM_CACHE_DIR", str(tmp_path_factory.mktemp("sigstream-cache")))
