"""Pipeline assembly for `run` and `demo`: sources, the shared Detector, sinks, signals.

Embedded mode: files -> collector thread -> in-process MemoryBroker -> Processor ->
sinks. Kafka mode: event topics -> Processor -> alerts/dlq topics. The detection is
`stream.detector.Detector` in both (as in `hunt`); this module only wires transports.
Kafka is reached through `sigstream.connectors.kafka`, imported only when a broker is used.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable, Iterable

from sigstream.render import err_console
from sigstream.stream.errors import TransportProblem
from sigstream.stream.rules import find_rule_files
from sigstream.stream.topics import ALERTS_TOPIC, DLQ_TOPIC, EVENT_TOPIC_PATTERN

log = logging.getLogger("sigstream.run")

DEFAULT_GROUP = "sigstream-processor"


class TeeSink:
    """Every alert to several sinks; flush flushes all (the durable one first)."""

    def __init__(self, *sinks: Any):
        self.sinks = [s for s in sinks if s is not None]

    def add(self, alert: dict[str, Any]) -> None:
        for s in self.sinks:
            s.add(alert)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class RuleWatcher:
    """True when the set, mtime or size of the rule files changed since the last call."""

    def __init__(self, paths: Iterable[str]):
        self.paths = list(paths)
        self.sig = self._signature()

    def _signature(self) -> tuple:
        out = []
        for f in find_rule_files(self.paths):
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                continue
        return tuple(out)

    def __call__(self) -> bool:
        sig = self._signature()
        changed, self.sig = sig != self.sig, sig
        return changed


def install_signals(processor: Any) -> Callable[[], None]:
    """SIGTERM/SIGINT: finish the batch, commit, exit 0 (a second one aborts). SIGHUP: reload."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def on_stop(signum: int, frame: Any) -> None:
        if processor.stopping:
            raise KeyboardInterrupt
        log.warning("%s: finishing the current batch, committing, exiting", signal.Signals(signum).name)
        processor.stop()

    def on_hup(signum: int, frame: Any) -> None:
        log.warning("SIGHUP: reloading rules at the next batch boundary")
        processor.request_reload()

    for sig, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop),
                         (getattr(signal, "SIGHUP", None), on_hup)):
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)
    return restore


# ---------------------------------------------------------------- embedded ---

def run_embedded(detector: Any, inputs: list[str], out: Any, *, batch_size: int = 500,
                 until_idle: float | None = None, rule_loader: Callable | None = None,
                 watch: Callable | None = None, group: str = DEFAULT_GROUP,
                 wrap: Callable[[Any], Any] | None = None,
                 metrics_at: tuple[str, int] | None = None) -> Any:
    """Files -> collector thread -> MemoryBroker -> Processor -> out. Returns the metrics.
    `metrics_at` (a sigstream.metrics.Endpoint, or (addr, port)): serve the processor's
    metrics there while it runs."""
    from sigstream.connectors.memory import (MemoryAlertSink, MemoryBroker, MemoryDeadLetterSink, MemoryProducer,
                                   MemorySource, publish_events)
    from sigstream.connectors.readers import find_event_files, read_events
    from sigstream.stream.processor import Processor

    files = find_event_files(inputs)
    broker = MemoryBroker()
    done = threading.Event()
    read_errors: list[Any] = []

    def collect() -> None:
        try:
            publish_events(MemoryProducer(broker),
                           (ev for ev, _ in read_events(files, on_error=read_errors.append)),
                           collector_id="embedded")
        except Exception:
            log.exception("embedded collector failed")
        finally:
            done.set()

    collector = threading.Thread(target=collect, name="collector", daemon=True)
    source = MemorySource(broker, EVENT_TOPIC_PATTERN, group)
    alerts = TeeSink(MemoryAlertSink(broker, ALERTS_TOPIC), out)
    if wrap is not None:
        alerts = wrap(alerts)
    dlq = MemoryDeadLetterSink(broker, DLQ_TOPIC)
    processor = Processor(source, detector, alerts, dlq, batch_size=batch_size,
                          poll_timeout_s=0.2, until_idle_s=until_idle, idle_exit=done.is_set,
                          rule_loader=rule_loader, watch=watch)
    exporter = _metrics_server(processor, metrics_at)
    restore = install_signals(processor)
    collector.start()
    try:
        metrics = processor.run()
    finally:
        restore()
        alerts.close()
        dlq.close()
        source.close()
        if exporter is not None:
            exporter.stop()
    for e in read_errors[:10]:
        err_console.print(f"[yellow]unreadable record[/yellow] {e}", soft_wrap=True)
    if len(read_errors) > 10:
        err_console.print(f"[yellow]… {len(read_errors) - 10} more unreadable records[/yellow]")
    for d in broker.messages(DLQ_TOPIC)[:10]:
        err_console.print(f"[yellow]dead letter[/yellow] {d.header('source_topic').decode()}"
                          f"@{d.header('source_offset').decode()}: {d.header('reason').decode()}")
    return metrics


