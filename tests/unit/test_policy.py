"""Responder policy: matching, planning, approval defaults, targets; the responder core;
the approval state file."""
from __future__ import annotations

import pytest
import yaml

from sigstream.connectors.approvals import ApprovalError, ApprovalStore
from sigstream.connectors.sinks import ListSink
from sigstream.stream.actions import Key, Keyring, decode, verify
from sigstream.stream.policy import Policy, PolicyError
from sigstream.stream.responder import Responder

NOW = 1_800_000_000.0
RULE = "e6b99a0a-90b2-412b-a10b-88a6096a9808"
PROC_EVENT = {"EventID": 1, "Computer": "WKS-1.corp", "Image": "C:\\w\\powershell.exe", "ProcessId": 4242,
              "ProcessGuid": "{5770385f-c22a-6925-0000-001000a1b2c3}", "CommandLine": "powershell -enc AAA"}
REG_EVENT = {"EventID": 13, "EventType": "SetValue", "Computer": "WKS-1.corp", "Image": "C:\\w\\powershell.exe",
             "ProcessId": 1, "ProcessGuid": "{5770385f-c22a-6925-0000-001000a1b2c4}",
             "TargetObject": "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater",
             "Details": "powershell -w hidden -enc AAA"}

POLICY = """
version: 1
defaults: {requested_by: soc-bot, approval_ttl: 30m, execute_ttl: 5m}
rules:
  - name: encoded powershell
    match: {rule_id: [E6B99A0A-90B2-412B-A10B-88A6096A9808], host: ["wks-*"], not_host: ["wks-admin*"]}
    actions: [kill_process, notify]
  - name: run keys
    match: {tags: [attack.t1547.001], level: medium}
    actions:
      - {type: quarantine_registry_value, require_approval: false}
      - kill_process
  - name: critical anywhere
    match: {level: critical}
    actions: [isolate_host, unisolate_host]
    stop: true
  - name: never reached after a stop
    match: {level: critical}
    actions: [suspend_process]
"""


def alert(event=PROC_EVENT, rule_id=RULE, tags=("attack.t1059.001",), level="high", host="WKS-1.corp"):
    return {"alert_id": "f" * 32, "rule": {"id": rule_id, "title": "T", "level": level, "tags": list(tags)},
            "host": host, "event": dict(event)}


@pytest.fixture
def policy():
    return Policy.from_dict(yaml.safe_load(POLICY))


def test_match_by_rule_id_and_host_patterns(policy):
    assert [e.name for e in policy.matching(alert())] == ["encoded powershell"]
    assert policy.matching(alert(host="WKS-ADMIN-1")) == []
    assert policy.matching(alert(host="srv-1")) == []
    assert policy.matching(alert(rule_id="other")) == []


def test_match_by_tags_and_minimum_level(policy):
    a = alert(REG_EVENT, rule_id="x", tags=("attack.persistence", "attack.T1547.001"), level="medium")
    assert [e.name for e in policy.matching(a)] == ["run keys"]
    assert policy.matching(dict(a, rule=dict(a["rule"], level="low"))) == []


def test_stop_ends_matching(policy):
    names = [e.name for e in policy.matching(alert(rule_id="x", level="critical", host="srv"))]
    assert names == ["critical anywhere"]


def test_plan_destructive_actions_need_approval_by_default(policy):
    p = policy.plan(alert(), NOW)
    by_type = {r.type: r for r in p.requests}
    kill = by_type["kill_process"]
    assert kill.approval == "pending" and kill.expires_at == NOW + 1800
    assert kill.target == {"pid": 4242, "guid": PROC_EVENT["ProcessGuid"], "image": PROC_EVENT["Image"]}
    assert kill.requested_by == "soc-bot" and kill.host == "WKS-1.corp" and kill.alert_id == "f" * 32
    assert by_type["notify"].approval == "not_required" and by_type["notify"].expires_at == NOW + 300


