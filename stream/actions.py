"""Action requests (responder -> endpoint) and their signatures.

Why one module past ~500 lines: the request format, its canonical encoding, the capped
decoder and signature verification are one security boundary, reviewed together.

On the actions topic (key = host) each message is

    {"request": {...ActionRequest...}, "signature": {"alg": "ed25519", "kid": "k1", "sig": "<base64>"}}

The signature covers the canonical JSON of `request` (sorted keys, no spaces, UTF-8). Keys
come from a local key file or the environment, never from the message: `kid` only selects
one of the verifier's own keys, and the key's algorithm must equal the message's `alg`.

Ed25519 is the default (the responder holds the private key, endpoints only the public one,
so a compromised endpoint cannot forge requests); `sigstream actions keygen` writes a pair.
HMAC-SHA256 (one shared key, so every endpoint could sign) is refused unless explicitly
allowed (`allow_hmac=True`, `--allow-hmac`, or SIGSTREAM_ACTION_ALLOW_HMAC=1), and then
warned about.

Key sources (stream.actions.load_keyring):
  * file: one key per line `kid:alg:value` (ed25519-private / ed25519-public with a PEM file
    path, relative to the key file; hmac-sha256 with a secret in hex or `base64:...`), or a
    file holding only a hex secret (kid "default", HMAC);
  * env SIGSTREAM_ACTION_KEYS="kid:hex,kid2:hex" (HMAC) or "kid:ed25519-public:/path.pem",
    or SIGSTREAM_ACTION_KEY=<hex> (kid "default", HMAC).
HMAC secrets must be at least 32 bytes; files holding a secret (HMAC key files, private PEM
files) must not be accessible by group or others (like ssh: `chmod 600 FILE`); files holding
public keys must not be writable by group or others.

Decoding (`decode`, `decode_result`, `loads_bounded`) never raises anything but ActionError
(or the error class passed in): the size is checked before parsing, nesting is capped, and
every parser error becomes a rejection with its reason.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import stat
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sigstream.stream.errors import ActionProblem

log = logging.getLogger(__name__)

ACTION_TYPES = ("kill_process", "suspend_process", "quarantine_registry_value", "isolate_host",
                "unisolate_host", "notify")
DESTRUCTIVE = frozenset({"kill_process", "suspend_process", "quarantine_registry_value", "isolate_host"})
APPROVAL_STATES = ("not_required", "pending", "approved", "denied", "expired")
EXECUTABLE_APPROVALS = frozenset({"not_required", "approved"})
RESULT_STATUSES = ("ok", "failed", "rejected")
HMAC_ALG = "hmac-sha256"
ED25519_ALG = "ed25519"
VERSION = 1

MAX_ACTION_BYTES = 64 * 1024        # action messages larger than this are rejected unparsed
MAX_RESULT_BYTES = 64 * 1024        # action-result messages likewise
MAX_DEPTH = 32                      # JSON nesting deeper than this is rejected
MAX_LIFETIME_S = 3600.0             # requests valid longer than this (expires - created) are refused
FUTURE_SKEW_S = 60.0                # requests created more than this in the future are refused
MIN_HMAC_BYTES = 32
MAX_ID_CHARS = 128                  # action_id / alert_id / kid
ALLOW_HMAC_ENV = "SIGSTREAM_ACTION_ALLOW_HMAC"
HMAC_WARNING = ("HMAC action keys in use: every holder of the shared key (every endpoint) can "
                "forge action requests; prefer Ed25519 (`sigstream actions keygen`)")


class ActionError(ActionProblem):
    """A request that cannot be trusted or used; the message is the reason recorded."""


# ---------------------------------------------------------------- decoding ---

def _depth_exceeds(doc: Any, limit: int) -> bool:
    """True if `doc` nests containers deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, dict):
            children: Any = obj.values()
        elif isinstance(obj, list):
            children = obj
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def loads_bounded(value: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH,
                  error: type[Exception] = ActionError, what: str = "message") -> Any:
    """bytes -> JSON value, or `error(reason)`: size checked BEFORE parsing, nesting capped,
    every parser failure (invalid UTF-8, bad JSON, absurd input) turned into `error`."""
    if value is None:
        raise error(f"empty {what} (tombstone)")
    if isinstance(value, str):
        try:
            value = value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{what} is not valid UTF-8") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise error(f"{what} is a {type(value).__name__}, not bytes")
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if size == 0:
        raise error(f"empty {what}")
    if size > max_bytes:
        raise error(f"{what} of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        text = str(e)
        if "depth" in text or "recursion" in text:
            raise error(f"{what} nested deeper than {max_depth} levels") from None
        raise error(f"not JSON (or not UTF-8): {text[:200]}") from None
    except (RecursionError, MemoryError, ValueError, TypeError, UnicodeError, OverflowError) as e:
        raise error(f"undecodable {what}: {type(e).__name__}") from None
    if _depth_exceeds(doc, max_depth):
        raise error(f"{what} nested deeper than {max_depth} levels")
    return doc


def decode(value: Any, max_bytes: int = MAX_ACTION_BYTES) -> Any:
    """An actions-topic message -> its JSON value; ActionError(reason) for anything else."""
    return loads_bounded(value, max_bytes=max_bytes, what="message")


def decode_result(value: Any, max_bytes: int = MAX_RESULT_BYTES) -> dict[str, Any]:
    """An action-results message (connectors.executor.Result) -> dict; ActionError otherwise.
    Checked: an object with status ok|failed|rejected, string host, type and reason (or null)."""
    doc = loads_bounded(value, max_bytes=max_bytes, what="action result")
    if not isinstance(doc, dict):
        raise ActionError(f"action result is a JSON {type(doc).__name__}, not an object")
    if doc.get("status") not in RESULT_STATUSES:
        raise ActionError(f"action result has unknown status {str(doc.get('status'))[:40]!r}")
    for name in ("action_id", "alert_id", "host", "type", "reason", "executor"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise ActionError(f"action result field {name!r} is not a string")
    if not isinstance(doc.get("dry_run", False), bool):
        raise ActionError("action result field 'dry_run' is not a boolean")
    at = doc.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
        raise ActionError("action result field 'at' is not a number")
    return doc


def encode(message: dict[str, Any]) -> bytes:
    return canonical(message)


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ------------------------------------------------------------------ model ---

def _opt_str(d: dict, name: str, limit: int | None = None) -> None:
    v = d.get(name)
    if v is not None and not isinstance(v, str):
        raise ActionError(f"invalid {name!r}: not a string")
    if v is not None and limit is not None and len(v) > limit:
        raise ActionError(f"invalid {name!r}: longer than {limit} characters")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_target(action_type: str, target: Any) -> None:
    """The target shape each executor relies on; ActionError otherwise."""
    if not isinstance(target, dict):
        raise ActionError("missing or invalid 'target'")
    if action_type in ("kill_process", "suspend_process"):
        pid = target.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
            raise ActionError("invalid target: 'pid' must be a non-negative integer")
        for name in ("guid", "image"):
            if not isinstance(target.get(name), str) or not target[name]:
                raise ActionError(f"invalid target: {name!r} must be a non-empty string")
    elif action_type == "quarantine_registry_value":
        for name in ("key", "value"):
            if not isinstance(target.get(name), str):
                raise ActionError(f"invalid target: {name!r} must be a string")


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
        """Validates shape, types and values (unknown type, approval, missing or mistyped
        fields -> ActionError)."""
        if not isinstance(d, dict):
            raise ActionError("request is not an object")
        if d.get("v") != VERSION or isinstance(d.get("v"), bool):
            raise ActionError(f"unsupported request version {str(d.get('v'))[:40]!r}")
        for name in ("action_id", "host", "type", "requested_by"):
            if not isinstance(d.get(name), str) or not d[name]:
                raise ActionError(f"missing or invalid {name!r}")
        _opt_str(d, "action_id", MAX_ID_CHARS)
        _opt_str(d, "host", 255)
        if d["type"] not in ACTION_TYPES:
            raise ActionError(f"unknown action type {d['type'][:60]!r}")
        if d.get("approval") not in APPROVAL_STATES:
            raise ActionError(f"unknown approval state {str(d.get('approval'))[:40]!r}")
        for name in ("created_at", "expires_at"):
            if not _is_number(d.get(name)):
                raise ActionError(f"missing or invalid {name!r}")
        for name in ("alert_id", "approved_by", "rule_id", "reason"):
            _opt_str(d, name)
        if not isinstance(d.get("dry_run", False), bool):
            raise ActionError("invalid 'dry_run': not a boolean")
        check_target(d["type"], d.get("target"))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def destructive(self) -> bool:
        return self.type in DESTRUCTIVE


def check_time(req: ActionRequest, now: float, *, max_lifetime_s: float = MAX_LIFETIME_S,
               future_skew_s: float = FUTURE_SKEW_S) -> None:
    """ActionError unless `req` is valid at `now`: not expired, not created more than
    `future_skew_s` in the future, and not valid for longer than `max_lifetime_s`."""
    lifetime = req.expires_at - req.created_at
    if lifetime <= 0:
        raise ActionError("invalid validity window: expires_at is not after created_at")
    if lifetime > max_lifetime_s:
        raise ActionError(f"valid too long: {lifetime:.0f}s, the maximum lifetime is {max_lifetime_s:.0f}s")
    if req.created_at > now + future_skew_s:
        raise ActionError(f"created {req.created_at - now:.0f}s in the future "
                          f"(more than the allowed skew of {future_skew_s:.0f}s: clock skew or forged time)")
    if req.expires_at <= now:
        raise ActionError(f"expired {now - req.expires_at:.0f}s ago")


# ------------------------------------------------------------------ keys ---

@dataclass
class Key:
    kid: str
    alg: str
    secret: bytes | None = None       # HMAC
    private: Any = None               # Ed25519 private key object
    public: Any = None                # Ed25519 public key object

    @property
    def can_sign(self) -> bool:
        return self.secret is not None or self.private is not None


@dataclass
class Keyring:
    keys: dict[str, Key] = field(default_factory=dict)
    signing_kid: str | None = None    # the key `sign` uses (first loaded that can sign)
    warnings: list[str] = field(default_factory=list)   # shown at start (e.g. HMAC in use)

    def add(self, key: Key) -> None:
        self.keys[key.kid] = key
        if self.signing_kid is None and key.can_sign:
            self.signing_kid = key.kid

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def has_hmac(self) -> bool:
        return any(k.alg == HMAC_ALG for k in self.keys.values())

    def verify_only(self) -> "Keyring":
        """The same ring without Ed25519 private keys (what an endpoint needs). HMAC keys stay:
        a shared key verifies and signs alike, which is why HMAC is opt-in."""
        ring = Keyring(warnings=list(self.warnings))
        for k in self.keys.values():
            ring.add(Key(k.kid, k.alg, secret=k.secret, public=k.public) if k.alg == ED25519_ALG else k)
        return ring


def _env_flag(env: Any, name: str) -> bool:
    return str(env.get(name, "")).strip().lower() in ("1", "true", "yes", "on")


def check_file_mode(path: str | os.PathLike, secret: bool) -> None:
    """Like ssh: a file holding a secret must not be accessible by group or others, a file
    holding a public key must not be writable by them. POSIX only (no-op on Windows)."""
    if os.name == "nt":  # pragma: no cover - NTFS ACLs are not POSIX modes
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise ActionError(f"key file {path}: {e.strerror or e}") from None
    if secret and mode & 0o077:
        raise ActionError(f"key file {path} is accessible by group or others (mode {mode:04o}) and holds "
                          f"a secret: refusing it; fix it with: chmod 600 {path}")
    if not secret and mode & 0o022:
        raise ActionError(f"key file {path} is writable by group or others (mode {mode:04o}): refusing it; "
                          f"fix it with: chmod 644 {path} (or chmod 600)")


def _secret(text: str, kid: str) -> bytes:
    text = text.strip()
    try:
        if text.startswith("base64:"):
            secret = base64.b64decode(text[7:], validate=True)
        else:
            secret = bytes.fromhex(text)
    except (ValueError, binascii.Error):
        raise ActionError(f"key {kid!r}: the HMAC secret must be hex or base64:... "
                          "(e.g. `openssl rand -hex 32`); passphrases are not accepted") from None
    if len(secret) < MIN_HMAC_BYTES:
        raise ActionError(f"key {kid!r}: HMAC keys must be at least {MIN_HMAC_BYTES} bytes "
                          f"(this one has {len(secret)}); generate one with `openssl rand -hex 32`")
    return secret


def _check_kid(kid: str) -> str:
    if not kid or len(kid) > MAX_ID_CHARS or any(c in kid for c in ":, \t"):
        raise ActionError(f"invalid key id {kid[:40]!r}")
    return kid


def _ed25519(kind: str, pem_path: Path, kid: str) -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise ActionError("Ed25519 keys need the 'cryptography' package") from None
    check_file_mode(pem_path, secret=kind == "private")
    try:
        data = pem_path.read_bytes()
        if kind == "private":
            obj = serialization.load_pem_private_key(data, password=None)
            wanted: Any = ed25519.Ed25519PrivateKey
        else:
            obj = serialization.load_pem_public_key(data)
            wanted = ed25519.Ed25519PublicKey
    except OSError as e:
        raise ActionError(f"key {kid!r}: cannot read {pem_path}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise ActionError(f"key {kid!r}: {pem_path} is not an unencrypted PEM {kind} key: {e}") from None
    if not isinstance(obj, wanted):
        raise ActionError(f"key {kid!r}: {pem_path} is not an Ed25519 {kind} key")
    return obj


def parse_key_line(line: str, base: Path | None = None) -> Key:
    parts = [part.strip() for part in line.split(":", 2)]
    if len(parts) != 3:
        raise ActionError(f"key line {line[:40]!r}: expected kid:alg:value")
    kid, alg, value = parts
    _check_kid(kid)
    if alg == HMAC_ALG:
        return Key(kid, HMAC_ALG, secret=_secret(value, kid))
    if alg in ("ed25519-private", "ed25519-public"):
        path = Path(value)
        if base is not None and not path.is_absolute():
            path = base / path
        obj = _ed25519(alg.split("-")[1], path, kid)
        if alg == "ed25519-private":
            return Key(kid, ED25519_ALG, private=obj, public=obj.public_key())
        return Key(kid, ED25519_ALG, public=obj)
    raise ActionError(f"key {kid!r}: unknown algorithm {alg!r} (ed25519-private, ed25519-public, hmac-sha256)")


def load_keyring(path: str | os.PathLike | None = None, env: Any = None, *,
                 allow_hmac: bool | None = None) -> Keyring:
    """Keys from `path` if given, else from the environment; ActionError (with the reason) if
    there are none, one is weak or malformed, a key file's mode is too open, or HMAC keys are
    found while HMAC is not allowed (`allow_hmac`, default: $SIGSTREAM_ACTION_ALLOW_HMAC)."""
    ring = Keyring()
    env = os.environ if env is None else env
    if allow_hmac is None:
        allow_hmac = _env_flag(env, ALLOW_HMAC_ENV)
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ActionError(f"key file {p}: {getattr(e, 'strerror', None) or e}") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if len(lines) == 1 and lines[0].count(":") < 2:
            check_file_mode(p, secret=True)
            ring.add(Key("default", HMAC_ALG, secret=_secret(lines[0], "default")))
        else:
            keys = [parse_key_line(ln, p.parent) for ln in lines]
            check_file_mode(p, secret=any(k.alg == HMAC_ALG for k in keys))
            for k in keys:
                ring.add(k)
    elif env.get("SIGSTREAM_ACTION_KEYS"):
        for item in str(env["SIGSTREAM_ACTION_KEYS"]).split(","):
            item = item.strip()
            if not item:
                continue
            if item.count(":") >= 2:
                ring.add(parse_key_line(item))
                continue
            kid, sep, secret = item.partition(":")
            if not sep or not kid.strip():
                raise ActionError(f"SIGSTREAM_ACTION_KEYS: item {item[:20]!r} is not kid:<hex key> "
                                  "(or kid:ed25519-public:/path/key.pem)")
            ring.add(Key(_check_kid(kid.strip()), HMAC_ALG, secret=_secret(secret, kid.strip())))
    elif env.get("SIGSTREAM_ACTION_KEY"):
        ring.add(Key("default", HMAC_ALG, secret=_secret(str(env["SIGSTREAM_ACTION_KEY"]), "default")))
    if not ring:
        raise ActionError("no action signing keys: give a key file (`sigstream actions keygen --out DIR` "
                          "writes one) or set SIGSTREAM_ACTION_KEYS")
    if ring.has_hmac:
        if not allow_hmac:
            raise ActionError("HMAC action keys are refused by default (a shared key lets every endpoint "
                              "forge requests): use Ed25519 keys (`sigstream actions keygen --out DIR`), or "
                              f"opt in explicitly with --allow-hmac / {ALLOW_HMAC_ENV}=1")
        ring.warnings.append(HMAC_WARNING)
        log.warning(HMAC_WARNING)
    return ring


def generate_keypair(out_dir: str | os.PathLike, kid: str = "k1", role: str = "responder") -> dict[str, Path]:
    """Write an Ed25519 pair into `out_dir`: `<kid>.ed25519` (private PEM, 0600) and
    `<kid>.ed25519.pub` (public PEM, 0644), plus the key files naming them: for the responder
    `responder.keys` (0600) and `endpoint.keys`; for an approver `approver-<kid>.keys` (0600)
    and `approvers.keys` (the endpoints' approvers ring). Nothing is ever overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    _check_kid(kid)
    if role not in ("responder", "approver"):
        raise ActionError(f"unknown key role {role!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {"private": out / f"{kid}.ed25519", "public": out / f"{kid}.ed25519.pub",
             "private_keys": out / ("responder.keys" if role == "responder" else f"approver-{kid}.keys"),
             "public_keys": out / ("endpoint.keys" if role == "responder" else "approvers.keys")}
    existing = [str(p) for p in names.values() if p.exists()]
    if existing:
        raise ActionError(f"refusing to overwrite {', '.join(existing)}")
    priv = ed25519.Ed25519PrivateKey.generate()
    files = {
        "private": (priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600),
        "public": (priv.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo), 0o644),
        "private_keys": (f"# {role} only: signs\n{kid}:ed25519-private:{names['private'].name}\n".encode(), 0o600),
        "public_keys": (f"# endpoints: verify only\n{kid}:ed25519-public:{names['public'].name}\n".encode(), 0o644),
    }
    for what, (data, mode) in files.items():
        fd = os.open(names[what], os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return names


# ------------------------------------------------------ sign and verify ---

def sign(request: ActionRequest, ring: Keyring, kid: str | None = None) -> dict[str, Any]:
    """The wire message for `request`, signed with `kid` (default: the ring's signing key)."""
    key = ring.keys.get(kid or ring.signing_kid or "")
    if key is None:
        raise ActionError("no signing key (endpoints hold only public keys and cannot sign)")
    body = request.to_dict()
    return {"request": body, "signature": {"alg": key.alg, "kid": key.kid, "sig": _sign_bytes(key, canonical(body))}}


def _sign_bytes(key: Key, data: bytes) -> str:
    if key.alg == HMAC_ALG and key.secret is not None:
        sig = hmac.new(key.secret, data, hashlib.sha256).digest()
    elif key.alg == ED25519_ALG and key.private is not None:
        sig = key.private.sign(data)
    else:
        raise ActionError(f"key {key.kid!r} cannot sign")
    return base64.b64encode(sig).decode()


def _check_sig(sig: Any, ring: Keyring, data_of: Any, what: str = "signature") -> Key:
    """Check `sig` ({alg, kid, sig}) over data_of() with one of `ring`'s keys; the key or ActionError."""
    kid, alg, value = sig.get("kid"), sig.get("alg"), sig.get("sig")
    if not isinstance(kid, str) or not isinstance(alg, str) or not isinstance(value, str):
        raise ActionError(f"bad {what}: kid, alg and sig must be strings")
    key = ring.keys.get(kid)
    if key is None:
        raise ActionError(f"bad {what}: unknown key id {kid[:40]!r}")
    if alg != key.alg:
        raise ActionError(f"bad {what}: algorithm {alg[:40]!r} does not match key {key.kid!r} ({key.alg})")
    if len(value) > 256:
        raise ActionError(f"bad {what}: too long")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ActionError(f"bad {what}: not base64") from None
    try:
        data = data_of()
    except (ValueError, TypeError, RecursionError, UnicodeError) as e:
        raise ActionError(f"bad request: cannot be canonicalised ({type(e).__name__})") from None
    if key.alg == HMAC_ALG:
        if key.secret is None or not hmac.compare_digest(raw, hmac.new(key.secret, data, hashlib.sha256).digest()):
            raise ActionError(f"bad {what}")
    else:
        if key.public is None or len(raw) != 64:
            raise ActionError(f"bad {what}")
        try:
            key.public.verify(raw, data)
        except Exception:  # noqa: BLE001 - cryptography raises InvalidSignature
            raise ActionError(f"bad {what}") from None
    return key


def verify(message: Any, ring: Keyring) -> dict[str, Any]:
    """The signed request dict if the signature is good; ActionError(reason) otherwise.
    Only the shape needed to check the signature is looked at here."""
    if not isinstance(message, dict):
        raise ActionError("message is not an object")
    body, sig = message.get("request"), message.get("signature")
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise ActionError("unsigned message (needs 'request' and 'signature')")
    _check_sig(sig, ring, lambda: canonical(body))
    return body


# --------------------------------------------------------------- approvals ---

def request_digest(body: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON: what an approval is bound to."""
    return hashlib.sha256(canonical(body)).hexdigest()


def sign_approval(request: ActionRequest, approvers: Keyring, now: float) -> dict[str, Any]:
    """The approver's signed statement for `request` (already marked approved): bound to its
    action id and digest; goes into the message as "approval" next to the request's signature."""
    key = approvers.keys.get(approvers.signing_kid or "")
    if key is None or key.alg != ED25519_ALG:
        raise ActionError("approvals need the approver's Ed25519 private key")
    statement = {"action_id": request.action_id, "digest": request_digest(request.to_dict()),
                 "approved_by": request.approved_by, "approved_at": now}
    return dict(statement, alg=key.alg, kid=key.kid, sig=_sign_bytes(key, canonical(statement)))


def verify_approval(message: dict[str, Any], body: dict[str, Any], approvers: Keyring) -> dict[str, Any]:
    """The approval statement of `message` if it is signed by one of `approvers` and bound to
    this very request (action id + digest, approved_by); ActionError(reason) otherwise."""
    appr = message.get("approval")
    if not isinstance(appr, dict):
        raise ActionError("not approved: no approval signature (this endpoint requires one)")
    statement = {k: appr.get(k) for k in ("action_id", "digest", "approved_by", "approved_at")}
    key = _check_sig(appr, approvers, lambda: canonical(statement), what="approval signature")
    if statement["action_id"] != body.get("action_id"):
        raise ActionError("bad approval: it is for another action id")
    if statement["digest"] != request_digest(body):
        raise ActionError("bad approval: the request differs from the one approved (digest mismatch)")
    if body.get("approval") != "approved" or statement["approved_by"] != body.get("approved_by"):
        raise ActionError("bad approval: approved_by or approval state do not match the request")
    return dict(statement, kid=key.kid)