def _metrics_server(processor: Any, at: Any, correlation_loop: Any = None) -> Any:
    """Metrics observing `processor` (and the correlation loop over Kafka, if any;
    sigstream.metrics), or None. `at`: an Endpoint the command bound before starting work,
    or (addr, port) to bind now."""
    if at is None:
        return None
    from sigstream.metrics import Endpoint, MetricsServer
    server = MetricsServer(endpoint=at) if isinstance(at, Endpoint) else MetricsServer(*at)
    server.attach(processor)
    if correlation_loop is not None:
        server.observe_correlation_loop(correlation_loop)
    server.start()
    return server


# ------------------------------------------------------------------- kafka ---

REPARTITION_PARTITIONS = 3        # as `sigstream topics create --partitions 3`
# The repartition records carry the event time as timestamp: time-based retention would
# delete a replay of old logs at once, so the topic is bounded by size instead.
REPARTITION_CONFIGS = {"retention.ms": "-1", "retention.bytes": str(1 << 30)}
CHANGELOG_CONFIGS = {"cleanup.policy": "compact"}


class _KafkaCorrelation:
    """Correlation over Kafka (stream.correlation_forward, connectors.correlation_kafka):
    the Detector's in-memory CorrelationStage is replaced by a CorrelationForwarder writing
    to <prefix>.correlation-input (its producer is the Processor's `state` output, flushed
    before offsets are committed), and a CorrelationLoop thread (group <group>.correlation)
    evaluates each family and writes correlation alerts and the state changelog."""

    def __init__(self, detector: Any, settings: Any, *, prefix: str, group: str, alerts_topic: str,
                 until_idle: float | None, commit_interval_s: float, session_timeout_s: float,
                 batch_size: int, kit: Any):
        from sigstream.connectors.correlation_kafka import (CorrelationLoop, KafkaChangelog,
                                                            kafka_correlation_source)
        from sigstream.connectors.kafka import create_topics
        from sigstream.stream.correlation_forward import CorrelationForwarder
        from sigstream.stream.correlation_stage import CorrelationStage
        from sigstream.stream.topics import correlation_input_topic, correlation_state_topic

        stages = [s for s in detector.stages if isinstance(s, CorrelationStage)]
        correlations = [spec.c for s in stages for spec in s.correlator.specs]
        suppressed = frozenset().union(*(s.suppressed for s in stages)) if stages else frozenset()
        lateness = stages[0].buffer.lateness_s if stages else 300.0
        input_topic, state_topic = correlation_input_topic(prefix), correlation_state_topic(prefix)
        create_topics(settings, [input_topic], REPARTITION_PARTITIONS, configs=REPARTITION_CONFIGS)
        create_topics(settings, [state_topic], 1, configs=CHANGELOG_CONFIGS)
        self.producer = kit.record_producer(settings, input_topic)
        forwarder = CorrelationForwarder(correlations, lambda k, v, ts: self.producer.send_at(v, k, ts),
                                         suppressed=suppressed)
        first = detector.stages.index(stages[0])   # the forwarder takes the first one's place
        detector.stages = [forwarder if i == first else s for i, s in enumerate(detector.stages)
                           if i == first or not isinstance(s, CorrelationStage)]
        self.families = forwarder.families
        loop_ref: list = []
        self.source = kafka_correlation_source(settings, input_topic, f"{group}.correlation", loop_ref,
                                               session_timeout_s=session_timeout_s,
                                               max_poll_records=max(batch_size, 1), source_class=kit.source)
        self.alerts = kit.alert_sink(settings, alerts_topic)
        self.changelog = KafkaChangelog(settings, state_topic, kit.record_producer)
        self.loop = CorrelationLoop(self.source, self.changelog, self.alerts, families=self.families,
                                    state_prefix=group, suppressed=suppressed, lateness_s=lateness,
                                    commit_interval_s=commit_interval_s, until_idle_s=until_idle,
                                    batch_size=batch_size)
        loop_ref.append(self.loop)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="correlation", daemon=True)
        log.info("correlation over Kafka: %d correlation(s) in %d famil%s, lateness %.0fs",
                 len(correlations), len(self.families), "y" if len(self.families) == 1 else "ies", lateness)

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            log.error("correlation consumer failed: %s: %s", type(e).__name__, e)
            self.error = e
            if self.on_failure is not None:
                self.on_failure()

    on_failure: Callable[[], None] | None = None

    def start(self, on_failure: Callable[[], None]) -> None:
        self.on_failure = on_failure
        self.thread.start()

    def end(self, drain: bool) -> None:
        """drain: decide everything after the idle time (bounded replay); else commit and stop."""
        if self.thread.is_alive():
            (self.loop.drain if drain else self.loop.stop)()
            self.thread.join()

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.stop()
            self.thread.join(30)
        for closer in (self.alerts.close, self.changelog.close, self.source.close, self.producer.close):
            try:
                closer()
            except Exception as e:  # noqa: BLE001
                log.warning("while closing the correlation consumer: %s", e)


