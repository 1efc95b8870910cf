"""`hunt --jobs N`: the file hunt spread over N processes, same output as one process.

Split of the work (why the output is the sequential one, byte for byte):

    parent: plan tasks (sigstream.hunt_plan: small files grouped, large JSON-lines files
            cut at line ends into byte ranges, large EVTX files into ranges of chunks)
            ->  N - 1 worker processes, and the parent itself whenever the next result is
            not in yet  ->  results merged IN TASK ORDER (sigstream.hunt_merge)  ->  the
            parent's Detector for everything stateful  ->  sink
    worker: read + normalise + (enrich +) match + alert documents: the stateless part,
            through a Detector without reassembly or stages (the same `_match` code)

- A worker returns, per task, the items the sequential hunt would produce, in input order:
  unreadable records, evaluation problems, detection failures, each event's alerts, the end
  of each whole file. Events without alerts are only counted. A byte range numbers its
  lines from its start and counts them; the merger shifts them (no pass over the file up
  front to count lines). Results travel as files in /dev/shm where there is one.
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
it held (file and line or byte range): never a hang, never a silently partial output; a
worker whose parent dies ends too (Linux). A whole EVTX file is split into ranges of its
64 KiB chunks (each chunk carries its own string and template tables; a range is parsed as
the file's header plus those chunks, and its record positions are shifted like line
numbers); a range whose reader reports a problem makes the parent read the rest of that
file itself (sigstream.hunt_merge). Gzip files and truncated EVTX files are never split.
"""
from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import gc
import io
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sigstream.connectors.readers import (ReadError, _iter_jsonl, _normalised, evtx_chunks,
                                          read_evtx_chunks, read_records)
from sigstream.hunt_merge import TaskMerger, TaskResult
from sigstream.hunt_plan import CHUNK_BYTES, Task, _size, plan, split_as
from sigstream.stream.correlation_stage import CorrelationStage
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.errors import SigstreamError
from sigstream.stream.reassembly import _int
from sigstream.time_window import OUTSIDE, UNTIMED, TimeWindow

log = logging.getLogger(__name__)

IN_FLIGHT_PER_JOB = 3        # tasks submitted ahead per worker (bounds the parent's memory)
LOCAL_AHEAD = 8              # results of tasks run by the parent, held behind a slow worker's



def default_jobs() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------ workers ---

def may_be_fragment(event: dict) -> bool:
    """4104 with MessageTotal > 1: left to the parent's assembler (over-approximates
    ScriptBlockAssembler's own test; anything else it passes through is matched there)."""
    return _int(event.get("EventID")) == 4104 and (_int(event.get("MessageTotal")) or 0) > 1


def _watched(records: Iterator[Any], troubled: list[bool]) -> Iterator[Any]:
    """`records`, noting in troubled[0] whether the reader reported a problem."""
    for item in records:
        if type(item) is ReadError:
            troubled[0] = True
        yield item


class _Worker:
    def __init__(self, engine: Engine, defer_fragments: bool, clock: Callable[[], float],
                 window: TimeWindow | None = None):
        self.engine = engine
        self.window = window
        self.detector = Detector(engine, reassemble=False)   # match + alert documents only
        self.defer = defer_fragments
        self.clock = clock
        self.rule_index = {id(r.rule): r.index for r in engine.rules}

    def run(self, task: Task) -> TaskResult:
        """One task's result (see hunt_merge). A range numbers its positions (lines, EVTX
        records) from 1 at its start; a whole file's items end with ("P", path)."""
        items: list[tuple] = []
        matched0 = self.detector.events
        if task.evtx:
            read, troubled = [0], [False]
            counts = self._hunt(_watched(read_evtx_chunks(task.path, task.start, task.end, read), troubled),
                                items)
            return TaskResult(items, *counts, self.detector.events - matched0, read[0], troubled[0])
        if task.ranged:
            with open(task.path, "rb") as fh:
                fh.seek(task.start)
                data = fh.read(task.end - task.start)
            counts = self._hunt(_iter_jsonl(io.BytesIO(data), task.path), items)
            return TaskResult(items, *counts, self.detector.events - matched0, data.count(b"\n"))
        n = outside = untimed = 0
        for path in task.paths:
            counts = self._hunt(read_records(path), items)
            n, outside, untimed = n + counts[0], outside + counts[1], untimed + counts[2]
            items.append(("P", path))
        return TaskResult(items, n, outside, untimed, self.detector.events - matched0)

    def _hunt(self, records: Any, items: list[tuple]) -> tuple[int, int, int]:
        """One file's (or range's) records -> items; (records read, outside the time window,
        without a time)."""
        engine, detect, clock, defer = self.engine, self.detector.detect, self.clock, self.defer

        def unreadable(err: ReadError) -> None:
            items.append(("R", err))

        n, outside, untimed = 0, 0, 0
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
                failure = ("D", ReadError(src.path, src.position,
                                          f"detection failed: {type(e).__name__}: {e}"))
            if engine.error_count != errors_seen:   # evaluation problems, before the alerts
                new = engine.error_count - errors_seen
                errors_seen = engine.error_count
                items.append(("E", [(self.rule_index.get(id(e.rule), -1), e.reason)
                                    for e in engine.errors[-new:]]))
            if alerts is None:
                items.append(failure)
            elif alerts:
                items.append(("A", alerts))
        return n, outside, untimed


