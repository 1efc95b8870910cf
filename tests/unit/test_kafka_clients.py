"""The Kafka client choice (connectors.kafka.clients): settings mapped to librdkafka, and a
clear error when confluent-kafka is asked for but missing. No broker needed."""
from __future__ import annotations

import importlib.util

import pytest

from sigstream.connectors.kafka import KafkaConnectError, KafkaSettings, client_kit
from sigstream.connectors.kafka.clients import CONFLUENT_MISSING, client_available, librdkafka_config


def test_plaintext_settings_map_to_librdkafka():
    conf = librdkafka_config(KafkaSettings(bootstrap="k1:9092, k2:9093"))
    logger = conf.pop("logger")
    assert conf == {"bootstrap.servers": "k1:9092,k2:9093", "client.id": "sigstream",
                    "security.protocol": "PLAINTEXT"}
    assert logger.name.startswith("kafka.")   # filtered like kafka-python's loggers


def test_librdkafka_log_goes_through_python_logging_not_stderr(tmp_path):
    """Regression: librdkafka printed '%3|...|FAIL|...' lines to stderr for every reconnect."""
    pytest.importorskip("confluent_kafka")
    import subprocess
    import sys
    script = tmp_path / "p.py"
    script.write_text(
        "import logging, time\n"
        "from confluent_kafka import Producer\n"
        "from sigstream.connectors.kafka.clients import librdkafka_config\n"
        "from sigstream.connectors.kafka.settings import KafkaSettings\n"
        "seen = []\n"
        "class H(logging.Handler):\n"
        "    def emit(self, r): seen.append(r.name)\n"
        "logging.getLogger('kafka').addHandler(H()); logging.getLogger('kafka').propagate = False\n"
        "p = Producer(librdkafka_config(KafkaSettings(bootstrap='127.0.0.1:9')))\n"
        "p.produce('t', b'x')\n"
        "end = time.time() + 3\n"
        "while time.time() < end: p.poll(0.2)\n"
        "print(len(seen), sorted(set(seen)))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "FAIL" not in out.stderr and "%3|" not in out.stderr, out.stderr
    n, names = out.stdout.split(" ", 1)
    assert int(n) > 0 and "kafka.librdkafka" in names


def test_sasl_ssl_settings_map_to_librdkafka():
    s = KafkaSettings(bootstrap="k:9093", security_protocol="sasl_ssl", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="u", sasl_password="p", ssl_cafile="/ca.crt",
                      ssl_certfile="/c.crt", ssl_keyfile="/c.key")
    conf = librdkafka_config(s)
    assert conf["security.protocol"] == "SASL_SSL"
    assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == ("SCRAM-SHA-512", "u", "p")
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == \
        ("/ca.crt", "/c.crt", "/c.key")
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    s.ssl_check_hostname = False
    assert librdkafka_config(s)["ssl.endpoint.identification.algorithm"] == "none"


def test_sasl_without_mechanism_is_refused_for_both_clients():
    with pytest.raises(KafkaConnectError, match="SASL mechanism"):
        librdkafka_config(KafkaSettings(security_protocol="SASL_SSL"))


def test_missing_confluent_kafka_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "confluent_kafka" else real(name, *a))
    assert not client_available("confluent")
    with pytest.raises(KafkaConnectError) as e:
        client_kit("confluent")
    assert "pip install sigstream[confluent]" in str(e.value) and str(e.value).startswith(CONFLUENT_MISSING[:20])


def test_kafka_python_kit_is_the_default_classes():
    from sigstream.connectors.kafka import KafkaAlertSink, KafkaDeadLetterSink, KafkaSource
    kit = client_kit("kafka-python")
    assert (kit.source, kit.alert_sink, kit.dead_letter_sink) == (KafkaSource, KafkaAlertSink, KafkaDeadLetterSink)
    with pytest.raises(KafkaConnectError, match="unknown Kafka client"):
        client_kit("pykafka")


@pytest.mark.skipif(importlib.util.find_spec("confluent_kafka") is None,
                    reason="confluent-kafka is not installed (pip install sigstream[confluent])")
def test_confluent_sinks_use_the_confluent_producer():
    from sigstream.connectors.kafka.confluent import (ConfluentAlertSink, ConfluentDeadLetterSink,
                                                      ConfluentRecordProducer)
    assert ConfluentAlertSink.producer_class is ConfluentRecordProducer
    assert ConfluentDeadLetterSink.producer_class is ConfluentRecordProducer
    assert client_kit("confluent").alert_sink is ConfluentAlertSink
