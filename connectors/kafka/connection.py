"""The bounded connection check every Kafka client goes through, and its diagnoses.

:func:`check_connection` probes the bootstrap servers (TCP, TLS, ApiVersions, SASL,
metadata) within a deadline and turns authentication / TLS / protocol mismatches or an
unreachable broker into one :class:`KafkaConnectError` saying what is wrong and the likely
fix, instead of a hang or pages of client logs. :func:`_client` is THE place where the
package makes kafka-python clients: the check first, then the client.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any

from kafka import errors as kerrors

from sigstream.connectors.kafka.errors import KafkaConnectError, _describe
from sigstream.connectors.kafka.settings import DEFAULT_CONNECT_TIMEOUT_S, KafkaSettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = DEFAULT_CONNECT_TIMEOUT_S   # default bound of the check (settings.connect_timeout_s)
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


def _unreachable_message(servers: list[str], errors: list[KafkaConnectError], timeout_s: float) -> str:
    """One line for "nothing listens there": the address, why, for how long, what to check."""
    why = "; ".join(dict.fromkeys(e.message.split(": ", 1)[-1] for e in errors))
    return (f"cannot reach Kafka at {','.join(servers)} ({why}; tried for {timeout_s:g}s): is the "
            "broker running and listening on that address? Check --bootstrap / $SIGSTREAM_BOOTSTRAP "
            "and the network, or wait longer with --connect-timeout SECONDS")


def check_connection(settings: KafkaSettings, timeout_s: float | None = None, *,
                     use_cache: bool = True) -> None:
    """A bounded bootstrap check with ``settings``; raises :class:`KafkaConnectError` with
    one message saying what is wrong and the likely fix (authentication failed, certificate
    not trusted or not for this host, a listener speaking another protocol, unreachable).

    Every client of this package is made after it (:func:`_client`). kafka-python itself
    would retry such failures until its timeouts, logging every attempt. A result is
    remembered for a short while per settings, so a command making several clients checks
    (or fails) once. ``timeout_s``: default ``settings.connect_timeout_s``.
    """
    if timeout_s is None:
        timeout_s = settings.connect_timeout_s
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
        elif all(isinstance(e, _Unreachable) for e in errors):
            err = _Unreachable(_unreachable_message(kw["bootstrap_servers"], errors, timeout_s))
    with _check_lock:
        _check_cache[key] = (time.monotonic(), err)
    if err is not None:
        raise KafkaConnectError(err.message, config=err.config)


def _client(factory: Any, settings: KafkaSettings, connect_timeout_s: float | None = None,
            **extra: Any) -> Any:
    """THE place where this package makes kafka-python clients (KafkaAdminClient,
    KafkaConsumer, KafkaProducer): the connection check first (bounded by
    ``connect_timeout_s``, default ``settings.connect_timeout_s``), then the client; its
    own bootstrap failures become KafkaConnectError too."""
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