_worker: _Worker | None = None


_results_dir: str | None = None


def _init_worker(engine_or_spec: Any, defer: bool, clock: Callable[[], float],
                 window: TimeWindow | None = None, results_dir: str | None = None) -> None:
    global _worker, _results_dir
    _end_with_parent(forked=isinstance(engine_or_spec, Engine))   # a spec when spawned
    _results_dir = results_dir
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles ^C and ends the pool
    engine = engine_or_spec if isinstance(engine_or_spec, Engine) else _engine_from_spec(engine_or_spec)
    _worker = _Worker(engine, defer, clock, window)
    gc.enable()   # a forked worker inherits the parent's disabled collector
    gc.freeze()   # the engine (inherited or built) stays: out of the collector's scans


def _end_with_parent(forked: bool) -> None:
    """End this worker when its parent dies (kill -9, OOM killer): an orphan would wait for
    tasks forever, holding the engine's memory (its task pipe never closes: a forked worker
    holds a copy of the parent's end). Forked (Linux): SIGKILL from the kernel. Spawned or
    forkserver: a thread waits on the parent's sentinel, which no other process holds."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if not forked:
        def watch() -> None:
            parent.join()
            os._exit(1)
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent.pid:   # it died before the call
        os._exit(1)


def _run_task(task: Task) -> TaskResult | str:
    """The task's result, or the name of the file in `_results_dir` holding it pickled."""
    assert _worker is not None
    result = _worker.run(task)
    if _results_dir is None:
        return result
    # Through a file in memory (/dev/shm), not the executor's pipe: a megabyte of alerts
    # written to the pipe blocks this worker until the parent's result thread has read it
    # all, 64 KB at a time, each time taking the GIL from the parent's own matching.
    try:
        fd, name = tempfile.mkstemp(dir=_results_dir)
    except OSError:
        return result
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError:   # /dev/shm full (a container's is often 64 MB): through the pipe then
        os.unlink(name)
        return result
    return name


def _result_of(value: Any) -> TaskResult:
    """A worker's result (see _run_task)."""
    if not isinstance(value, str):
        return value
    with open(value, "rb") as f:
        result = pickle.load(f)
    os.unlink(value)
    return result


_SHM = "/dev/shm"
ORPHAN_AGE_S = 600


def _results_dir_for_workers() -> str | None:
    """A private directory on a memory file system for the workers' results, if there is one
    (named after this process; those of hunts that were killed are removed here)."""
    if not os.path.isdir(_SHM):
        return None
    _remove_orphaned_results()
    try:
        return tempfile.mkdtemp(prefix=f"sigstream-hunt-{os.getpid()}-", dir=_SHM)
    except OSError:
        return None


def _remove_orphaned_results() -> None:
    """Result directories left by hunts killed with SIGKILL (their process is gone)."""
    try:
        names = os.listdir(_SHM)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) < 4 or parts[:2] != ["sigstream", "hunt"] or not parts[2].isdigit():
            continue
        path = os.path.join(_SHM, name)
        try:
            os.kill(int(parts[2]), 0)
            continue                     # still running (or not ours to signal: leave it)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:   # untouched for a while: not a live hunt of another PID namespace sharing /dev/shm
            if time.time() - os.stat(path).st_mtime < ORPHAN_AGE_S:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


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
    if len(files) == 1 and split_as(files[0], total, chunk_bytes) is None:
        return "one file that is not split"
    return None


