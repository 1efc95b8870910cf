"""`hunt --jobs N`: the file hunt spread over worker processes, same output as one process.

Split of the work (why the output is the sequential one, byte for byte):

    parent: plan tasks (whole files; JSON-lines files cut at line boundaries into byte
            ranges with their first line number)  ->  pool  ->  results merged IN TASK
            ORDER  ->  the parent's Detector for everything stateful  ->  sink
    worker: read + normalise + (enrich +) match + alert documents: the stateless part,
            through a Detector without reassembly or stages (the same `_match` code)

- A worker returns, per task, the items the sequential hunt would produce, in input order:
  unreadable records, evaluation problems, detection failures, and each event's alerts.
  Events without alerts are only counted.
- PowerShell 4104 events with MessageTotal > 1 (possible fragments of a split script block,
  which may straddle two tasks) are not matched by the worker: they are returned whole and
  the parent feeds them, in order, to its own Detector (`detect`: reassembly, match,
  stages), exactly as the sequential hunt does. The test is an over-approximation of the
  assembler's: a non-fragment sent to the parent is simply matched there.
- The parent runs the Detector's stages (correlation) on every event's alerts in order, and
  `Detector.finish` after the last task, as the sequential hunt does. Parallel hunting
  needs stages that ignore events without alerts (`CorrelationStage`); with any other
  stage the hunt runs in one process.

Workers are forked while the parent has no other thread (they inherit the compiled engine:
nothing to pickle or rebuild), else started by `forkserver` (else `spawn`) and rebuilt from
the parent's compiled rules (their IR; the needle databases come from the compile cache);
see `start_method`. A worker that dies (killed, out of memory) fails the hunt with the task
it held (file and line or byte range): never a hang, never a silently partial output.
EVTX files are one task each (the evtx parser has no cheap entry at a chunk: record
positions count from the file start).
"""
from __future__ import annotations

import collections
import concurrent.futures
import gc
import io
import logging
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import orjson

from sigstream.connectors.readers import ReadError, _iter_jsonl, _normalised, read_records
from sigstream.stream.correlation_stage import CorrelationStage
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine, EngineError
from sigstream.stream.errors import SigstreamError
from sigstream.stream.reassembly import _int
from sigstream.time_window import OUTSIDE, UNTIMED, TimeWindow

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20        # a JSON-lines task: about this many bytes (whole lines)
IN_FLIGHT_PER_JOB = 3        # tasks submitted ahead per worker (bounds the parent's memory)

_EVTX_MAGIC = b"ElfFile\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")


def default_jobs() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------- planning ---

@dataclass(frozen=True)
class Task:
    path: str
    start: int = 0           # byte range of a JSON-lines task; whole file when lines == 0
    end: int = 0
    line: int = 0            # first line number of the range (0: a whole-file task)
    part: float = 1.0        # share of the file, for the progress bar
    last: bool = True        # the file's last task


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


def plan(files: Sequence[Path], chunk_bytes: int) -> Iterator[Task]:
    """Tasks in input order. Line numbers of later ranges are counted here, as the
    tasks are handed out (the workers are busy meanwhile)."""
    for f in files:
        size = _size(f)
        if size <= chunk_bytes or not splittable_jsonl(f):
            yield Task(str(f))
            continue
        with open(f, "rb") as fh:
            pos, line = 0, 1
            while pos < size:
                fh.seek(min(pos + chunk_bytes, size))
                if fh.tell() < size:
                    fh.readline()             # to the end of the line the target falls in
                end = min(fh.tell(), size)
                if size - end < chunk_bytes // 4:
                    end = size                # no tiny tail task
                yield Task(str(f), pos, end, line, (end - pos) / size, end >= size)
                line += _count_newlines(fh, pos, end)
                pos = end


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0


def _count_newlines(fh: Any, start: int, end: int) -> int:
    fh.seek(start)
    n, left = 0, end - start
    while left > 0:
        block = fh.read(min(left, 8 << 20))
        if not block:
            break
        n += block.count(b"\n")
        left -= len(block)
    return n


# ------------------------------------------------------------------ workers ---

def may_be_fragment(event: dict) -> bool:
    """4104 with MessageTotal > 1: left to the parent's assembler (over-approximates
    ScriptBlockAssembler's own test; anything else it passes through is matched there)."""
    return _int(event.get("EventID")) == 4104 and (_int(event.get("MessageTotal")) or 0) > 1


