"""Kafka connectors: the only module of sigstream that imports kafka-python.

Two layers:

1. client wrappers: :class:`KafkaSettings` (connection/security config; commands get
   theirs from :meth:`KafkaSettings.from_env`), :func:`check_connection` (the bounded
   bootstrap check every client goes through, which turns authentication / TLS /
   protocol mismatches into one :class:`KafkaConnectError`), :func:`create_topics`,
   topic names;
2. semantics: :class:`KafkaSource` (consumer group -> :class:`Message`),
   :class:`KafkaRecordProducer` / :class:`KafkaAlertSink` /
   :class:`KafkaDeadLetterSink` (acknowledged writes), and
   :class:`KafkaEventPublisher` (collector side, never loses events).

Delivery guarantees
-------------------
**Publisher (collect / agent)** -- at-least-once, no silent loss:

* Producer: ``acks=all``, ``enable_idempotence=True``, unlimited retries and a
  long ``delivery_timeout_ms``: a batch in flight when the broker goes away is
  retried with the same producer id/sequence when it comes back, so the broker
  drops retried duplicates (no broker-side duplicates, order kept per
  partition).
* Memory is bounded: at most ``memory_limit`` unacknowledged records are held by
  the producer. When it is full (broker slow or unreachable), when the broker
  cannot be reached at all (no metadata, cannot bootstrap) or when a send
  fails, records go to the disk spool (:mod:`connectors.spool`) instead.
  ``publish`` blocks at most ``max_block_s`` (back-pressure from a healthy but
  slower broker); in an outage it does not block (records go straight to disk).
* Order: while the spool holds unsent records every new record is appended to
  the spool too, and the spool is drained in order through the same producer
  before anything newer is sent, so each host's events (key = host) reach their
  partition in publication order.
* Spool segments are deleted only after every record read from them was
  acknowledged by the broker.
* On ``close`` with records still unacknowledged (broker down at exit), those
  records are written to the FRONT of the spool in their send order and the
  already-sent part of the spool is compacted away, so the next run with the
  same spool directory resends them first, in order.
* The spool has a size cap: when it is hit the event is dropped, counted in
  ``stats["dropped"]`` and ``logging.error`` says so once per episode (never
  silent). Records the broker rejects for good (non-retriable errors such as
  a record too large) are dropped, counted and logged the same way.
* Duplicates remain possible in rare cases (a batch the broker stored but whose
  acknowledgement was lost when the process exited or the delivery timeout
  expired, a crash between acknowledgement and spool clean-up, re-reading the
  same files): envelopes carry a stable ``event_id`` for consumer-side
  de-duplication. A hard crash (SIGKILL) loses the at most ``memory_limit``
  records held only in memory; re-running ``collect`` on the same files
  recovers them (stable event ids).

**Source (stream processor)** -- at-least-once: offsets are committed only by
an explicit :meth:`KafkaSource.commit`, which synchronously commits the
position after everything ``poll`` has returned. Records returned but not
committed before a rebalance, a crash or ``close`` are delivered again (to this
or another group member): there is no commit on revoke.

**Alert / dead-letter producers** -- ``flush`` blocks until every record sent
so far is acknowledged (``acks=all``, idempotent) or raises
:class:`DeliveryError` listing the failures.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kerrors
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.partitioner.default import murmur2

from sigstream.connectors.message import Message
from sigstream.connectors.spool import Spool, SpoolRecord
from sigstream.stream.envelope import encode, host_key, wrap

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
TOPIC_PREFIX = "sigstream"
SOURCES = ("sysmon", "powershell", "security", "system", "wmi", "defender", "other")


def event_topic(source: str, prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.events.{source}"


def alerts_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.alerts"


def dlq_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.dlq"


def actions_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.actions"


def action_results_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}.action-results"


def event_topic_pattern(prefix: str = TOPIC_PREFIX) -> str:
    return "^" + re.escape(prefix) + r"\.events\..*"


ALERTS_TOPIC = alerts_topic()
DLQ_TOPIC = dlq_topic()
ACTIONS_TOPIC = actions_topic()
ACTION_RESULTS_TOPIC = action_results_topic()
EVENT_TOPIC_PATTERN = event_topic_pattern()


def all_topics(prefix: str = TOPIC_PREFIX, sources: Iterable[str] = SOURCES) -> list[str]:
    """Every topic sigstream uses: one per event source, alerts, dlq, actions, action-results."""
    return [event_topic(s, prefix) for s in sources] + [
        alerts_topic(prefix), dlq_topic(prefix), actions_topic(prefix), action_results_topic(prefix)]


class KafkaError(RuntimeError):
    """A Kafka problem with a user-facing message."""


try:  # a CLI command that does not catch KafkaConnectError still shows one line, no traceback
    from click import ClickException as _OneLineError
except ImportError:  # pragma: no cover - click is a dependency of the package
    _OneLineError = Exception  # type: ignore[assignment,misc]


class KafkaConnectError(KafkaError, _OneLineError):
    """Kafka cannot be used with these settings: unreachable, or it refused us.

    ``config`` is True when the cause is the client's own security settings
    (authentication, TLS trust or hostname, a protocol that does not match the listener):
    retrying with the same settings cannot help. Also a ``click.ClickException``, so that
    a command that does not handle it exits 1 with its message instead of a traceback.
    """

    def __init__(self, message: str, *, config: bool = False):
        _OneLineError.__init__(self, message)
        self.message = message
        self.config = config

    def __str__(self) -> str:
        return self.message


class DeliveryError(KafkaError):
    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures     # (topic, reason)
        shown = "; ".join(f"{t}: {r}" for t, r in failures[:5])
        more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} record(s) not delivered: {shown}{more}")


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------

def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise KafkaConnectError(f"{name} must be true or false, got {value!r}", config=True)


@dataclass
class KafkaSettings:
    """Connection and security settings of every Kafka client sigstream makes.

    Commands get theirs from :meth:`from_env` (the SIGSTREAM_* variables). The password
    is not part of the repr; nothing in this module logs :meth:`client_kwargs`.
    """
    bootstrap: str = field(default_factory=lambda: os.environ.get("SIGSTREAM_BOOTSTRAP", DEFAULT_BOOTSTRAP))
    client_id: str = "sigstream"
    security_protocol: str = "PLAINTEXT"      # SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None         # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True           # the broker certificate must name the host we dial

    @classmethod
    def from_env(cls, bootstrap: str | None = None, **overrides: Any) -> "KafkaSettings":
        """Settings from SIGSTREAM_* environment variables, overridden by arguments.

        SIGSTREAM_BOOTSTRAP, SIGSTREAM_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT,
        SASL_SSL), SIGSTREAM_SASL_MECHANISM / _USERNAME / _PASSWORD,
        SIGSTREAM_SSL_CAFILE / _CERTFILE / _KEYFILE, SIGSTREAM_SSL_CHECK_HOSTNAME (true).
        """
        env = os.environ.get
        s = cls(
            bootstrap=bootstrap or env("SIGSTREAM_BOOTSTRAP") or DEFAULT_BOOTSTRAP,
            security_protocol=env("SIGSTREAM_SECURITY_PROTOCOL") or "PLAINTEXT",
            sasl_mechanism=env("SIGSTREAM_SASL_MECHANISM") or None,
            sasl_username=env("SIGSTREAM_SASL_USERNAME"),
            sasl_password=env("SIGSTREAM_SASL_PASSWORD"),
            ssl_cafile=env("SIGSTREAM_SSL_CAFILE") or None,
            ssl_certfile=env("SIGSTREAM_SSL_CERTFILE") or None,
            ssl_keyfile=env("SIGSTREAM_SSL_KEYFILE") or None,
            ssl_check_hostname=_env_bool("SIGSTREAM_SSL_CHECK_HOSTNAME", True),
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    def client_kwargs(self) -> dict[str, Any]:
        proto = self.security_protocol.upper()
        if proto not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise KafkaConnectError(f"unknown security protocol {self.security_protocol!r} "
                                    "(SIGSTREAM_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or "
                                    "SASL_SSL)", config=True)
        kw: dict[str, Any] = {"bootstrap_servers": [b.strip() for b in self.bootstrap.split(",") if b.strip()],
                              "client_id": self.client_id, "security_protocol": proto}
        if proto.startswith("SASL"):
            if not self.sasl_mechanism:
                raise KafkaConnectError(f"{proto} needs a SASL mechanism (SIGSTREAM_SASL_MECHANISM, "
                                        "e.g. PLAIN, SCRAM-SHA-512)", config=True)
            kw["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                kw["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kw["sasl_plain_password"] = self.sasl_password
        if proto in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    kw[name] = getattr(self, name)
            kw["ssl_check_hostname"] = bool(self.ssl_check_hostname)
        return kw

    def _cache_key(self) -> tuple:
        return (self.bootstrap, self.security_protocol.upper(), self.sasl_mechanism, self.sasl_username,
                self.sasl_password, self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile,
                self.ssl_check_hostname)


def _describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    # kafka-python's errors already start with their class name
    return text if text.startswith(name) else f"{name}: {text}" if text else name


# --------------------------------------------------------------------------
# connection check: one clear error instead of a hang or pages of client logs
# --------------------------------------------------------------------------

CONNECT_TIMEOUT_S = 10.0      # bound of the check before each client is made
_CHECK_OK_TTL_S = 60.0        # a passed check is not repeated for this long (same settings)
_CHECK_FAILED_TTL_S = 5.0     # nor a failed one (a command making several clients fails once)
_check_cache: dict[tuple, tuple[float, "KafkaConnectError | None"]] = {}
_check_lock = threading.Lock()

_silence_lock = threading.Lock()
_silence_depth = 0
_silence_saved: int = logging.NOTSET


@contextmanager
def _kafka_logs_silenced():
    """kafka-python logs every failed attempt (ERROR/WARNING); during the check the
    failure is reported once, by the check. Not with debug logging (--log-level debug)."""
    global _silence_depth, _silence_saved
    logger = logging.getLogger("kafka")
    if _silence_depth == 0 and logger.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    with _silence_lock:
        if _silence_depth == 0:
            _silence_saved = logger.level
            logger.setLevel(logging.CRITICAL + 1)
        _silence_depth += 1
    try:
        yield
    finally:
        with _silence_lock:
            _silence_depth -= 1
            if _silence_depth == 0:
                logger.setLevel(_silence_saved)


def _split_hostport(server: str) -> tuple[str, int]:
    server = server.strip()
    if server.startswith("["):                     # [v6]:port
        host, _, rest = server[1:].partition("]")
        port = rest.lstrip(":")
    elif server.count(":") == 1:
        host, port = server.split(":")
    else:
        host, port = server, ""
    try:
        return host, int(port) if port else 9092
    except ValueError:
        raise KafkaConnectError(f"bad Kafka bootstrap address {server!r} (expected HOST:PORT)",
                                config=True) from None


def _settings_problem(settings: KafkaSettings, kw: dict[str, Any]) -> str | None:
    proto = kw["security_protocol"]
    if proto.startswith("SASL_") and (not settings.sasl_username or settings.sasl_password is None) \
            and str(settings.sasl_mechanism).upper() in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        return (f"{proto} with {settings.sasl_mechanism} needs a user name and a password: "
                "set SIGSTREAM_SASL_USERNAME and SIGSTREAM_SASL_PASSWORD")
    if proto in ("SSL", "SASL_SSL"):
        for name, var in (("ssl_cafile", "SIGSTREAM_SSL_CAFILE"), ("ssl_certfile", "SIGSTREAM_SSL_CERTFILE"),
                          ("ssl_keyfile", "SIGSTREAM_SSL_KEYFILE")):
            path = kw.get(name)
            if path and not os.access(path, os.R_OK):
                why = "does not exist" if not os.path.exists(path) else "is not readable"
                return f"{var}={path} {why}"
    return None


def _who(settings: KafkaSettings) -> str:
    return f"SASL {settings.sasl_mechanism} user {settings.sasl_username!r}"


def _tls_problem(settings: KafkaSettings, host: str, detail: str) -> str:
    """What a failed TLS handshake most likely means."""
    d = detail.lower()
    proto = settings.security_protocol.upper()
    if "mismatch" in d or "not valid for" in d:
        return (f"TLS: the broker certificate is not valid for {host!r} ({detail}): connect with a "
                "name or address the certificate lists, or set SIGSTREAM_SSL_CHECK_HOSTNAME=false")
    if "certificate verify failed" in d:
        why = detail.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        ca = f"SIGSTREAM_SSL_CAFILE={settings.ssl_cafile}" if settings.ssl_cafile else "SIGSTREAM_SSL_CAFILE unset"
        return (f"TLS: the broker certificate is not trusted ({why}; {ca}): set SIGSTREAM_SSL_CAFILE "
                "to the CA certificate that signed it")
    if "alert" in d and ("certificate" in d or "handshake failure" in d):
        return (f"TLS handshake refused by the broker ({detail}): it may require a client "
                "certificate (SIGSTREAM_SSL_CERTFILE / SIGSTREAM_SSL_KEYFILE)")
    return (f"TLS handshake failed ({detail}): the listener probably does not use TLS; "
            f"SIGSTREAM_SECURITY_PROTOCOL is {proto}, try "
            f"{'PLAINTEXT' if proto == 'SSL' else 'SASL_PLAINTEXT (or PLAINTEXT)'}")


def _handshake_problem(settings: KafkaSettings, host: str, exc: BaseException | None,
                       versions_ok: bool, timeout_s: float) -> tuple[str, bool]:
    """(message, config?) for a connection that reached the port but did not complete the
    Kafka handshake (TLS, ApiVersions, SASL). ``exc`` None: no answer in time."""
    proto = settings.security_protocol.upper()
    tls = proto in ("SSL", "SASL_SSL")
    detail = _describe(exc) if exc is not None else f"no answer within {timeout_s:g}s"
    text = str(exc) if exc is not None else ""
    if isinstance(exc, kerrors.UnsupportedSaslMechanismError):
        return (f"the broker does not enable SASL mechanism {settings.sasl_mechanism}: "
                "check SIGSTREAM_SASL_MECHANISM", True)
    if isinstance(exc, kerrors.IllegalSaslStateError):
        return (f"the listener does not take SASL ({detail}): SIGSTREAM_SECURITY_PROTOCOL is {proto}, "
                f"try {'SSL' if proto == 'SASL_SSL' else 'PLAINTEXT'}", True)
    if isinstance(exc, kerrors.SaslAuthenticationFailedError) or (versions_ok and proto.startswith("SASL_")):
        # kafka-python may read the broker's close before its error response: a SASL client
        # dropped after a successful ApiVersions exchange failed to log in
        return (f"authentication failed ({_who(settings)}): check SIGSTREAM_SASL_USERNAME/PASSWORD"
                f" (and that the broker enables {settings.sasl_mechanism})", True)
    if isinstance(exc, OSError) and not isinstance(exc, kerrors.KafkaError):
        # ssl.SSLError from loading the CA / certificate / key files
        return (f"cannot load the TLS files ({detail}): check SIGSTREAM_SSL_CAFILE / "
                "SIGSTREAM_SSL_CERTFILE / SIGSTREAM_SSL_KEYFILE", True)
    if "Handshake failed" in text:
        return _tls_problem(settings, host, text.split("Handshake failed", 1)[1].lstrip(": ")), True
    if versions_ok:
        return f"the Kafka handshake failed ({detail})", False
    if not tls:
        # a TLS listener answers Kafka bytes with a TLS alert (read as a huge frame) or a close
        return (f"the broker closed the connection without a Kafka answer ({detail}): the listener "
                f"probably expects TLS (SSL or SASL_SSL) but SIGSTREAM_SECURITY_PROTOCOL is {proto}: "
                "set it (and SIGSTREAM_SSL_CAFILE, SIGSTREAM_SASL_*) to match the listener", True)
    if exc is None:
        return (f"no TLS/Kafka handshake within {timeout_s:g}s: is this a Kafka listener, and does it "
                f"use TLS (SIGSTREAM_SECURITY_PROTOCOL is {proto})?", True)
    return f"no Kafka answer after the TLS handshake ({detail}): is this a Kafka listener?", False


class _Unreachable(KafkaConnectError):
    """Nothing accepts TCP connections there (yet)."""


def _probe_server(settings: KafkaSettings, kw: dict[str, Any], server: str, deadline: float) -> None:
    """One bounded connection to one bootstrap server: TCP, TLS, ApiVersions, SASL, then a
    metadata request (a listener that wants SASL drops a client without it only then).
    Raises KafkaConnectError."""
    from kafka.net.compat import KafkaNetClient

    host, port = _split_hostport(server)
    proto = kw["security_protocol"]
    where = f"Kafka at {server}"
    # 1. TCP (check_connection retries this until its deadline)
    try:
        with socket.create_connection((host, port), timeout=max(0.1, min(3.0, deadline - time.monotonic()))):
            pass
    except OSError as e:
        raise _Unreachable(f"cannot reach {where}: {e.strerror or e}") from None
    # 2. the Kafka handshake through kafka-python, exactly as its clients make it
    timeout_s = max(0.5, deadline - time.monotonic())
    client = KafkaNetClient(**dict(kw, bootstrap_servers=[server]), reconnect_backoff_ms=50,
                            request_timeout_ms=int(timeout_s * 1000))
    try:
        node = client.cluster.bootstrap_brokers()[0]
        conn = client._manager.get_connection(node.node_id, timeout_ms=int(timeout_s * 1000))
        client._net.poll(timeout_ms=int(timeout_s * 1000), future=conn.init_future)
        init = conn.init_future
        if not init.is_done or init.failed():
            exc = init.exception if init.is_done else None
            msg, config = _handshake_problem(settings, host, exc, conn.broker_version_data is not None,
                                             timeout_s)
            raise KafkaConnectError(f"{where}: {msg}", config=config)
        left = max(0.5, deadline - time.monotonic())
        fut = conn.send_request(client.cluster.metadata_request(), request_timeout_ms=int(left * 1000))
        client._net.poll(timeout_ms=int(left * 1000), future=fut)
        if fut.is_done and fut.succeeded():
            if not getattr(fut.value, "brokers", None):
                raise KafkaConnectError(f"{where}: the metadata response lists no broker (still starting?)")
            return
        exc = fut.exception if fut.is_done else None
        if proto in ("PLAINTEXT", "SSL"):
            raise KafkaConnectError(
                f"{where}: the broker closed the connection after the handshake "
                f"({_describe(exc) if exc else 'no metadata answer'}): the listener probably requires "
                f"SASL authentication; SIGSTREAM_SECURITY_PROTOCOL is {proto}, try "
                f"SASL_{proto} with SIGSTREAM_SASL_MECHANISM/USERNAME/PASSWORD", config=True)
        if isinstance(exc, (kerrors.AuthorizationError, kerrors.TopicAuthorizationFailedError,
                            kerrors.ClusterAuthorizationFailedError)):
            raise KafkaConnectError(f"{where}: not authorised ({_who(settings)}): {_describe(exc)}", config=True)
        raise KafkaConnectError(f"{where}: metadata request failed: "
                                f"{_describe(exc) if exc else f'no answer within {left:.0f}s'}")
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


def check_connection(settings: KafkaSettings, timeout_s: float = CONNECT_TIMEOUT_S, *,
                     use_cache: bool = True) -> None:
    """A bounded bootstrap check with ``settings``; raises :class:`KafkaConnectError` with
    one message saying what is wrong and the likely fix (authentication failed, certificate
    not trusted or not for this host, a listener speaking another protocol, unreachable).

    Every client of this module is made after it (:func:`_client`). kafka-python itself
    would retry such failures until its timeouts, logging every attempt. A result is
    remembered for a short while per settings, so a command making several clients checks
    (or fails) once.
    """
    kw = settings.client_kwargs()
    key = settings._cache_key()
    now = time.monotonic()
    if use_cache:
        with _check_lock:
            hit = _check_cache.get(key)
        if hit is not None:
            at, err = hit
            if now - at < (_CHECK_FAILED_TTL_S if err else _CHECK_OK_TTL_S):
                if err is not None:
                    raise KafkaConnectError(err.message, config=err.config)
                return
    problem = _settings_problem(settings, kw)
    if problem:
        raise KafkaConnectError(f"Kafka at {settings.bootstrap}: {problem}", config=True)
    deadline = time.monotonic() + max(0.5, timeout_s)
    err: KafkaConnectError | None = None
    with _kafka_logs_silenced():
        # rounds over the bootstrap servers: the first one that completes the check wins; a
        # settings problem ends the check; while none accepts TCP connections (a broker
        # starting up) rounds repeat until the deadline
        while True:
            errors: list[KafkaConnectError] = []
            for server in kw["bootstrap_servers"]:
                try:
                    _probe_server(settings, kw, server, deadline)
                    errors = []
                    break
                except KafkaConnectError as e:
                    errors.append(e)
                    if e.config or time.monotonic() >= deadline:
                        break
                except Exception as e:  # noqa: BLE001 - kafka-python internals: leave it to the client
                    log.debug("connection check of %s skipped: %s", server, _describe(e))
                    errors = []
                    break
            if not errors:
                break
            # a settings problem is the more useful message when some servers are merely down
            err = next((e for e in errors if e.config), errors[0])
            if not all(isinstance(e, _Unreachable) for e in errors) or time.monotonic() + 0.5 >= deadline:
                break
            time.sleep(0.5)
        if not errors:
            err = None
    with _check_lock:
        _check_cache[key] = (time.monotonic(), err)
    if err is not None:
        raise KafkaConnectError(err.message, config=err.config)


def _client(factory: Any, settings: KafkaSettings, connect_timeout_s: float = CONNECT_TIMEOUT_S,
            **extra: Any) -> Any:
    """THE place where this module makes kafka-python clients (KafkaAdminClient,
    KafkaConsumer, KafkaProducer): the connection check first, then the client; its own
    bootstrap failures become KafkaConnectError too."""
    check_connection(settings, connect_timeout_s)
    try:
        with _kafka_logs_silenced():
            return factory(**{**settings.client_kwargs(), **extra})
    except (kerrors.KafkaError, OSError) as e:
        with _check_lock:
            _check_cache.pop(settings._cache_key(), None)
        raise KafkaConnectError(f"cannot connect to Kafka at {settings.bootstrap}: {_describe(e)}",
                                config=isinstance(e, (kerrors.SaslAuthenticationFailedError,
                                                      kerrors.UnsupportedSaslMechanismError))) from e


class _RedactSecrets(logging.Filter):
    """kafka-python's admin client logs its whole configuration at DEBUG: no passwords."""

    SECRET_KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")

    def _clean(self, value: Any) -> Any:
        if isinstance(value, dict) and any(k in value for k in self.SECRET_KEYS):
            return {k: ("***" if k in self.SECRET_KEYS and v is not None else v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = self._clean(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        return True


for _name in ("kafka.admin.client", "kafka.admin", "kafka.producer.kafka", "kafka.consumer.group",
              "kafka.net.manager", "kafka.net.compat"):
    logging.getLogger(_name).addFilter(_RedactSecrets())


# errors about the record itself: resending it cannot help
_RECORD_ERRORS = (kerrors.MessageSizeTooLargeError, kerrors.RecordListTooLargeError,
                  kerrors.InvalidRecordError, kerrors.CorruptRecordError, kerrors.InvalidTopicError,
                  kerrors.InvalidTimestampError, kerrors.UnsupportedForMessageFormatError)


def _permanent(exc: BaseException | None) -> bool:
    """Will this record never be accepted? Everything else (connection, leadership, producer
    state, authorisation that an operator may fix, ...) is worth keeping and retrying."""
    return isinstance(exc, _RECORD_ERRORS)


def _close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close a producer within ``timeout_s``. kafka-python's close() raises on a flush timeout
    without stopping its I/O thread (which would then deliver the records later, behind our
    back), so on timeout the I/O thread is force-closed: unsent batches fail."""
    try:
        producer.close(timeout=timeout_s)
        return
    except Exception as e:  # noqa: BLE001 - KafkaTimeoutError from the flush
        log.debug("producer close: %s; forcing", _describe(e))
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(10)
    try:
        producer.close(timeout=0)
    except Exception as e:  # noqa: BLE001
        log.warning("producer close: %s", _describe(e))


def best_compression() -> str:
    """gzip is always available in kafka-python; prefer zstd / lz4 when their libs are installed."""
    try:
        import zstandard  # noqa: F401
        return "zstd"
    except ImportError:
        pass
    try:
        import lz4  # noqa: F401
        return "lz4"
    except ImportError:
        return "gzip"


# --------------------------------------------------------------------------
# topics
# --------------------------------------------------------------------------

def create_topics(settings: KafkaSettings, names: list[str], partitions: int = 3,
                  retention_ms: int | None = None, replication_factor: int = -1,
                  timeout_s: float = 30, configs: dict[str, str] | None = None) -> list[str]:
    """Create ``names`` (existing topics are fine); returns the ones created now.

    ``replication_factor=-1`` uses the broker's ``default.replication.factor``.
    ``configs``: topic configs for the new topics (e.g. ``{"cleanup.policy": "compact"}``);
    an existing topic keeps its own.
    """
    try:
        admin = _client(KafkaAdminClient, settings, min(timeout_s, CONNECT_TIMEOUT_S),
                        request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError:
        raise
    except Exception as e:  # noqa: BLE001
        raise KafkaError(f"cannot reach Kafka at {settings.bootstrap}: {_describe(e)}") from e
    try:
        topic_configs = {"retention.ms": str(retention_ms)} if retention_ms else {}
        topic_configs.update(configs or {})
        spec = {n: {"num_partitions": partitions, "replication_factor": replication_factor,
                    "configs": topic_configs} for n in names}
        result = admin.create_topics(spec, timeout_ms=int(timeout_s * 1000), raise_errors=False)
        created, problems = [], []
        for t in result.get("topics", []):
            code = t.get("error_code", 0)
            name = t.get("name")
            if code == 0:
                created.append(name)
            elif code != kerrors.TopicAlreadyExistsError.errno:
                problems.append(f"{name}: {kerrors.for_code(code).__name__} {t.get('error_message') or ''}".strip())
        if problems:
            raise KafkaError("could not create topic(s): " + "; ".join(problems))
        if created:
            admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
        return created
    finally:
        admin.close()


# --------------------------------------------------------------------------
# consumer side
# --------------------------------------------------------------------------

class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: "KafkaSource"):
        self.owner = owner

    def on_partitions_revoked(self, revoked):
        # no commit here: records poll() returned but the processor has not committed are
        # redelivered to the next owner (at-least-once)
        if revoked:
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        self.owner.rebalances += 1

    def on_partitions_assigned(self, assigned):
        if assigned:
            log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaSource:
    """Consumer-group source. ``topics``: a list of names, or a regex string (default: every
    event topic, ``^sigstream\\.events\\..*``). New topics matching a pattern are picked up
    within ``metadata_max_age_s``."""

    def __init__(self, settings: KafkaSettings, topics: list[str] | str | None = None,
                 group_id: str = "sigstream-processor", from_beginning: bool = True,
                 max_poll_records: int = 500, *, session_timeout_s: float = 45,
                 max_poll_interval_s: float = 300, metadata_max_age_s: float = 30):
        self.rebalances = 0
        self._consumer = _client(
            KafkaConsumer, settings, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            max_poll_records=max_poll_records, session_timeout_ms=int(session_timeout_s * 1000),
            max_poll_interval_ms=int(max_poll_interval_s * 1000),
            metadata_max_age_ms=int(metadata_max_age_s * 1000))
        listener = _Rebalance(self)
        if topics is None:
            topics = EVENT_TOPIC_PATTERN
        if isinstance(topics, str):
            self._consumer.subscribe(pattern=topics, listener=listener)
        else:
            self._consumer.subscribe(topics=list(topics), listener=listener)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]:
        """Up to ``max_records`` records (each partition's records in offset order;
        partitions interleave arbitrarily); [] after ``timeout_s`` without data."""
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Message] = []
        for tp, records in batches.items():
            for r in records:
                ts = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
                out.append(Message(r.value, r.key, tp.topic, tp.partition, r.offset, ts,
                                   list(r.headers or [])))
        return out

    def commit(self) -> None:
        """Synchronously commit, for every assigned partition, the position after the last
        record poll() returned. Raises KafkaError if the commit failed (e.g. the group
        rebalanced meanwhile: those records will be redelivered)."""
        try:
            self._consumer.commit()
        except Exception as e:  # noqa: BLE001
            raise KafkaError(f"offset commit failed: {_describe(e)}") from e

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def close(self) -> None:
        """Leave the group without committing (commit() first if wanted)."""
        self._consumer.close(autocommit=False)


def read_changelog(settings: KafkaSettings, topic: str, timeout_s: float = 60) -> dict[bytes, bytes]:
    """The latest value of every key of a (compacted) topic: read from the beginning to the
    end offsets taken at the start, last value per key wins, a tombstone (None) deletes.
    No consumer group (nothing is committed). KafkaError if the end is not reached in time."""
    from kafka.structs import TopicPartition

    consumer = _client(KafkaConsumer, settings, group_id=None, enable_auto_commit=False,
                       auto_offset_reset="earliest")
    try:
        deadline = time.monotonic() + timeout_s
        parts: set[int] = set()
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                if time.monotonic() > deadline:
                    raise KafkaError(f"changelog topic {topic} not found")
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: dict[bytes, bytes] = {}
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise KafkaError(f"could not read changelog {topic} to its end within {timeout_s}s")
            for _tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if r.value is None:
                        out.pop(r.key, None)
                    else:
                        out[r.key] = r.value
        return out
    finally:
        consumer.close(autocommit=False)


# --------------------------------------------------------------------------
# producer side: alerts and dead letters
# --------------------------------------------------------------------------

def _producer_kwargs(settings: KafkaSettings, acks: Any, idempotent: bool, compression: str | None,
                     linger_ms: int, **extra: Any) -> dict[str, Any]:
    kw = dict(settings.client_kwargs(), acks=acks, enable_idempotence=idempotent,
              compression_type=None if compression in (None, "none") else compression,
              linger_ms=linger_ms, retries=2**31 - 1, max_in_flight_requests_per_connection=5,
              reconnect_backoff_max_ms=2000)
    kw.update(extra)
    return kw


PENDING_SWEEP = 200_000  # unflushed records after which acknowledged ones are swept


class KafkaRecordProducer:
    """Acknowledged writes to one topic (alerts, dead letters)."""

    def __init__(self, settings: KafkaSettings, topic: str, *, acks: Any = "all", idempotent: bool = True,
                 compression: str | None = "auto", linger_ms: int = 5, delivery_timeout_s: float = 120,
                 batch_size: int = 512 * 1024):
        # Alerts carry the whole event (a few KB): kafka-python's 16 KB default batch would
        # mean one produce request per handful of alerts.
        self.topic = topic
        self._producer = _client(KafkaProducer, settings, **_producer_kwargs(
            settings, acks, idempotent, best_compression() if compression == "auto" else compression,
            linger_ms, batch_size=batch_size,
            delivery_timeout_ms=int(delivery_timeout_s * 1000)))
        self._failures: list[tuple[str, str]] = []
        # Futures of records not yet seen acknowledged, checked at flush(): cheaper than a
        # callback per record, which kafka-python's I/O thread would run under the GIL.
        self._pending: list[Any] = []
        self._partitions: dict[bytes, int] = {}
        self.sent = self.acked = 0
        self._init_append()

    # kafka-python's send() validates, estimates and logs (formatting the producer's repr)
    # for every record: about a third of an alert's cost. For the records we make (bytes,
    # no headers, partition known, well under the size limit) the append to its record
    # accumulator is all that send() does besides. That reaches into kafka-python 3.0's
    # internals, so it is checked here and on first use; anything unexpected falls back to
    # send() for good.
    def _init_append(self) -> None:
        try:
            from kafka.structs import TopicPartition
            accumulator = self._producer._accumulator
            wakeup = self._producer._sender.wakeup
            self._append_limit = int(self._producer.config["max_request_size"]) - 4096
        except Exception:  # noqa: BLE001 - another kafka-python: the public path only
            self._append = None
            return
        topic_partitions: dict[int, Any] = {}

        def append(partition: int, key: bytes | None, value: bytes) -> Any:
            tp = topic_partitions.get(partition)
            if tp is None:
                tp = topic_partitions[partition] = TopicPartition(self.topic, partition)
            future, batch_full, new_batch, _ = accumulator.append(tp, None, key, value, [])
            if batch_full or new_batch:
                wakeup()  # as send() does: the sender drains full batches now
            return future
        self._append = append

    def _append_record(self, partition: int, key: bytes | None, value: bytes) -> Any:
        """The fast path of send(); None (and the public path from now on) if it does not fit."""
        try:
            future = self._append(partition, key, value)
        except (AttributeError, TypeError, ValueError) as e:
            log.warning("kafka-python internals differ (%s); using KafkaProducer.send", e)
            self._append = None
            return None
        if not hasattr(future, "is_done"):
            self._append = None
            raise DeliveryError([(self.topic, "unexpected result from kafka-python's accumulator")])
        return future

    def send(self, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        if value is None and key is None:
            value = b""
        try:
            partition = self._partition_of(key)
            fut = None
            if (self._append is not None and partition is not None and not headers
                    and value is not None and len(value) + len(key or b"") < self._append_limit):
                fut = self._append_record(partition, key, value)
            if fut is None:
                fut = self._producer.send(self.topic, value=value, key=key,
                                          headers=list(headers or []), partition=partition)
        except Exception as e:  # noqa: BLE001 - metadata timeout, record too large, ...
            self._failures.append((self.topic, _describe(e)))
            return
        self._pending.append(fut)
        self.sent += 1
        if len(self._pending) >= PENDING_SWEEP:  # a caller that rarely flushes: stay bounded
            self._sweep()

    def send_at(self, value: bytes, key: bytes | None, timestamp_ms: int | None) -> None:
        """send() with the record's timestamp set (e.g. an event time); failures are
        reported by flush() as for send()."""
        try:
            fut = self._producer.send(self.topic, value=value, key=key, partition=self._partition_of(key),
                                      timestamp_ms=timestamp_ms)
        except Exception as e:  # noqa: BLE001 - metadata timeout, record too large, ...
            self._failures.append((self.topic, _describe(e)))
            return
        self._pending.append(fut)
        self.sent += 1
        if len(self._pending) >= PENDING_SWEEP:
            self._sweep()

    def _sweep(self) -> list[Any]:
        """Drop acknowledged futures (failures are kept for flush); returns those in flight."""
        unacked = []
        for fut in self._pending:
            if not fut.is_done:
                unacked.append(fut)
            elif fut.failed():
                self._failures.append((self.topic, _describe(fut.exception)))
            else:
                self.acked += 1
        self._pending = unacked
        return unacked

    def _partition_of(self, key: bytes | None) -> int | None:
        """The default partitioner's choice, remembered per key: kafka-python hashes every
        record's key in pure Python, and alerts repeat a few host keys."""
        if key is None:
            return None
        part = self._partitions.get(key)
        if part is None:
            parts = self._producer.partitions_for(self.topic)
            if not parts:
                return None
            ordered = sorted(parts)
            part = self._partitions[key] = ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]
        return part

    def flush(self, timeout_s: float | None = 30) -> None:
        """Block until every record sent so far is acknowledged; DeliveryError otherwise."""
        try:
            self._producer.flush(timeout=timeout_s)
        except kerrors.KafkaTimeoutError:
            pass
        unacked = self._sweep()  # those still in flight are reported now and checked again later
        failures, self._failures = self._failures, []
        if unacked:
            failures.append((self.topic, f"{len(unacked)} record(s) not acknowledged within {timeout_s}s"))
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout_s: float = 30) -> None:
        _close_producer(self._producer, timeout_s)


class _ProducerSink:
    """A sink over one KafkaRecordProducer: flush() waits for acks, close() flushes first."""

    def __init__(self, settings: KafkaSettings, topic: str, **producer_kw: Any):
        self.producer = KafkaRecordProducer(settings, topic, **producer_kw)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            self.producer.close()


class KafkaAlertSink(_ProducerSink):
    """AlertSink (connectors.sinks) writing alerts to Kafka: key = host, value = JSON."""

    def __init__(self, settings: KafkaSettings, topic: str = ALERTS_TOPIC, **producer_kw: Any):
        super().__init__(settings, topic, **producer_kw)

    def add(self, alert: dict[str, Any]) -> None:
        host = alert.get("host")
        key = str(host).encode("utf-8", "surrogatepass") if host else None
        self.producer.send(orjson.dumps(alert, default=str), key)


class KafkaDeadLetterSink(_ProducerSink):
    """Unusable messages, as they were, to the dead-letter topic with their origin in headers:
    ``reason``, ``source_topic``, ``source_partition``, ``source_offset`` (UTF-8), after the
    original headers."""

    def __init__(self, settings: KafkaSettings, topic: str = DLQ_TOPIC, **producer_kw: Any):
        super().__init__(settings, topic, **producer_kw)

    def add(self, msg: Message, reason: str) -> None:
        headers = [(k, v) for k, v in msg.headers if k not in
                   ("reason", "source_topic", "source_partition", "source_offset")]
        headers += [("reason", reason.encode("utf-8", "replace")),
                    ("source_topic", msg.topic.encode()),
                    ("source_partition", str(msg.partition).encode()),
                    ("source_offset", str(msg.offset).encode())]
        self.producer.send(msg.value, msg.key, headers)


# --------------------------------------------------------------------------
# the event publisher (collector / agent)
# --------------------------------------------------------------------------

@dataclass(slots=True)
class _InFlight:
    rec: SpoolRecord
    segment: int | None      # spool segment it was read from (None: sent directly)


class KafkaEventPublisher:
    """Publishes normalised events as envelopes; spools to disk when Kafka cannot take them.

    See the module docstring for the guarantees. Not thread-safe (one publishing thread;
    acknowledgements arrive on the producer's I/O thread).
    """

    def __init__(self, settings: KafkaSettings, *, collector_id: str, spool_dir: str | os.PathLike,
                 topic_prefix: str = TOPIC_PREFIX, memory_limit: int = 10_000,
                 spool_max_bytes: int = 1 << 30, spool_segment_bytes: int = 16 << 20,
                 spool_fsync: str = "batch", max_block_s: float = 1.0,
                 metadata_timeout_s: float = 2.0, bootstrap_timeout_s: float = 5.0,
                 delivery_timeout_s: float = 3600.0, compression: str | None = "auto",
                 linger_ms: int = 5, batch_size: int = 256 * 1024, retry_backoff_s: float = 0.5,
                 max_retry_backoff_s: float = 10.0):
        self.settings = settings
        self.collector_id = collector_id
        self.topic_prefix = topic_prefix
        self.memory_limit = max(1, memory_limit)
        self.max_block_s = max_block_s
        self.spool = Spool(spool_dir, max_bytes=spool_max_bytes, segment_bytes=spool_segment_bytes,
                           fsync=spool_fsync)
        self._producer_kw = _producer_kwargs(
            settings, "all", True, best_compression() if compression == "auto" else compression,
            linger_ms, batch_size=batch_size, max_block_ms=int(metadata_timeout_s * 1000),
            bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
            delivery_timeout_ms=int(delivery_timeout_s * 1000),
            request_timeout_ms=30000)
        self._producer: KafkaProducer | None = None
        self._connect_timeout_s = bootstrap_timeout_s
        self._settings_problem = False   # the last failure to connect was our settings' fault
        self._retry_backoff = (retry_backoff_s, max_retry_backoff_s)
        self._backoff = retry_backoff_s
        self._next_attempt = 0.0
        self._last_problem: str | None = None

        self._lock = threading.Condition()
        self._seq = 0
        self._inflight: OrderedDict[int, _InFlight] = OrderedDict()
        self._failed: list[tuple[int, _InFlight, BaseException]] = []
        self._seg_read: dict[int, int] = {}     # spool segment -> records read from it
        self._seg_done: dict[int, int] = {}     # spool segment -> records acknowledged/settled
        self._stalled = False
        self._closed = False
        self._dropping = False
        self._counts = dict(published=0, sent=0, acked=0, spooled=0, dropped=0, retries=0,
                            rejected=0, resent_from_spool=0)
        if self.spool.unread:
            log.info("spool %s holds %d record(s) from an earlier run; they are sent first",
                     self.spool.dir, self.spool.unread)

    # ----------------------------------------------------------- producer --
    def _ensure_producer(self) -> bool:
        """Is there a producer to send to (creating it if due)? False while backing off
        after a failure to connect or to send."""
        if time.monotonic() < self._next_attempt:
            return False
        if self._producer is not None:
            return True
        try:
            self._producer = _client(KafkaProducer, self.settings, self._connect_timeout_s,
                                     **self._producer_kw)
            self._backoff = self._retry_backoff[0]
            self._settings_problem = False
            if self._last_problem:
                log.warning("Kafka at %s reachable again", self.settings.bootstrap)
                self._last_problem = None
            return True
        except KafkaConnectError as e:  # unreachable, or authentication / TLS / protocol
            self._settings_problem = e.config
            self._trouble(str(e))
            return False
        except Exception as e:  # noqa: BLE001 - timeouts, ...
            self._trouble(f"cannot connect to Kafka at {self.settings.bootstrap}: {_describe(e)}")
            return False

    def _trouble(self, problem: str) -> None:
        if problem != self._last_problem:
            log.warning("%s; spooling to %s", problem, self.spool.dir)
            self._last_problem = problem
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._retry_backoff[1])

    def _on_ack(self, seq: int, _meta: Any) -> None:
        with self._lock:
            self._stalled = False
            if self._closed:
                return
            item = self._inflight.pop(seq, None)
            if item is None:
                return
            self._backoff = self._retry_backoff[0]
            self._counts["acked"] += 1
            if item.segment is not None:
                self._seg_done[item.segment] = self._seg_done.get(item.segment, 0) + 1
            self._lock.notify_all()

    def _on_error(self, seq: int, exc: BaseException) -> None:
        with self._lock:
            if self._closed:
                return
            item = self._inflight.pop(seq, None)
            if item is None:
                return
            self._failed.append((seq, item, exc))
            self._lock.notify_all()

    def _send(self, rec: SpoolRecord, segment: int | None) -> bool:
        """Hand one record to the producer; False if it could not even be queued."""
        assert self._producer is not None
        try:
            fut = self._producer.send(rec.topic, value=rec.value, key=rec.key)
        except (*_RECORD_ERRORS, TypeError, ValueError) as e:
            self._reject(rec, segment, e)
            return True
        except Exception as e:  # noqa: BLE001 - metadata timeout, closed, ...
            self._trouble(f"cannot send to {rec.topic}: {_describe(e)}")
            return False
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._inflight[seq] = _InFlight(rec, segment)
            self._counts["sent"] += 1
        fut.add_callback(self._on_ack, seq)
        fut.add_errback(self._on_error, seq)
        return True

    def _reject(self, rec: SpoolRecord, segment: int | None, exc: BaseException) -> None:
        self._counts["dropped"] += 1
        self._counts["rejected"] += 1
        log.error("Kafka rejected a record for %s for good, DROPPED: %s", rec.topic, _describe(exc))
        if segment is not None:
            self._seg_done[segment] = self._seg_done.get(segment, 0) + 1

    # -------------------------------------------------------------- spool --
    def _to_spool(self, rec: SpoolRecord) -> bool:
        if self.spool.append(rec):
            self._counts["spooled"] += 1
            if self._dropping:
                log.warning("spool %s has room again", self.spool.dir)
                self._dropping = False
            return True
        self._counts["dropped"] += 1
        if not self._dropping:
            log.error("spool %s is full (%d bytes, cap %d): DROPPING events until Kafka takes "
                      "records again; the count is in the stats", self.spool.dir, self.spool.bytes,
                      self.spool.max_bytes)
            self._dropping = True
        return False

    def _service(self) -> None:
        """Settle failed sends and delete spool segments that are delivered."""
        with self._lock:
            failed, self._failed = self._failed, []
        for _seq, item, exc in failed:
            if not _permanent(exc):
                if self._counts["retries"] == 0 or exc.__class__.__name__ != getattr(self, "_last_failure", ""):
                    log.warning("delivery failed (%s); the record goes back to the spool", _describe(exc))
                    self._last_failure = exc.__class__.__name__
                self._counts["retries"] += 1
                self._to_spool(item.rec)   # ends up behind newer records (see docstring)
                if item.segment is not None:
                    self._seg_done[item.segment] = self._seg_done.get(item.segment, 0) + 1
            else:
                self._reject(item.rec, item.segment, exc)
        if self._seg_read:
            with self._lock:
                done = dict(self._seg_done)
            for seg, read in list(self._seg_read.items()):
                if (self.spool.fully_read(seg) and done.get(seg, 0) >= self.spool.records_in(seg)
                        and read >= self.spool.records_in(seg)):
                    self.spool.delete_segment(seg)
                    self._seg_read.pop(seg, None)
                    with self._lock:
                        self._seg_done.pop(seg, None)

    def _room(self, wait: bool) -> bool:
        with self._lock:
            if len(self._inflight) < self.memory_limit:
                return True
            if not wait or self._stalled:
                return False
            ok = self._lock.wait_for(lambda: len(self._inflight) < self.memory_limit, self.max_block_s)
            if not ok:
                self._stalled = True
            return ok

    def _pump(self) -> None:
        """Send spooled records, in order, while the producer has room."""
        while self.spool.unread > 0 and self._ensure_producer():
            with self._lock:
                room = self.memory_limit - len(self._inflight)
            if room <= 0:
                return
            batch = self.spool.read(min(room, 1000))
            if not batch:
                return
            for i, (seg, cursor, rec) in enumerate(batch):
                if not self._send(rec, seg):
                    self.spool.seek(cursor, len(batch) - i)
                    return
                self._seg_read[seg] = self._seg_read.get(seg, 0) + 1
                self._counts["resent_from_spool"] += 1

    # ----------------------------------------------------------------- API --
    def publish(self, event: dict) -> None:
        """Wrap ``event`` in an envelope and publish it (key = host, topic per source)."""
        env = wrap(event, self.collector_id)
        rec = SpoolRecord(event_topic(env["source"], self.topic_prefix), host_key(event), encode(env))
        self.publish_record(rec)

    def publish_record(self, rec: SpoolRecord) -> None:
        self._counts["published"] += 1
        self._service()
        if self._ensure_producer():
            if self.spool.unread > 0:
                self._room(wait=True)        # back-pressure, bounded
                self._pump()
            if self.spool.unread == 0 and self._room(wait=True) and self._send(rec, None):
                return
        self._to_spool(rec)

    def pending(self) -> int:
        """Records not yet acknowledged: in memory plus unread in the spool."""
        with self._lock:
            return len(self._inflight) + len(self._failed) + self.spool.unread

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send everything (spool included) and wait for the acknowledgements, at most
        ``timeout_s``. True if nothing is left unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._service()
            self._pump()
            self.spool.flush()
            if self._producer is None and self._settings_problem:
                break   # authentication / TLS settings: waiting cannot help, the spool keeps it all
            with self._lock:
                if not self._inflight and not self._failed and self.spool.unread == 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
        self._service()
        return self.pending() == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (bounded), then persist whatever is still unacknowledged to the front of the
        spool so that the next run sends it first."""
        try:
            self.flush(timeout_s)
        finally:
            if self._producer is not None:
                # after this the producer's I/O thread is gone: no callback races below
                _close_producer(self._producer, 0 if self.pending() else 5)
            with self._lock:
                self._closed = True
                held_seq = [(seq, item.rec) for seq, item in self._inflight.items()]
                held_seq += [(seq, item.rec) for seq, item, _ in self._failed]
                held = [rec for _, rec in sorted(held_seq, key=lambda p: p[0])]
                self._inflight.clear()
                self._failed.clear()
            # every record before the spool cursor is now acknowledged, rejected, re-spooled
            # further back or in `held`: drop that prefix, then put `held` in front
            self.spool.compact_read_prefix()
            if held:
                self.spool.prepend(held)
                log.warning("%d unacknowledged record(s) saved to the spool %s for the next run",
                            len(held), self.spool.dir)
            self.spool.close()

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            s = dict(self._counts)
            s["in_flight"] = len(self._inflight)
        s["spool_bytes"] = self.spool.bytes
        s["spool_unsent"] = self.spool.unread
        return s