def hunt_parallel(files: Sequence[Path], detector: Detector, sink: Any, stats: Any, *, jobs: int,
                  on_error: Callable[[ReadError], None], on_file_done: Callable[[Path], None],
                  on_progress: Callable[[Path, float], None] | None, clock: Callable[[], float],
                  chunk_bytes: int = CHUNK_BYTES, method: str | None = None,
                  window: TimeWindow | None = None) -> Any:
    """The body of hunting.hunt_files with `jobs` processes (see the module doc)."""
    method = start_method(method)
    for stream in (sys.stdout, sys.stderr):   # a forked child must not flush our buffers again
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - closed or odd streams
            pass
    log.debug("hunt with %d jobs (%s)", jobs, method)
    merger = TaskMerger(detector, sink.add, stats, on_error, on_file_done, on_progress, clock)
    # The parent's objects are tree-shaped alert documents and events, freed by reference
    # counting (no cycles): the collector would rescan its young generations for nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _pool_hunt(multiprocessing.get_context(method), method, plan(files, chunk_bytes, jobs),
                   detector, jobs, merger, clock, window)
    finally:
        if gc_was_enabled:
            gc.enable()
    return stats


def _pool_hunt(ctx: Any, method: str, tasks: Iterator[Task], detector: Detector, jobs: int,
               merger: TaskMerger, clock: Callable[[], float], window: TimeWindow | None) -> None:
    """jobs - 1 worker processes, and this process is the last job: it runs a task itself
    whenever the next result to merge is not in yet (it pays no pickling for those; on many
    cores it is busy merging and seldom matches). Results merge in task order."""
    engine, defer = detector.engine, detector.assembler is not None
    # fork: workers inherit the engine (nothing is pickled); spawn: rebuilt from the rules
    first = engine if method == "fork" else _engine_spec(engine)
    results_dir = _results_dir_for_workers()
    # An executor, not multiprocessing.Pool: a Pool replaces a dead worker and waits forever
    # for the task it held; the executor marks itself broken and fails every pending task.
    pool = concurrent.futures.ProcessPoolExecutor(
        jobs - 1, mp_context=ctx, initializer=_init_worker,
        initargs=(first, defer, clock, window, results_dir))
    here = _Worker(_own_errors(engine), defer, clock, window)
    merger.redo = lambda task: (rest := _rest_of(task), here.run(rest))
    pending: collections.deque = collections.deque()   # (task, Future | result), in task order
    in_pool, pool_limit = 0, (jobs - 1) * IN_FLIGHT_PER_JOB
    done = False
    try:
        while True:
            while in_pool < pool_limit and (task := next(tasks, None)) is not None:
                try:
                    pending.append((task, pool.submit(_run_task, task)))
                except BrokenProcessPool as e:    # a worker died since the last result
                    raise _died(e, pending[0][0] if pending else task, merger) from None
                in_pool += 1
            if not pending:
                break
            task, result = pending[0]
            if isinstance(result, concurrent.futures.Future):
                if (not result.done() and len(pending) - in_pool < LOCAL_AHEAD
                        and (extra := next(tasks, None)) is not None):
                    pending.append((extra, here.run(extra)))   # rather than wait
                    continue
                try:
                    result = _result_of(result.result())
                except BrokenProcessPool as e:
                    raise _died(e, task, merger) from None
                in_pool -= 1
            pending.popleft()
            merger.merge(task, result)
        done = True
    finally:
        if not done:   # ^C, a failed or dead worker: stop the others now, not after their tasks
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if results_dir is not None:   # results never merged (a failed hunt)
            shutil.rmtree(results_dir, ignore_errors=True)


def _rest_of(task: Task) -> Task:
    """An EVTX range -> the file from its first chunk to the end, as one task."""
    chunks = evtx_chunks(task.path)
    return dataclasses.replace(task, end=chunks, part=(chunks - task.start) / chunks, last=True)


def _own_errors(engine: Engine) -> Engine:
    """The engine, with errors of its own: a task run in the parent reports its evaluation
    problems as items, merged in task order like a worker's (not at once, before earlier
    tasks' ones). The compiled rules and the bucket cache are shared."""
    own = copy.copy(engine)
    own.errors, own.error_count, own._on_error = [], 0, None
    return own


def _died(e: BrokenProcessPool, task: Task, merger: TaskMerger) -> HuntWorkerDied:
    """`task`: the first one not merged (results merge in task order: everything before
    it is out, nothing after)."""
    return HuntWorkerDied(f"a hunt worker process died ({e}): the output is complete up to "
                          f"{merger.where(task)} and misses everything from there on; "
                          "re-run (--jobs 1 shows the record a crash is at)")
