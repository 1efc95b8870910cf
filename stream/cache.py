"""Compile cache: rule file content hash -> compiled FileResult, one pickle per setup.

The setup (IR version, pySigma version, pipelines, placeholders, meta filters)
is hashed into the `salt`; a different setup uses a different cache file. The
cache is an optimisation only: any problem reading it means a cold compile.
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_ENTRIES = 50_000


def default_cache_dir() -> Path:
    env = os.environ.get("SIGSTREAM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sigstream"


KEEP_FILES = 6  # per kind: rule sets and needle databases in use at once


def prune(directory: Path, pattern: str, keep: int = KEEP_FILES) -> None:
    """Delete all but the `keep` most recently used cache files matching `pattern`."""
    try:
        files = sorted(directory.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


class RuleCache:
    def __init__(self, cache_dir: str | Path | None, salt: str):
        self.path = Path(cache_dir or default_cache_dir()) / f"rules-{salt[:24]}.pickle"
        self.entries: dict[str, Any] = {}
        self.dirty = False
        try:
            with open(self.path, "rb") as f:
                entries = pickle.load(f)
            if not isinstance(entries, dict):
                raise TypeError(f"holds a {type(entries).__name__}, not a dict")
            self.entries = entries
        except FileNotFoundError:
            pass
        except Exception as e:  # corrupt or from an incompatible version: start afresh
            log.warning("ignoring unreadable rule cache %s: %s", self.path, e)

    def get(self, key: str) -> Any:
        blob = self.entries.get(key)
        if blob is None:
            return None
        try:
            return pickle.loads(blob)
        except Exception as e:  # one corrupt entry: compile that file afresh
            log.warning("ignoring corrupt rule cache entry in %s: %s", self.path, e)
            del self.entries[key]
            return None

    def put(self, key: str, value: Any) -> None:
        # stored pickled so that a later set_path() on the loaded copy never touches it
        self.entries[key] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        if len(self.entries) > MAX_ENTRIES:
            self.entries = dict(list(self.entries.items())[-MAX_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rules-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(self.entries, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
            self.dirty = False
            prune(self.path.parent, "rules-*.pickle")
        except OSError as e:
            log.warning("could not write rule cache %s: %s", self.path, e)
