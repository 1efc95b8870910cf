"""How `hunt --jobs` cuts its input into tasks (sigstream.hunt_jobs runs them): small files
grouped, large JSON-lines files as byte ranges ending at line ends, large whole EVTX files as
ranges of their 64 KiB chunks, everything else one task per file, all in input order."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import orjson

from sigstream.connectors.readers import EVTX_CHUNK_BYTES, evtx_chunks

CHUNK_BYTES = 1 << 20        # a task: about this many bytes (small files grouped, or a range)
SPLIT_TASKS = 4              # a file is cut into ranges from this many tasks' worth on

_EVTX_MAGIC = b"ElfFile\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")


@dataclass(frozen=True)
class Task:
    paths: tuple[str, ...]   # whole files, in input order; one file when ranged
    start: int = 0           # a range: bytes of a JSON-lines file, chunks of an EVTX file
    end: int = 0
    ranged: bool = False
    part: float = 1.0        # share of the file (ranged), for the progress bar
    last: bool = True        # the file's last range (ranged)
    evtx: bool = False       # a range of EVTX chunks

    @property
    def path(self) -> str:
        return self.paths[0]


def splittable_jsonl(path: Path) -> bool:
    """Would the reader read this file as plain UTF-8 JSON lines from byte 0?
    (Not gzip, EVTX, UTF-16 or BOM-prefixed; first non-blank line a complete JSON value
    starting with '{': connectors.readers._read_json's JSON-lines case.)"""
    name = path.name.lower()
    if name.endswith((".evtx", ".evtx.gz", ".gz")):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if head[:2] == _GZIP_MAGIC or head[:8] == _EVTX_MAGIC or head.startswith(_BOMS):
                return False
            if head.lstrip()[:1] != b"{":
                return False
            f.seek(0)
            line = f.readline()
            while line and not line.strip():
                line = f.readline()
            orjson.loads(line)
            return True
    except (OSError, orjson.JSONDecodeError):
        return False


def plan(files: Sequence[Path], chunk_bytes: int, jobs: int = 1) -> Iterator[Task]:
    """Tasks in input order: small files grouped up to `chunk_bytes` (each task costs a
    round trip to a worker: an EVTX export of thousands of small files must not be thousands
    of tasks); a large JSON-lines file as byte ranges ending at line ends, of `chunk_bytes`
    and then smaller towards the file's end (down to 1/8 of it), so that the jobs finish
    together instead of one finishing a large last range alone; a large whole EVTX file as
    ranges of its 64 KiB chunks, likewise ("large": SPLIT_TASKS tasks' worth at least).
    Other files (gzip, a truncated EVTX file) are one task each."""
    group: list[str] = []
    group_bytes = 0
    for f in files:
        size = _size(f)
        how = split_as(f, size, chunk_bytes)
        if how == "evtx":
            if group:
                yield Task(tuple(group))
                group, group_bytes = [], 0
            yield from _evtx_ranges(str(f), evtx_chunks(f), chunk_bytes, jobs)
            continue
        if how is None:
            if group and group_bytes + size > chunk_bytes:
                yield Task(tuple(group))
                group, group_bytes = [], 0
            group.append(str(f))
            group_bytes += size
            continue
        if group:
            yield Task(tuple(group))
            group, group_bytes = [], 0
        with open(f, "rb") as fh:
            pos = 0
            while pos < size:
                target = _range_size(chunk_bytes, size - pos, jobs)
                fh.seek(min(pos + target, size))
                if fh.tell() < size:
                    fh.readline()             # to the end of the line the target falls in
                end = min(fh.tell(), size)
                if _tiny_tail(size - end, target):
                    end = size
                yield Task((str(f),), pos, end, True, (end - pos) / size, end >= size)
                pos = end
    if group:
        yield Task(tuple(group))


def split_as(f: Path, size: int, chunk_bytes: int) -> str | None:
    """"evtx" or "jsonl" if the file is cut into ranges, None if it is one task."""
    if size < SPLIT_TASKS * chunk_bytes:
        return None
    if evtx_chunks(f):
        return "evtx"
    return "jsonl" if splittable_jsonl(f) else None


def _range_size(per_task: int, left: int, jobs: int) -> int:
    """The next range (bytes or chunks): `per_task`, smaller once what is `left` of the file
    is less than 2 * jobs ranges, but not under per_task / 8."""
    return min(per_task, max(1, per_task // 8, left // (2 * jobs)))


def _tiny_tail(left: int, target: int) -> bool:
    """Is what would be left after a range too small for a task of its own (then the range
    takes it)?"""
    return left < max(1, target // 4)


def _evtx_ranges(path: str, chunks: int, chunk_bytes: int, jobs: int) -> Iterator[Task]:
    per_task = max(1, chunk_bytes // EVTX_CHUNK_BYTES)
    first = 0
    while first < chunks:
        target = _range_size(per_task, chunks - first, jobs)
        end = min(chunks, first + target)
        if _tiny_tail(chunks - end, target):
            end = chunks
        yield Task((path,), first, end, True, (end - first) / chunks, end >= chunks, evtx=True)
        first = end


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0