class _Worker:
    def __init__(self, engine: Engine, defer_fragments: bool, clock: Callable[[], float],
                 window: TimeWindow | None = None):
        self.engine = engine
        self.window = window
        self.detector = Detector(engine, reassemble=False)   # match + alert documents only
        self.defer = defer_fragments
        self.clock = clock
        self.rule_index = {id(r.rule): r.index for r in engine.rules}

    def run(self, task: Task) -> tuple[list[tuple], int, int, int, int]:
        """(items, records read, events matched here, events outside the time window,
        events without a time) for one task."""
        items: list[tuple] = []
        engine, detect, clock, defer = self.engine, self.detector.detect, self.clock, self.defer

        def unreadable(err: ReadError) -> None:
            items.append(("R", err.path, err.position, err.reason))

        if task.line:
            with open(task.path, "rb") as fh:
                fh.seek(task.start)
                data = fh.read(task.end - task.start)
            records: Any = _iter_jsonl(io.BytesIO(data), task.path, start=task.line)
        else:
            records = read_records(task.path)
        n, matched0, outside, untimed = 0, self.detector.events, 0, 0
        place = self.window.place if self.window is not None else None
        errors_seen = engine.error_count
        for event, src in _normalised(records, unreadable):
            n += 1
            if place is not None:      # as hunting._hunt: before anything else
                where = place(event)
                if where == OUTSIDE:
                    outside += 1
                    continue
                if where == UNTIMED:
                    untimed += 1
            source = {"path": src.path, "position": src.position}
            if defer and may_be_fragment(event):
                items.append(("F", event, source))
                continue
            try:
                alerts = detect(event, source, clock())
            except Exception as e:  # noqa: BLE001 - one bad record never stops a hunt
                alerts = None
                failure = ("D", src.path, src.position, f"detection failed: {type(e).__name__}: {e}")
            if engine.error_count != errors_seen:   # evaluation problems, before the alerts
                new = engine.error_count - errors_seen
                errors_seen = engine.error_count
                items.append(("E", [(self.rule_index.get(id(e.rule), -1), e.reason)
                                    for e in engine.errors[-new:]]))
            if alerts is None:
                items.append(failure)
            elif alerts:
                items.append(("A", alerts))
        return items, n, self.detector.events - matched0, outside, untimed


_worker: _Worker | None = None


def _init_worker(engine_or_spec: Any, defer: bool, clock: Callable[[], float],
                 window: TimeWindow | None = None) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles ^C and ends the pool
    engine = engine_or_spec if isinstance(engine_or_spec, Engine) else _engine_from_spec(engine_or_spec)
    _worker = _Worker(engine, defer, clock, window)
    gc.enable()   # a forked worker inherits the parent's disabled collector
    gc.freeze()   # the engine (inherited or built) stays: out of the collector's scans


def _run_task(task: Task) -> tuple[list[tuple], int, int, int, int]:
    assert _worker is not None
    return _worker.run(task)


def _engine_spec(engine: Engine) -> dict[str, Any]:
    """What a spawned worker needs to rebuild `engine` (the compiled rules' IR travels)."""
    return {"rules": [r.rule for r in engine.rules], "enrich": engine._enrich,
            "cache_dir": engine._cache}


def _engine_from_spec(spec: dict[str, Any]) -> Engine:
    return Engine(spec["rules"], enrich=spec["enrich"], cache_dir=spec["cache_dir"],
                  use_cache=spec["cache_dir"] is not None)


# ------------------------------------------------------------------- parent ---

class HuntWorkerDied(SigstreamError):
    """A worker process ended without finishing its task: the hunt's output is incomplete."""


def start_method(preferred: str | None = None) -> str:
    """fork while this process has no other thread, else forkserver where there is one, else
    spawn. A fork copies the locks other threads hold at that moment (a progress bar's
    refresh thread, a Kafka client's I/O thread), and the child can wait on one forever;
    with the main thread alone there is none (the executor forks every worker before its
    own threads start, and never replaces one). A forked worker inherits the engine; the
    others rebuild it from the compile cache (about a second each)."""
    methods = multiprocessing.get_all_start_methods()
    if preferred:
        return preferred
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def parallel_reason(files: Sequence[Path], detector: Detector, jobs: int, chunk_bytes: int,
                    min_bytes: int) -> str | None:
    """Why this hunt runs in one process (None: it runs in `jobs`)."""
    if jobs <= 1:
        return "one job"
    if any(str(f) == "-" for f in files):
        return "standard input"
    if any(not isinstance(s, CorrelationStage) for s in detector.stages):
        return "a detector stage other than correlation"
    total = sum(_size(f) for f in files)
    if total < min_bytes:
        return "small input"
    if len(files) == 1 and (total <= chunk_bytes or not splittable_jsonl(files[0])):
        return "one file that is not split"
    return None


