"""`hunt --jobs` on large EVTX files: read as ranges of their chunks, same output as one
process (also when records are unreadable and the reader gives up on a file)."""
from __future__ import annotations

import functools
import io
from pathlib import Path

import pytest

from sigstream import hunt_jobs, hunt_plan
from sigstream.connectors.readers import (ReadError, evtx_chunks, find_event_files, read_evtx_chunks,
                                          read_records)
from sigstream.connectors.sinks import JsonlSink
from sigstream.hunting import hunt_files
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.enrich import enrich

CLOCK = functools.partial(float, 1_790_000_000.0)
H, C = 4096, 65536


def _by_ranges(path: Path, per_range: int) -> list:
    """read_evtx_chunks over ranges of `per_range` chunks, positions made the file's."""
    out, offset = [], 0
    n = evtx_chunks(path)
    for first in range(0, n, per_range):
        read = [0]
        for item in read_evtx_chunks(path, first, min(n, first + per_range), read):
            if isinstance(item, ReadError):
                out.append(ReadError(item.path, None if item.position is None else item.position + offset,
                                     item.reason))
            else:
                out.append((item[0], item[1]._replace(position=item[1].position + offset)))
        offset += read[0]
    return out


def test_every_multi_chunk_evtx_file_reads_the_same_by_chunk_ranges(attack_samples):
    files = [f for f in find_event_files([attack_samples]) if evtx_chunks(f) > 1]
    assert len(files) > 10
    for f in files:
        assert _by_ranges(f, 2) == list(read_records(f)), f


def _hunt(files, engine, jobs, **kw):
    out, errors = io.BytesIO(), []
    stats = hunt_files(files, Detector(engine), JsonlSink(out), clock=CLOCK, jobs=jobs,
                       on_error=lambda e: errors.append(e.to_dict()), **kw)
    return out.getvalue(), errors, (stats.events, stats.alerts, stats.unreadable)


@pytest.fixture(scope="module")
def engine(windows_rules):
    return Engine(windows_rules.rules, enrich=enrich)


def _corrupted(src: Path, dst: Path, chunks: range, step: int = 997) -> Path:
    """A copy of `src` with the record bodies of `chunks` scribbled over (unreadable records)."""
    data = bytearray(src.read_bytes())
    for k in chunks:
        for off in range(H + k * C + 600, H + (k + 1) * C - 100, step):
            data[off:off + 8] = b"\xff" * 8
    dst.write_bytes(bytes(data))
    return dst


def test_large_evtx_files_hunted_by_chunk_ranges_give_the_same_bytes(attack_samples, engine, tmp_path):
    big = sorted((f for f in find_event_files([attack_samples]) if evtx_chunks(f) >= 8),
                 key=lambda f: -f.stat().st_size)[:4]
    assert len(big) == 4
    src = max(big, key=lambda f: sum(1 for _ in read_records(f)))    # small records: many per chunk
    broken = _corrupted(src, tmp_path / "some-unreadable.evtx", range(5, 6))
    given_up = _corrupted(src, tmp_path / "given-up.evtx", range(5, 8))           # > 100 in a row
    no_chunk5 = tmp_path / "chunk-5-header-broken.evtx"    # a chunk-level error names its chunk
    data = bytearray(src.read_bytes())
    data[H + 5 * C:H + 5 * C + 8] = b"\x00" * 8
    no_chunk5.write_bytes(bytes(data))
    files = [*big, broken, given_up, no_chunk5, big[0]]                           # one file twice
    tasks = list(hunt_plan.plan(files, 2 * C, jobs=2))
    assert sum(t.evtx for t in tasks) > 20
    one = _hunt(files, engine, 1)
    many = _hunt(files, engine, 2, chunk_bytes=2 * C)
    assert any("giving up" in e["reason"] for e in one[1])
    assert any("unreadable EVTX record" in e["reason"] for e in one[1])
    assert any("chunk number 5" in e["reason"] for e in one[1])
    assert one[0].count(b"\n") > 100
    assert many == one


def test_one_large_evtx_file_is_split(attack_samples, engine, monkeypatch):
    """Regression: a single EVTX file was "one file that is not split" and ran in one process."""
    src = max((f for f in find_event_files([attack_samples]) if evtx_chunks(f) >= 8),
              key=lambda f: sum(1 for _ in read_records(f)))
    ran_here = []
    real = hunt_jobs._pool_hunt
    monkeypatch.setattr(hunt_jobs, "_pool_hunt", lambda *a, **k: ran_here.append(1) or real(*a, **k))
    assert _hunt([src], engine, 2, chunk_bytes=2 * C) == _hunt([src], engine, 1)
    assert ran_here
