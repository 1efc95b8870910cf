"""Action requests (responder -> endpoint) and their signatures.

On the actions topic (key = host) each message is

    {"request": {...ActionRequest...}, "signature": {"alg": "hmac-sha256", "kid": "k1", "sig": "<base64>"}}

The signature covers the canonical JSON of `request` (sorted keys, no spaces, UTF-8). Keys
come from a local key file or the environment, never from the message: `kid` only selects
one of the verifier's own keys, and the key's algorithm must equal the message's `alg`.
HMAC-SHA256 (shared key) always; Ed25519 (responder holds the private key, endpoints the
public one) when the `cryptography` package is installed.

Key sources (stream.actions.load_keyring):
  * file: one key per line `kid:alg:secret` (alg hmac-sha256 with secret in hex or
    `base64:...`; ed25519-private / ed25519-public with a PEM file path), or a file holding
    only a secret (kid "default", HMAC);
  * env SIGSTREAM_ACTION_KEYS="kid:hex,kid2:hex" (HMAC), or SIGSTREAM_ACTION_KEY=<hex> (kid "default").
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sigstream.stream.errors import ActionProblem

ACTION_TYPES = ("kill_process", "suspend_process", "quarantine_registry_value", "isolate_host",
                "unisolate_host", "notify")
DESTRUCTIVE = frozenset({"kill_process", "suspend_process", "quarantine_registry_value", "isolate_host"})
APPROVAL_STATES = ("not_required", "pending", "approved", "denied", "expired")
EXECUTABLE_APPROVALS = frozenset({"not_required", "approved"})
HMAC_ALG = "hmac-sha256"
ED25519_ALG = "ed25519"
VERSION = 1


class ActionError(ActionProblem):
    """A request that cannot be trusted or used; the message is the reason recorded."""


@dataclass
class ActionRequest:
    action_id: str             # idempotency key: an endpoint runs one action id at most once
    alert_id: str | None
    host: str
    type: str
    target: dict[str, Any]     # kill/suspend: pid, guid, image; registry: key, value; isolate: {}
    requested_by: str
    created_at: float          # epoch seconds
    expires_at: float
    dry_run: bool = False
    approval: str = "not_required"
    approved_by: str | None = None
    rule_id: str | None = None
    reason: str | None = None
    v: int = VERSION

    @classmethod
    def new(cls, *, host: str, type: str, target: dict, requested_by: str, now: float, ttl_s: float,
            alert_id: str | None = None, dry_run: bool = False, approval: str = "not_required",
            rule_id: str | None = None, reason: str | None = None,
            action_id: str | None = None) -> "ActionRequest":
        return cls(action_id or uuid.uuid4().hex, alert_id, host, type, dict(target), requested_by,
                   now, now + ttl_s, dry_run, approval, None, rule_id, reason)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ActionRequest":
        """Validates shape and values (unknown type, approval, missing fields -> ActionError)."""
        if not isinstance(d, dict):
            raise ActionError("request is not an object")
        if d.get("v") != VERSION:
            raise ActionError(f"unsupported request version {d.get('v')!r}")
        for name in ("action_id", "host", "type", "requested_by"):
            if not isinstance(d.get(name), str) or not d[name]:
                raise ActionError(f"missing or invalid {name!r}")
        if d["type"] not in ACTION_TYPES:
            raise ActionError(f"unknown action type {d['type']!r}")
        if d.get("approval") not in APPROVAL_STATES:
            raise ActionError(f"unknown approval state {d.get('approval')!r}")
        for name in ("created_at", "expires_at"):
            if not isinstance(d.get(name), (int, float)) or isinstance(d.get(name), bool):
                raise ActionError(f"missing or invalid {name!r}")
        if not isinstance(d.get("target"), dict):
            raise ActionError("missing or invalid 'target'")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def destructive(self) -> bool:
        return self.type in DESTRUCTIVE


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ------------------------------------------------------------------ keys ---

@dataclass
class Key:
    kid: str
    alg: str
    secret: bytes | None = None       # HMAC
    private: Any = None               # Ed25519 private key object
    public: Any = None                # Ed25519 public key object


@dataclass
class Keyring:
    keys: dict[str, Key] = field(default_factory=dict)
    signing_kid: str | None = None    # the key `sign` uses (first loaded that can sign)

    def add(self, key: Key) -> None:
        self.keys[key.kid] = key
        if self.signing_kid is None and (key.secret is not None or key.private is not None):
            self.signing_kid = key.kid

    def __bool__(self) -> bool:
        return bool(self.keys)


def _secret(text: str) -> bytes:
    text = text.strip()
    if text.startswith("base64:"):
        return base64.b64decode(text[7:], validate=True)
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode("utf-8")    # a passphrase: accepted, but hex/base64 keys are preferred


def _ed25519(kind: str, pem_path: str) -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise ActionError("Ed25519 keys need the 'cryptography' package") from None
    data = Path(pem_path).read_bytes()
    if kind == "private":
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_pem_public_key(data)


def parse_key_line(line: str, base: Path | None = None) -> Key:
    kid, alg, value = (part.strip() for part in line.split(":", 2))
    if alg == HMAC_ALG:
        secret = _secret(value)
        if len(secret) < 16:
            raise ActionError(f"key {kid!r}: HMAC keys must be at least 16 bytes")
        return Key(kid, HMAC_ALG, secret=secret)
    if alg in ("ed25519-private", "ed25519-public"):
        path = Path(value)
        if base is not None and not path.is_absolute():
            path = base / path
        obj = _ed25519(alg.split("-")[1], str(path))
        if alg == "ed25519-private":
            return Key(kid, ED25519_ALG, private=obj, public=obj.public_key())
        return Key(kid, ED25519_ALG, public=obj)
    raise ActionError(f"key {kid!r}: unknown algorithm {alg!r}")


def load_keyring(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Keyring:
    """Keys from `path` if given, else from the environment; ActionError if there are none."""
    ring = Keyring()
    env = os.environ if env is None else env
    if path:
        p = Path(path)
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if len(lines) == 1 and lines[0].count(":") < 2:
            ring.add(Key("default", HMAC_ALG, secret=_secret(lines[0])))
        for ln in lines if not ring else ():
            ring.add(parse_key_line(ln, p.parent))
    elif env.get("SIGSTREAM_ACTION_KEYS"):
        for item in env["SIGSTREAM_ACTION_KEYS"].split(","):
            kid, _, secret = item.strip().partition(":")
            ring.add(Key(kid, HMAC_ALG, secret=_secret(secret)))
    elif env.get("SIGSTREAM_ACTION_KEY"):
        ring.add(Key("default", HMAC_ALG, secret=_secret(env["SIGSTREAM_ACTION_KEY"])))
    if not ring:
        raise ActionError("no action signing keys: give a key file or set SIGSTREAM_ACTION_KEY(S)")
    return ring


# ------------------------------------------------------ sign and verify ---

def sign(request: ActionRequest, ring: Keyring, kid: str | None = None) -> dict[str, Any]:
    """The wire message for `request`, signed with `kid` (default: the ring's signing key)."""
    key = ring.keys.get(kid or ring.signing_kid or "")
    if key is None:
        raise ActionError("no signing key")
    body = request.to_dict()
    data = canonical(body)
    if key.alg == HMAC_ALG and key.secret is not None:
        sig = hmac.new(key.secret, data, hashlib.sha256).digest()
    elif key.alg == ED25519_ALG and key.private is not None:
        sig = key.private.sign(data)
    else:
        raise ActionError(f"key {key.kid!r} cannot sign")
    return {"request": body, "signature": {"alg": key.alg, "kid": key.kid,
                                           "sig": base64.b64encode(sig).decode()}}


def verify(message: Any, ring: Keyring) -> dict[str, Any]:
    """The signed request dict if the signature is good; ActionError(reason) otherwise.
    Only the shape needed to check the signature is looked at here."""
    if not isinstance(message, dict):
        raise ActionError("message is not an object")
    body, sig = message.get("request"), message.get("signature")
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise ActionError("unsigned message (needs 'request' and 'signature')")
    key = ring.keys.get(str(sig.get("kid")))
    if key is None:
        raise ActionError(f"bad signature: unknown key id {sig.get('kid')!r}")
    if sig.get("alg") != key.alg:
        raise ActionError(f"bad signature: algorithm {sig.get('alg')!r} does not match key {key.kid!r}")
    try:
        raw = base64.b64decode(str(sig.get("sig")), validate=True)
    except (binascii.Error, ValueError):
        raise ActionError("bad signature: not base64") from None
    data = canonical(body)
    if key.alg == HMAC_ALG:
        if key.secret is None or not hmac.compare_digest(raw, hmac.new(key.secret, data, hashlib.sha256).digest()):
            raise ActionError("bad signature")
    else:
        try:
            key.public.verify(raw, data)
        except Exception:  # noqa: BLE001 - cryptography raises InvalidSignature
            raise ActionError("bad signature") from None
    return body


def encode(message: dict[str, Any]) -> bytes:
    return canonical(message)


def decode(value: bytes | None) -> Any:
    if not value:
        raise ActionError("empty message")
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise ActionError(f"not JSON: {e}") from None