def run_kafka(detector: Any, bootstrap: str, *, group: str, topics: str, from_beginning: bool,
              alerts_topic: str, dlq_topic: str, batch_size: int, until_idle: float | None,
              rule_loader: Callable | None = None, watch: Callable | None = None,
              echo: Any = None, session_timeout_s: float = 45.0,
              wrap: Callable[[Any], Any] | None = None, commit_interval_s: float = 1.0,
              topic_prefix: str = "sigstream", metrics_at: tuple[str, int] | None = None,
              kafka_client: str = "kafka-python") -> Any:
    """kafka_client: the library of the event source, the alert/dlq sinks and correlation over
    Kafka ("kafka-python" or "confluent", connectors.kafka.clients)."""
    from sigstream.connectors.kafka import (KafkaConnectError, KafkaError, KafkaSettings, client_kit,
                                            create_topics)
    from sigstream.stream.correlation_stage import CorrelationStage
    from sigstream.stream.processor import Processor

    settings = KafkaSettings.from_env(bootstrap=bootstrap)
    try:  # the output topics must exist (the broker may not auto-create them); idempotent
        create_topics(settings, [alerts_topic, dlq_topic])
    except KafkaConnectError:  # unreachable, wrong credentials or TLS: said once, as the error
        raise
    except KafkaError as e:
        log.warning("could not create %s/%s (they must exist): %s", alerts_topic, dlq_topic, e)
    kit = client_kit(kafka_client)
    correlation = None
    if any(isinstance(s, CorrelationStage) for s in detector.stages):
        correlation = _KafkaCorrelation(detector, settings, prefix=topic_prefix, group=group,
                                        alerts_topic=alerts_topic, until_idle=until_idle,
                                        commit_interval_s=commit_interval_s,
                                        session_timeout_s=session_timeout_s, batch_size=batch_size,
                                        kit=kit)
    source = kit.source(settings, topics, group, from_beginning=from_beginning,
                        max_poll_records=max(batch_size, 1), session_timeout_s=session_timeout_s)
    alerts = kit.alert_sink(settings, alerts_topic)
    dlq = kit.dead_letter_sink(settings, dlq_topic)
    sink = TeeSink(alerts, echo) if echo is not None else alerts
    if wrap is not None:
        sink = wrap(sink)
    processor = Processor(source, detector, sink, dlq, batch_size=batch_size,
                          poll_timeout_s=0.5, until_idle_s=until_idle, rule_loader=rule_loader,
                          watch=watch, log_interval_s=15.0, commit_interval_s=commit_interval_s,
                          state=correlation.producer if correlation is not None else None)
    exporter = _metrics_server(processor, metrics_at, correlation.loop if correlation else None)
    restore = install_signals(processor)
    if correlation is not None:
        correlation.start(on_failure=processor.stop)
    ok = False
    try:
        metrics = processor.run()
        if correlation is not None:
            correlation.end(drain=until_idle is not None and not processor.stopping)
            if correlation.error is not None:
                raise correlation.error
        ok = True
    finally:
        restore()
        closers = [sink.close, dlq.close, source.close] + ([correlation.close] if correlation else []) \
            + ([exporter.stop] if exporter is not None else [])
        for closer in closers:
            try:
                closer()
            except Exception as e:  # noqa: BLE001
                if ok:
                    raise
                log.warning("while closing after a failure: %s", e)
    return metrics


def publish_files_to_kafka(bootstrap: str, files: list[str]) -> None:
    """Publish files to the event topics (creating the topics) via connectors.kafka."""
    import tempfile

    from sigstream.connectors import kafka as kc
    from sigstream.connectors.readers import read_events

    settings = kc.KafkaSettings.from_env(bootstrap=bootstrap)
    kc.create_topics(settings, kc.all_topics(), 3)
    with tempfile.TemporaryDirectory(prefix="sigstream-demo-spool-") as spool:
        pub = kc.KafkaEventPublisher(settings, collector_id="demo", spool_dir=spool)
        try:
            for ev, _ in read_events(files):
                pub.publish(ev)
            if not pub.flush(60):
                raise TransportProblem(f"Kafka at {bootstrap} did not acknowledge the demo events")
        finally:
            pub.close()


