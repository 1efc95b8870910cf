"""connectors.kafka without a broker: settings, topic names, the connection check's diagnoses."""
from __future__ import annotations

import logging
import re
import socket
import threading
import time

import click
import pytest
from kafka import errors as kerrors

from sigstream.connectors import kafka as kc
from sigstream.connectors.kafka import connection as kconn   # the check's cache and diagnoses
from sigstream.connectors.kafka import (ACTION_RESULTS_TOPIC, ACTIONS_TOPIC, ALERTS_TOPIC, DLQ_TOPIC,
                              EVENT_TOPIC_PATTERN, KafkaError, KafkaSettings, all_topics,
                              event_topic, event_topic_pattern)


def test_topic_names():
    assert event_topic("sysmon") == "sigstream.events.sysmon"
    assert event_topic("wmi", "t1") == "t1.events.wmi"
    assert (ALERTS_TOPIC, DLQ_TOPIC, ACTIONS_TOPIC, ACTION_RESULTS_TOPIC) == (
        "sigstream.alerts", "sigstream.dlq", "sigstream.actions", "sigstream.action-results")
    assert re.match(EVENT_TOPIC_PATTERN, "sigstream.events.security")
    assert not re.match(EVENT_TOPIC_PATTERN, "sigstream.alerts")
    assert not re.match(event_topic_pattern("a.b"), "aXb.events.x")
    names = all_topics("p")
    assert "p.events.other" in names and "p.dlq" in names and len(names) == 11


def test_settings_env_and_kwargs(monkeypatch):
    monkeypatch.setenv("SIGSTREAM_BOOTSTRAP", "k1:9092, k2:9092")
    s = KafkaSettings()
    assert s.client_kwargs()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert s.client_kwargs()["security_protocol"] == "PLAINTEXT"
    monkeypatch.setenv("SIGSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SIGSTREAM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SIGSTREAM_SASL_USERNAME", "u")
    monkeypatch.setenv("SIGSTREAM_SASL_PASSWORD", "p")
    monkeypatch.setenv("SIGSTREAM_SSL_CAFILE", "/ca.pem")
    kw = KafkaSettings.from_env(bootstrap="k3:9093").client_kwargs()
    assert kw["bootstrap_servers"] == ["k3:9093"]
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512" and kw["sasl_plain_username"] == "u"
    assert kw["ssl_cafile"] == "/ca.pem"


def test_settings_validation():
    with pytest.raises(KafkaError):
        KafkaSettings("k:1", security_protocol="SASL_PLAINTEXT").client_kwargs()
    with pytest.raises(KafkaError):
        KafkaSettings("k:1", security_protocol="TLS").client_kwargs()


# ---------------------------------------------------------------- security ---

SECURITY_VARS = ("SIGSTREAM_BOOTSTRAP", "SIGSTREAM_CONNECT_TIMEOUT", "SIGSTREAM_SECURITY_PROTOCOL", "SIGSTREAM_SASL_MECHANISM",
                 "SIGSTREAM_SASL_USERNAME", "SIGSTREAM_SASL_PASSWORD", "SIGSTREAM_SSL_CAFILE",
                 "SIGSTREAM_SSL_CERTFILE", "SIGSTREAM_SSL_KEYFILE", "SIGSTREAM_SSL_CHECK_HOSTNAME")


@pytest.fixture
def clean_env(monkeypatch):
    for name in SECURITY_VARS:
        monkeypatch.delenv(name, raising=False)
    kconn._check_cache.clear()
    yield monkeypatch
    kconn._check_cache.clear()


def test_password_not_in_repr(clean_env):
    clean_env.setenv("SIGSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("SIGSTREAM_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("SIGSTREAM_SASL_USERNAME", "u")
    clean_env.setenv("SIGSTREAM_SASL_PASSWORD", "s3cret-pw")
    s = KafkaSettings.from_env()
    assert s.sasl_password == "s3cret-pw"
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)
    assert s.client_kwargs()["sasl_plain_password"] == "s3cret-pw"


def test_from_env_defaults_and_overrides(clean_env):
    s = KafkaSettings.from_env()
    assert (s.bootstrap, s.security_protocol, s.ssl_check_hostname) == ("127.0.0.1:9092", "PLAINTEXT", True)
    clean_env.setenv("SIGSTREAM_BOOTSTRAP", "env:1")
    clean_env.setenv("SIGSTREAM_SECURITY_PROTOCOL", "")       # empty = unset
    s = KafkaSettings.from_env(client_id="x")
    assert (s.bootstrap, s.security_protocol, s.client_id) == ("env:1", "PLAINTEXT", "x")
    assert KafkaSettings.from_env(bootstrap="arg:2").bootstrap == "arg:2"   # the option wins


@pytest.mark.parametrize("value,expected", [("false", False), ("0", False), ("no", False),
                                            ("true", True), ("1", True), ("", True)])
def test_ssl_check_hostname_from_env(clean_env, value, expected):
    clean_env.setenv("SIGSTREAM_SECURITY_PROTOCOL", "SSL")
    clean_env.setenv("SIGSTREAM_SSL_CHECK_HOSTNAME", value)
    s = KafkaSettings.from_env()
    assert s.ssl_check_hostname is expected
    assert s.client_kwargs()["ssl_check_hostname"] is expected
    assert "ssl_check_hostname" not in KafkaSettings("k:1").client_kwargs()   # PLAINTEXT: no TLS keys


def test_ssl_check_hostname_rejects_junk(clean_env):
    clean_env.setenv("SIGSTREAM_SSL_CHECK_HOSTNAME", "maybe")
    with pytest.raises(KafkaError, match="SIGSTREAM_SSL_CHECK_HOSTNAME"):
        KafkaSettings.from_env()