def test_plan_registry_target_and_explicit_no_approval(policy):
    a = alert(REG_EVENT, rule_id="x", tags=("attack.t1547.001",), level="high")
    p = policy.plan(a, NOW)
    q = next(r for r in p.requests if r.type == "quarantine_registry_value")
    assert q.approval == "not_required"
    assert q.target == {"key": "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", "value": "Updater"}


def test_isolation_defaults(policy):
    p = policy.plan(alert(rule_id="x", level="critical", host="srv"), NOW)
    assert {r.type: r.approval for r in p.requests} == {"isolate_host": "pending", "unisolate_host": "not_required"}


def test_actions_without_a_safe_target_are_skipped(policy):
    ev = {k: v for k, v in PROC_EVENT.items() if k != "ProcessGuid"}
    p = policy.plan(alert(ev), NOW)
    assert [r.type for r in p.requests] == ["notify"]
    assert p.skipped and p.skipped[0][0] == "kill_process" and "ProcessGuid" in p.skipped[0][1]
    assert policy.plan(alert(host=None), NOW).requests == []


def test_action_ids_are_stable_per_alert(policy):
    assert [r.action_id for r in policy.plan(alert(), NOW).requests] == \
           [r.action_id for r in policy.plan(alert(), NOW + 5).requests]


@pytest.mark.parametrize("doc, msg", [
    ({"rules": [{"match": {"level": "high"}, "actions": ["reboot"]}]}, "unknown action"),
    ({"rules": [{"match": {"lvl": "high"}, "actions": ["notify"]}]}, "match keys"),
    ({"rules": [{"match": {"level": "severe"}, "actions": ["notify"]}]}, "unknown level"),
    ({"rules": [{"match": {}, "actions": []}]}, "no actions"),
    ({"version": 2, "rules": []}, "version"),
    ({"defaults": {"approval_ttl": "later"}, "rules": []}, "duration"),
    ([], "mapping"),
])
def test_policy_errors(doc, msg):
    with pytest.raises(PolicyError, match=msg):
        Policy.from_dict(doc)


# ---------------------------------------------------------------- responder ---

def keyring():
    r = Keyring()
    r.add(Key("k1", "hmac-sha256", secret=b"0123456789abcdef0123456789abcdef"))
    return r


def test_responder_sends_holds_and_notifies(policy, tmp_path):
    sent = []
    store = ApprovalStore(tmp_path / "approvals.sqlite")
    notes = ListSink()
    responder = Responder(policy, keyring(), store, lambda v, k: sent.append((v, k)), notes)
    a = alert(REG_EVENT, rule_id=RULE, tags=("attack.t1547.001",))
    outcomes = {o.type: o.what for o in responder.handle(a, NOW)}
    assert outcomes == {"kill_process": "pending", "notify": "notified", "quarantine_registry_value": "sent"}
    [(value, key)] = sent
    assert key == b"WKS-1.corp"
    assert verify(decode(value), keyring())["type"] == "quarantine_registry_value"
    assert len(notes.alerts) == 1
    # redelivered alert: the pending request is not duplicated
    again = {o.type: o.what for o in responder.handle(a, NOW + 1)}
    assert again["kill_process"] == "duplicate"
    assert [r.request.type for r in store.list(NOW)] == ["kill_process"]
    # dedup updates are not acted on
    assert responder.handle(dict(a, dedup={"count": 3, "final": True}), NOW) == []


