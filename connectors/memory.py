"""The in-process transport: a tiny Kafka look-alike for the embedded mode and the tests.

    broker = MemoryBroker()
    MemoryProducer(broker).send("sigstream.events.sysmon", value, key=b"HOST")
    src = MemorySource(broker, r"sigstream\\.events\\..*", group_id="g")
    src.poll(500, 0.5) -> [Message, ...];  src.commit()
    MemoryAlertSink(broker, "sigstream.alerts"), MemoryDeadLetterSink(broker, "sigstream.dlq")

Topics have partitions (append-only lists); keyed messages go to a partition by
a stable hash of the key (one host stays ordered on one partition), unkeyed
ones round-robin. Consumer groups keep committed offsets in the broker, so a
new `MemorySource` of the same group resumes where the last commit left off
(that is how the tests simulate a crash and a restart). A group here has one
member: there is no rebalancing. Every operation holds one lock and polls
wait on a condition, so a collector thread can feed a processor thread.
"""
from __future__ import annotations

import re
import threading
import time
import zlib
from typing import Any, Iterable, Sequence

import orjson

from sigstream.connectors.message import Headers, Message

from sigstream.stream.topics import ALERTS_TOPIC, DLQ_TOPIC, event_topic  # noqa: F401 - re-exported

def partition_for(key: bytes | None, partitions: int, counter: int) -> int:
    if key is None:
        return counter % partitions
    return zlib.crc32(key) % partitions


