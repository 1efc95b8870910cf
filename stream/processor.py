"""The stream processor: consume event envelopes, run the engine, produce alerts.

    source.poll() -> decode -> Detector (stream.detector) -> alert_sink.add
                        \\-> (unusable record / unexpected error) -> dead_letters.add

The processor owns transport and commits only; what an event means (reassembly,
matching, alert documents, correlation stages) is the Detector's, shared with `hunt`.

Delivery guarantee: at-least-once, with stable ids
--------------------------------------------------
At most every `commit_interval_s`, when the source runs dry and before
returning, the processor makes its output durable and then records its input
position, in this order (stream.commit.commit_outputs):

    1. alert_sink.flush()     blocks until every alert of the batch is acked
    2. dead_letters.flush()   blocks until every dead letter is acked
    3. state.flush()          stages' durable state (when there is any)
    4. source.commit()        commits the positions of everything polled so far

So a committed offset never runs ahead of the output: whatever crashes (the
process, a flush that raises, the broker), the records after the last commit
are re-delivered to the group on restart and re-processed. Re-processing can
produce an alert twice, never lose one; a duplicate carries the same
`alert_id` (sha256 of rule id + event fingerprint) and the same dead-letter
source coordinates, so consumers de-duplicate on `alert_id`.

Why not exactly-once (Kafka transactions)? Not because the client cannot:
kafka-python 3.0.12 *does* ship a transactional producer (`transactional_id`,
`init_transactions`, `begin_transaction`, `send_offsets_to_transaction`,
`commit_transaction`, `abort_transaction` in kafka/producer/kafka.py and
kafka/producer/transaction_manager.py; `isolation_level='read_committed'` in
the consumer's fetcher). We keep at-least-once because (a) alerts and dead
letters go through two independent sinks and the offsets through the
consumer; one transaction would need a single transactional producer shared by
both sinks plus `send_offsets_to_transaction` with the consumer's group
metadata, i.e. a different connector contract; (b) every downstream reader
(SIEM, `alerts tail`) would have to read with read_committed to benefit;
(c) alerts are idempotent by construction (`alert_id`), so de-duplication at
the reader gives the same effective result with less machinery and no
per-batch transaction round trips.

A flush that raises propagates out of `run()` without committing: the batch is
re-delivered after the restart. A commit that raises (the group rebalanced and
the partitions moved) is logged and counted, and the loop goes on: the output
is already durable, so the only effect is a re-delivery (same alert_ids). One bad record never stops the loop: envelope
errors and any unexpected exception while handling a record dead-letter that
record (with the reason) and processing continues.

Split PowerShell script blocks: the detector buffers fragments in memory until
the block is whole, so while it holds any (`Detector.holds_state`) the output is
flushed but the offsets are NOT committed (`commits_held`); a crash then
re-delivers the fragments. Blocks time out after the assembler's timeout
(`Detector.tick`) and are flushed at an idle exit, so commits resume.

This module does not import `connectors/` or Kafka: it works on the small
protocols below, which the Kafka connector and the in-memory transport
(`connectors.memory`) both implement.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from sigstream.stream.commit import CommitOutcome, commit_outputs, owns_partitions
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.envelope import EnvelopeError, decode
from sigstream.stream.rules import Rule

log = logging.getLogger(__name__)


class EventSource(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> list[Any]: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class AlertSink(Protocol):
    def add(self, alert: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...   # blocks until every added alert is durable
    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def add(self, msg: Any, reason: str) -> None: ...
    def flush(self) -> None: ...   # blocks until every added record is durable
    def close(self) -> None: ...


# Dead letters keep at most this much of the original value: a dead-letter topic has the
# broker's default 1 MiB record limit, and a dead letter the sink cannot deliver would fail
# the batch again on every restart (a poison pill). The reason says when it was cut.
DEAD_LETTER_MAX_VALUE = 512 * 1024


class _CutMessage:
    """A message's coordinates with its value truncated (for the dead-letter sink)."""
    __slots__ = ("value", "key", "topic", "partition", "offset", "timestamp_ms", "headers")

    def __init__(self, msg: Any, value: bytes):
        self.value = value
        self.key = getattr(msg, "key", None)
        self.topic = msg.topic
        self.partition = msg.partition
        self.offset = msg.offset
        self.timestamp_ms = getattr(msg, "timestamp_ms", None)
        self.headers = list(getattr(msg, "headers", None) or [])


