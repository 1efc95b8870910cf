"""The optional confluent-kafka (librdkafka) client: :class:`ConfluentSource`,
:class:`ConfluentRecordProducer` and the sinks over it, with the same small interface and
delivery guarantees as :mod:`.source` and :mod:`.producer` (``run --kafka-client confluent``).

Why: librdkafka fetches, decodes and produces in its own C threads, without the GIL; in
kafka-python all of that is Python code competing with the matching for one core.

* consumer -- offsets are committed only by :meth:`ConfluentSource.commit`, synchronously,
  at the position after the last record ``poll`` returned (librdkafka's stored offsets;
  ``enable.auto.commit`` is off); rebalance hooks run inside ``poll``; no commit on revoke.
* producer -- ``acks=all``, idempotent; ``flush`` blocks until every record sent so far is
  acknowledged or raises :class:`DeliveryError`. Keys are partitioned with murmur2 like
  kafka-python and the Java client, so both clients put a key on the same partition.

Install: ``pip install sigstream[confluent]``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka import KafkaError as CKError

from sigstream.connectors.kafka.clients import librdkafka_config
from sigstream.connectors.kafka.connection import check_connection
from sigstream.connectors.kafka.errors import DeliveryError, KafkaConnectError, KafkaError
from sigstream.connectors.kafka.producer import KafkaAlertSink, KafkaDeadLetterSink, best_compression
from sigstream.connectors.kafka.settings import KafkaSettings
from sigstream.connectors.message import Message
from sigstream.stream.topics import EVENT_TOPIC_PATTERN

log = logging.getLogger(__name__)


class _Errors:
    """librdkafka's error callback: transient errors it retries itself (logged at debug); a
    fatal one stops the client, and is raised by the next poll / flush."""

    def __init__(self) -> None:
        self.fatal: str | None = None

    def __call__(self, err: CKError) -> None:
        if err.fatal():
            log.error("kafka client: %s", err.str())
            self.fatal = err.str()
        else:
            log.debug("kafka client: %s", err.str())

    def check(self) -> None:
        if self.fatal is not None:
            raise KafkaError(f"Kafka client failed: {self.fatal}")


def _pairs(partitions: list[Any]) -> list[tuple[str, int]]:
    return [(tp.topic, tp.partition) for tp in partitions]


class ConfluentSource:
    """Consumer-group source (as :class:`~.source.KafkaSource`). ``topics``: names, or a
    regex string (default: every event topic)."""

    def __init__(self, settings: KafkaSettings, topics: list[str] | str | None = None,
                 group_id: str = "sigstream-processor", from_beginning: bool = True,
                 max_poll_records: int = 500, *, session_timeout_s: float = 45,
                 max_poll_interval_s: float = 300, metadata_max_age_s: float = 30,
                 on_assigned: Callable[[list[tuple[str, int]]], None] | None = None,
                 on_revoked: Callable[[list[tuple[str, int]]], None] | None = None):
        self.rebalances = 0
        self.on_assigned, self.on_revoked = on_assigned, on_revoked
        self._errors = _Errors()
        check_connection(settings)   # the same bounded check and diagnoses as kafka-python clients
        conf = dict(librdkafka_config(settings), **{
            "group.id": group_id, "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "session.timeout.ms": int(session_timeout_s * 1000),
            "max.poll.interval.ms": int(max(max_poll_interval_s, session_timeout_s) * 1000),
            "topic.metadata.refresh.interval.ms": int(metadata_max_age_s * 1000),
            "error_cb": self._errors})
        try:
            self._consumer = Consumer(conf)
        except KafkaException as e:
            raise KafkaConnectError(f"cannot make a Kafka consumer for {settings.bootstrap}: {e}",
                                    config=True) from e
        if topics is None:
            topics = EVENT_TOPIC_PATTERN
        # librdkafka: a subscription starting with ^ is a regex
        names = [topics if topics.startswith("^") else "^" + topics] if isinstance(topics, str) else list(topics)
        self._consumer.subscribe(names, on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        if partitions:
            log.info("partitions assigned: %s", sorted(_pairs(partitions)))
        if self.on_assigned is not None:
            # inside poll(), before any record of these partitions is returned
            self.on_assigned(_pairs(partitions))

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        # no commit here: records returned but not committed are redelivered (at-least-once)
        if partitions:
            log.info("partitions revoked: %s", sorted(_pairs(partitions)))
        self.rebalances += 1
        if self.on_revoked is not None:
            self.on_revoked(_pairs(partitions))

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]:
        """Up to ``max_records`` records; [] after ``timeout_s`` without data."""
        consume = self._consumer.consume
        # consume(n, t) waits for n records or t: take what is queued at once, and wait only
        # for the first record when nothing is (a half-full batch must not wait out t)
        got = consume(max_records, 0)
        if not got:
            got = consume(1, timeout_s)
            if got and max_records > 1:
                got += consume(max_records - 1, 0)
            elif not got:
                self._errors.check()   # idle because the client stopped for good?
        out: list[Message] = []
        append = out.append
        for m in got:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaError(f"Kafka consumer failed: {err.str()}")
                log.warning("consumer: %s", err.str())
                continue
            kind, ts = m.timestamp()
            append(Message(m.value(), m.key(), m.topic(), m.partition(), m.offset(),
                           ts if kind and ts >= 0 else None, m.headers() or []))
        return out

    def commit(self) -> None:
        """Synchronously commit the position after the last record poll() returned, for every
        assigned partition. Raises KafkaError if the commit failed."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, CKError) and err.code() == CKError._NO_OFFSET:
                return   # nothing consumed since the last commit
            raise KafkaError(f"offset commit failed: {e}") from e

    def assignment(self) -> set[tuple[str, int]]:
        return set(_pairs(self._consumer.assignment()))

    def lag_by_partition(self) -> dict[tuple[str, int], int]:
        """Records not yet consumed, per assigned partition (as KafkaSource's): the high
        watermark librdkafka cached from its last fetch minus the position; no request is
        sent, and a partition without both (not fetched yet) is left out."""
        out = {}
        for tp in self._consumer.position(self._consumer.assignment()):
            if tp.offset < 0:
                continue
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def close(self) -> None:
        """Leave the group without committing (auto commit is off)."""
        self._consumer.close()


