"""`hunt` as a library: event files -> the shared Detector -> an alert sink.

The detection itself (reassembly, matching, alert documents, correlation stages) is
`stream.detector.Detector`, the same object the stream processor drives; this module
only reads files, keeps count and reports problems with their file and position.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sigstream.connectors.readers import ReadError, read_events
from sigstream.stream.detector import Detector

log = logging.getLogger(__name__)


@dataclass
class HuntStats:
    events: int = 0            # records read
    alerts: int = 0
    unreadable: int = 0        # records the readers could not decode (reported to on_error)
    failed: int = 0            # records the detector failed on (reported to on_error)
    seconds: float = 0.0


def hunt_files(files: Sequence[Path], detector: Detector, sink: Any, *,
               on_error: Callable[[ReadError], None],
               on_file_done: Callable[[Path], None] = lambda f: None,
               clock: Callable[[], float] = time.time) -> HuntStats:
    """Every event of `files`, in order, through `detector`; alerts to `sink.add`.

    A record that cannot be read, or that the detector fails on, is reported to
    `on_error` with its file and position and the hunt goes on. At the end the
    detector's held state (incomplete script blocks, correlation windows) is flushed.
    """
    stats = HuntStats()
    t0 = time.perf_counter()
    detect = detector.detect
    add = sink.add

    def unreadable(err: ReadError) -> None:
        stats.unreadable += 1
        on_error(err)

    for f in files:
        for event, src in read_events([f], on_error=unreadable):
            stats.events += 1
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
        on_file_done(f)
    for alert in detector.finish(clock()):
        add(alert)
        stats.alerts += 1
    stats.seconds = time.perf_counter() - t0
    return stats
