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

from sigstream.stream.correlation import Correlator, CorrelationResult, Match, match_from_alert
from sigstream.stream.correlation_alert import correlation_alert
from sigstream.stream.detector import iso_utc
from sigstream.stream.correlation_rules import rule_key
from sigstream.stream.event_time import EventTimeBuffer

log = logging.getLogger(__name__)

DEFAULT_LATENESS_S = 300.0


def is_suppressed(suppressed: frozenset[str], rule: Any) -> bool:
    """Must this rule, correlation or alert `rule` dict not alert on its own (generate:
    false)? `suppressed` holds stream.rules.rule_key()s."""
    return bool(suppressed) and rule_key(rule) in suppressed


class CorrelationIntake:
    """What both correlation stages (in memory here, forwarded over Kafka in
    stream.correlation_forward) do with a batch of base alerts: the alerts of referenced
    rules become Matches (an alert without a parseable event time is counted as untimed
    and logged once), and the alerts of suppressed rules are held back."""

    def __init__(self, suppressed: frozenset[str]):
        self.suppressed = suppressed
        self.untimed = 0

    def take(self, alerts: list[dict], targets: Callable[[Any, Any], Any]) -> tuple[list, list[dict]]:
        """([(match, targets(id, name)), ...], the alerts to emit)."""
        matches: list[tuple[Match, Any]] = []
        out: list[dict] = []
        for alert in alerts:
            rule = alert.get("rule") or {}
            wanted = targets(rule.get("id"), rule.get("name"))
            if wanted:
                match = match_from_alert(alert)
                if match is None:
                    self.untimed += 1
                    if self.untimed == 1:
                        log.warning("an alert of %r has no parseable event time: it cannot be "
                                    "correlated (counted as untimed)", rule.get("title"))
                else:
                    matches.append((match, wanted))
            if not is_suppressed(self.suppressed, rule):
                out.append(alert)
        return matches, out


class CorrelationStage(CorrelationIntake):
    """A Detector stage evaluating correlation rules in memory (see module doc)."""

    def __init__(self, correlator: Correlator, *, suppressed: frozenset[str] = frozenset(),
                 lateness_s: float = DEFAULT_LATENESS_S,
                 on_result: Callable[[CorrelationResult], None] | None = None):
        super().__init__(suppressed)
        self.correlator = correlator
        self.buffer = EventTimeBuffer(lateness_s)
        self.on_result = on_result
        self.alerts = 0

    def feed(self, alerts: list[dict], event: dict | None, now: float) -> list[dict]:
        if not alerts:
            return alerts
        matches, out = self.take(alerts, self.correlator.wants)
        for match, _ in matches:
            self.buffer.add(match)
        if matches:
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
            if not is_suppressed(self.suppressed, r.correlation):
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
