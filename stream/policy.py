"""Responder policy: which alerts lead to which actions.

    version: 1
    defaults:
      requested_by: sigstream-respond
      approval_ttl: 1h        # a request waiting for approval expires after this
      execute_ttl: 10m        # an issued (approved / auto) request is valid this long
      dry_run: false
    rules:
      - name: kill encoded powershell on workstations
        match:                          # every key given must hold; a list means "any of"
          rule_id: [e6b99a0a-90b2-412b-a10b-88a6096a9808]
          tags: [attack.t1059.001]      # any of the rule's tags (case-insensitive)
          level: high                   # at least this level
          host: ["WKS-*"]               # shell patterns, case-insensitive
          not_host: ["WKS-ADMIN-*"]
        actions:
          - kill_process                # destructive: needs approval by default
          - {type: quarantine_registry_value, require_approval: false}
          - notify
        stop: false                     # true: later entries are not considered
    notify:                             # where `notify` goes (the responder posts it itself)
      url: https://hooks.example.com/T000/B000
      format: slack                     # json | slack | teams
      secret_env: SIGSTREAM_WEBHOOK_SECRET

Every matching entry contributes its actions (each type once per alert). `plan` turns an
alert into the requests to issue; an action whose target is not in the event (e.g.
kill_process without pid + ProcessGuid + image) is skipped with the reason.

`execute_ttl` may not exceed stream.actions.MAX_LIFETIME_S (1 h): endpoints refuse requests
valid for longer. `decode_alert` is how `sigstream respond` reads the alerts topic: it never
raises anything but AlertError (size capped before parsing, nesting capped, shape checked).
"""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from typing import Any

from sigstream.stream.errors import ConfigProblem, EventProblem
from sigstream.stream.actions import (ACTION_TYPES, DESTRUCTIVE, MAX_DEPTH, MAX_LIFETIME_S, ActionRequest,
                                      loads_bounded)
from sigstream.stream.alert_context import process_of, registry_of
from sigstream.stream.dedup import parse_duration

LEVELS = ("informational", "low", "medium", "high", "critical")
_MATCH_KEYS = {"rule_id", "tags", "level", "host", "not_host"}
MAX_ALERT_BYTES = 8 * 1024 * 1024     # an alert carries its whole event (events: at most 4 MiB)


class PolicyError(ConfigProblem):
    pass


class AlertError(EventProblem):
    """A message on the alerts topic that is not a usable alert (the reason is user-facing)."""