class MemoryBroker:
    def __init__(self, default_partitions: int = 3):
        self.default_partitions = default_partitions
        self._topics: dict[str, list[list[Message]]] = {}
        self._committed: dict[tuple[str, str, int], int] = {}
        self._rr = 0
        self._cond = threading.Condition()

    # topics
    def create_topic(self, name: str, partitions: int | None = None) -> None:
        with self._cond:
            if name not in self._topics:
                self._topics[name] = [[] for _ in range(partitions or self.default_partitions)]

    def topics(self) -> list[str]:
        with self._cond:
            return sorted(self._topics)

    def partitions(self, topic: str) -> int:
        with self._cond:
            return len(self._topics.get(topic, ()))

    # produce / read
    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Headers | None = None, partition: int | None = None,
                timestamp_ms: int | None = None) -> Message:
        with self._cond:
            if topic not in self._topics:   # auto-create, like a dev broker
                self._topics[topic] = [[] for _ in range(self.default_partitions)]
            parts = self._topics[topic]
            if partition is None:
                self._rr += 1
                partition = partition_for(key, len(parts), self._rr)
            log = parts[partition]
            msg = Message(value, key, topic, partition, len(log),
                          int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
                          list(headers or ()))
            log.append(msg)
            self._cond.notify_all()
            return msg

    def read(self, topic: str, partition: int, offset: int, max_records: int) -> list[Message]:
        with self._cond:
            return self._topics[topic][partition][offset:offset + max_records]

    def end_offsets(self, topic: str) -> list[int]:
        with self._cond:
            return [len(p) for p in self._topics.get(topic, ())]

    def messages(self, topic: str) -> list[Message]:
        """Every message of a topic, partition by partition (tests, embedded output)."""
        with self._cond:
            return [m for p in self._topics.get(topic, ()) for m in p]

    # consumer groups
    def committed(self, group: str, topic: str, partition: int) -> int | None:
        with self._cond:
            return self._committed.get((group, topic, partition))

    def commit(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        with self._cond:
            for (topic, partition), off in offsets.items():
                self._committed[(group, topic, partition)] = off

    def wait(self, timeout_s: float) -> None:
        with self._cond:
            self._cond.wait(timeout_s)


class MemorySource:
    """EventSource over a MemoryBroker: topics by name list or regex pattern, one group member."""

    def __init__(self, broker: MemoryBroker, topics_or_pattern: str | Sequence[str], group_id: str,
                 from_beginning: bool = True):
        self.broker = broker
        self.group_id = group_id
        self.from_beginning = from_beginning
        if isinstance(topics_or_pattern, str):
            self._pattern: re.Pattern | None = re.compile(topics_or_pattern)
            self._names: tuple[str, ...] = ()
        else:
            self._pattern, self._names = None, tuple(topics_or_pattern)
        self._positions: dict[tuple[str, int], int] = {}
        self._next = 0
        self.closed = False

    def _assigned(self) -> list[tuple[str, int]]:
        topics = [t for t in self.broker.topics()
                  if (self._pattern.fullmatch(t) if self._pattern else t in self._names)]
        out = []
        for t in topics:
            ends = self.broker.end_offsets(t)
            for p in range(len(ends)):
                tp = (t, p)
                if tp not in self._positions:
                    committed = self.broker.committed(self.group_id, t, p)
                    self._positions[tp] = (committed if committed is not None
                                           else 0 if self.from_beginning else ends[p])
                out.append(tp)
        return out

    def _fetch(self, max_records: int) -> list[Message]:
        assigned = self._assigned()
        out: list[Message] = []
        if not assigned:
            return out
        n = len(assigned)
        start = self._next % n
        self._next += 1
        for i in range(n):   # rotate the starting partition: no partition starves
            tp = assigned[(start + i) % n]
            want = max_records - len(out)
            if want <= 0:
                break
            got = self.broker.read(tp[0], tp[1], self._positions[tp], want)
            if got:
                self._positions[tp] += len(got)
                out.extend(got)
        return out

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        if self.closed:
            raise RuntimeError("source is closed")
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._fetch(max_records)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            self.broker.wait(min(remaining, 0.05))

    def commit(self) -> None:
        """Commit the positions of everything polled so far."""
        self.broker.commit(self.group_id, dict(self._positions))

    def lag(self) -> int:
        return sum(self.lag_by_partition().values())

    def lag_by_partition(self) -> dict[tuple[str, int], int]:
        """Records not yet consumed, per partition (as KafkaSource's)."""
        return {(t, p): self.broker.end_offsets(t)[p] - self._positions[(t, p)]
                for (t, p) in self._assigned()}

    def close(self) -> None:
        self.closed = True


class MemoryProducer:
    def __init__(self, broker: MemoryBroker):
        self.broker = broker

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Headers | None = None) -> Message:
        return self.broker.produce(topic, value, key=key, headers=headers)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryAlertSink:
    """Alerts as JSON on an alerts topic, keyed by host. add() buffers; flush() 'acks'."""

    def __init__(self, broker: MemoryBroker, topic: str = ALERTS_TOPIC):
        self.broker, self.topic = broker, topic
        self._pending: list[dict[str, Any]] = []

    def add(self, alert: dict[str, Any]) -> None:
        self._pending.append(alert)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for a in pending:
            host = a.get("host")
            self.broker.produce(self.topic, orjson.dumps(a, default=str),
                                key=(host if isinstance(host, str) and host else "unknown").encode(),
                                headers=[("alert_id", a["alert_id"].encode())])

    def close(self) -> None:
        self.flush()

    def alerts(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for m in self.broker.messages(self.topic)]


def dead_letter_headers(msg: Any, reason: str) -> Headers:
    return [("reason", reason.encode("utf-8", "replace")),
            ("source_topic", str(msg.topic).encode()),
            ("source_partition", str(msg.partition).encode()),
            ("source_offset", str(msg.offset).encode())]


class MemoryDeadLetterSink:
    """The original bytes, with the reason and the source coordinates as headers."""

    def __init__(self, broker: MemoryBroker, topic: str = DLQ_TOPIC):
        self.broker, self.topic = broker, topic
        self._pending: list[tuple[Any, str]] = []

    def add(self, msg: Any, reason: str) -> None:
        self._pending.append((msg, reason))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for msg, reason in pending:
            self.broker.produce(self.topic, msg.value, key=msg.key,
                                headers=dead_letter_headers(msg, reason))

    def close(self) -> None:
        self.flush()


def publish_events(producer: Any, events: Iterable[dict], collector_id: str = "embedded") -> int:
    """Wrap, encode and send normalised events to their per-source topics (embedded collector)."""
    from sigstream.stream.envelope import encode, host_key, wrap
    n = 0
    for event in events:
        env = wrap(event, collector_id)
        producer.send(event_topic(env["source"]), encode(env), key=host_key(event))
        n += 1
    return n
