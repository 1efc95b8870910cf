"""The consumer side: :class:`KafkaSource`, a consumer-group member that returns records
as :class:`~sigstream.connectors.message.Message` (poll, commit, assignment).

Delivery -- at-least-once: offsets are committed only by an explicit
:meth:`KafkaSource.commit`, which synchronously commits the position after everything
``poll`` has returned. Records returned but not committed before a rebalance, a crash or
``close`` are delivered again (to this or another group member): there is no commit on
revoke.
"""
from __future__ import annotations

import logging
from typing import Callable

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from sigstream.connectors.kafka.connection import _client
from sigstream.connectors.kafka.errors import KafkaError, _describe
from sigstream.connectors.kafka.settings import KafkaSettings
from sigstream.connectors.message import Message
from sigstream.stream.topics import EVENT_TOPIC_PATTERN

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: "KafkaSource"):
        self.owner = owner

    def on_partitions_revoked(self, revoked):
        # no commit here: records poll() returned but the processor has not committed are
        # redelivered to the next owner (at-least-once)
        if revoked:
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        self.owner.rebalances += 1
        if self.owner.on_revoked is not None:
            self.owner.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned):
        if assigned:
            log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        if self.owner.on_assigned is not None:
            # inside poll(), before any record of these partitions is returned
            self.owner.on_assigned([(tp.topic, tp.partition) for tp in assigned])


class KafkaSource:
    """Consumer-group source. ``topics``: a list of names, or a regex string (default: every
    event topic, ``^sigstream\\.events\\..*``). New topics matching a pattern are picked up
    within ``metadata_max_age_s``."""

    def __init__(self, settings: KafkaSettings, topics: list[str] | str | None = None,
                 group_id: str = "sigstream-processor", from_beginning: bool = True,
                 max_poll_records: int = 500, *, session_timeout_s: float = 45,
                 max_poll_interval_s: float = 300, metadata_max_age_s: float = 30,
                 on_assigned: Callable[[list[tuple[str, int]]], None] | None = None,
                 on_revoked: Callable[[list[tuple[str, int]]], None] | None = None):
        """on_assigned / on_revoked: called with (topic, partition) pairs on a rebalance,
        inside poll() (state for new partitions is restored there, before their records)."""
        self.rebalances = 0
        self.on_assigned, self.on_revoked = on_assigned, on_revoked
        self._consumer = _client(
            KafkaConsumer, settings, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            max_poll_records=max_poll_records, session_timeout_ms=int(session_timeout_s * 1000),
            max_poll_interval_ms=int(max_poll_interval_s * 1000),
            metadata_max_age_ms=int(metadata_max_age_s * 1000))
        listener = _Rebalance(self)
        if topics is None:
            topics = EVENT_TOPIC_PATTERN
        if isinstance(topics, str):
            self._consumer.subscribe(pattern=topics, listener=listener)
        else:
            self._consumer.subscribe(topics=list(topics), listener=listener)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Message]:
        """Up to ``max_records`` records (each partition's records in offset order;
        partitions interleave arbitrarily); [] after ``timeout_s`` without data."""
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Message] = []
        for tp, records in batches.items():
            for r in records:
                ts = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
                out.append(Message(r.value, r.key, tp.topic, tp.partition, r.offset, ts,
                                   list(r.headers or [])))
        return out

    def commit(self) -> None:
        """Synchronously commit, for every assigned partition, the position after the last
        record poll() returned. Raises KafkaError if the commit failed (e.g. the group
        rebalanced meanwhile: those records will be redelivered)."""
        try:
            self._consumer.commit()
        except Exception as e:  # noqa: BLE001
            raise KafkaError(f"offset commit failed: {_describe(e)}") from e

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag_by_partition(self) -> dict[tuple[str, int], int]:
        """Records not yet consumed, per assigned partition: the high watermark of the last
        fetch response minus the position (no request is sent; a partition not fetched yet
        is left out). For the metrics (sigstream.metrics), from the polling thread."""
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            pos = self._consumer.position(tp, timeout_ms=0) if high is not None else None
            if pos is not None:
                out[(tp.topic, tp.partition)] = max(0, high - pos)
        return out

    def close(self) -> None:
        """Leave the group without committing (commit() first if wanted)."""
        self._consumer.close(autocommit=False)