def test_connect_error_is_one_line_for_the_cli():
    e = kc.KafkaConnectError("Kafka at h:1: authentication failed", config=True)
    assert isinstance(e, KafkaError) and isinstance(e, click.ClickException)
    assert str(e) == e.format_message() == "Kafka at h:1: authentication failed"
    assert e.config and e.exit_code == 1


def test_check_rejects_unreadable_tls_files_and_missing_credentials(clean_env, tmp_path):
    s = KafkaSettings("127.0.0.1:1", security_protocol="SSL", ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(kc.KafkaConnectError, match="SIGSTREAM_SSL_CAFILE=.*does not exist") as ei:
        kc.check_connection(s, 1)
    assert ei.value.config
    s = KafkaSettings("127.0.0.1:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(kc.KafkaConnectError, match="SIGSTREAM_SASL_USERNAME and SIGSTREAM_SASL_PASSWORD"):
        kc.check_connection(s, 1)


def test_check_unreachable_is_bounded_and_not_a_settings_problem(clean_env):
    with socket.socket() as sock:            # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = KafkaSettings(f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(kc.KafkaConnectError, match=f"cannot reach Kafka at 127.0.0.1:{port}") as ei:
        kc.check_connection(s, 1.0)
    assert time.monotonic() - t0 < 5
    assert not ei.value.config
    t0 = time.monotonic()                    # remembered for a moment: a second client fails at once
    with pytest.raises(kc.KafkaConnectError):
        kc.check_connection(s, 1.0)
    assert time.monotonic() - t0 < 0.2


def test_unreachable_message_says_where_for_how_long_and_what_to_check(clean_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clean_env.setenv("SIGSTREAM_CONNECT_TIMEOUT", "0.7")     # what --connect-timeout sets
    s = KafkaSettings.from_env(bootstrap=f"127.0.0.1:{port}")
    assert s.connect_timeout_s == 0.7
    t0 = time.monotonic()
    with pytest.raises(kc.KafkaConnectError) as ei:
        kc.check_connection(s)                                # the settings' bound
    assert time.monotonic() - t0 < 3
    msg = str(ei.value)
    assert f"cannot reach Kafka at 127.0.0.1:{port} (" in msg and "tried for 0.7s" in msg
    assert "is the broker running" in msg and "--connect-timeout" in msg and "\n" not in msg


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_connect_timeout_env_rejects_junk(clean_env, value):
    clean_env.setenv("SIGSTREAM_CONNECT_TIMEOUT", value)
    with pytest.raises(KafkaError, match="SIGSTREAM_CONNECT_TIMEOUT must be a positive number"):
        KafkaSettings.from_env()


def test_check_not_kafka_on_plaintext(clean_env):
    """A listener that closes the connection on Kafka bytes (as a TLS listener does)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        for _ in range(3):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(kc.KafkaConnectError, match="listener probably expects TLS") as ei:
            kc.check_connection(KafkaSettings(f"127.0.0.1:{port}"), 5)
        assert ei.value.config
    finally:
        srv.close()


def _settings(**kw) -> KafkaSettings:
    base = dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="bob",
                sasl_password="pw", ssl_cafile="/ca.pem")
    base.update(kw)
    return KafkaSettings("h:1", **base)


@pytest.mark.parametrize("settings,exc,versions_ok,expected", [
    (_settings(), kerrors.SaslAuthenticationFailedError("bad"), True,
     "authentication failed (SASL SCRAM-SHA-512 user 'bob'): check SIGSTREAM_SASL_USERNAME/PASSWORD"),
    # kafka-python sometimes sees the close before the error response: same diagnosis
    (_settings(), kerrors.KafkaConnectionError("socket disconnected"), True, "authentication failed"),
    (_settings(), kerrors.UnsupportedSaslMechanismError(), True, "does not enable SASL mechanism SCRAM-SHA-512"),
    (_settings(), kerrors.KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                               "verify failed: self-signed certificate in certificate chain"),
     False, "TLS: the broker certificate is not trusted (self-signed certificate in certificate chain"),
    (_settings(), kerrors.KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                               "verify failed: IP address mismatch, certificate is not valid "
                                               "for '10.0.0.1'. (_ssl.c:1006)"),
     False, "SIGSTREAM_SSL_CHECK_HOSTNAME=false"),
    (_settings(), kerrors.KafkaConnectionError("Handshake failed: [SSL: WRONG_VERSION_NUMBER] wrong version "
                                               "number"), False, "the listener probably does not use TLS"),
    (_settings(security_protocol="PLAINTEXT"), kerrors.InvalidReceiveError("Invalid frame length"), False,
     "the listener probably expects TLS (SSL or SASL_SSL) but SIGSTREAM_SECURITY_PROTOCOL is PLAINTEXT"),
])
def test_handshake_problem_messages(settings, exc, versions_ok, expected):
    msg, config = kconn._handshake_problem(settings, "h", exc, versions_ok, 5)
    assert expected in msg and config
    assert "pw" not in msg.replace("PASSWORD", "")


def test_admin_client_config_log_is_redacted(caplog):
    logger = logging.getLogger("kafka.admin.client")
    with caplog.at_level(logging.DEBUG, logger="kafka.admin.client"):
        logger.debug("Starting KafkaAdminClient with configuration: %s",
                     {"sasl_plain_password": "s3cret-pw", "client_id": "x"})
    text = caplog.text
    assert "s3cret-pw" not in text and "'sasl_plain_password': '***'" in text and "client_id" in text
