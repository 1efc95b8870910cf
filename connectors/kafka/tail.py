"""Reading topics like ``tail -f`` (:class:`TopicTail`): the last N records, then new ones.

No consumer group (nothing is committed, no other reader is affected): the partitions
of the topics are assigned directly. :meth:`TopicTail.history` returns the records from
the start position up to the end offsets taken when the tail was made -- per partition
the last ``lines`` records (or everything) -- and :meth:`TopicTail.poll` follows after
them. Partitions added to a topic later are not followed.
"""
from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from sigstream.connectors.kafka.connection import _client
from sigstream.connectors.kafka.errors import KafkaError
from sigstream.connectors.kafka.settings import KafkaSettings
from sigstream.connectors.message import Message


def _message(tp: TopicPartition, r: object) -> Message:
    ts = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
    return Message(r.value, r.key, tp.topic, tp.partition, r.offset, ts, list(r.headers or []))


class TopicTail:
    """``lines``: per partition, start this many records before the end (None: at the
    beginning). ``optional``: topics that may be missing (skipped); any other missing
    topic is a KafkaError after ``metadata_timeout_s``."""

    def __init__(self, settings: KafkaSettings, topics: list[str], lines: int | None,
                 optional: tuple[str, ...] = (), metadata_timeout_s: float = 5.0):
        self._later: list[Message] = []     # read past the end offsets by history()
        self._consumer = _client(KafkaConsumer, settings, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest")
        try:
            self._tps = self._partitions(topics, optional, metadata_timeout_s)
            self._consumer.assign(self._tps)
            self.end = self._consumer.end_offsets(self._tps) if self._tps else {}
            begin = self._consumer.beginning_offsets(self._tps) if self._tps else {}
            for tp in self._tps:
                start = begin[tp] if lines is None else max(begin[tp], self.end[tp] - lines)
                self._consumer.seek(tp, start)
        except BaseException:
            self._consumer.close(autocommit=False)
            raise

    def _partitions(self, topics: list[str], optional: tuple[str, ...],
                    timeout_s: float) -> list[TopicPartition]:
        deadline = time.monotonic() + timeout_s
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = self._consumer.partitions_for_topic(topic)
            while not parts and topic not in optional and time.monotonic() < deadline:
                time.sleep(0.2)    # metadata of a just-created topic may lag
                parts = self._consumer.partitions_for_topic(topic)
            if not parts:
                if topic in optional:
                    continue
                raise KafkaError(f"topic {topic} does not exist (create it with `sigstream topics "
                                 "create`, or check --topic / --topic-prefix)")
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        return tps

    def history(self, timeout_s: float = 60.0) -> list[Message]:
        """The records from the start positions to the end offsets taken at start, each
        partition in offset order. KafkaError if they are not read within ``timeout_s``."""
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [tp for tp in self._tps if self._consumer.position(tp) < self.end[tp]]
            if not behind:
                return out
            if time.monotonic() > deadline:
                raise KafkaError(f"could not read {len(behind)} partition(s) to their end within "
                                 f"{timeout_s:g}s")
            for tp, records in self._consumer.poll(timeout_ms=500, max_records=5000).items():
                # the end offsets cap the history: what arrived since is for poll()
                for r in records:
                    (out if r.offset < self.end[tp] else self._later).append(_message(tp, r))

    def poll(self, max_records: int = 500, timeout_s: float = 0.5) -> list[Message]:
        """New records after the history (each partition in offset order); [] after
        ``timeout_s`` without any."""
        if self._later:
            later, self._later = self._later, []
            return later
        out: list[Message] = []
        for tp, records in self._consumer.poll(timeout_ms=int(timeout_s * 1000),
                                               max_records=max_records).items():
            out += [_message(tp, r) for r in records]
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)
