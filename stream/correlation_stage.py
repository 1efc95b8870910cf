"""The correlation stage of the Detector: base alerts in, base and correlation alerts out.

    alerts of one event -> (rules a correlation references) -> Match -> EventTimeBuffer
                        -> Correlator (in event-time order) -> correlation alerts

State, written down:
- `EventTimeBuffer`: matches not yet `lateness_s` of event time old (they may still be
  overtaken by an earlier one: files read out of order, hosts with delayed shipping).
- `Correlator`: open windows per (correlation, group).
Both are in memory; `holds_state` is true while either holds anything, so a stream
processor using this stage alone does not commit its input past it. Kafka `run` puts
stream/correlation_forward.py in its place and keeps the state in a compacted changelog
(connectors/correlation_kafka.py).

Decisions (README "Correlation rules"):
- A base alert of a rule that correlations reference still goes to the sinks, unless
  the rule is suppressed (`generate: false`, the specification's default): then only
  the correlation sees it.
- A base alert without a parseable event time cannot be placed in a window: it is
  counted (`untimed`) and logged once, and still emitted if not suppressed.
- Event time moves on with the matches that correlations reference; at the end of
  input (`finish`) every held match is released and every window decided.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from sigstream.stream.correlation import Correlator, CorrelationResult, match_from_alert
from sigstream.stream.correlation_alert import correlation_alert
from sigstream.stream.detector import iso_utc
from sigstream.stream.event_time import EventTimeBuffer

log = logging.getLogger(__name__)

DEFAULT_LATENESS_S = 300.0


class CorrelationStage:
    """A Detector stage evaluating correlation rules in memory (see module doc)."""

    def __init__(self, correlator: Correlator, *, suppressed: frozenset[str] = frozenset(),
                 lateness_s: float = DEFAULT_LATENESS_S,
                 on_result: Callable[[CorrelationResult], None] | None = None):
        self.correlator = correlator
        self.suppressed = suppressed
        self.buffer = EventTimeBuffer(lateness_s)
        self.on_result = on_result
        self.untimed = 0
        self.alerts = 0

    def feed(self, alerts: list[dict], event: dict | None, now: float) -> list[dict]:
        if not alerts:
            return alerts
        out: list[dict] = []
        fed = False
        for alert in alerts:
            rule = alert.get("rule") or {}
            rid, name = rule.get("id"), rule.get("name")
            if self.correlator.wants(rid, name):
                match = match_from_alert(alert)
                if match is None:
                    self.untimed += 1
                    if self.untimed == 1:
                        log.warning("an alert of %r has no parseable event time: it cannot be "
                                    "correlated (counted as untimed)", rule.get("title"))
                else:
                    self.buffer.add(match)
                    fed = True
            if not self._suppressed(rid, name):
                out.append(alert)
        if fed:
            out += self._results(self.buffer.release(), now, final=False)
        return out

    def tick(self, now: float) -> list[dict]:
        return []

    def finish(self, now: float) -> list[dict]:
        return self._results(self.buffer.flush(), now, final=True)

    @property
    def holds_state(self) -> bool:
        return bool(self.buffer.held) or self.correlator.groups_open > 0

    def stats(self) -> dict[str, Any]:
        return {**self.correlator.stats, "held": self.buffer.held, "late": self.buffer.late,
                "untimed": self.untimed, "alerts": self.alerts}

    def _suppressed(self, rule_id: str | None, name: str | None) -> bool:
        if not self.suppressed:
            return False
        return (rule_id is not None and rule_id in self.suppressed) or \
            (name is not None and f"name:{name}" in self.suppressed)

    def _results(self, matches: list, now: float, final: bool) -> list[dict]:
        results: list[CorrelationResult] = []
        for m in matches:
            results += self.correlator.feed(m)
        if final:
            results += self.correlator.flush()
        detected_at = iso_utc(now)
        out = []
        for r in results:
            if self.on_result is not None:
                self.on_result(r)
            if not self._suppressed(r.correlation.id, r.correlation.name):
                out.append(correlation_alert(r, detected_at=detected_at))
        self.alerts += len(out)
        return out


def correlation_stages(correlations: list, suppressed: frozenset[str], *,
                       lateness_s: float = DEFAULT_LATENESS_S,
                       max_groups: int = 100_000) -> list[CorrelationStage]:
    """The Detector stages for a loaded rule set: none without correlation rules."""
    if not correlations:
        return []
    return [CorrelationStage(Correlator(correlations, max_groups=max_groups),
                             suppressed=suppressed, lateness_s=lateness_s)]
