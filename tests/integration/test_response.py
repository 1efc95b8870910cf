"""Response end to end on the real broker: alert -> `respond` (policy) -> signed action on
sigstream.actions -> `actions execute` (dry-run executor) -> result on sigstream.action-results;
an approval round trip (pending -> `actions approve` -> executed; `actions deny` -> never sent);
forged, algorithm-swapped, oversized and deeply nested requests rejected over the wire.
Keys: an Ed25519 pair from `actions keygen` (the responder signs, the endpoint only verifies)."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner

from sigstream.connectors.kafka import (ACTION_RESULTS_TOPIC, ACTIONS_TOPIC, KafkaAlertSink, KafkaRecordProducer,
                              KafkaSettings, KafkaSource, create_topics)
from sigstream.cli import main
from sigstream.stream.actions import ActionRequest, Key, Keyring, encode, generate_keypair, load_keyring, sign

ROOT = Path(__file__).resolve().parents[2]
RULE_ID = "e6b99a0a-90b2-412b-a10b-88a6096a9808"


def _sample_alert(host: str) -> dict:
    """A real alert: the bundled rule on the bundled intrusion sample, moved to `host`."""
    from sigstream.connectors.readers import read_events
    from sigstream.stream.alerts import build_alert
    from sigstream.stream.engine import Engine
    from sigstream.stream.rules import load_rules
    engine = Engine(load_rules([str(ROOT / "sigma_rules")]).rules)
    for event, _ in read_events([str(ROOT / "samples" / "fileless-intrusion.jsonl")]):
        if event.get("EventID") != 1:
            continue
        for hit in engine.match(event):
            if hit.rule.id == RULE_ID:
                event = dict(event, Computer=host)
                return orjson.loads(orjson.dumps(build_alert(hit, event, {"test": True}), default=str))
    raise AssertionError("sample alert not found")


def _results(settings: KafkaSettings, wanted: set[str], timeout_s: float = 60) -> dict[str, dict]:
    source = KafkaSource(settings, [ACTION_RESULTS_TOPIC], f"it-results-{uuid.uuid4().hex[:8]}", from_beginning=True)
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not wanted <= set(found):
            for m in source.poll(500, 1.0):
                r = orjson.loads(m.value)
                if r.get("action_id") in wanted:
                    found[r["action_id"]] = r
                    assert m.key == r["host"].encode()
    finally:
        source.close()
    return found


def _actions_on_topic(settings: KafkaSettings, host: str, timeout_s: float = 8) -> list[dict]:
    source = KafkaSource(settings, [ACTIONS_TOPIC], f"it-actions-{uuid.uuid4().hex[:8]}", from_beginning=True)
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for m in source.poll(500, 1.0):
                if m.key == host.encode():
                    out.append(orjson.loads(m.value)["request"])
    finally:
        source.close()
    return out


@pytest.fixture
def env(kafka_bootstrap, tmp_path, monkeypatch):
    settings = KafkaSettings(bootstrap=kafka_bootstrap)
    alerts_topic = f"it-alerts-{uuid.uuid4().hex[:8]}"
    create_topics(settings, [alerts_topic, ACTIONS_TOPIC, ACTION_RESULTS_TOPIC], partitions=3)
    keys = generate_keypair(tmp_path / "keys", "it1")
    monkeypatch.setenv("SIGSTREAM_ACTION_KEYS_FILE", str(keys["private_keys"]))   # respond / approve
    monkeypatch.delenv("SIGSTREAM_ACTION_KEYS", raising=False)
    monkeypatch.delenv("SIGSTREAM_ACTION_KEY", raising=False)
    monkeypatch.setenv("SIGSTREAM_BOOTSTRAP", kafka_bootstrap)
    host = f"WKS-IT-{uuid.uuid4().hex[:6]}.corp.example.com"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "defaults": {"approval_ttl": "1h", "execute_ttl": "10m"},
        "rules": [{"name": "encoded download cradle", "match": {"rule_id": [RULE_ID], "host": ["wks-it-*"]},
                   "actions": [{"type": "kill_process", "require_approval": False},
                               "isolate_host", "suspend_process"]}]}))
    return settings, alerts_topic, host, policy, tmp_path


def _cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _execute(host: str, tmp_path: Path) -> list[dict]:
    out = _cli("actions", "execute", "--host", host, "--seen", str(tmp_path / "seen.sqlite"), "--timeout", "6",
               "--keys", str(tmp_path / "keys" / "endpoint.keys"))
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_alert_to_policy_to_signed_action_to_dry_run_result_with_approval(env):
    settings, alerts_topic, host, policy, tmp = env
    state = str(tmp / "approvals.sqlite")

    # 1. an alert on the alerts topic
    sink = KafkaAlertSink(settings, alerts_topic)
    alert = _sample_alert(host)
    sink.add(alert)
    sink.close()

    # 2. the responder: kill_process sent at once; isolate_host and suspend_process pending
    out = _cli("respond", "--policy", str(policy), "--topic", alerts_topic, "--from-beginning",
               "--state", state, "--group", f"it-respond-{uuid.uuid4().hex[:6]}", "--max-alerts", "1",
               "--timeout", "30")
    decisions = {d["type"]: d for d in (json.loads(x) for x in out.splitlines() if x.startswith("{"))}
    assert decisions["kill_process"]["outcome"] == "sent"
    assert decisions["isolate_host"]["outcome"] == "pending"
    assert decisions["suspend_process"]["outcome"] == "pending"
    kill_id = decisions["kill_process"]["action_id"]

    on_topic = _actions_on_topic(settings, host)
    assert [r["type"] for r in on_topic] == ["kill_process"]
    assert on_topic[0]["target"]["guid"].startswith("{") and on_topic[0]["alert_id"] == alert["alert_id"]

    # 3. the endpoint executor (dry run) answers on action-results
    results = {r["action_id"]: r for r in _execute(host, tmp)}
    assert results[kill_id]["status"] == "ok"
    found = _results(settings, {kill_id})
    assert found[kill_id]["status"] == "ok" and found[kill_id]["executor"] == "dry-run"
    assert found[kill_id]["alert_id"] == alert["alert_id"] and "terminate pid" in found[kill_id]["reason"]

    # 4. approval round trip: list, approve one, deny the other
    pending = [json.loads(x) for x in _cli("actions", "list", "--state", state, "-f", "jsonl").splitlines()]
    by_type = {p["type"]: p for p in pending}
    assert set(by_type) == {"isolate_host", "suspend_process"}
    assert all(p["state"] == "pending" for p in pending)
    iso_id, sus_id = by_type["isolate_host"]["action_id"], by_type["suspend_process"]["action_id"]
    assert "approved and sent" in _cli("actions", "approve", iso_id[:10], "--state", state, "--by", "alice")
    assert "denied" in _cli("actions", "deny", sus_id, "--state", state, "--by", "bob")
    assert _cli("actions", "list", "--state", state, "-f", "jsonl").strip() == ""

    results = {r["action_id"]: r for r in _execute(host, tmp)}
    assert results[iso_id]["status"] == "ok" and kill_id not in results      # no re-run
    found = _results(settings, {iso_id})
    assert found[iso_id]["type"] == "isolate_host" and found[iso_id]["status"] == "ok"
    sent = _actions_on_topic(settings, host)
    assert [r["type"] for r in sent] == ["kill_process", "isolate_host"]        # denied: never sent
    assert sent[1]["approval"] == "approved" and sent[1]["approved_by"] == "alice"


def test_forged_and_replayed_requests_are_rejected_over_the_wire(env):
    settings, _, host, _, tmp = env
    good = load_keyring(tmp / "keys" / "responder.keys")
    evil = load_keyring(generate_keypair(tmp / "evil", "it1")["private_keys"])     # same kid, other key
    swapped = Keyring()                         # HMAC keyed with the (public) key file: algorithm swap
    swapped.add(Key("it1", "hmac-sha256", secret=(tmp / "keys" / "it1.ed25519.pub").read_bytes()))
    now = time.time()
    legit = ActionRequest.new(host=host, type="kill_process", target={"pid": 1, "guid": "{x-1-2-3-4}", "image": "a"},
                              requested_by="it", now=now, ttl_s=600)
    forged = ActionRequest.new(host=host, type="isolate_host", target={}, requested_by="it", now=now, ttl_s=600)
    expired = ActionRequest.new(host=host, type="notify", target={}, requested_by="it", now=now - 1000, ttl_s=600)
    producer = KafkaRecordProducer(settings, ACTIONS_TOPIC)
    key = host.encode()
    producer.send(encode(sign(legit, good)), key)
    producer.send(encode(sign(legit, good)), key)            # replay
    producer.send(encode(sign(forged, evil)), key)
    producer.send(encode(sign(expired, good)), key)
    tampered = sign(ActionRequest.new(host=host, type="notify", target={}, requested_by="it", now=now, ttl_s=600), good)
    tampered["request"]["type"] = "isolate_host"
    producer.send(encode(tampered), key)
    producer.send(b"{not json", key)
    producer.send(encode(sign(ActionRequest.new(host=host, type="isolate_host", target={}, requested_by="it",
                                                now=now, ttl_s=600), swapped)), key)
    long_lived = ActionRequest.new(host=host, type="notify", target={}, requested_by="it", now=now, ttl_s=7200)
    producer.send(encode(sign(long_lived, good)), key)
    producer.send(b"[" * 100_000, key)                      # 100,000 deep (and over the size cap)
    producer.send(b"[" * 30_000 + b"]" * 30_000, key)        # 30,000 deep, within the size cap
    producer.send(b'{"pad": "' + b"x" * 100_000 + b'"}', key)   # oversized
    after = ActionRequest.new(host=host, type="notify", target={}, requested_by="it", now=now, ttl_s=600)
    producer.send(encode(sign(after, good)), key)            # a valid request after all the bad ones
    producer.flush()
    producer.close()

    results = _execute(host, tmp)                           # exit status 0 (checked by _cli)
    statuses = [(r["action_id"], r["status"], r["reason"]) for r in results]
    legit_results = [s for s in statuses if s[0] == legit.action_id]
    assert [s[1] for s in legit_results] == ["ok", "rejected"] and "replayed" in legit_results[1][2]
    assert any(s[0] is None and s[2] == "bad signature" for s in statuses)             # forged + tampered
    assert sum(1 for s in statuses if s[2] == "bad signature") == 2
    assert any("algorithm 'hmac-sha256' does not match" in s[2] for s in statuses)     # swapped
    assert any(s[0] == expired.action_id and "expired" in s[2] for s in statuses)
    assert any(s[0] == long_lived.action_id and "valid too long" in s[2] for s in statuses)
    assert any("not JSON" in s[2] for s in statuses)
    assert sum(1 for s in statuses if "nested deeper" in s[2]) == 1
    assert sum(1 for s in statuses if "exceeds the limit" in s[2]) == 2
    assert [s[1] for s in statuses if s[0] == after.action_id] == ["ok"]
    found = _results(settings, {legit.action_id, expired.action_id, after.action_id, long_lived.action_id})
    assert found[expired.action_id]["status"] == "rejected" and found[after.action_id]["status"] == "ok"
    assert "valid too long" in found[long_lived.action_id]["reason"]


def test_agent_action_runner_executes_signed_request(env):
    """The agent's response side (connectors.agent_actions, started by `actions: enabled`):
    a signed request for its host on the actions topic -> dry-run executor -> action-results."""
    from sigstream.connectors.agent_actions import ActionRunner, ActionsConfig

    settings, alerts_topic, host, policy, tmp = env
    sink = KafkaAlertSink(settings, alerts_topic)
    alert = _sample_alert(host)
    sink.add(alert)
    sink.close()
    out = _cli("respond", "--policy", str(policy), "--topic", alerts_topic, "--from-beginning",
               "--state", str(tmp / "approvals.sqlite"), "--group", f"it-respond-{uuid.uuid4().hex[:6]}",
               "--max-alerts", "1", "--timeout", "30")
    decisions = {d["type"]: d for d in (json.loads(x) for x in out.splitlines() if x.startswith("{"))}
    kill_id = decisions["kill_process"]["action_id"]

    runner = ActionRunner(ActionsConfig(enabled=True, dry_run=True, keys=str(tmp / "keys" / "endpoint.keys")),
                          host, settings, "sigstream", tmp / "agent-actions").start()
    try:
        found = _results(settings, {kill_id})
    finally:
        runner.stop()
    assert found[kill_id]["status"] == "ok" and found[kill_id]["executor"] == "dry-run"
    assert found[kill_id]["alert_id"] == alert["alert_id"]
