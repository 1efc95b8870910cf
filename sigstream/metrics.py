"""Prometheus metrics for `sigstream run` (`--metrics-port`, `--metrics-addr`).

The only module that imports prometheus-client. Nothing here runs per event:

- Counters and `rules loaded` are read from the processor's own `Metrics` dataclass
  (stream.processor) when Prometheus scrapes: the totals the processor keeps anyway.
- After each batch (and on idle polls) the processor calls `on_batch` (its thread): the
  batch time is observed, the alerts the batch emitted are turned into per-level counts
  and latencies, and every `gauge_interval_s` the consumer lag (`source.lag()`, when the
  source has one) and the correlation groups open (`stats()` of the detector's stages)
  are refreshed.
- Alerts are seen through a thin wrapper of the processor's alert sink that keeps the
  level and times of each alert until the batch ends.

    sigstream_events_total, sigstream_alerts_total{level}, sigstream_dead_letters_total,
    sigstream_errors_total, sigstream_commits_total, sigstream_commit_failures_total,
    sigstream_commits_held_total, sigstream_reloads_total, sigstream_reloads_rejected_total,
    sigstream_batches_total, sigstream_rules_loaded, sigstream_consumer_lag,
    sigstream_correlation_groups_open, sigstream_alert_latency_seconds (detected_at minus
    event time), sigstream_batch_seconds
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sigstream.stream.event_time import event_time, parse_time

log = logging.getLogger("sigstream.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Metrics dataclass field -> (counter name, help)
COUNTERS = {
    "events": ("sigstream_events", "Event records consumed."),
    "dead_letters": ("sigstream_dead_letters", "Records sent to the dead-letter topic."),
    "errors": ("sigstream_errors", "Unexpected per-record failures (also dead-lettered)."),
    "batches": ("sigstream_batches", "Batches processed."),
    "commits": ("sigstream_commits", "Offset commits after durable output."),
    "commit_failures": ("sigstream_commit_failures", "Commits that failed (records are redelivered)."),
    "commits_held": ("sigstream_commits_held",
                     "Commits held back because detector state lived only in memory."),
    "reloads": ("sigstream_reloads", "Rule reloads applied."),
    "reloads_rejected": ("sigstream_reloads_rejected", "Rule reloads rejected (old rules kept)."),
}


class _ProcessorCollector(Collector):
    """The processor's counters, read from its Metrics at scrape time."""

    def __init__(self) -> None:
        self.metrics: Any = None
        self.levels: dict[str, int] = {}
        self.groups_open: int | None = None     # None: no correlation stage

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        if m is None:
            return
        for attr, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(m, attr))
        alerts = CounterMetricFamily("sigstream_alerts", "Alerts emitted, by rule level.", labels=["level"])
        for level, n in sorted(dict(self.levels).items()):
            alerts.add_metric([level], n)
        yield alerts
        yield GaugeMetricFamily("sigstream_rules_loaded", "Rules in force.", value=m.rules)
        if m.lag is not None:
            yield GaugeMetricFamily("sigstream_consumer_lag", "Records not yet consumed "
                                    "(sources with lag()).", value=m.lag)
        if self.groups_open is not None:
            yield GaugeMetricFamily("sigstream_correlation_groups_open",
                                    "Open correlation groups (correlation stage).", value=self.groups_open)


class _ObservedSink:
    """The processor's alert sink, keeping (level, event time, detected_at) per alert."""

    def __init__(self, sink: Any):
        self.sink = sink
        self.seen: list[tuple[Any, Any, Any, Any]] = []

    def add(self, alert: dict[str, Any]) -> None:
        self.sink.add(alert)
        self.seen.append(((alert.get("rule") or {}).get("level"), alert.get("event_time"),
                          alert.get("detected_at"), alert.get("event")))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()

    def __getattr__(self, name: str) -> Any:   # anything else the wrapped sink offers
        return getattr(self.sink, name)


class MetricsServer:
    """A Prometheus endpoint for one processor: `attach(processor)`, `start()`, `stop()`."""

    def __init__(self, addr: str = "127.0.0.1", port: int = 9464, *, gauge_interval_s: float = 2.0):
        self.addr, self.port = addr, port
        self.gauge_interval_s = gauge_interval_s
        self.registry = CollectorRegistry()
        self._collector = _ProcessorCollector()
        self.registry.register(self._collector)
        self.latency = Histogram("sigstream_alert_latency_seconds",
                                 "Alert detected_at minus event time.", buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_seconds = Histogram("sigstream_batch_seconds", "Processing time of one batch.",
                                       buckets=BATCH_BUCKETS, registry=self.registry)
        self._sink: _ObservedSink | None = None
        self._next_gauges = 0.0
        self._httpd: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- wiring ---
    def attach(self, processor: Any) -> None:
        """Read this processor's Metrics, observe its alerts and batches."""
        self._collector.metrics = processor.metrics
        self._sink = _ObservedSink(processor.alert_sink)
        processor.alert_sink = self._sink
        processor.on_batch = self.on_batch

    def start(self) -> None:
        self._httpd, self._thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        self.port = self._httpd.server_address[1]    # the bound port (0 asks for a free one)
        log.info("metrics on http://%s:%d/metrics", self.addr, self.port)

    def stop(self) -> None:
        self.drain()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # ----------------------------------------------------- processor thread ---
    def on_batch(self, processor: Any, seconds: float | None) -> None:
        """After a batch (`seconds` its processing time) or an idle poll (None)."""
        if seconds is not None:
            self.batch_seconds.observe(seconds)
        self.drain()
        now = time.monotonic()
        if seconds is None or now >= self._next_gauges:
            self._next_gauges = now + self.gauge_interval_s
            self._gauges(processor)

    def drain(self) -> None:
        """Alerts added since the last call -> per-level counts and latencies."""
        sink = self._sink
        if sink is None or not sink.seen:
            return
        seen, sink.seen = sink.seen, []
        levels = self._collector.levels
        for level, ev_time, detected_at, event in seen:
            key = str(level or "unknown")
            levels[key] = levels.get(key, 0) + 1
            t_event = parse_time(ev_time) if ev_time is not None else None
            if t_event is None and isinstance(event, dict):
                t_event = event_time(event)
            t_detected = parse_time(detected_at) if detected_at is not None else None
            if t_event is not None and t_detected is not None:
                self.latency.observe(max(0.0, t_detected - t_event))

    def _gauges(self, processor: Any) -> None:
        lag = getattr(processor.source, "lag", None)
        if callable(lag):
            try:
                processor.metrics.lag = lag()
            except Exception:  # noqa: BLE001 - lag is best effort
                log.debug("lag() failed", exc_info=True)
        groups = None
        for stage in getattr(processor.detector, "stages", ()):
            stats = getattr(stage, "stats", None)
            if not callable(stats):
                continue
            try:
                n = stats().get("groups_open")
            except Exception:  # noqa: BLE001 - best effort: the correlator's own count
                n = getattr(getattr(stage, "correlator", None), "groups_open", None)
            if isinstance(n, int):
                groups = (groups or 0) + n
        self._collector.groups_open = groups
