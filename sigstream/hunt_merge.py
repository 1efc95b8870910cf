"""The parent side of `hunt --jobs`: task results merged in task order, so that the sink,
the error callback, the progress bar and the Detector's stages see exactly what the
sequential hunt shows them (sigstream.hunt_jobs runs the tasks).

A result is a list of items, in input order:
    ("A", alerts)                      a matched event's alerts
    ("F", event, source)               a possible script-block fragment, detected here
    ("R", ReadError)                   an unreadable record
    ("D", ReadError)                   a record whose detection failed
    ("E", [(rule index, reason)])      evaluation problems (before that event's alerts)
    ("P", path)                        a whole file is done
A range of a file (JSON lines, EVTX chunks) numbers its positions from 1; the merger knows
where the range starts in its file (the positions of the ranges before it) and shifts them.
An EVTX range whose reader reported a problem is not merged: the EVTX reader gives up on a
file after so many unreadable records in a row, counted from the file's start, so the rest
of the file is read again here, in one piece, from that range on (`redo`), exactly as the
whole-file reader goes on from there; the file's later ranges are dropped.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, NamedTuple

from sigstream.connectors.readers import ReadError
from sigstream.stream.detector import Detector
from sigstream.stream.engine import EngineError

log = logging.getLogger(__name__)


class TaskResult(NamedTuple):
    items: list[tuple]
    read: int                # records read
    outside: int             # events outside the time window
    untimed: int             # events without a time
    matched: int             # events matched by the worker
    positions: int = 0       # a range: positions it used (lines, EVTX records)
    troubled: bool = False   # an EVTX range: its reader reported a problem


class TaskMerger:
    def __init__(self, detector: Detector, add: Callable[[dict], None], stats: Any,
                 on_error: Callable[[ReadError], None], on_file_done: Callable[[Path], None],
                 on_progress: Callable[[Path, float], None] | None, clock: Callable[[], float],
                 redo: Callable[[Any], tuple[Any, TaskResult]] | None = None):
        self.detector, self.add, self.stats, self.clock = detector, add, stats, clock
        self.on_error, self.on_file_done, self.on_progress = on_error, on_file_done, on_progress
        self.redo = redo   # an EVTX range -> (the file's rest from there, its result), read here
        self._next_position: dict[str, int] = {}   # per file: where its next range starts
        self._redone: set[str] = set()             # EVTX files read to their end by redo

    def where(self, task: Any) -> str:
        """A task's place in its file, for messages (correct once the tasks before it merged)."""
        if not task.ranged:
            return task.path
        at = self._next_position.get(task.path, 1)
        if task.evtx:
            return f"{task.path} from record {at:,} (chunks {task.start:,}-{task.end - 1:,})"
        return f"{task.path} from line {at:,} (bytes {task.start:,}-{task.end:,})"

    def merge(self, task: Any, result: TaskResult) -> None:
        """One task's result (see sigstream.hunt_jobs._Worker.run), after every earlier task's."""
        if task.ranged and task.start == 0:   # a file's first range (it may be given twice)
            self._redone.discard(task.path)
            self._next_position.pop(task.path, None)
        if task.ranged and task.path in self._redone:
            return                      # read already, by the redo of an earlier range
        if result.troubled and self.redo is not None:
            self._redone.add(task.path)
            task, result = self.redo(task)
        stats = self.stats
        stats.events += result.read
        stats.outside += result.outside
        stats.untimed += result.untimed
        self.detector.events += result.matched
        if task.ranged:
            at = self._next_position.get(task.path, 1)
            if at > 1:
                _shift_positions(result.items, at - 1)
            self._next_position[task.path] = at + result.positions
        self._items(result.items)
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
                on_error(item[1])
            elif tag == "D":
                stats.failed += 1
                on_error(item[1])
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
        elif tag in ("R", "D") and item[1].position is not None:
            items[i] = (tag, dataclasses.replace(item[1], position=item[1].position + by))
