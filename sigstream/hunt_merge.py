"""The parent side of `hunt --jobs`: task results merged in task order, so that the sink,
the error callback, the progress bar and the Detector's stages see exactly what the
sequential hunt shows them (sigstream.hunt_jobs runs the tasks).

A result is a list of items, in input order:
    ("A", alerts)                      a matched event's alerts
    ("F", event, source)               a possible script-block fragment, detected here
    ("R", path, position, reason)      an unreadable record
    ("D", path, position, reason)      a record whose detection failed
    ("E", [(rule index, reason)])      evaluation problems (before that event's alerts)
    ("P", path)                        a whole file is done
A byte range of a JSON-lines file numbers its lines from 1; the merger knows where the
range starts in its file (the lines of the ranges before it) and shifts them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from sigstream.connectors.readers import ReadError
from sigstream.stream.detector import Detector
from sigstream.stream.engine import EngineError

log = logging.getLogger(__name__)


class TaskMerger:
    def __init__(self, detector: Detector, add: Callable[[dict], None], stats: Any,
                 on_error: Callable[[ReadError], None], on_file_done: Callable[[Path], None],
                 on_progress: Callable[[Path, float], None] | None, clock: Callable[[], float]):
        self.detector, self.add, self.stats, self.clock = detector, add, stats, clock
        self.on_error, self.on_file_done, self.on_progress = on_error, on_file_done, on_progress
        self._next_line: dict[str, int] = {}   # per file: the line its next range starts at

    def where(self, task: Any) -> str:
        """A task's place in its file, for messages (correct once the tasks before it merged)."""
        if not task.ranged:
            return task.path
        return (f"{task.path} from line {self._next_line.get(task.path, 1):,} "
                f"(bytes {task.start:,}-{task.end:,})")

    def merge(self, task: Any, result: tuple) -> None:
        """One task's result (see sigstream.hunt_jobs._Worker.run), after every earlier task's."""
        items, n, outside, untimed, matched, lines = result
        stats = self.stats
        stats.events += n
        stats.outside += outside
        stats.untimed += untimed
        self.detector.events += matched
        if task.ranged:
            line = self._next_line.get(task.path, 1)
            if line > 1:
                _shift_positions(items, line - 1)
            self._next_line[task.path] = line + lines
        self._items(items)
        if task.ranged:
            if self.on_progress is not None:
                self.on_progress(Path(task.path), task.part)
            if task.last:
                self.on_file_done(Path(task.path))

    def _items(self, items: list[tuple]) -> None:
        detector, stats, add, on_error = self.detector, self.stats, self.add, self.on_error
        for item in items:
            tag = item[0]
            if tag == "A":            # a matched event's alerts -> the stages (correlation), in order
                alerts = detector.through_stages(item[1], item[1][0]["event"], self.clock())
                for alert in alerts:
                    add(alert)
                stats.alerts += len(alerts)
            elif tag == "F":          # a possible script-block fragment: the whole Detector
                event, source = item[1], item[2]
                try:
                    alerts = detector.detect(event, source, self.clock())
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
                rules = detector.engine.rules
                for index, reason in item[1]:
                    if 0 <= index < len(rules):
                        detector.engine._error(EngineError(rules[index].rule, reason))
            elif tag == "P":
                if self.on_progress is not None:
                    self.on_progress(Path(item[1]), 1.0)
                self.on_file_done(Path(item[1]))


def _shift_positions(items: list[tuple], by: int) -> None:
    """A range's line numbers (from 1 at its start) -> the file's, in place."""
    for i, item in enumerate(items):
        tag = item[0]
        if tag == "A":            # the alerts of one event share its source dict: shift it once
            shifted = None
            for alert in item[1]:
                source = alert.get("source")
                if source is not shifted and source is not None:
                    source["position"] += by
                    shifted = source
        elif tag == "F":
            item[2]["position"] += by
        elif tag in ("R", "D") and item[2] is not None:
            items[i] = (tag, item[1], item[2] + by, item[3])