def decode_alert(value: Any, max_bytes: int = MAX_ALERT_BYTES, max_depth: int = MAX_DEPTH) -> dict:
    """An alerts-topic message -> the alert dict; AlertError(reason) for anything else.
    Checked: object with a `rule` object; rule id/title/level strings, tags a list of strings;
    alert_id and host strings (or absent); event and dedup objects (or absent)."""
    doc = loads_bounded(value, max_bytes=max_bytes, max_depth=max_depth, error=AlertError, what="alert")
    if not isinstance(doc, dict):
        raise AlertError(f"alert is a JSON {type(doc).__name__}, not an object")
    rule = doc.get("rule")
    if not isinstance(rule, dict):
        raise AlertError("not an alert: no 'rule' object")
    for name in ("id", "title", "level"):
        if rule.get(name) is not None and not isinstance(rule[name], str):
            raise AlertError(f"rule.{name} is not a string")
    tags = rule.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise AlertError("rule.tags is not a list of strings")
    for name in ("alert_id", "host"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise AlertError(f"{name} is not a string")
    for name in ("event", "dedup"):
        if doc.get(name) is not None and not isinstance(doc[name], dict):
            raise AlertError(f"{name} is not an object")
    return doc


def _list(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    return tuple(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


@dataclass(frozen=True)
class ActionSpec:
    type: str
    require_approval: bool


@dataclass(frozen=True)
class Match:
    rule_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    min_level: str | None = None
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    def __call__(self, alert: dict) -> bool:
        rule = alert.get("rule")
        rule = rule if isinstance(rule, dict) else {}
        host = str(alert.get("host") or "").lower()
        if self.rule_ids and str(rule.get("id") or "").lower() not in self.rule_ids:
            return False
        tags = rule.get("tags")
        tags = tags if isinstance(tags, list) else []
        if self.tags and not {str(t).lower() for t in tags} & set(self.tags):
            return False
        if self.min_level:
            level = str(rule.get("level") or "").lower()
            if level not in LEVELS or LEVELS.index(level) < LEVELS.index(self.min_level):
                return False
        if self.hosts and not any(fnmatch.fnmatchcase(host, p) for p in self.hosts):
            return False
        return not any(fnmatch.fnmatchcase(host, p) for p in self.not_hosts)


@dataclass(frozen=True)
class Entry:
    name: str
    match: Match
    actions: tuple[ActionSpec, ...]
    stop: bool = False


@dataclass
class Planned:
    requests: list[ActionRequest] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (action type, reason)
    entries: list[str] = field(default_factory=list)


@dataclass
class Policy:
    entries: list[Entry]
    requested_by: str = "sigstream-respond"
    approval_ttl_s: float = 3600.0
    execute_ttl_s: float = 600.0
    dry_run: bool = False
    notify: dict | None = None        # connectors.webhook.WebhookSink settings for `notify`

    @classmethod
    def from_dict(cls, doc: Any) -> "Policy":
        if not isinstance(doc, dict):
            raise PolicyError("policy must be a mapping with 'rules'")
        if doc.get("version", 1) != 1:
            raise PolicyError(f"unsupported policy version {doc.get('version')!r}")
        d = doc.get("defaults") or {}
        entries = [_entry(i, e) for i, e in enumerate(doc.get("rules") or [])]
        if not isinstance(d, dict):
            raise PolicyError("defaults: not a mapping")
        try:
            policy = cls(entries, str(d.get("requested_by", "sigstream-respond")),
                         parse_duration(d.get("approval_ttl", "1h")), parse_duration(d.get("execute_ttl", "10m")),
                         bool(d.get("dry_run", False)), doc.get("notify"))
        except ValueError as e:
            raise PolicyError(f"defaults: {e}") from None
        if not 0 < policy.execute_ttl_s <= MAX_LIFETIME_S:
            raise PolicyError(f"defaults: execute_ttl must be more than 0 and at most {MAX_LIFETIME_S:.0f}s "
                              "(endpoints refuse requests valid for longer)")
        return policy

    @classmethod
    def load(cls, path: str) -> "Policy":
        import yaml
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f))

    def matching(self, alert: dict) -> list[Entry]:
        out = []
        for e in self.entries:
            if e.match(alert):
                out.append(e)
                if e.stop:
                    break
        return out

    def plan(self, alert: dict, now: float) -> Planned:
        """The action requests for `alert` (not signed yet). `now`: epoch seconds."""
        result = Planned()
        seen: set[str] = set()
        host = alert.get("host")
        rule = alert.get("rule") if isinstance(alert.get("rule"), dict) else {}
        alert_id = alert.get("alert_id") if isinstance(alert.get("alert_id"), str) else None
        rule_id = rule.get("id") if isinstance(rule.get("id"), str) else None
        for entry in self.matching(alert):
            result.entries.append(entry.name)
            for spec in entry.actions:
                if spec.type in seen:
                    continue
                seen.add(spec.type)
                if not host or not isinstance(host, str):
                    result.skipped.append((spec.type, "alert has no host"))
                    continue
                target, why_not = target_for(spec.type, alert)
                if target is None:
                    result.skipped.append((spec.type, why_not))
                    continue
                pending = spec.require_approval
                result.requests.append(ActionRequest.new(
                    host=str(host), type=spec.type, target=target, requested_by=self.requested_by,
                    now=now, ttl_s=self.approval_ttl_s if pending else self.execute_ttl_s,
                    alert_id=alert_id, dry_run=self.dry_run,
                    approval="pending" if pending else "not_required",
                    rule_id=rule_id,
                    action_id=action_id_for(alert, spec.type, str(host)),
                    reason=f"policy {entry.name!r}: {rule.get('title')}"))
        return result


def action_id_for(alert: dict, action_type: str, host: str) -> str | None:
    """Deterministic per (alert, type, host): a redelivered alert yields the same action id,
    which the endpoint then rejects as a replay. None (random id) for alerts without an id."""
    aid = alert.get("alert_id")
    if not aid or not isinstance(aid, str):
        return None
    return hashlib.sha256(f"{aid}|{action_type}|{host.lower()}".encode()).hexdigest()[:32]


def _entry(i: int, e: Any) -> Entry:
    if not isinstance(e, dict):
        raise PolicyError(f"rules[{i}]: not a mapping")
    name = str(e.get("name") or f"rules[{i}]")
    m = e.get("match") or {}
    if not isinstance(m, dict) or set(m) - _MATCH_KEYS:
        raise PolicyError(f"{name}: match keys must be among {', '.join(sorted(_MATCH_KEYS))}")
    level = m.get("level")
    if level is not None and str(level).lower() not in LEVELS:
        raise PolicyError(f"{name}: unknown level {level!r}")
    match = Match(tuple(x.lower() for x in _list(m.get("rule_id"))), tuple(x.lower() for x in _list(m.get("tags"))),
                  str(level).lower() if level else None, tuple(x.lower() for x in _list(m.get("host"))),
                  tuple(x.lower() for x in _list(m.get("not_host"))))
    actions = []
    for a in e.get("actions") or []:
        spec = {"type": a} if isinstance(a, str) else a
        if not isinstance(spec, dict) or spec.get("type") not in ACTION_TYPES:
            raise PolicyError(f"{name}: unknown action {a!r} (one of {', '.join(ACTION_TYPES)})")
        actions.append(ActionSpec(spec["type"], bool(spec.get("require_approval", spec["type"] in DESTRUCTIVE))))
    if not actions:
        raise PolicyError(f"{name}: no actions")
    return Entry(name, match, tuple(actions), bool(e.get("stop", False)))


def target_for(action_type: str, alert: dict) -> tuple[dict | None, str]:
    """The action's target from the alert's event, or (None, why not)."""
    ev = alert.get("event")
    ev = ev if isinstance(ev, dict) else {}
    if action_type in ("kill_process", "suspend_process"):
        p = process_of(ev) or {}
        if (not isinstance(p.get("pid"), int) or not isinstance(p.get("guid"), str) or not p["guid"]
                or not isinstance(p.get("image"), str) or not p["image"]):
            return None, "event has no pid + ProcessGuid + image: the process cannot be identified safely"
        return {"pid": p["pid"], "guid": p["guid"], "image": p["image"]}, ""
    if action_type == "quarantine_registry_value":
        r = registry_of(ev) or {}
        if not isinstance(r.get("value"), str):
            return None, "event names no registry value"
        key = f"{r['hive']}\\{r['key']}" if r.get("hive") else r["key"]
        return {"key": key, "value": r["value"]}, ""
    return {}, ""
