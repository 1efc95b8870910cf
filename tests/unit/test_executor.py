"""The endpoint executor under attack (Ed25519, the default): every refusal is `rejected` with
a reason and runs nothing; the consume loop and `actions execute --input` survive bad
messages (oversized, deeply nested, garbage) and go on to the valid ones."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass

import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519

from sigstream.cli import main
from sigstream.connectors.executor import DryRunExecutor, EndpointExecutor, SeenStore, run_loop
from sigstream.stream.actions import (MAX_ACTION_BYTES, ActionRequest, Key, Keyring, canonical, encode,
                                      generate_keypair, load_keyring, sign, sign_approval)

HOST = "WKS-FIN-042.corp.example.com"
NOW = 1_800_000_000.0
TARGET = {"pid": 4242, "guid": "{5770385f-c22a-6925-0000-001000a1b2c3}",
          "image": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"}
NESTED = b"[" * 100_000 + b"]" * 100_000       # 200 KB: over the default size cap
DEEP = b"[" * 30_000 + b"]" * 30_000            # 60 KB: within the cap, 30,000 deep


def ed_ring(kid="r1", priv=None):
    priv = priv or ed25519.Ed25519PrivateKey.generate()
    r = Keyring()
    r.add(Key(kid, "ed25519", private=priv, public=priv.public_key()))
    return r


RESPONDER = ed_ring("r1")
APPROVER = ed_ring("alice")
MALLORY = ed_ring("mallory")


def request(**kw):
    args = dict(host=HOST, type="kill_process", target=TARGET, requested_by="test", now=NOW, ttl_s=600,
                alert_id="a" * 32)
    args.update(kw)
    return ActionRequest.new(**args)


def approved(by="alice", **kw):
    req = request(approval="approved", **kw)
    req.approved_by = by
    return req


def wire(req=None, r=RESPONDER, approver=None, **kw):
    req = req or request(**kw)
    msg = sign(req, r)
    if approver is not None:
        msg["approval"] = sign_approval(req, approver, NOW)
    return encode(msg)


class Recording(DryRunExecutor):
    name = "recording-real"


@pytest.fixture
def ep(tmp_path):
    real, dry = Recording(), DryRunExecutor()
    e = EndpointExecutor(HOST, RESPONDER, real, SeenStore(str(tmp_path / "seen.sqlite")), dry_executor=dry)
    e.real, e.dry_calls = real, dry
    return e


@pytest.fixture
def strict(tmp_path):
    """An endpoint with an approvers key ring and its own list of allowed action types."""
    real = Recording()
    e = EndpointExecutor(HOST, RESPONDER, real, SeenStore(str(tmp_path / "seen2.sqlite")),
                         approvers=APPROVER, allowed_types=["kill_process", "notify", "isolate_host"])
    e.real, e.dry_calls = real, e.dry
    return e


def rejected(e, value, now=NOW, contains=""):
    res = e.handle(value, now)
    assert res.status == "rejected", res
    assert contains.lower() in res.reason.lower(), res.reason
    assert e.real.calls == [] and e.dry_calls.calls == []
    return res


def ok(e, value, now=NOW):
    res = e.handle(value, now)
    assert res.status == "ok", res
    return res


# ---------------------------------------------------------------- signatures ---

def test_valid_ed25519_request_runs(ep):
    assert "terminate pid 4242" in ok(ep, wire()).reason


def test_forged_with_another_key_of_the_same_kid(ep):
    rejected(ep, wire(r=ed_ring("r1")), contains="bad signature")


def test_tampered(ep):
    msg = sign(request(), RESPONDER)
    msg["request"]["target"]["pid"] = 4
    rejected(ep, encode(msg), contains="bad signature")


def test_unsigned(ep):
    rejected(ep, canonical({"request": request().to_dict()}), contains="unsigned")
    msg = sign(request(), RESPONDER)
    msg["signature"]["sig"] = ""
    rejected(ep, encode(msg), contains="bad signature")


@pytest.mark.parametrize("alg", ["hmac-sha256", "none", "HS256", "", "ed25519 "])
def test_algorithm_swapped(ep, alg):
    """HMAC-signed request (e.g. keyed with the public key, which an attacker knows) for an
    endpoint that expects Ed25519: refused by algorithm, never verified as HMAC."""
    pub = RESPONDER.keys["r1"].public.public_bytes_raw()
    body = request().to_dict()
    sig = base64.b64encode(hmac.new(pub, canonical(body), hashlib.sha256).digest()).decode()
    rejected(ep, encode({"request": body, "signature": {"alg": alg, "kid": "r1", "sig": sig}}),
             contains="algorithm")


def test_hmac_signature_labelled_ed25519(ep):
    pub = RESPONDER.keys["r1"].public.public_bytes_raw()
    body = request().to_dict()
    sig = base64.b64encode(hmac.new(pub, canonical(body), hashlib.sha256).digest()).decode()
    rejected(ep, encode({"request": body, "signature": {"alg": "ed25519", "kid": "r1", "sig": sig}}),
             contains="bad signature")


@pytest.mark.parametrize("sig", [{"alg": "ed25519", "kid": ["r1"], "sig": "x"}, {"alg": 1, "kid": "r1", "sig": "x"},
                                 {"alg": "ed25519", "kid": "r1", "sig": "!!"},
                                 {"alg": "ed25519", "kid": "r1", "sig": "A" * 5000}])
def test_malformed_signature_fields(ep, sig):
    rejected(ep, encode({"request": request().to_dict(), "signature": sig}), contains="bad signature")


def test_signed_unknown_type_and_bad_fields(ep):
    for change, reason in [({"type": "format_disk"}, "unknown action type"),
                           ({"target": {"pid": "4242", "guid": "g", "image": "i"}}, "pid"),
                           ({"target": {"pid": True, "guid": "g", "image": "i"}}, "pid"),
                           ({"dry_run": "yes"}, "dry_run"),
                           ({"alert_id": {"x": 1}}, "alert_id"),
                           ({"created_at": True}, "created_at"),
                           ({"v": True}, "version"),
                           ({"action_id": "x" * 1000}, "action_id")]:
        body = dict(request().to_dict(), **change)
        sig = base64.b64encode(RESPONDER.keys["r1"].private.sign(canonical(body))).decode()
        rejected(ep, encode({"request": body, "signature": {"alg": "ed25519", "kid": "r1", "sig": sig}}),
                 contains=reason)


# ---------------------------------------------------------------------- time ---

def test_expired(ep):
    rejected(ep, wire(), now=NOW + 601, contains="expired")


def test_future_dated_beyond_the_skew(ep):
    rejected(ep, wire(now=NOW + 61), now=NOW, contains="in the future")
    ok(ep, wire(now=NOW + 59), now=NOW)                   # within the 60 s default skew


def test_future_skew_is_configurable(tmp_path):
    e = EndpointExecutor(HOST, RESPONDER, DryRunExecutor(), SeenStore(), future_skew_s=300)
    assert e.handle(wire(now=NOW + 200), NOW).status == "ok"


def test_too_long_lived(ep):
    rejected(ep, wire(ttl_s=3601), contains="valid too long")
    rejected(ep, wire(ttl_s=10 * 365 * 86400), contains="valid too long")
    rejected(ep, wire(ttl_s=-5), contains="validity window")
    ok(ep, wire(ttl_s=3600))


def test_max_lifetime_is_configurable():
    e = EndpointExecutor(HOST, RESPONDER, DryRunExecutor(), SeenStore(), max_lifetime_s=60)
    assert "valid too long" in e.handle(wire(ttl_s=600), NOW).reason


def test_replayed_and_seen_ids_kept_until_expiry_plus_skew(ep):
    value = wire()
    ok(ep, value)
    ep.real.calls.clear()
    rejected(ep, value, now=NOW + 5, contains="replayed")
    assert ep.seen.prune(NOW + 600 + 59) == 0            # kept: expiry + skew not reached
    rejected(ep, value, now=NOW + 300, contains="replayed")
    assert ep.seen.prune(NOW + 600 + 61) == 1
    rejected(ep, value, now=NOW + 600 + 62, contains="expired")   # pruned: still refused


def test_replay_of_a_later_copy_of_the_same_id_is_kept_longer(ep):
    first = request()
    later = request(action_id=first.action_id, now=NOW + 500)
    ok(ep, wire(first))
    ep.real.calls.clear()
    rejected(ep, wire(later), now=NOW + 501, contains="replayed")
    ep.seen.prune(NOW + 600 + 61)                        # the first copy's expiry has passed ...
    rejected(ep, wire(later), now=NOW + 700, contains="replayed")   # ... the later copy is still refused


# ---------------------------------------------------------------- addressing ---

def test_misaddressed(ep):
    res = rejected(ep, wire(host="DC-01.corp.example.com"), contains="another host")
    assert res.publish is False


# ----------------------------------------------------------------- approvals ---

@pytest.mark.parametrize("state", ["pending", "denied", "expired"])
def test_unapproved(ep, state):
    rejected(ep, wire(approval=state), contains="not approved")


def test_approval_signed_by_an_approver_runs(strict):
    ok(strict, wire(approved(), approver=APPROVER))


def test_destructive_without_approval_signature(strict):
    # what a compromised responder could send: correctly signed, auto-approved or "approved"
    rejected(strict, wire(), contains="no approval signature")
    rejected(strict, wire(approved()), contains="no approval signature")


def test_non_destructive_needs_no_approval(strict):
    ok(strict, wire(type="notify", target={}))


def test_approval_by_an_unknown_key_or_the_responder(strict):
    rejected(strict, wire(approved(), approver=MALLORY), contains="unknown key id")
    rejected(strict, wire(approved(), approver=ed_ring("alice")), contains="bad approval signature")


def test_approval_bound_to_the_request(strict):
    a, b = approved(), approved(type="isolate_host", target={})
    msg_b = sign(b, RESPONDER)
    msg_b["approval"] = sign_approval(a, APPROVER, NOW)          # another request's approval
    rejected(strict, encode(msg_b), contains="another action id")
    # same action id, different content (e.g. the target changed after approval)
    c = approved(action_id=a.action_id, target=dict(TARGET, pid=4))
    msg_c = sign(c, RESPONDER)
    msg_c["approval"] = sign_approval(a, APPROVER, NOW)
    rejected(strict, encode(msg_c), contains="digest")
    # the approval statement tampered with
    msg = sign(a, RESPONDER)
    msg["approval"] = dict(sign_approval(a, APPROVER, NOW), approved_by="root")
    rejected(strict, encode(msg), contains="bad approval signature")


def test_approval_algorithm_swapped(strict):
    a = approved()
    msg = sign(a, RESPONDER)
    msg["approval"] = dict(sign_approval(a, APPROVER, NOW), alg="hmac-sha256")
    rejected(strict, encode(msg), contains="algorithm")


def test_local_policy_of_allowed_types(strict):
    rejected(strict, wire(approved(type="quarantine_registry_value",
                                   target={"key": "HKCU\\Run", "value": "x"}), approver=APPROVER),
             contains="not allowed on this endpoint")


def test_hmac_approver_keys_are_refused():
    r = Keyring()
    r.add(Key("k", "hmac-sha256", secret=bytes(32)))
    with pytest.raises(ValueError, match="Ed25519"):
        EndpointExecutor(HOST, RESPONDER, DryRunExecutor(), SeenStore(), approvers=r)


# ------------------------------------------------------------ size and shape ---

def test_oversized(ep):
    big = request(target=dict(TARGET, image="x" * MAX_ACTION_BYTES))
    rejected(ep, wire(big), contains="exceeds the limit")


def test_deeply_nested(ep):
    rejected(ep, NESTED, contains="exceeds the limit")           # the size cap comes first
    rejected(ep, DEEP, contains="nested deeper")
    rejected(ep, b"[" * 60_000, contains="nested deeper")       # unclosed
    rejected(ep, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, contains="nested deeper")


def test_deeply_nested_100000_with_a_large_size_cap():
    e = EndpointExecutor(HOST, RESPONDER, DryRunExecutor(), SeenStore(), max_bytes=1 << 20)
    for value in (NESTED, b"[" * 100_000, b'{"x":' * 100_000):
        res = e.handle(value, NOW)
        assert res.status == "rejected" and "nested deeper" in res.reason


def test_nested_just_over_the_cap(ep):
    rejected(ep, b'{"request":' * 40 + b"1" + b"}" * 40, contains="nested deeper")


@pytest.mark.parametrize("value, reason", [
    (b"\xff\xfe{", "not JSON"), (b'{"a": NaN}', "not JSON"), (b"1e999", "not JSON"),
    (b'"\\ud800"', "not JSON"), (b"", "empty"), (None, "empty"), (b"  ", "not JSON"),
    (b'{"request": {}, "signature": {}}', "bad signature"), (b"[]", "not an object"),
    ("not bytes at all", "not JSON"), (12345, "not bytes"),
])
def test_garbage(ep, value, reason):
    rejected(ep, value, contains=reason)


# ------------------------------------------------------------------ the loop ---

@dataclass
class Msg:
    value: bytes | None
    key: bytes | None = None
    topic: str = "sigstream.actions"
    partition: int = 0
    offset: int = 0


class FakeSource:
    def __init__(self, batches, stop):
        self.batches, self.stop, self.commits = list(batches), stop, 0

    def poll(self, n, timeout):
        if not self.batches:
            self.stop.set()
            return []
        return self.batches.pop(0)

    def commit(self):
        self.commits += 1


class FakeResults:
    def __init__(self):
        self.sent = []

    def send(self, value, key):
        self.sent.append((orjson.loads(value), key))

    def flush(self):
        pass


def test_run_loop_survives_bad_messages_and_commits_past_them(ep):
    stop = threading.Event()
    good = request()
    source = FakeSource([[Msg(DEEP, offset=0), Msg(b"[" + b"1," * 40_000 + b"1]", offset=1),
                          Msg(NESTED, offset=2), Msg(wire(good), offset=3)]], stop)
    results = FakeResults()
    assert run_loop(source, results, ep, stop, lambda: NOW, poll_timeout_s=0) == 4
    statuses = [(r["status"], r["reason"]) for r, _ in results.sent]
    assert statuses[0][0] == "rejected" and "nested deeper" in statuses[0][1]
    assert statuses[1][0] == "rejected" and "exceeds the limit" in statuses[1][1]
    assert statuses[2][0] == "rejected" and "exceeds the limit" in statuses[2][1]
    assert statuses[3][0] == "ok" and results.sent[3][0]["action_id"] == good.action_id
    assert all(k == HOST.encode() for _, k in results.sent)
    assert source.commits == 1


def test_messages_keyed_to_another_host_are_left_unanswered(ep):
    """A forged message keyed to host B: only B answers it (no answer from every endpoint)."""
    res = ep.handle(b"garbage", NOW, key=b"DC-01.corp.example.com")
    assert res.status == "rejected" and res.publish is False
    res = ep.handle(wire(), NOW, key=b"DC-01.corp.example.com")       # even a valid one: not ours
    assert res.publish is False and ep.real.calls == []
    assert ep.handle(wire(), NOW, key=HOST.lower().encode()).status == "ok"
    stop = threading.Event()
    source = FakeSource([[Msg(b"garbage", key=b"other"), Msg(b"garbage", key=HOST.encode()),
                          Msg(b"garbage")]], stop)
    results = FakeResults()
    run_loop(source, results, ep, stop, lambda: NOW, poll_timeout_s=0)
    assert len(results.sent) == 2                                       # ours and the unkeyed one


def test_run_loop_turns_an_unexpected_error_into_a_rejection(ep, monkeypatch):
    stop = threading.Event()
    monkeypatch.setattr("sigstream.connectors.executor.verify", lambda *a: (_ for _ in ()).throw(MemoryError()))
    source = FakeSource([[Msg(wire())], [Msg(wire(request()))]], stop)
    results = FakeResults()
    run_loop(source, results, ep, stop, lambda: NOW, poll_timeout_s=0)
    assert [r["status"] for r, _ in results.sent] == ["rejected", "rejected"]
    assert "MemoryError" in results.sent[0][0]["reason"] and source.commits == 2


# ------------------------------------------------------- actions execute --input ---

def _keys_on_disk(tmp_path):
    files = generate_keypair(tmp_path / "keys", "r1")
    return files, load_keyring(files["private_keys"])


def test_execute_input_file_nested_oversized_then_valid(tmp_path):
    files, responder = _keys_on_disk(tmp_path)
    import time
    good = request(now=time.time())
    lines = [DEEP, b'{"pad": "' + b"x" * 70_000 + b'"}', wire(good, r=responder), b"", b"{broken"]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    res = CliRunner().invoke(main, ["actions", "execute", "--host", HOST, "--keys", str(files["public_keys"]),
                                    "--seen", str(tmp_path / "seen.sqlite"), "--input", str(tmp_path / "in.jsonl")])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    assert [o["status"] for o in out] == ["rejected", "rejected", "executed", "rejected"]
    assert "nested deeper" in out[0]["reason"] and "exceeds the limit" in out[1]["reason"]
    assert out[2]["action_id"] == good.action_id and out[2]["dry_run"] is False and "would" in out[2]["reason"]
    assert "not JSON" in out[3]["reason"]


def test_execute_input_refuses_hmac_keys_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("SIGSTREAM_ACTION_ALLOW_HMAC", raising=False)
    monkeypatch.delenv("SIGSTREAM_ACTION_KEYS_FILE", raising=False)
    monkeypatch.setenv("SIGSTREAM_ACTION_KEYS", "k1")
    (tmp_path / "in.jsonl").write_text("")
    args = ["actions", "execute", "--host", HOST, "--seen", str(tmp_path / "s"), "--input", str(tmp_path / "in.jsonl")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "not kid:<hex key>" in res.output
    monkeypatch.setenv("SIGSTREAM_ACTION_KEYS", "k1:" + "ab" * 32)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "refused by default" in res.output
    res = CliRunner().invoke(main, args + ["--allow-hmac"])
    assert res.exit_code == 0 and "forge" in res.output          # warned at start


def test_execute_input_with_approvers_and_allowed_types(tmp_path):
    import time
    files, responder = _keys_on_disk(tmp_path)
    afiles = generate_keypair(tmp_path / "keys", "alice", role="approver")
    approver = load_keyring(afiles["private_keys"])
    now = time.time()
    a = request(now=now, approval="approved")
    a.approved_by = "alice"
    msg = sign(a, responder)
    msg["approval"] = sign_approval(a, approver, now)
    lines = [encode(msg), wire(request(now=now), r=responder),
             wire(request(now=now, type="isolate_host", target={}), r=responder)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    res = CliRunner().invoke(main, ["actions", "execute", "--host", HOST, "--keys", str(files["public_keys"]),
                                    "--approvers", str(afiles["public_keys"]), "--allow-type", "kill_process",
                                    "--seen", str(tmp_path / "seen.sqlite"), "--input", str(tmp_path / "in.jsonl")])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    assert [o["status"] for o in out] == ["executed", "rejected", "rejected"]
    assert "no approval signature" in out[1]["reason"] and "not allowed" in out[2]["reason"]
