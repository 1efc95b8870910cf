"""connectors.kafka without a broker: settings, topic names."""
from __future__ import annotations

import re

import pytest

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