def test_approval_store_flow(policy, tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    kill = next(r for r in policy.plan(alert(), NOW).requests if r.type == "kill_process")
    assert store.add_pending(kill) and not store.add_pending(kill)
    approved = store.decide(kill.action_id[:8], True, "alice", NOW + 60, 300)
    assert approved.approval == "approved" and approved.approved_by == "alice"
    assert approved.created_at == NOW + 60 and approved.expires_at == NOW + 360
    with pytest.raises(ApprovalError, match="approved, not pending"):
        store.decide(kill.action_id, False, "bob", NOW + 61, 300)
    assert store.list(NOW + 61) == []
    assert [r.state for r in store.list(NOW + 61, None)] == ["approved"]


def test_unapproved_requests_expire(policy, tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    kill = next(r for r in policy.plan(alert(), NOW).requests if r.type == "kill_process")
    store.add_pending(kill)
    assert [r.state for r in store.list(NOW + 1799)] == ["pending"]
    assert store.list(NOW + 1800) == []
    with pytest.raises(ApprovalError, match="expired"):
        store.decide(kill.action_id, True, "alice", NOW + 1801, 300)
    with pytest.raises(ApprovalError, match="no action request"):
        store.decide("nope", True, "alice", NOW, 300)


def test_deny(policy, tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    kill = next(r for r in policy.plan(alert(), NOW).requests if r.type == "kill_process")
    store.add_pending(kill)
    assert store.decide(kill.action_id, False, "bob", NOW, 300).approval == "denied"
    assert store.get(kill.action_id, NOW).state == "denied"


# ------------------------------------------------- alerts as read by respond ---

def test_decode_alert_accepts_alerts_and_rejects_the_rest():
    import orjson
    from sigstream.stream.policy import AlertError, decode_alert
    a = alert()
    assert decode_alert(orjson.dumps(a)) == a
    for value, reason in [(b"[" * 100_000, "nested deeper"), (b"x" * 10, "not JSON"), (None, "empty"),
                          (b"[]", "not an object"), (b'{"host": "h"}', "no 'rule'"),
                          (b'{"rule": {"tags": "t"}}', "tags"), (b'{"rule": {}, "host": 1}', "host"),
                          (b'{"rule": {}, "event": []}', "event"), (b'{"rule": {"id": 5}}', "rule.id")]:
        with pytest.raises(AlertError, match=reason):
            decode_alert(value)
    with pytest.raises(AlertError, match="exceeds the limit"):
        decode_alert(orjson.dumps(a), max_bytes=100)


def test_execute_ttl_is_capped_by_the_endpoints_maximum_lifetime():
    with pytest.raises(PolicyError, match="execute_ttl"):
        Policy.from_dict({"defaults": {"execute_ttl": "2h"}, "rules": []})
    assert Policy.from_dict({"defaults": {"execute_ttl": "1h"}, "rules": []}).execute_ttl_s == 3600


def test_plan_ignores_mistyped_targets(policy):
    ev = dict(PROC_EVENT, ProcessGuid=["not", "a", "string"])
    p = policy.plan(alert(ev), NOW)
    assert "kill_process" in [t for t, _ in p.skipped]


class _Msg:
    def __init__(self, value, offset):
        self.value, self.topic, self.partition, self.offset = value, "sigstream.alerts", 0, offset


class _Source:
    def __init__(self, batches):
        self.batches, self.commits = list(batches), 0

    def poll(self, n, timeout):
        return self.batches.pop(0) if self.batches else []

    def commit(self):
        self.commits += 1


def test_respond_loop_rejects_a_bad_message_and_goes_on():
    from sigstream.cmd_respond import _loop
    seen = []

    def on_message(m):
        if m.value == b"boom":
            raise RecursionError("deep")
        seen.append(m.offset)
        return True

    counts = {}
    source = _Source([[_Msg(b"boom", 0), _Msg(b"ok", 1)], [_Msg(b"ok", 2)]])
    assert _loop(source, on_message, None, 0.01, lambda: None, counts) == 2
    assert seen == [1, 2] and counts["rejected"] == 1 and source.commits == 2


def test_respond_loop_does_not_swallow_broker_failures():
    from sigstream.cmd_respond import _loop
    from sigstream.stream.errors import TransportProblem

    def on_message(m):
        raise TransportProblem("broker down")

    source = _Source([[_Msg(b"x", 0)]])
    with pytest.raises(TransportProblem):
        _loop(source, on_message, None, 0.01, lambda: None)
    assert source.commits == 0                   # nothing committed past an unsent action
