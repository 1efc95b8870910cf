"""Fuzzing the decoders of every topic sigstream consumes: actions (stream.actions.decode and
the endpoint's whole check path), action results (stream.actions.decode_result, and the
`alerts tail --with-actions` printer), event envelopes (stream.envelope.decode) and alerts as
read by `respond` (stream.policy.decode_alert, then Policy.plan).

Each must raise nothing but its module's own error class, on random bytes, on random JSON and
on a corpus of nasty inputs, and must finish within a bounded time."""
from __future__ import annotations

import json
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigstream.connectors.executor import DryRunExecutor, EndpointExecutor, SeenStore
from sigstream.stream import envelope
from sigstream.stream.actions import ActionError, Key, Keyring, decode, decode_result
from sigstream.stream.policy import AlertError, Policy, decode_alert

BOUND_S = 1.0     # per input; the real figure is well under a millisecond for most
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NASTY = [
    None, b"", b" ", b"\x00", b"\xff\xfe\xfd", b"\xef\xbb\xbf{}", b"null", b"true", b"0", b"-0", b"1e999", b"-1e999",
    b"NaN", b"Infinity", b"1" * 5000, b"-" + b"9" * 400, b'"\\ud800"', b'"\\udc00\\ud800"', b'"\x00"',
    b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b"{" * 50_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"a":1,"a":2}', b'{"a":1', b"[1,]", b"'single'", b"{'a':1}", b'"' + b"x" * 70_000 + b'"',
    b" " * 100_000 + b"{}", b"[]" * 1000, b'{"v":1,"event":{}}', b'{"v":1,"event":[]}', b'{"rule":{}}',
    b'{"rule":[]}', b'{"rule":{"tags":"attack.t1059"}}', b'{"rule":{"tags":[1,2]},"host":["h"]}',
    b'{"rule":{"id":1},"event":{"ProcessId":"0x","ProcessGuid":[],"Image":{}}}',
    b'{"status":"ok","at":true}', b'{"status":"ok","action_id":[1]}', b'{"status":["ok"]}',
    b'{"request":{"v":1},"signature":{"alg":"ed25519","kid":"k","sig":"AAAA"}}',
    b'{"request":[],"signature":"x"}', b'{"request":{},"signature":{"kid":{"a":1}}}',
    "str, not bytes", 42, 3.5, [1, 2], {"a": 1}, bytearray(b"[1]"), memoryview(b"[1]"),
    b"\n".join([b"{}"] * 1000), b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
]

def _dumps(v):
    return json.dumps(v).encode()     # big integers and lone surrogates (escaped) included


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40)
FIELDS = ["request", "signature", "v", "action_id", "host", "type", "target", "alg", "kid", "sig", "rule",
          "event", "tags", "id", "level", "status", "alert_id", "dedup", "ProcessId", "ProcessGuid", "Image",
          "TargetObject", "EventType", "approval", "created_at", "expires_at"]
shaped = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(FIELDS), children, max_size=8),
    max_leaves=60)
inputs = st.binary(max_size=2048) | json_values.map(_dumps) | shaped.map(_dumps)


def _hmac_ring():
    r = Keyring()
    r.add(Key("k", "hmac-sha256", secret=bytes(range(32))))
    return r


ENDPOINT = EndpointExecutor("WKS-1", _hmac_ring(), DryRunExecutor(), SeenStore())
POLICY = Policy.from_dict({"rules": [
    {"name": "all", "match": {}, "actions": ["kill_process", "quarantine_registry_value", "isolate_host", "notify"]},
    {"name": "tagged", "match": {"tags": ["attack.t1059"], "level": "low", "host": ["*"]}, "actions": ["suspend_process"]},
]})


def _bounded(fn, value, allowed):
    t = time.perf_counter()
    try:
        return fn(value)
    except allowed:
        return None
    finally:
        assert time.perf_counter() - t < BOUND_S, f"{fn.__name__} took too long on {repr(value)[:80]}"


def _alert_path(value):
    alert = decode_alert(value)
    POLICY.plan(alert, 1_800_000_000.0)          # a decoded alert never crashes the planner
    return alert


def _endpoint(value):
    res = ENDPOINT.handle(value, 1_800_000_000.0)
    assert res.status == "rejected" and res.reason       # never raises, always a reason
    assert "internal error" not in res.reason, res.reason
    res.encode()
    return res


CASES = [(decode, ActionError), (decode_result, ActionError), (envelope.decode, envelope.EnvelopeError),
         (_alert_path, AlertError), (_endpoint, ())]


@pytest.mark.parametrize("fn, allowed", CASES, ids=lambda x: getattr(x, "__name__", ""))
# ids must not hold memory addresses: pytest-xdist workers must collect the same names
@pytest.mark.parametrize("value", NASTY, ids=lambda v: (f"memoryview({bytes(v)!r})" if isinstance(v, memoryview)
                                                        else repr(v))[:24])
def test_nasty_corpus(fn, allowed, value):
    if fn is envelope.decode and not isinstance(value, (bytes, type(None))):
        pytest.skip("envelope.decode is only given Kafka values (bytes or None)")
    _bounded(fn, value, allowed)


@pytest.mark.parametrize("fn, allowed", CASES, ids=lambda x: getattr(x, "__name__", ""))
@FUZZ
@given(value=inputs)
def test_fuzz(fn, allowed, value):
    _bounded(fn, value, allowed)


@FUZZ
@given(value=inputs)
def test_fuzz_alerts_tail_action_result_printer(value):
    """`alerts tail --with-actions` prints results for alerts it showed (sigstream/cmd_alerts.py):
    whatever is on the action-results topic, it must not raise."""
    from sigstream.cmd_alerts import _show_action_result
    try:
        doc = orjson.loads(value)
        ids = {str(doc.get("alert_id"))} if isinstance(doc, dict) else set()
    except orjson.JSONDecodeError:
        ids = set()
    for fmt in ("jsonl", "table"):
        _bounded(lambda v: _show_action_result(v, ids, fmt), value, ())


def test_decoders_accept_what_sigstream_writes():
    from sigstream.connectors.executor import Result
    r = Result("a" * 32, "b" * 32, "WKS-1", "kill_process", "ok", "done", 1.0, "dry-run", True)
    assert decode_result(r.encode())["status"] == "ok"
    alert = {"alert_id": "f" * 32, "rule": {"id": "x", "title": "T", "level": "high", "tags": ["a"]},
             "host": "WKS-1", "event": {"Computer": "WKS-1"}, "dedup": {"count": 1}}
    assert decode_alert(orjson.dumps(alert)) == alert
    env = envelope.wrap({"Computer": "WKS-1", "EventID": 1}, "c1")
    assert envelope.decode(envelope.encode(env))["event"]["EventID"] == 1
