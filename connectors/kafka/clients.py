"""Which Kafka client library the processor's source and sinks use: kafka-python (always
installed) or confluent-kafka (optional, ``pip install sigstream[confluent]``).

The processor's event source and alert / dead-letter sinks switch, and so do correlation
over Kafka's consumer and producers; the admin client (topic creation, the changelog's
restore read), the connection check and the collector's publisher stay on kafka-python.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from sigstream.connectors.kafka.errors import KafkaConnectError
from sigstream.connectors.kafka.settings import KafkaSettings

KAFKA_CLIENTS = ("kafka-python", "confluent")
# under "kafka": quiet_kafka_client's level and filter apply to librdkafka's lines too
LIBRDKAFKA_LOGGER = logging.getLogger("kafka.librdkafka")
CONFLUENT_MISSING = ("--kafka-client confluent needs the confluent-kafka package: "
                     "pip install sigstream[confluent]")


@dataclass(frozen=True)
class ClientKit:
    """The classes one client library provides (same constructors as the kafka-python ones)."""
    name: str
    source: Any
    alert_sink: Any
    dead_letter_sink: Any
    record_producer: Any    # acknowledged writes to one topic (send, send_at, flush, close)


def client_available(name: str) -> bool:
    """Is the library behind ``name`` importable? (without importing it)"""
    return name == "kafka-python" or (name == "confluent" and
                                      importlib.util.find_spec("confluent_kafka") is not None)


def client_kit(name: str) -> ClientKit:
    """The source and sinks of client ``name``; KafkaConnectError (a usage problem) when
    confluent-kafka is asked for and not installed."""
    if name == "kafka-python":
        from sigstream.connectors.kafka.producer import (KafkaAlertSink, KafkaDeadLetterSink,
                                                         KafkaRecordProducer)
        from sigstream.connectors.kafka.source import KafkaSource
        return ClientKit(name, KafkaSource, KafkaAlertSink, KafkaDeadLetterSink, KafkaRecordProducer)
    if name == "confluent":
        if not client_available(name):
            raise KafkaConnectError(CONFLUENT_MISSING, config=True)
        from sigstream.connectors.kafka.confluent import (ConfluentAlertSink, ConfluentDeadLetterSink,
                                                          ConfluentRecordProducer, ConfluentSource)
        return ClientKit(name, ConfluentSource, ConfluentAlertSink, ConfluentDeadLetterSink,
                         ConfluentRecordProducer)
    raise KafkaConnectError(f"unknown Kafka client {name!r} (one of {', '.join(KAFKA_CLIENTS)})",
                            config=True)


def librdkafka_config(settings: KafkaSettings) -> dict[str, Any]:
    """KafkaSettings (SIGSTREAM_* variables) as librdkafka properties."""
    kw = settings.client_kwargs()   # validates the protocol and SASL settings once, for both clients
    conf: dict[str, Any] = {"bootstrap.servers": ",".join(kw["bootstrap_servers"]),
                            "client.id": kw["client_id"], "security.protocol": kw["security_protocol"],
                            # librdkafka writes its log to stderr by itself; through this logger
                            # it is filtered like kafka-python's (sigstream.kafka_cli) instead
                            "logger": LIBRDKAFKA_LOGGER}
    if "sasl_mechanism" in kw:
        conf["sasl.mechanism"] = kw["sasl_mechanism"]
        if "sasl_plain_username" in kw:
            conf["sasl.username"] = kw["sasl_plain_username"]
        if "sasl_plain_password" in kw:
            conf["sasl.password"] = kw["sasl_plain_password"]
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if ours in kw:
            conf[theirs] = kw[ours]
    if "ssl_check_hostname" in kw:
        conf["ssl.endpoint.identification.algorithm"] = "https" if kw["ssl_check_hostname"] else "none"
    return conf
