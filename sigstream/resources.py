"""Files shipped with sigstream: the bundled rule pack, the sample intrusion, the alert schema.

They are package data (`sigstream.sigma_rules`, `sigstream.samples`, `sigstream.schemas`),
so they are found the same way in a wheel install and in a source checkout.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(f"sigstream.{name}")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"sigstream's bundled {name!r} files are not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_rules() -> Path:
    """The rule pack (`sigma_rules/` in the repository)."""
    return _package_dir("sigma_rules")


def samples_dir() -> Path:
    """The sample events (`samples/`): a fileless intrusion and a benign baseline."""
    return _package_dir("samples")


def sample_files() -> list[Path]:
    return sorted(samples_dir().glob("*.jsonl"))


def alert_schema() -> Path:
    return _package_dir("schemas") / "alert.schema.json"
