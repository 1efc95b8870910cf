"""Every Kafka topic name sigstream uses, from one prefix (default `sigstream`).

    <prefix>.events.<source>       events, key = host (sources: SOURCES)
    <prefix>.alerts                alerts, key = host
    <prefix>.dlq                   dead letters (reason in headers)
    <prefix>.actions               signed response action requests, key = host
    <prefix>.action-results        what the executors did, key = host
    <prefix>.correlation-input     base matches re-keyed by (correlation, group)
    <prefix>.correlation-state     compacted changelog of correlation state
"""
from __future__ import annotations

import re
from typing import Iterable

TOPIC_PREFIX = "sigstream"
SOURCES = ("sysmon", "powershell", "security", "system", "wmi", "defender", "other")


def event_topic(source: str, prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.events.{source}"


def event_topic_pattern(prefix: str = TOPIC_PREFIX) -> str:
    """A regex matching every event topic of `prefix` (for pattern subscriptions)."""
    return "^" + re.escape(prefix) + r"\.events\..*"


def alerts_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.alerts"


def dlq_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.dlq"


def actions_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.actions"


def action_results_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.action-results"


def correlation_input_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.correlation-input"


def correlation_state_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.correlation-state"


def all_topics(prefix: str = TOPIC_PREFIX, sources: Iterable[str] = SOURCES) -> list[str]:
    """The topics `topics create` makes: one per event source, alerts, dlq, actions, results."""
    return [event_topic(s, prefix) for s in sources] + [
        alerts_topic(prefix), dlq_topic(prefix), actions_topic(prefix), action_results_topic(prefix)]


ALERTS_TOPIC = alerts_topic()
DLQ_TOPIC = dlq_topic()
ACTIONS_TOPIC = actions_topic()
ACTION_RESULTS_TOPIC = action_results_topic()
EVENT_TOPIC_PATTERN = event_topic_pattern()
