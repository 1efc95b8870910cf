"""The one detection pipeline shared by `hunt`, embedded `run` and Kafka `run`.

    event -> reassembly (split 4104 script blocks) -> match -> alert documents
          -> stages (stateful work, e.g. correlation) -> alerts for the sinks

Everything about time is passed in: `now` is the processing time (epoch seconds)
used for `detected_at` and for timing out incomplete script blocks; event time is
read from the events by the stages that need it. The detector reads no clock, does
no I/O and never decides about offsets: its callers (the file hunt, the stream
processor) own input, output and commits, and ask `holds_state` before committing.

A stage is any object with
    feed(alerts, events, now) -> alerts to emit (the base alerts, filtered, plus new ones)
    tick(now) -> alerts        (processing time moved on)
    finish(now) -> alerts      (end of input)
    holds_state -> bool        (state that is not durable anywhere else)
Stages run in order after matching, before de-duplication and the sinks, so a
de-duplicating sink never hides an alert a correlation must count.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, Sequence

from sigstream.stream.alerts import build_alert
from sigstream.stream.engine import Engine
from sigstream.stream.reassembly import ScriptBlockAssembler


class Stage(Protocol):
    def feed(self, alerts: list[dict], event: dict | None, now: float) -> list[dict]: ...
    def tick(self, now: float) -> list[dict]: ...
    def finish(self, now: float) -> list[dict]: ...
    @property
    def holds_state(self) -> bool: ...


_second: tuple[int, str] = (-1, "")  # (epoch second, its formatted text), for iso_utc


def iso_utc(ts: float) -> str:
    """2026-11-25T17:00:00.123456Z; the formatted second is reused (called per alerting event)."""
    global _second
    frac, whole = math.modf(ts)  # rounded as datetime.fromtimestamp rounds
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    if _second[0] != whole:
        _second = (int(whole), datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{us:06d}Z"


class Detector:
    """Events in, alert documents out (see the module doc).

    `source` given with an event is copied into its alerts' `source` field: where the
    event was read (file and position, or topic, partition and offset). A reassembled
    script block takes the source of its lowest-numbered fragment.
    """

    def __init__(self, engine: Engine, *, reassemble: bool = True,
                 assembler: ScriptBlockAssembler | None = None, stages: Sequence[Stage] = ()):
        self.engine = engine
        self.assembler = (assembler or ScriptBlockAssembler()) if reassemble else None
        self.stages = list(stages)
        self.events = 0      # events matched (a reassembled block counts once)
        self.alerts = 0      # alerts returned

    def detect(self, event: dict, source: dict[str, Any] | None, now: float) -> list[dict]:
        """Alerts caused by this event (none while it is a fragment of an unfinished block)."""
        if self.assembler is None:
            return self._match(event, source, now)
        ready = self.assembler.feed_with_source(event, source, now)
        if len(ready) == 1 and ready[0][0] is event:   # the common case: not a fragment
            return self._match(event, source, now)
        out: list[dict] = []
        for whole, src in ready:
            out += self._match(whole, src, now)
        return out

    def tick(self, now: float) -> list[dict]:
        """Processing time moved on: incomplete script blocks past their timeout, and
        whatever the stages release."""
        out: list[dict] = []
        if self.assembler is not None and self.assembler.pending:
            for whole, src in self.assembler.expire_with_source(now):
                out += self._match(whole, src, now)    # through every stage already
        return out + self._released(lambda stage: stage.tick(now), now)

    def finish(self, now: float) -> list[dict]:
        """End of input: blocks whose parts never all arrived (flagged incomplete), then
        everything the stages still hold."""
        out: list[dict] = []
        if self.assembler is not None:
            for whole, src in self.assembler.flush_with_source():
                out += self._match(whole, src, now)    # through every stage already
        return out + self._released(lambda stage: stage.finish(now), now)

    def _released(self, release: Callable[[Stage], list[dict]], now: float) -> list[dict]:
        """What each stage releases, passed through the stages after it (only those: the
        stages before it have seen its inputs already)."""
        out: list[dict] = []
        for i, stage in enumerate(self.stages):
            alerts = release(stage)
            for later in self.stages[i + 1:]:
                if alerts:
                    alerts = later.feed(alerts, None, now)
            out += alerts
        self.alerts += len(out)
        return out

    @property
    def holds_state(self) -> bool:
        """True while something is buffered in memory only (fragments, stage state that
        is not durable elsewhere): the caller must not commit its input past it."""
        if self.assembler is not None and self.assembler.pending:
            return True
        return any(stage.holds_state for stage in self.stages)

    def _match(self, event: dict, source: dict[str, Any] | None, now: float) -> list[dict]:
        self.events += 1
        engine = self.engine
        hits = engine.match(event)
        if not hits:
            if self.stages:
                return self.through_stages([], event, now)
            return hits
        detected_at = iso_utc(now)
        alerts = [build_alert(hit, event, source=source, detected_at=detected_at,
                              matched=engine.explain(hit, event)) for hit in hits]
        if self.stages:
            return self.through_stages(alerts, event, now)
        self.alerts += len(alerts)
        return alerts

    def through_stages(self, alerts: list[dict], event: dict, now: float) -> list[dict]:
        """One event's alerts through every stage, in order (also used by `hunt --jobs`,
        whose workers match and whose parent runs the stages)."""
        for stage in self.stages:
            alerts = stage.feed(alerts, event, now)
        self.alerts += len(alerts)
        return alerts
