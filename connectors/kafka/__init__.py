"""Kafka connectors: the only package of sigstream that imports a Kafka client library
(kafka-python; confluent-kafka when chosen).

This module only re-exports the package's public names, so that
``from sigstream.connectors.kafka import X`` works whatever module of the package owns X:

* :mod:`.errors` -- :class:`KafkaError` (a ``TransportProblem``), :class:`KafkaConnectError`,
  :class:`DeliveryError`;
* :mod:`.settings` -- :class:`KafkaSettings` (from the SIGSTREAM_* variables), secrets kept
  out of kafka-python's logs;
* :mod:`.connection` -- :func:`check_connection`, the bounded bootstrap check every client
  goes through, and its diagnoses;
* :mod:`.admin` -- :func:`create_topics`, :func:`read_changelog`;
* :mod:`.source` -- :class:`KafkaSource` (consumer group -> :class:`Message`);
* :mod:`.producer` -- :class:`KafkaRecordProducer`, :class:`KafkaAlertSink`,
  :class:`KafkaDeadLetterSink` (acknowledged writes);
* :mod:`.publisher` -- :class:`KafkaEventPublisher` (collector side, disk spool, never loses
  events);
* :mod:`.clients` -- :func:`client_kit`: the processor's source and sinks from kafka-python
  or, optionally, confluent-kafka (:mod:`.confluent`, imported only when chosen).

Each module's docstring states its delivery guarantees. Topic names live in
:mod:`sigstream.stream.topics`; they are re-exported here for existing callers.
"""
from __future__ import annotations

from sigstream.connectors.kafka.admin import create_topics, read_changelog
from sigstream.connectors.kafka.clients import KAFKA_CLIENTS, ClientKit, client_available, client_kit
from sigstream.connectors.kafka.connection import CONNECT_TIMEOUT_S, check_connection
from sigstream.connectors.kafka.errors import DeliveryError, KafkaConnectError, KafkaError
from sigstream.connectors.kafka.producer import (PENDING_SWEEP, KafkaAlertSink, KafkaDeadLetterSink,
                                                 KafkaRecordProducer, best_compression)
from sigstream.connectors.kafka.publisher import KafkaEventPublisher
from sigstream.connectors.kafka.settings import DEFAULT_BOOTSTRAP, KafkaSettings
from sigstream.connectors.kafka.source import KafkaSource
from sigstream.connectors.message import Message
from sigstream.stream.topics import (ACTION_RESULTS_TOPIC, ACTIONS_TOPIC, ALERTS_TOPIC, DLQ_TOPIC,
                                     EVENT_TOPIC_PATTERN, SOURCES, TOPIC_PREFIX, action_results_topic,
                                     actions_topic, alerts_topic, all_topics, dlq_topic, event_topic,
                                     event_topic_pattern)

__all__ = [
    # errors
    "KafkaError", "KafkaConnectError", "DeliveryError",
    # settings and the connection check
    "DEFAULT_BOOTSTRAP", "KafkaSettings", "CONNECT_TIMEOUT_S", "check_connection",
    # topics: administration here, names from sigstream.stream.topics
    "create_topics", "read_changelog",
    "TOPIC_PREFIX", "SOURCES", "event_topic", "event_topic_pattern", "alerts_topic", "dlq_topic",
    "actions_topic", "action_results_topic", "all_topics",
    "ALERTS_TOPIC", "DLQ_TOPIC", "ACTIONS_TOPIC", "ACTION_RESULTS_TOPIC", "EVENT_TOPIC_PATTERN",
    # consumer, producers, publisher
    "Message", "KafkaSource",
    "PENDING_SWEEP", "best_compression", "KafkaRecordProducer", "KafkaAlertSink", "KafkaDeadLetterSink",
    "KafkaEventPublisher",
    # client library choice
    "KAFKA_CLIENTS", "ClientKit", "client_available", "client_kit",
]
