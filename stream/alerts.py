"""Alerts: a matched (rule, event) pair turned into the JSON document analysts read.

The same document is written by `hunt --format jsonl`, produced to the alert
topic and rendered by `alerts tail`. `alert_id` is stable for the same rule and
the same event, so consumers can de-duplicate redeliveries.
"""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from sigstream.stream.alert_context import process_of, registry_of, severity
from sigstream.stream.attack_names import TACTIC_NAMES, tactic_name, technique_name
from sigstream.stream.engine import CompiledRule
from sigstream.stream.envelope import event_fingerprint

_TECHNIQUE = re.compile(r"^attack\.(t\d{4}(?:\.\d{3})?)$", re.IGNORECASE)
# "attack.defense-evasion" / "attack.defense_evasion" -> TA0005, from the one names table
TACTICS = {name.lower().replace(" ", "_"): tid for tid, name in TACTIC_NAMES.items()}


def attack_of(tags: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """ATT&CK technique and tactic ids named by a rule's tags."""
    techniques, tactics = [], []
    for tag in tags:
        t = tag.lower()
        m = _TECHNIQUE.match(t)
        if m:
            techniques.append(m.group(1).upper())
        elif t.startswith("attack.") and t[7:].replace("-", "_") in TACTICS:
            tactics.append(TACTICS[t[7:].replace("-", "_")])
    return {"techniques": techniques, "tactics": tactics}


def alert_id(rule_key: str, event: dict) -> str:
    return hashlib.sha256(f"{rule_key}|{event_fingerprint(event)}".encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=8192)
def _attack_with_names(tags: tuple[str, ...]) -> dict[str, Any]:
    """attack_of + names; per rule, so cached by its tags (callers get a copy)."""
    attack = attack_of(tags)
    names = {t: n for t in attack["techniques"] + attack["tactics"]
             if (n := technique_name(t) if t.startswith("T") and not t.startswith("TA") else tactic_name(t))}
    return {**attack, "names": names}


# for stream.correlation_alert; cached and shared: callers must copy, never change it
attack_with_names = _attack_with_names


def build_alert(hit: CompiledRule, event: dict, source: dict[str, Any] | None = None,
                detected_at: str | None = None, matched: list[dict] | None = None) -> dict[str, Any]:
    """The alert document for one rule match.

    `matched`: the explanation if the caller has it (Engine.explain reuses the
    lower-cased values of the event it just matched); computed here otherwise.
    """
    rule = hit.rule
    attack = _attack_with_names(tuple(rule.tags))
    sev_id, sev_name, score = severity(rule.level)
    alert = {
        "alert_id": alert_id(rule.id or rule.title, event),
        "rule": rule.meta(),
        "attack": {"techniques": list(attack["techniques"]), "tactics": list(attack["tactics"]),
                   "names": dict(attack["names"])},
        "severity": {"id": sev_id, "name": sev_name, "score": score},
        "host": event.get("Computer"),
        "event_time": event.get("TimeCreated"),
        "matched": matched if matched is not None else hit.explain(event),
        "event": event,
        "source": source,
    }
    process = process_of(event)
    if process:
        alert["process"] = process
    registry = registry_of(event)
    if registry:
        alert["registry"] = registry
    if detected_at is not None:
        alert["detected_at"] = detected_at
    return alert
