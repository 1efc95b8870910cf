"""The producer side: kafka-python producer settings and shutdown, and the acknowledged
writes to one topic -- :class:`KafkaRecordProducer` (with its fast append path) and the
sinks over it, :class:`KafkaAlertSink` and :class:`KafkaDeadLetterSink`.

Delivery -- ``flush`` blocks until every record sent so far is acknowledged
(``acks=all``, idempotent) or raises :class:`DeliveryError` listing the failures.

Also what the event publisher (:mod:`.publisher`) shares with these: the producer
keyword arguments, which delivery errors are permanent, a bounded producer close, and the
best available compression.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka import errors as kerrors
from kafka.partitioner.default import murmur2

from sigstream.connectors.kafka.connection import _client
from sigstream.connectors.kafka.errors import DeliveryError, _describe
from sigstream.connectors.kafka.settings import KafkaSettings
from sigstream.connectors.message import Message
from sigstream.stream.topics import ALERTS_TOPIC, DLQ_TOPIC

log = logging.getLogger(__name__)

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
    for module, codec in (("zstandard", "zstd"), ("lz4", "lz4")):
        try:
            importlib.import_module(module)
            return codec
        except ImportError:
            pass
    return "gzip"



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
                 compression: str | None = "auto", linger_ms: int = 20, delivery_timeout_s: float = 120,
                 batch_size: int = 512 * 1024):
        # Alerts carry the whole event (a few KB): kafka-python's 16 KB default batch would
        # mean one produce request per handful of alerts. linger_ms 20, not 5: every produce
        # request is Python work in kafka-python's I/O thread, taken from the matching under
        # the GIL (the processor with the full SigmaHQ set: about 10% more events/s); flush()
        # at each commit sends what lingers at once.
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
            future, _batch_full, new_batch, _ = accumulator.append(tp, None, key, value, [])
            if new_batch:
                # The batch before it is full: the sender drains it now, not after linger_ms.
                # (send() also wakes it on every append while batches queue up: a syscall
                # per record that a sender already awake does not need.)
                wakeup()
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

    producer_class: Any = KafkaRecordProducer   # the confluent sinks (.confluent) swap it

    def __init__(self, settings: KafkaSettings, topic: str, **producer_kw: Any):
        self.producer = self.producer_class(settings, topic, **producer_kw)

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