@dataclass
class Metrics:
    """Counters of one processor; `snapshot()` adds rates (and lag when the source has it)."""
    started: float = field(default_factory=time.monotonic)
    events: int = 0
    alerts: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)   # by kind (see _dead_letter)
    errors: int = 0            # unexpected exceptions per record (also dead-lettered)
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    commits_held: int = 0      # batches not committed because script-block fragments were buffered
    reloads: int = 0
    reloads_rejected: int = 0
    rules: int = 0
    lag: int | None = None
    busy_s: float = 0.0        # run()'s time minus its empty polls (waiting is not throughput)
    _window: tuple[float, int] = (0.0, 0)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        t0, e0 = self._window or (self.started, 0)
        t0 = t0 or self.started
        recent = (self.events - e0) / max(now - t0, 1e-9)
        self._window = (now, self.events)
        return {
            "events": self.events, "alerts": self.alerts, "dead_letters": self.dead_letters,
            "errors": self.errors, "batches": self.batches, "commits": self.commits,
            "commit_failures": self.commit_failures, "commits_held": self.commits_held,
            "reloads": self.reloads, "reloads_rejected": self.reloads_rejected, "rules": self.rules,
            "lag": self.lag, "events_per_s": round(recent, 1),
            "events_per_s_total": round(self.events / elapsed, 1),
            "uptime_s": round(elapsed, 1),
        }