def hunt_parallel(files: Sequence[Path], detector: Detector, sink: Any, stats: Any, *, jobs: int,
                  on_error: Callable[[ReadError], None], on_file_done: Callable[[Path], None],
                  on_progress: Callable[[Path, float], None] | None, clock: Callable[[], float],
                  chunk_bytes: int = CHUNK_BYTES, method: str | None = None,
                  window: TimeWindow | None = None) -> Any:
    """The body of hunting.hunt_files with `jobs` worker processes (see the module doc)."""
    engine, add = detector.engine, sink.add
    method = start_method(method)
    ctx = multiprocessing.get_context(method)
    # fork: workers inherit the engine (nothing is pickled); spawn: rebuilt from the rules
    first = engine if method == "fork" else _engine_spec(engine)
    for stream in (sys.stdout, sys.stderr):   # a forked child must not flush our buffers again
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - closed or odd streams
            pass
    log.debug("hunt with %d jobs (%s)", jobs, method)
    # The parent only unpickles and merges: tree-shaped alert documents, freed by reference
    # counting; the collector would rescan the growing young generations for nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _pool_hunt(ctx, first, files, detector, stats, jobs, add, engine, on_error,
                   on_file_done, on_progress, clock, chunk_bytes, window)
    finally:
        if gc_was_enabled:
            gc.enable()
    return stats


def _pool_hunt(ctx: Any, first: Any, files: Sequence[Path], detector: Detector, stats: Any, jobs: int,
               add: Callable, engine: Engine, on_error: Callable[[ReadError], None],
               on_file_done: Callable[[Path], None], on_progress: Callable[[Path, float], None] | None,
               clock: Callable[[], float], chunk_bytes: int, window: TimeWindow | None) -> None:
    tasks = plan(files, chunk_bytes)
    pending: collections.deque = collections.deque()
    # An executor, not multiprocessing.Pool: a Pool replaces a dead worker and waits forever
    # for the task it held; the executor marks itself broken and fails every pending task.
    pool = concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=ctx, initializer=_init_worker,
        initargs=(first, detector.assembler is not None, clock, window))
    done = False
    try:
        def submit() -> None:
            task = next(tasks, None)
            if task is not None:
                pending.append((task, pool.submit(_run_task, task)))

        for _ in range(jobs * IN_FLIGHT_PER_JOB):
            submit()
        while pending:
            task, result = pending.popleft()
            try:
                items, n, matched, outside, untimed = result.result()
            except BrokenProcessPool as e:
                # results merge in task order: everything before this task is out, nothing after
                raise HuntWorkerDied(f"a hunt worker process died ({e}): the output is complete up "
                                     f"to {_where(task)} and misses everything from there on; "
                                     "re-run (--jobs 1 shows the record a crash is at)") from None
            submit()
            stats.events += n
            stats.outside += outside
            stats.untimed += untimed
            detector.events += matched
            _merge(items, detector, engine, add, stats, on_error, clock)
            if on_progress is not None:
                on_progress(Path(task.path), task.part)
            if task.last:
                on_file_done(Path(task.path))
        done = True
    finally:
        if not done:   # ^C, a failed or dead worker: stop the others now, not after their tasks
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _where(task: Task) -> str:
    """A task's place in its file, for messages."""
    if not task.line:
        return task.path
    return f"{task.path} from line {task.line:,} (bytes {task.start:,}-{task.end:,})"


def _merge(items: list[tuple], detector: Detector, engine: Engine, add: Callable,
           stats: Any, on_error: Callable[[ReadError], None], clock: Callable[[], float]) -> None:
    """One task's items, in order, as the sequential hunt would have handled them."""
    for item in items:
        tag = item[0]
        if tag == "A":            # a matched event's alerts -> the stages (correlation), in order
            alerts = detector.through_stages(item[1], item[1][0]["event"], clock())
            for alert in alerts:
                add(alert)
            stats.alerts += len(alerts)
        elif tag == "F":          # a possible script-block fragment: the whole Detector
            event, source = item[1], item[2]
            try:
                alerts = detector.detect(event, source, clock())
            except Exception as e:  # noqa: BLE001 - as hunting.hunt_files
                stats.failed += 1
                log.debug("detection failed at %s:%s", source["path"], source["position"], exc_info=True)
                on_error(ReadError(source["path"], source["position"],
                                   f"detection failed: {type(e).__name__}: {e}"))
                continue
            for alert in alerts:
                add(alert)
            stats.alerts += len(alerts)
        elif tag == "R":
            stats.unreadable += 1
            on_error(ReadError(item[1], item[2], item[3]))
        elif tag == "D":
            stats.failed += 1
            on_error(ReadError(item[1], item[2], item[3]))
        elif tag == "E":
            for index, reason in item[1]:
                if 0 <= index < len(engine.rules):
                    engine._error(EngineError(engine.rules[index].rule, reason))