_QUEUE_FULL_WAIT_S = 0.1


class ConfluentRecordProducer:
    """Acknowledged writes to one topic (as :class:`~.producer.KafkaRecordProducer`)."""

    def __init__(self, settings: KafkaSettings, topic: str, *, acks: Any = "all", idempotent: bool = True,
                 compression: str | None = "auto", linger_ms: int = 5, delivery_timeout_s: float = 120,
                 batch_size: int = 512 * 1024):
        self.topic = topic
        self._errors = _Errors()
        check_connection(settings)
        # the codec kafka-python would pick: readers of the topic (alerts tail, respond) are
        # kafka-python clients and decode only what its installed libraries support
        codec = best_compression() if compression == "auto" else (compression or "none")
        conf = dict(librdkafka_config(settings), **{
            "acks": acks, "enable.idempotence": idempotent, "compression.type": codec,
            "linger.ms": linger_ms, "batch.size": batch_size,
            "delivery.timeout.ms": int(delivery_timeout_s * 1000),
            "partitioner": "murmur2_random",       # the Java / kafka-python placement of keys
            "delivery.report.only.error": True,     # a callback per failure, not per record
            "on_delivery": self._delivered, "error_cb": self._errors})
        if acks == "all" or acks == -1:
            conf["acks"] = "all"
        try:
            self._producer = Producer(conf)
        except KafkaException as e:
            raise KafkaConnectError(f"cannot make a Kafka producer for {settings.bootstrap}: {e}",
                                    config=True) from e
        self._failures: list[tuple[str, str]] = []
        self.sent = self.acked = 0
        self._unflushed = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append((self.topic, err.str()))

    def _produce(self, value: bytes | None, key: bytes | None, **kw: Any) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key, **kw)
                break
            except BufferError:          # the local queue is full: let librdkafka send some
                self._producer.poll(_QUEUE_FULL_WAIT_S)
            except (KafkaException, TypeError, ValueError) as e:  # too large, unknown topic, ...
                self._failures.append((self.topic, str(e)))
                return
        self.sent += 1
        self._unflushed += 1
        self._producer.poll(0)   # serves error callbacks; no I/O here

    def send(self, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        if headers:
            self._produce(value, key, headers=list(headers))
        else:
            self._produce(value, key)

    def send_at(self, value: bytes, key: bytes | None, timestamp_ms: int | None) -> None:
        """send() with the record's timestamp set (e.g. an event time)."""
        if timestamp_ms is None:
            self._produce(value, key)
        else:
            self._produce(value, key, timestamp=int(timestamp_ms))

    def flush(self, timeout_s: float | None = 30) -> None:
        """Block until every record sent so far is acknowledged; DeliveryError otherwise."""
        left = self._producer.flush(-1 if timeout_s is None else timeout_s)
        failures, self._failures = self._failures, []
        if self._errors.fatal is not None:
            failures.append((self.topic, f"producer failed: {self._errors.fatal}"))
        self.acked += max(self._unflushed - left - len(failures), 0)
        self._unflushed = left
        if left:
            failures.append((self.topic, f"{left} record(s) not acknowledged within {timeout_s}s"))
        if failures:
            raise DeliveryError(failures)

    def close(self, timeout_s: float = 30) -> None:
        """Deliver what is queued within ``timeout_s``; librdkafka drops the rest."""
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("producer close: %d record(s) to %s not delivered", left, self.topic)


class ConfluentAlertSink(KafkaAlertSink):
    """:class:`~.producer.KafkaAlertSink` over the confluent-kafka producer."""
    producer_class = ConfluentRecordProducer


class ConfluentDeadLetterSink(KafkaDeadLetterSink):
    """:class:`~.producer.KafkaDeadLetterSink` over the confluent-kafka producer."""
    producer_class = ConfluentRecordProducer
