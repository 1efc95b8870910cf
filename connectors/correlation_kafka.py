"""The correlation consumer: repartition topic -> per-family evaluators -> alerts, with a
changelog so that a crash or a rebalance changes nothing.

    <prefix>.correlation-input (key = family)  --KafkaSource, group <group>.correlation-->
        PartitionState per assigned partition (stream.correlation_forward)
        -> correlation alerts -> <prefix>.alerts
        -> snapshots -> <prefix>.correlation-state (compacted, key = <group>/<partition>)

Runs as a thread next to the event processor in `sigstream run` (sigstream/processing.py).

Commit order (stream.commit): flush correlation alerts -> write the snapshot of every
partition changed since the last commit and flush it -> commit offsets. A snapshot holds
the offset of the last record applied, so:
- on assignment, each partition's latest snapshot is read from the changelog (read to
  its end, last value per key wins) and restored; records at or below its applied offset
  are skipped (they are re-delivered when the snapshot is newer than the committed
  offset, e.g. the commit failed after the snapshot was written);
- on revocation the partition's state is dropped (the next owner restores it);
- after a SIGKILL the restored state is the state at the last commit and the records
  after it are re-delivered and re-applied: the same correlation alerts, with the same
  alert_ids (emitted twice at most, never lost).
Known limits: a member that lost its partitions without noticing (a "zombie" past its
session timeout) may still write one snapshot for them before its commit fails; the
changelog is not fenced by generation. A partition snapshot must fit in one record
(the producer's 1 MiB request limit, before compression).

Idle end (`--until-idle`): once the event processor has stopped on idle, this loop waits
`until_idle` more seconds without correlation input (other members may still forward),
then releases every held match, decides every open window (as `hunt` at the end of its
files), and commits. On SIGTERM it commits without deciding anything (the state is in
the changelog; the next run resumes it).

The loop is transport-agnostic (source / changelog / sink protocols, tested with fakes);
`kafka_correlation_loop` builds the Kafka one.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from sigstream.stream.commit import CommitOutcome, commit_outputs, owns_partitions
from sigstream.stream.correlation_forward import Family, PartitionState

log = logging.getLogger(__name__)


class Changelog(Protocol):
    def load(self) -> Mapping[bytes, bytes]: ...          # latest value per key
    def write(self, key: bytes, value: bytes) -> None: ...
    def flush(self) -> None: ...                          # blocks until durable


class CorrelationLoop:
    """Poll the repartition topic, evaluate, commit through the changelog (module doc)."""

    def __init__(self, source: Any, changelog: Changelog, alert_sink: Any, *,
                 families: Sequence[Family], state_prefix: str,
                 suppressed: frozenset[str] = frozenset(), lateness_s: float = 300.0,
                 commit_interval_s: float = 1.0, until_idle_s: float | None = None,
                 batch_size: int = 500, poll_timeout_s: float = 0.5,
                 clock: Callable[[], float] = time.time, log_interval_s: float = 30.0):
        self.source = source
        self.changelog = changelog
        self.alert_sink = alert_sink
        self.families = {f.key: f for f in families}
        self.state_prefix = state_prefix
        self.suppressed = suppressed
        self.lateness_s = lateness_s
        self.commit_interval_s = commit_interval_s
        self.until_idle_s = until_idle_s
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.clock = clock
        self.log_interval_s = log_interval_s
        self.states: dict[int, PartitionState] = {}
        self.alerts = self.commits = self.commit_failures = self.restores = self.batches = 0
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._uncommitted = False
        self._last_commit = time.monotonic()
        self._last_log = time.monotonic()

    # ---------------------------------------------------------- control
    def stop(self) -> None:
        """Commit and return (no windows decided)."""
        self._stop.set()

    def drain(self) -> None:
        """The upstream processor ended on idle: after `until_idle_s` without input,
        decide everything, commit and return."""
        self._drain.set()

    # ---------------------------------------------------------- partitions
    def state_key(self, partition: int) -> bytes:
        return f"{self.state_prefix}/{partition}".encode()

    def on_assigned(self, partitions: Iterable[int]) -> None:
        """Restore each newly assigned partition from its latest snapshot."""
        parts = [p for p in partitions if p not in self.states]
        if not parts:
            return
        snaps = self.changelog.load()
        for p in parts:
            snap = snaps.get(self.state_key(p))
            try:
                st = PartitionState.restore(snap, self.families, suppressed=self.suppressed,
                                            lateness_s=self.lateness_s)
            except (ValueError, KeyError, TypeError) as e:
                log.error("correlation state of partition %d unusable (%s): starting empty", p, e)
                st = PartitionState(self.families, suppressed=self.suppressed, lateness_s=self.lateness_s)
            self.states[p] = st
            self.restores += 1
            log.info("correlation partition %d restored: applied offset %d, %d held match(es), "
                     "%d open group(s)", p, st.applied, st.stats()["held"], st.stats()["groups_open"],
                     extra={"fields": {"event": "correlation_restored", "partition": p,
                                       "applied": st.applied, "held": st.stats()["held"]}})

    def on_revoked(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            if self.states.pop(p, None) is not None:
                log.info("correlation partition %d revoked: state dropped", p)

    # ---------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        last_record = self.clock()
        drain_started: float | None = None
        while not self._stop.is_set():
            batch = self.source.poll(self.batch_size, self.poll_timeout_s)
            now = self.clock()
            if batch:
                self.process_batch(batch, now)
                last_record = now
                if time.monotonic() - self._last_commit >= self.commit_interval_s:
                    self.commit()
                continue
            if self._uncommitted:
                self.commit()
            if self._drain.is_set():
                if drain_started is None:
                    drain_started = now
                idle = self.until_idle_s or 0.0
                if not owns_partitions(self.source):
                    # still joining (not idle), unless this member gets no partition at all
                    last_record = now
                    if now - drain_started >= max(3 * idle, 30.0):
                        break
                elif now - max(last_record, drain_started) >= idle:
                    self.finish(now)
                    break
            if time.monotonic() - self._last_log >= self.log_interval_s:
                self._last_log = time.monotonic()
                self.log_metrics()
        else:
            if self._uncommitted:
                self.commit()
        self.log_metrics()
        return self.metrics()

    def process_batch(self, batch: Sequence[Any], now: float) -> None:
        self.batches += 1
        for msg in batch:
            st = self.states.get(msg.partition)
            if st is None:   # assigned without a callback (a source without a listener)
                self.on_assigned([msg.partition])
                st = self.states[msg.partition]
            alerts = st.apply(msg.offset, msg.key, msg.value, now)
            for a in alerts:
                self.alert_sink.add(a)
            self.alerts += len(alerts)
        self._uncommitted = True

    def finish(self, now: float) -> None:
        """End of input: decide everything held, then commit."""
        for p in sorted(self.states):
            alerts = self.states[p].finish(now)
            for a in alerts:
                self.alert_sink.add(a)
            self.alerts += len(alerts)
        self.commit()

    def commit(self) -> None:
        """Alerts, then snapshots of the changed partitions, then offsets."""
        self._last_commit = time.monotonic()
        self.alert_sink.flush()
        changed = [(p, st) for p, st in self.states.items() if st.dirty]
        for p, st in changed:
            self.changelog.write(self.state_key(p), st.encode())
        if changed:
            self.changelog.flush()
            for _, st in changed:
                st.dirty = False
        if commit_outputs(self.source, ()) is CommitOutcome.FAILED:
            self.commit_failures += 1   # re-delivered, and skipped up to the snapshot's offset
        else:
            self.commits += 1
        self._uncommitted = False

    def metrics(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for st in self.states.values():
            for k, v in st.stats().items():
                totals[k] = totals.get(k, 0) + v
        return {**totals, "alerts_emitted": self.alerts, "commits": self.commits,
                "commit_failures": self.commit_failures, "restores": self.restores,
                "batches": self.batches, "partitions": sorted(self.states)}

    def log_metrics(self) -> None:
        log.info("correlation metrics", extra={"fields": {"event": "correlation_metrics", **self.metrics()}})


# ------------------------------------------------------------------ Kafka wiring

class KafkaChangelog:
    """The compacted state topic: load() reads it whole, write()/flush() acknowledged."""

    def __init__(self, settings: Any, topic: str, producer_class: Any = None):
        from sigstream.connectors.kafka import KafkaRecordProducer
        self.settings = settings
        self.topic = topic
        self.producer = (producer_class or KafkaRecordProducer)(settings, topic)

    def load(self) -> Mapping[bytes, bytes]:
        from sigstream.connectors.kafka import read_changelog
        return read_changelog(self.settings, self.topic)

    def write(self, key: bytes, value: bytes) -> None:
        self.producer.send(value, key)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        try:
            self.producer.flush()
        finally:
            self.producer.close()


def kafka_correlation_source(settings: Any, topic: str, group: str, loop_ref: list, *,
                             session_timeout_s: float, max_poll_records: int,
                             source_class: Any = None) -> Any:
    """A KafkaSource (or `source_class`, e.g. ConfluentSource) on `topic` whose rebalances
    restore / drop the loop's partitions (inside poll(), before the records of a newly
    assigned partition are returned)."""
    from sigstream.connectors.kafka import KafkaSource

    def revoked(partitions: list[tuple[str, int]]) -> None:
        if loop_ref:
            loop_ref[0].on_revoked(p for t, p in partitions if t == topic)

    def assigned(partitions: list[tuple[str, int]]) -> None:
        if loop_ref:
            loop_ref[0].on_assigned(p for t, p in partitions if t == topic)

    return (source_class or KafkaSource)(
        settings, [topic], group, from_beginning=True, max_poll_records=max_poll_records,
        session_timeout_s=session_timeout_s, on_assigned=assigned, on_revoked=revoked)