class Processor:
    """Poll -> detect -> alert loop with commits after durable output (see module doc)."""

    def __init__(self, source: EventSource, detector: Detector, alert_sink: AlertSink,
                 dead_letters: DeadLetterSink, *, clock: Callable[[], float] = time.time,
                 batch_size: int = 500, poll_timeout_s: float = 0.5,
                 until_idle_s: float | None = None, metrics: Metrics | None = None,
                 rule_loader: Callable[[], Sequence[Rule]] | None = None,
                 watch: Callable[[], bool] | None = None, watch_interval_s: float = 2.0,
                 idle_exit: Callable[[], bool] | None = None,
                 log_interval_s: float = 30.0,
                 dead_letter_max_value: int = DEAD_LETTER_MAX_VALUE,
                 engine_factory: Callable[[Sequence[Rule]], Engine] | None = None,
                 commit_interval_s: float = 0.0, state: Any = None,
                 on_batch: Callable[[Any, float | None], None] | None = None):
        """
        detector:     the shared detection pipeline (stream.detector.Detector).
        clock:        wall clock (epoch seconds): the processing time given to the detector
                      (`detected_at`, script-block timeouts) and the idle timer.
        until_idle_s: return from run() after no new record for this long, counted while the
                      source owns partitions (a source with `assignment()` that returns
                      nothing is still joining its group: a restarted member waits out
                      the crashed member's session first).
        rule_loader:  called on `request_reload()` (SIGHUP) to get the new rule set.
        watch:        called every watch_interval_s between batches; True -> reload.
        idle_exit:    called when a poll returns nothing; True -> return (embedded
                      mode: "the collector has finished and everything is consumed").
        engine_factory: builds the engine of a reloaded rule set (default: an Engine with
                      the same enrichment as the current one).
        commit_interval_s: flush the sinks and commit at most this often (0: after every
                      batch); always when the source runs dry and when run() returns. A
                      longer interval means fewer synchronous round trips, and more records
                      redelivered (with the same alert ids) after a crash.
        state:        an output flushed after the dead letters and before the commit
                      (stages' durable state), or None.
        on_batch:     called (processor, seconds) after each batch with its processing time,
                      and (processor, None) after an empty poll and when run() returns
                      (observers such as sigstream.metrics; not per event).
        """
        self.source = source
        self.detector = detector
        self.alert_sink = alert_sink
        self.dead_letters = dead_letters
        self.state = state
        self.clock = clock
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.until_idle_s = until_idle_s
        self.metrics = metrics or Metrics()
        self.metrics.rules = len(detector.engine.rules)
        self.rule_loader = rule_loader
        self.watch = watch
        self.watch_interval_s = watch_interval_s
        self.idle_exit = idle_exit
        self.log_interval_s = log_interval_s
        self.dead_letter_max_value = dead_letter_max_value
        self.commit_interval_s = commit_interval_s
        self._uncommitted = False
        self._last_commit = time.monotonic()
        self.engine_factory = engine_factory or (
            lambda rules: Engine(rules, enrich=getattr(self.engine, "_enrich", None)))
        self.on_batch = on_batch
        self.last_batch: Sequence[Any] = ()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._lock = threading.Lock()
        self._pending_engine: Engine | None = None
        self._last_watch = time.monotonic()
        self._last_log = time.monotonic()

    @property
    def engine(self) -> Engine:
        return self.detector.engine

    # ------------------------------------------------------------ control ---
    def stop(self) -> None:
        """Finish the current batch, commit, return from run(). Signal-safe."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_reload(self) -> None:
        """Reload rules through `rule_loader` at the next batch boundary. Signal-safe."""
        self._reload_requested.set()

    def reload(self, rules: Sequence[Rule]) -> bool:
        """Compile `rules` now and swap the engine in at the next batch boundary.

        An empty rule set, or one where no rule compiles, is rejected: the old
        rules stay in force and the reason is logged. Returns whether accepted.
        """
        try:
            if not rules:
                raise ValueError("the new rule set is empty")
            engine = self.engine_factory(rules)
            if not engine.rules:
                raise ValueError(f"none of the {len(rules)} new rule(s) compiled"
                                 + (f" (first error: {engine.errors[0].reason})" if engine.errors else ""))
        except Exception as e:
            self.metrics.reloads_rejected += 1
            log.warning("rule reload rejected, keeping the %d current rule(s): %s",
                        len(self.engine.rules), e,
                        extra={"fields": {"event": "reload_rejected", "reason": str(e),
                                          "rules": len(self.engine.rules)}})
            return False
        with self._lock:
            self._pending_engine = engine
        return True

    def _reload_from_loader(self) -> None:
        if self.rule_loader is None:
            log.warning("rule reload requested but no rule loader is configured")
            return
        try:
            rules = list(self.rule_loader())
        except BaseException as e:  # noqa: BLE001 - a loader calling sys.exit must not kill us
            if isinstance(e, KeyboardInterrupt):
                raise
            self.metrics.reloads_rejected += 1
            log.warning("rule reload failed, keeping the %d current rule(s): %s: %s",
                        len(self.engine.rules), type(e).__name__, e,
                        extra={"fields": {"event": "reload_rejected", "reason": f"{type(e).__name__}: {e}",
                                          "rules": len(self.engine.rules)}})
            return
        self.reload(rules)

    def _between_batches(self) -> None:
        now = time.monotonic()
        if self.watch is not None and now - self._last_watch >= self.watch_interval_s:
            self._last_watch = now
            try:
                if self.watch():
                    log.info("rule files changed; reloading")
                    self._reload_requested.set()
            except Exception as e:  # a vanished file etc.: try again later
                log.warning("rule watch failed: %s", e)
        if self._reload_requested.is_set():
            self._reload_requested.clear()
            self._reload_from_loader()
        with self._lock:
            engine, self._pending_engine = self._pending_engine, None
        if engine is not None:
            old = len(self.engine.rules)
            self.detector.engine = engine
            self.metrics.reloads += 1
            self.metrics.rules = len(engine.rules)
            log.warning("rules reloaded: %d -> %d rule(s)", old, len(engine.rules),
                        extra={"fields": {"event": "reloaded", "old_rules": old,
                                          "rules": len(engine.rules)}})
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            self.log_metrics()

    def log_metrics(self) -> None:
        lag = getattr(self.source, "lag", None)
        if callable(lag):
            try:
                self.metrics.lag = lag()
            except Exception:  # lag is best effort
                self.metrics.lag = None
        log.info("processor metrics", extra={"fields": {"event": "metrics", **self.metrics.snapshot()}})

    # --------------------------------------------------------------- loop ---
    def run(self) -> Metrics:
        """Process until stop(), until idle (until_idle_s / idle_exit), or a sink fails."""
        last_record = self.clock()
        t_run, idle = time.perf_counter(), 0.0
        while not self._stop.is_set():
            self._between_batches()
            t_poll = time.perf_counter()
            batch = self.source.poll(self.batch_size, self.poll_timeout_s)
            if not batch:
                idle += time.perf_counter() - t_poll
                now = self.clock()
                self._emit(self.detector.tick(now))   # timed-out blocks, stage output
                if self._uncommitted or self.detector.holds_state:
                    self._commit()  # the source ran dry: nothing to batch the commit with
                if self.on_batch is not None:
                    self.on_batch(self, None)
                if self.idle_exit is not None and self.idle_exit():
                    self._end_of_input()
                    break
                if self.until_idle_s is not None:
                    if not owns_partitions(self.source):
                        # still joining the group (e.g. waiting out a crashed member's session):
                        # that is not "idle", the records are just not ours yet
                        last_record = now
                    elif now - last_record >= self.until_idle_s:
                        log.info("no new records for %.1fs; stopping", self.until_idle_s)
                        self._end_of_input()
                        break
                continue
            t_batch = time.perf_counter()
            self.process_batch(batch)
            if self.on_batch is not None:
                self.on_batch(self, time.perf_counter() - t_batch)
            self._uncommitted = True
            if time.monotonic() - self._last_commit >= self.commit_interval_s:
                self._emit(self.detector.tick(self.clock()))
                self._commit()
            last_record = self.clock()
        if self._uncommitted:
            self._commit()
        self.metrics.busy_s += time.perf_counter() - t_run - idle
        if self.on_batch is not None:
            self.on_batch(self, None)
        self.log_metrics()
        return self.metrics

    def _end_of_input(self) -> None:
        """Idle exit: like the end of a file in `hunt`, emit what the detector holds, commit."""
        if self.detector.holds_state:
            self._emit(self.detector.finish(self.clock()))
            self._commit()

    def process_batch(self, batch: Sequence[Any]) -> None:
        m = self.metrics
        self.last_batch = batch     # for on_batch observers (sigstream.metrics counts its topics)
        m.batches += 1
        detect = self.detector.detect
        now = self.clock()
        for msg in batch:
            m.events += 1
            try:
                env = decode(msg.value)
                alerts = detect(env["event"], {"topic": msg.topic, "partition": msg.partition,
                                               "offset": msg.offset, "event_id": env["event_id"]}, now)
                if alerts:
                    self._emit(alerts)
            except EnvelopeError as e:
                self._dead_letter(msg, str(e), "invalid_envelope")
            except Exception as e:  # never let one record crash the loop
                m.errors += 1
                log.debug("record %s/%s@%s failed", getattr(msg, "topic", "?"),
                          getattr(msg, "partition", "?"), getattr(msg, "offset", "?"), exc_info=True)
                self._dead_letter(msg, f"processing failed: {type(e).__name__}: {e}", "processing_failed")

    def _emit(self, alerts: list[dict]) -> None:
        for alert in alerts:
            self.alert_sink.add(alert)
        self.metrics.alerts += len(alerts)

    def _dead_letter(self, msg: Any, reason: str, kind: str = "other") -> None:
        """`reason` goes with the record; `kind` (few values) counts it in the metrics."""
        self.metrics.dead_letters += 1
        kinds = self.metrics.dead_letter_reasons
        kinds[kind] = kinds.get(kind, 0) + 1
        value = getattr(msg, "value", None)
        if value is not None and len(value) > self.dead_letter_max_value:
            reason = f"{reason} [value truncated to {self.dead_letter_max_value} of {len(value)} bytes]"
            msg = _CutMessage(msg, value[:self.dead_letter_max_value])
        log.debug("dead letter %s/%s@%s: %s", getattr(msg, "topic", "?"),
                  getattr(msg, "partition", "?"), getattr(msg, "offset", "?"), reason)
        self.dead_letters.add(msg, reason)

    def _commit(self) -> None:
        # Fragments and stage state that live only in memory hold the commit: committing
        # past them would lose them in a crash (stream.commit).
        self._last_commit = time.monotonic()
        outcome = commit_outputs(self.source, (self.alert_sink, self.dead_letters, self.state),
                                 held=lambda: self.detector.holds_state)
        if outcome is CommitOutcome.HELD:
            self.metrics.commits_held += 1
            return  # still uncommitted: tried again after the next batch
        self._uncommitted = False
        if outcome is CommitOutcome.FAILED:
            self.metrics.commit_failures += 1  # redelivered instead; the next batch commits past it
        else:
            self.metrics.commits += 1
