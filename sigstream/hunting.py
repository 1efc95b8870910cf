"""`hunt` as a library: event files -> the shared Detector -> an alert sink.

The detection itself (reassembly, matching, alert documents, correlation stages) is
`stream.detector.Detector`, the same object the stream processor drives; this module
only reads files, keeps count and reports problems with their file and position.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sigstream.connectors.readers import ReadError, read_events, read_stdin_events
from sigstream.stream.detector import Detector
from sigstream.time_window import OUTSIDE, UNTIMED, TimeWindow

log = logging.getLogger(__name__)

STDIN = Path("-")   # in `files`: standard input (read once, in its place in the order)


def is_stdin(f: Path | str) -> bool:
    return str(f) == "-"


@dataclass
class HuntStats:
    events: int = 0            # records read
    alerts: int = 0
    unreadable: int = 0        # records the readers could not decode (reported to on_error)
    failed: int = 0            # records the detector failed on (reported to on_error)
    outside: int = 0           # events read but outside the time window (not matched)
    untimed: int = 0           # events with no readable time (matched all the same)
    seconds: float = 0.0


def hunt_files(files: Sequence[Path], detector: Detector, sink: Any, *,
               on_error: Callable[[ReadError], None],
               on_file_done: Callable[[Path], None] = lambda f: None,
               clock: Callable[[], float] = time.time, jobs: int = 1,
               on_progress: Callable[[Path, float], None] | None = None,
               min_parallel_bytes: int = 0, chunk_bytes: int | None = None,
               start_method: str | None = None, window: TimeWindow | None = None) -> HuntStats:
    """Every event of `files`, in order, through `detector`; alerts to `sink.add`.

    A record that cannot be read, or that the detector fails on, is reported to
    `on_error` with its file and position and the hunt goes on. At the end the
    detector's held state (incomplete script blocks, correlation windows) is flushed.

    jobs > 1: read and match in that many worker processes (sigstream.hunt_jobs); the
    alerts, errors and their order are the same as with one. Inputs smaller than
    `min_parallel_bytes` (or one file that is not split) run in this process.
    `on_progress(file, share)`: shares of a file done (they add up to 1 per file).
    `clock` must be picklable for the `spawn` start method.
    `window`: events outside it are counted as read and skipped before matching; events
    with no readable time are matched and counted in `untimed`.
    A file that is STDIN (`-`) is standard input; the hunt then runs in one process.
    """
    # The rules and the engine live as long as the hunt: out of the collector's scans (its
    # full collections would walk them again and again; after a fork they would copy them).
    gc.freeze()
    try:
        return _hunt(files, detector, sink, on_error, on_file_done, clock, jobs, on_progress,
                     min_parallel_bytes, chunk_bytes, start_method, window)
    finally:
        gc.unfreeze()


def _hunt(files: Sequence[Path], detector: Detector, sink: Any, on_error: Callable[[ReadError], None],
          on_file_done: Callable[[Path], None], clock: Callable[[], float], jobs: int,
          on_progress: Callable[[Path, float], None] | None, min_parallel_bytes: int,
          chunk_bytes: int | None, start_method: str | None,
          window: TimeWindow | None) -> HuntStats:
    stats = HuntStats()
    t0 = time.perf_counter()
    if jobs > 1:
        from sigstream import hunt_jobs
        chunk = chunk_bytes or hunt_jobs.CHUNK_BYTES
        why = hunt_jobs.parallel_reason(files, detector, jobs, chunk, min_parallel_bytes)
        if why is None:
            hunt_jobs.hunt_parallel(files, detector, sink, stats, jobs=jobs, on_error=on_error,
                                    on_file_done=on_file_done, on_progress=on_progress,
                                    clock=clock, chunk_bytes=chunk, method=start_method,
                                    window=window)
            return _finish(detector, sink, stats, clock, t0)
        log.info("hunting in one process: %s", why)
    detect = detector.detect
    add = sink.add

    def unreadable(err: ReadError) -> None:
        stats.unreadable += 1
        on_error(err)

    place = window.place if window is not None else None
    for f in files:
        events = read_stdin_events(unreadable) if is_stdin(f) else read_events([f], on_error=unreadable)
        for event, src in events:
            stats.events += 1
            if place is not None:
                where = place(event)
                if where == OUTSIDE:
                    stats.outside += 1
                    continue
                if where == UNTIMED:
                    stats.untimed += 1
            try:
                alerts = detect(event, {"path": src.path, "position": src.position}, clock())
            except Exception as e:  # noqa: BLE001 - one bad record never stops a hunt
                stats.failed += 1
                log.debug("detection failed at %s:%s", src.path, src.position, exc_info=True)
                on_error(ReadError(src.path, src.position, f"detection failed: {type(e).__name__}: {e}"))
                continue
            for alert in alerts:
                add(alert)
            stats.alerts += len(alerts)
        if on_progress is not None:
            on_progress(f, 1.0)
        on_file_done(f)
    return _finish(detector, sink, stats, clock, t0)


def _finish(detector: Detector, sink: Any, stats: HuntStats, clock: Callable[[], float],
            t0: float) -> HuntStats:
    """End of input: what the detector holds (incomplete script blocks, correlations)."""
    for alert in detector.finish(clock()):
        sink.add(alert)
        stats.alerts += 1
    stats.seconds = time.perf_counter() - t0
    return stats
