"""Action requests: signing, verification and the endpoint executor's refusals.

Every refusal must be `rejected` with a reason and must run nothing."""
from __future__ import annotations

import base64
import json

import pytest

from sigstream.connectors.executor import DryRunExecutor, EndpointExecutor, Outcome, SeenStore
from sigstream.connectors.executor_windows import guid_start_time
from sigstream.stream.actions import (ActionError, ActionRequest, Key, Keyring, canonical, decode, encode,
                            load_keyring, sign, verify)

HOST = "WKS-FIN-042.corp.example.com"
NOW = 1_800_000_000.0
KEY = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
OTHER_KEY = bytes(32)
TARGET = {"pid": 4242, "guid": "{5770385f-c22a-6925-0000-001000a1b2c3}",
          "image": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"}


def ring(secret=KEY, kid="k1"):
    r = Keyring()
    r.add(Key(kid, "hmac-sha256", secret=secret))
    return r


def request(**kw):
    args = dict(host=HOST, type="kill_process", target=TARGET, requested_by="test", now=NOW, ttl_s=600,
                alert_id="a" * 32)
    args.update(kw)
    return ActionRequest.new(**args)


def wire(req=None, r=None, **kw):
    return encode(sign(req or request(**kw), r or ring()))


class Recording(DryRunExecutor):
    name = "recording-real"


@pytest.fixture
def endpoint(tmp_path):
    real = Recording()
    dry = DryRunExecutor()
    ep = EndpointExecutor(HOST, ring(), real, SeenStore(str(tmp_path / "seen.sqlite")), dry_executor=dry)
    return ep, real, dry


def rejected(ep_tuple, value, now=NOW, contains=""):
    ep, real, dry = ep_tuple
    res = ep.handle(value, now)
    assert res.status == "rejected", res
    assert contains.lower() in res.reason.lower(), res.reason
    assert real.calls == [] and dry.calls == []      # nothing executed
    return res


# ------------------------------------------------------------- happy path ---

def test_valid_request_runs_once(endpoint):
    ep, real, dry = endpoint
    res = ep.handle(wire(), NOW + 1)
    assert res.status == "ok" and res.executor == "recording-real" and "terminate pid 4242" in res.reason
    assert real.calls == [("kill_process", TARGET)]
    assert res.to_dict()["action_id"] and "publish" not in res.to_dict()


def test_dry_run_request_uses_the_dry_run_executor(endpoint):
    ep, real, dry = endpoint
    res = ep.handle(wire(dry_run=True), NOW)
    assert res.status == "ok" and res.dry_run and res.executor == "dry-run"
    assert real.calls == [] and len(dry.calls) == 1


def test_failed_execution_is_reported(endpoint):
    ep, real, dry = endpoint

    def boom(target):
        raise Outcome("pid 4242 was reused: refusing")
    real.kill_process = boom
    res = ep.handle(wire(), NOW)
    assert res.status == "failed" and "reused" in res.reason


# --------------------------------------------------------------- security ---

def test_forged_signature(endpoint):
    msg = sign(request(), ring())
    msg["signature"]["sig"] = base64.b64encode(b"\x00" * 32).decode()
    rejected(endpoint, encode(msg), contains="bad signature")


def test_tampered_request_after_signing(endpoint):
    msg = sign(request(), ring())
    msg["request"]["target"]["pid"] = 4          # the System process
    rejected(endpoint, encode(msg), contains="bad signature")


def test_wrong_key(endpoint):
    rejected(endpoint, wire(r=ring(OTHER_KEY)), contains="bad signature")


def test_unknown_key_id(endpoint):
    rejected(endpoint, wire(r=ring(KEY, kid="attacker")), contains="unknown key id")


def test_algorithm_must_match_the_local_key(endpoint):
    msg = sign(request(), ring())
    msg["signature"]["alg"] = "none"
    rejected(endpoint, encode(msg), contains="algorithm")


def test_key_is_never_taken_from_the_message(endpoint):
    msg = sign(request(), ring(OTHER_KEY))
    msg["signature"]["key"] = OTHER_KEY.hex()    # ignored
    rejected(endpoint, encode(msg), contains="bad signature")


def test_unsigned_and_garbage(endpoint):
    rejected(endpoint, canonical({"request": request().to_dict()}), contains="unsigned")
    rejected(endpoint, b"not json", contains="not JSON")
    rejected(endpoint, None, contains="empty")
    rejected(endpoint, b"[1,2]", contains="not an object")


def test_expired(endpoint):
    res = rejected(endpoint, wire(), now=NOW + 601, contains="expired")
    assert res.action_id is not None and res.type == "kill_process"


def test_created_in_the_future(endpoint):
    rejected(endpoint, wire(now=NOW + 3600), now=NOW, contains="future")


def test_replayed(endpoint):
    ep, real, dry = endpoint
    value = wire()
    assert ep.handle(value, NOW).status == "ok"
    real.calls.clear()
    rejected(endpoint, value, now=NOW + 5, contains="replayed")
    # same action id, re-signed with a later expiry: still a replay
    req = request()
    req2 = request(action_id=req.action_id, now=NOW + 10)
    assert ep.handle(wire(req), NOW).status == "ok"
    real.calls.clear()
    rejected(endpoint, wire(req2), now=NOW + 11, contains="replayed")


def test_replay_protection_survives_restart(tmp_path):
    path = str(tmp_path / "seen.sqlite")
    value = wire()
    first = EndpointExecutor(HOST, ring(), DryRunExecutor(), SeenStore(path))
    assert first.handle(value, NOW).status == "ok"
    first.seen.close()
    again = DryRunExecutor()
    second = EndpointExecutor(HOST, ring(), again, SeenStore(path))
    res = second.handle(value, NOW + 1)
    assert res.status == "rejected" and "replayed" in res.reason and again.calls == []


def test_seen_ids_are_pruned_only_after_expiry(tmp_path):
    seen = SeenStore(str(tmp_path / "s.sqlite"))
    assert seen.claim("x", NOW + 600)
    assert seen.prune(NOW + 600) == 0          # still within expiry + skew
    assert "x" in seen
    assert seen.prune(NOW + 600 + 301) == 1
    assert "x" not in seen


def test_action_for_another_host(endpoint):
    res = rejected(endpoint, wire(host="DC-01.corp.example.com"), contains="another host")
    assert res.publish is False


def test_host_comparison_is_case_insensitive(endpoint):
    ep, real, _ = endpoint
    assert ep.handle(wire(host=HOST.lower()), NOW).status == "ok"


def test_unknown_action_type(endpoint):
    req = request()
    body = req.to_dict()
    body["type"] = "format_disk"
    r = ring()
    sig = sign(req, r)["signature"]           # a valid signature of a *different* body ...
    rejected(endpoint, encode({"request": body, "signature": sig}), contains="bad signature")
    # ... and a correctly signed unknown type (a compromised or newer responder)
    import hashlib
    import hmac
    good = base64.b64encode(hmac.new(KEY, canonical(body), hashlib.sha256).digest()).decode()
    rejected(endpoint, encode({"request": body, "signature": {"alg": "hmac-sha256", "kid": "k1", "sig": good}}),
             contains="unknown action type")


@pytest.mark.parametrize("state", ["pending", "denied", "expired"])
def test_unapproved_requests_are_not_executed(endpoint, state):
    rejected(endpoint, wire(approval=state), contains="not approved")


def test_approved_request_runs(endpoint):
    ep, real, _ = endpoint
    req = request(approval="approved")
    req.approved_by = "alice"
    assert ep.handle(wire(req), NOW).status == "ok"


# ----------------------------------------------------------------- model ---

def test_request_roundtrip_and_validation():
    req = request()
    assert ActionRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req
    assert req.destructive and not request(type="notify").destructive
    for broken in ({**req.to_dict(), "v": 2}, {**req.to_dict(), "host": ""},
                   {**req.to_dict(), "expires_at": "soon"}, {**req.to_dict(), "target": []},
                   {**req.to_dict(), "approval": "maybe"}):
        with pytest.raises(ActionError):
            ActionRequest.from_dict(broken)


def test_canonical_signature_is_key_order_independent():
    req = request()
    msg = sign(req, ring())
    shuffled = {"signature": msg["signature"], "request": dict(reversed(list(msg["request"].items())))}
    assert verify(decode(json.dumps(shuffled).encode()), ring()) == req.to_dict()


# ------------------------------------------------------------------ keys ---

def _chmod600(*paths):
    for p in paths:
        p.chmod(0o600)


def test_keyring_from_file_and_env(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nk1:hmac-sha256:" + KEY.hex() + "\nk2:hmac-sha256:base64:" +
                 base64.b64encode(OTHER_KEY).decode() + "\n")
    _chmod600(f)
    r = load_keyring(f, allow_hmac=True)
    assert r.signing_kid == "k1" and r.keys["k2"].secret == OTHER_KEY
    assert r.warnings and "forge" in r.warnings[0]                # HMAC: warned at start
    single = tmp_path / "single"
    single.write_text(KEY.hex() + "\n")
    _chmod600(single)
    assert load_keyring(single, allow_hmac=True).keys["default"].secret == KEY
    assert load_keyring(None, env={"SIGSTREAM_ACTION_KEY": KEY.hex(),
                                   "SIGSTREAM_ACTION_ALLOW_HMAC": "1"}).keys["default"].secret == KEY
    assert set(load_keyring(None, env={"SIGSTREAM_ACTION_KEYS": f"a:{KEY.hex()},b:{OTHER_KEY.hex()}"},
                            allow_hmac=True).keys) == {"a", "b"}
    with pytest.raises(ActionError, match="no action signing keys"):
        load_keyring(None, env={})


def test_hmac_is_refused_unless_explicitly_allowed(tmp_path):
    with pytest.raises(ActionError, match="HMAC .*refused by default.*keygen"):
        load_keyring(None, env={"SIGSTREAM_ACTION_KEY": KEY.hex()})
    f = tmp_path / "keys"
    f.write_text("k1:hmac-sha256:" + KEY.hex() + "\n")
    _chmod600(f)
    with pytest.raises(ActionError, match="--allow-hmac"):
        load_keyring(f, env={})


@pytest.mark.parametrize("env, msg", [
    ({"SIGSTREAM_ACTION_KEYS": "k1"}, "not kid:<hex key>"),
    ({"SIGSTREAM_ACTION_KEYS": "k1:"}, "at least 32 bytes"),
    ({"SIGSTREAM_ACTION_KEYS": "k1:abcd"}, "at least 32 bytes"),
    ({"SIGSTREAM_ACTION_KEYS": "k1:" + "ab" * 31}, "at least 32 bytes"),
    ({"SIGSTREAM_ACTION_KEYS": "k1:correct horse battery staple and more words"}, "hex or base64"),
    ({"SIGSTREAM_ACTION_KEY": "secret"}, "hex or base64"),
    ({"SIGSTREAM_ACTION_KEY": "00" * 16}, "at least 32 bytes"),
    ({"SIGSTREAM_ACTION_KEYS": ":" + KEY.hex()}, "not kid"),
])
def test_weak_or_malformed_keys_from_the_environment_are_refused(env, msg):
    with pytest.raises(ActionError, match=msg):
        load_keyring(None, env=env, allow_hmac=True)


@pytest.mark.parametrize("content, msg", [
    ("k:hmac-sha256:abcd\n", "at least 32 bytes"),
    ("k:hmac-sha256:base64:" + base64.b64encode(b"x" * 31).decode() + "\n", "at least 32 bytes"),
    ("00112233\n", "at least 32 bytes"),
    ("a passphrase that is long enough to be 32 bytes\n", "hex or base64"),
    ("k:rsa:whatever\n", "unknown algorithm"),
    ("k:ed25519-public:missing.pem\n", "missing.pem"),
])
def test_weak_or_malformed_keys_from_files_are_refused(tmp_path, content, msg):
    f = tmp_path / "keys"
    f.write_text(content)
    _chmod600(f)
    with pytest.raises(ActionError, match=msg):
        load_keyring(f, allow_hmac=True)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_secret_key_files_readable_by_others_are_refused(tmp_path, mode):
    f = tmp_path / "keys"
    f.write_text("k1:hmac-sha256:" + KEY.hex() + "\n")
    f.chmod(mode)
    with pytest.raises(ActionError, match=f"chmod 600 {f}"):
        load_keyring(f, allow_hmac=True)
    f.chmod(0o600)
    assert load_keyring(f, allow_hmac=True).signing_kid == "k1"


def _pair(tmp_path, kid="ed"):
    from sigstream.stream.actions import generate_keypair
    files = generate_keypair(tmp_path, kid)
    return files, load_keyring(files["private_keys"]), load_keyring(files["public_keys"])


def test_keygen_writes_a_private_key_0600_and_a_public_key(tmp_path):
    import stat
    files, responder, endpoint_ring = _pair(tmp_path)
    assert stat.S_IMODE(files["private"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["private_keys"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["public"].stat().st_mode) & 0o022 == 0
    assert responder.signing_kid == "ed" and not responder.has_hmac and not responder.warnings
    assert endpoint_ring.signing_kid is None                      # endpoints cannot sign
    with pytest.raises(ActionError, match="cannot sign|no signing key"):
        sign(request(), endpoint_ring)
    assert verify(sign(request(), responder), endpoint_ring)["host"] == HOST
    from sigstream.stream.actions import generate_keypair
    with pytest.raises(ActionError, match="overwrite"):
        generate_keypair(tmp_path, "ed")


def test_private_pem_readable_by_others_is_refused_public_writable_too(tmp_path):
    files, _, _ = _pair(tmp_path)
    files["private"].chmod(0o644)
    with pytest.raises(ActionError, match="chmod 600"):
        load_keyring(files["private_keys"])
    files["public"].chmod(0o666)
    with pytest.raises(ActionError, match="writable by group or others"):
        load_keyring(files["public_keys"])


def test_keygen_cli(tmp_path):
    from click.testing import CliRunner
    from sigstream.cli import main
    res = CliRunner().invoke(main, ["actions", "keygen", "--out", str(tmp_path / "k"), "--kid", "r1"])
    assert res.exit_code == 0, res.output
    assert load_keyring(tmp_path / "k" / "endpoint.keys").keys["r1"].alg == "ed25519"
    res = CliRunner().invoke(main, ["actions", "keygen", "--out", str(tmp_path / "k"), "--kid", "r1"])
    assert res.exit_code != 0 and "overwrite" in res.output


def test_ed25519_sign_verify_and_algorithm_confusion(tmp_path):
    _, responder, endpoint_ring = _pair(tmp_path)
    msg = sign(request(), responder)
    assert verify(msg, endpoint_ring)["host"] == HOST
    msg["request"]["host"] = "other"
    with pytest.raises(ActionError, match="bad signature"):
        verify(msg, endpoint_ring)
    # an HMAC message using the Ed25519 key id is refused (no algorithm confusion)
    forged = sign(request(), ring(KEY, kid="ed"))
    with pytest.raises(ActionError, match="algorithm"):
        verify(forged, endpoint_ring)
    # an Ed25519 key's *public* PEM bytes used as an HMAC secret: still the wrong algorithm
    pub_pem = (tmp_path / "ed.ed25519.pub").read_bytes()
    forged = sign(request(), ring(pub_pem, kid="ed"))
    with pytest.raises(ActionError, match="algorithm"):
        verify(forged, endpoint_ring)


def test_endpoint_drops_private_keys(tmp_path):
    _, responder, _ = _pair(tmp_path)
    ep = EndpointExecutor(HOST, responder, DryRunExecutor(), SeenStore())
    assert ep.keyring.signing_kid is None and ep.keyring.keys["ed"].private is None


def test_sysmon_guid_start_time():
    assert guid_start_time("{5770385f-c22a-6925-0000-001000a1b2c3}") == 0x6925C22A
    assert guid_start_time("not-a-guid") is None
