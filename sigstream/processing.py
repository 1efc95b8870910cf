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

def run_embedded(engine: Any, inputs: list[str], out: Any, *, batch_size: int = 500,
                 until_idle: float | None = None, rule_loader: Callable | None = None,
                 watch: Callable | None = None, group: str = DEFAULT_GROUP,
                 wrap: Callable[[Any], Any] | None = None) -> Any:
    """Files -> collector thread -> MemoryBroker -> Processor -> out. Returns the metrics."""
    from sigstream.connectors.memory import (MemoryAlertSink, MemoryBroker, MemoryDeadLetterSink, MemoryProducer,
                                   MemorySource, publish_events)
    from sigstream.connectors.readers import find_event_files, read_events
    from sigstream.stream.detector import Detector
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
    processor = Processor(source, Detector(engine), alerts, dlq, batch_size=batch_size,
                          poll_timeout_s=0.2, until_idle_s=until_idle, idle_exit=done.is_set,
                          rule_loader=rule_loader, watch=watch)
    restore = install_signals(processor)
    collector.start()
    try:
        metrics = processor.run()
    finally:
        restore()
        alerts.close()
        dlq.close()
        source.close()
    for e in read_errors[:10]:
        err_console.print(f"[yellow]unreadable record[/yellow] {e}", soft_wrap=True)
    if len(read_errors) > 10:
        err_console.print(f"[yellow]… {len(read_errors) - 10} more unreadable records[/yellow]")
    for d in broker.messages(DLQ_TOPIC)[:10]:
        err_console.print(f"[yellow]dead letter[/yellow] {d.header('source_topic').decode()}"
                          f"@{d.header('source_offset').decode()}: {d.header('reason').decode()}")
    return metrics


# ------------------------------------------------------------------- kafka ---

def run_kafka(engine: Any, bootstrap: str, *, group: str, topics: str, from_beginning: bool,
              alerts_topic: str, dlq_topic: str, batch_size: int, until_idle: float | None,
              rule_loader: Callable | None = None, watch: Callable | None = None,
              echo: Any = None, session_timeout_s: float = 45.0,
              wrap: Callable[[Any], Any] | None = None, commit_interval_s: float = 1.0) -> Any:
    from sigstream.connectors.kafka import (KafkaAlertSink, KafkaDeadLetterSink, KafkaError, KafkaSettings,
                                  KafkaSource, create_topics)
    from sigstream.stream.detector import Detector
    from sigstream.stream.processor import Processor

    settings = KafkaSettings.from_env(bootstrap=bootstrap)
    try:  # the output topics must exist (the broker may not auto-create them); idempotent
        create_topics(settings, [alerts_topic, dlq_topic])
    except KafkaError as e:
        log.warning("could not create %s/%s (they must exist): %s", alerts_topic, dlq_topic, e)
    source = KafkaSource(settings, topics, group, from_beginning=from_beginning,
                         max_poll_records=max(batch_size, 1), session_timeout_s=session_timeout_s)
    alerts = KafkaAlertSink(settings, alerts_topic)
    dlq = KafkaDeadLetterSink(settings, dlq_topic)
    sink = TeeSink(alerts, echo) if echo is not None else alerts
    if wrap is not None:
        sink = wrap(sink)
    processor = Processor(source, Detector(engine), sink, dlq, batch_size=batch_size,
                          poll_timeout_s=0.5, until_idle_s=until_idle, rule_loader=rule_loader,
                          watch=watch, log_interval_s=15.0, commit_interval_s=commit_interval_s)
    restore = install_signals(processor)
    ok = False
    try:
        metrics = processor.run()
        ok = True
    finally:
        restore()
        for closer in (sink.close, dlq.close, source.close):
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


