"""Metrics of every long-running command: one HTTP endpoint per process (:class:`Endpoint`)
serving ``/metrics`` (Prometheus text) and ``/health`` (JSON: status, uptime, key counters).

`run`, `collect`, `respond` (``--metrics-port``/``--metrics-addr``) and `agent` (its
``health.listen``) all use it. The endpoint is bound before the command does any work, so
a port in use is one clear error (:class:`MetricsPortError`), not a failure mid-run.

The only module that imports prometheus-client. Nothing here runs per event:

- `run` (:class:`MetricsServer`): counters are the processor's own `Metrics` (stream.processor),
  read when Prometheus scrapes. After each batch the processor calls `on_batch` (its
  thread): the batch time is observed, the batch's records are counted per source topic
  (one C-level pass, only with metrics on), the alerts the batch emitted are counted per
  level and their latencies observed, and every `gauge_interval_s` consumer lag (per
  partition when the source has `lag_by_partition()`, else `lag()`), open correlation
  groups and late correlation matches (the stages' `stats()`) are refreshed.
- Alerts are seen through a thin wrapper of the processor's alert sink that keeps the
  level, times and source coordinates of each alert until the batch ends.
- `collect`/`respond` (:class:`CountersServer`) and `agent` (:class:`AgentCollector`):
  their own running totals, read when scraped.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import attrgetter
from typing import Any, Callable, Iterator

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sigstream.stream.event_time import event_time, parse_time

log = logging.getLogger("sigstream.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# ------------------------------------------------------------------ endpoint ---

class MetricsPortError(Exception):
    """The metrics port cannot be listened on (in use, not allowed, bad address)."""

    def __init__(self, addr: str, port: int, err: OSError):
        super().__init__(f"metrics endpoint {addr}:{port}: {err.strerror or err} (another process "
                         f"listens there? choose another port, or 0 for any free one)")


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    endpoint: "Endpoint"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            body, ctype, code = generate_latest(self.endpoint.registry), CONTENT_TYPE_LATEST, 200
        elif path in ("/health", "/"):
            doc = self.endpoint.health_doc()
            body = json.dumps(doc, default=str).encode()
            ctype, code = "application/json", 200 if doc.get("status") == "ok" else 503
        else:
            self.send_error(404, "try /metrics or /health")
            return
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:   # scrapes are not worth a log line
        pass


class Endpoint:
    """``/metrics`` from `registry` and ``/health`` from `health()` (a dict merged over
    ``{"status": "ok", "uptime_s": ...}``), served from a daemon thread as soon as it is
    built: constructing it is the port check. Collectors can be registered later."""

    def __init__(self, addr: str = "127.0.0.1", port: int = 0):
        self.registry = CollectorRegistry()
        self.health: Callable[[], dict[str, Any]] = dict
        self.started = time.monotonic()
        handler = type("Handler", (_Handler,), {"endpoint": self})
        server_cls = _Server
        if ":" in addr:         # an IPv6 literal
            server_cls = type("Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._httpd: Any = server_cls((addr.strip("[]"), port), handler)
        except OSError as e:
            raise MetricsPortError(addr, port, e) from None
        except (OverflowError, ValueError) as e:
            raise MetricsPortError(addr, port, OSError(str(e))) from None
        self.addr, self.port = addr, self._httpd.server_address[1]   # port 0: the one bound
        self._thread: threading.Thread | None = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /health", addr, self.port)

    def health_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": "ok", "uptime_s": round(time.monotonic() - self.started, 1)}
        try:
            doc.update(self.health())
        except Exception as e:  # noqa: BLE001 - a broken provider is a degraded status, not a 500
            doc.update(status="degraded", error=f"{type(e).__name__}: {e}")
        return doc

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _counter(name: str, doc: str, labels: list[str], values: dict) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        c.add_metric(list(key) if isinstance(key, tuple) else [str(key)], n)
    return c


def _gauge(name: str, doc: str, labels: list[str], values: dict) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        g.add_metric(list(key) if isinstance(key, tuple) else [str(key)], n)
    return g


# ---------------------------------------------------------------------- run ---

# the processor's dead-letter reasons (stream.processor), shown at 0 before the first one
DEAD_LETTER_REASONS = ("invalid_envelope", "processing_failed")

# Metrics dataclass field -> (counter name, help)
COUNTERS = {
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
        self.processor: Any = None
        self.levels: dict[str, int] = {}
        self.topics: dict[str, int] = {}
        self.lag: dict[tuple[str, str], int] | None = None   # per (topic, partition)
        self.correlation: dict[str, int] | None = None      # None: no correlation stage

    def collect(self) -> Iterator[Any]:
        p = self.processor
        if p is None:
            return
        m = p.metrics
        yield _counter("sigstream_events", "Event records consumed, by source topic (counted "
                       "per batch: equal to the processor's total after each batch).", ["topic"],
                       dict(self.topics))
        yield _counter("sigstream_alerts", "Alerts emitted, by rule level.", ["level"], dict(self.levels))
        reasons = dict.fromkeys(DEAD_LETTER_REASONS, 0)
        reasons.update(getattr(m, "dead_letter_reasons", None) or {})
        rest = m.dead_letters - sum(reasons.values())     # a processor without the breakdown
        if rest:
            reasons["other"] = reasons.get("other", 0) + rest
        yield _counter("sigstream_dead_letters", "Records sent to the dead-letter topic, by reason.",
                       ["reason"], reasons)
        for attr, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(m, attr))
        yield GaugeMetricFamily("sigstream_rules_loaded", "Rules in force.", value=m.rules)
        errors = getattr(getattr(p.detector, "engine", None), "errors", None)
        if errors is not None:
            yield GaugeMetricFamily("sigstream_rules_failed", "Rules of the loaded set that did not "
                                    "compile (skipped).", value=len(errors))
        if self.lag is not None:
            yield _gauge("sigstream_consumer_lag", "Records not yet consumed, per partition.",
                         ["topic", "partition"], self.lag)
        elif m.lag is not None:
            yield GaugeMetricFamily("sigstream_consumer_lag", "Records not yet consumed.", value=m.lag)
        c = self.correlation
        if c is not None:
            yield GaugeMetricFamily("sigstream_correlation_groups_open",
                                    "Open correlation groups (correlation state size).",
                                    value=c.get("groups_open", 0))
            yield GaugeMetricFamily("sigstream_correlation_held",
                                    "Matches held for ordering (--correlation-lateness).",
                                    value=c.get("held", 0))
            yield CounterMetricFamily("sigstream_correlation_late_events",
                                      "Matches that arrived after later ones had been counted.",
                                      value=c.get("late", 0))

    def health(self) -> dict[str, Any]:
        p = self.processor
        if p is None:
            return {"status": "starting"}
        m = p.metrics
        return {"events": m.events, "alerts": m.alerts, "dead_letters": m.dead_letters,
                "errors": m.errors, "commits": m.commits, "commit_failures": m.commit_failures,
                "rules": m.rules, "reloads": m.reloads, "lag": m.lag,
                "status": "stopping" if getattr(p, "stopping", False) else "ok"}


class _ObservedSink:
    """An alert sink, keeping (level, event time, detected_at, event, source coordinates,
    time handed over) per alert until drained (a deque: the adding thread may be another)."""

    def __init__(self, sink: Any):
        self.sink = sink
        self.seen: deque[tuple[Any, ...]] = deque()

    def add(self, alert: dict[str, Any]) -> None:
        self.sink.add(alert)
        self.seen.append(((alert.get("rule") or {}).get("level"), alert.get("event_time"),
                          alert.get("detected_at"), alert.get("event"), alert.get("source"),
                          time.time()))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()

    def __getattr__(self, name: str) -> Any:   # anything else the wrapped sink offers
        return getattr(self.sink, name)


def _ingest_time(value: Any) -> float | None:
    """The envelope's ingest_time of a record's value (metrics path: once per alert)."""
    try:
        t = orjson.loads(value).get("ingest_time")
    except Exception:  # noqa: BLE001 - not an envelope: no latency to observe
        return None
    return parse_time(t) if isinstance(t, str) else None


class MetricsServer:
    """The metrics of one processor: `attach(processor)`, `start()`, `stop()`.
    `endpoint`: an Endpoint bound earlier (the command's port check); else `start()` binds
    one at (addr, port) and `stop()` closes it."""

    def __init__(self, addr: str = "127.0.0.1", port: int = 9464, *, gauge_interval_s: float = 2.0,
                 endpoint: Endpoint | None = None):
        self.addr, self.port = addr, port
        self.gauge_interval_s = gauge_interval_s
        self.endpoint = endpoint
        self._owns_endpoint = endpoint is None
        self.registry = CollectorRegistry()
        self._collector = _ProcessorCollector()
        self.registry.register(self._collector)
        self.latency = Histogram("sigstream_alert_latency_seconds",
                                 "Envelope ingest_time to alert handed to the alert sink.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.event_age = Histogram("sigstream_alert_event_age_seconds",
                                   "Alert detected_at minus the event's own time.",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("sigstream_batch_seconds", "Processing time of one batch.",
                                       buckets=BATCH_BUCKETS, registry=self.registry)
        self._sink: _ObservedSink | None = None
        self._loop: Any = None              # correlation over Kafka (its own thread)
        self._loop_sink: _ObservedSink | None = None
        self._batch: Any = None
        self._next_gauges = 0.0

    # ------------------------------------------------------------- wiring ---
    def attach(self, processor: Any) -> None:
        """Read this processor's Metrics, observe its alerts and batches."""
        self._collector.processor = processor
        self._sink = _ObservedSink(processor.alert_sink)
        processor.alert_sink = self._sink
        processor.on_batch = self.on_batch
        if self.endpoint is not None:
            self._publish()

    def observe_correlation_loop(self, loop: Any) -> None:
        """Correlation over Kafka (connectors.correlation_kafka.CorrelationLoop, before its
        thread starts): its alerts count per level, its `metrics()` give the state size."""
        self._loop = loop
        self._loop_sink = _ObservedSink(loop.alert_sink)
        loop.alert_sink = self._loop_sink

    def start(self) -> None:
        if self.endpoint is None:
            self.endpoint = Endpoint(self.addr, self.port)
        self._publish()

    def _publish(self) -> None:
        self.endpoint.registry = self.registry
        self.endpoint.health = self._collector.health
        self.port = self.endpoint.port

    def stop(self) -> None:
        self.drain()
        if self._owns_endpoint and self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None

    # ----------------------------------------------------- processor thread ---
    def on_batch(self, processor: Any, seconds: float | None) -> None:
        """After a batch (`seconds` its processing time) or an idle poll (None)."""
        if seconds is not None:
            self.batch_seconds.observe(seconds)
            self._batch = batch = getattr(processor, "last_batch", None)
            if batch:
                topics = self._collector.topics
                for topic, n in Counter(map(attrgetter("topic"), batch)).items():
                    topics[topic] = topics.get(topic, 0) + n
        self.drain()
        self._batch = None
        now = time.monotonic()
        if seconds is None or now >= self._next_gauges:
            self._next_gauges = now + self.gauge_interval_s
            self._gauges(processor)

    def drain(self) -> None:
        """Alerts added since the last call -> per-level counts and latencies."""
        for sink in (self._sink, self._loop_sink):
            if sink is not None and sink.seen:
                self._drain(sink.seen)

    def _drain(self, seen: deque) -> None:
        levels = self._collector.levels
        records = None
        while seen:
            level, ev_time, detected_at, event, source, handed = seen.popleft()
            key = str(level or "unknown")
            levels[key] = levels.get(key, 0) + 1
            t_event = parse_time(ev_time) if ev_time is not None else None
            if t_event is None and isinstance(event, dict):
                t_event = event_time(event)
            t_detected = parse_time(detected_at) if detected_at is not None else None
            if t_event is not None and t_detected is not None:
                self.event_age.observe(max(0.0, t_detected - t_event))
            # ingest latency: the alert's record is in this batch (alerts released later by
            # reassembly or correlation have no record at hand and are not observed)
            if isinstance(source, dict) and self._batch:
                if records is None:
                    records = {(r.topic, r.partition, r.offset): r for r in self._batch}
                rec = records.get((source.get("topic"), source.get("partition"), source.get("offset")))
                t_ingest = _ingest_time(rec.value) if rec is not None else None
                if t_ingest is not None:
                    self.latency.observe(max(0.0, handed - t_ingest))

    def _gauges(self, processor: Any) -> None:
        source = processor.source
        per_partition = getattr(source, "lag_by_partition", None)
        lag = getattr(source, "lag", None)
        try:
            if callable(per_partition):
                by = per_partition()
                self._collector.lag = {(t, str(p)): n for (t, p), n in by.items()}
                processor.metrics.lag = sum(by.values())
            elif callable(lag):
                processor.metrics.lag = lag()
        except Exception:  # noqa: BLE001 - lag is best effort
            log.debug("lag failed", exc_info=True)
        totals: dict[str, int] | None = None
        for stage in getattr(processor.detector, "stages", ()):
            stats = getattr(stage, "stats", None)
            if not callable(stats):
                continue
            try:
                s = stats()
            except Exception:  # noqa: BLE001 - best effort: the correlator's own count
                s = {"groups_open": getattr(getattr(stage, "correlator", None), "groups_open", None)}
            totals = _add_correlation(totals, s)
        if self._loop is not None:
            try:
                totals = _add_correlation(totals, self._loop.metrics())
            except RuntimeError:    # its partitions changed while read (another thread): next time
                pass
        self._collector.correlation = totals


def _add_correlation(totals: dict[str, int] | None, stats: dict[str, Any]) -> dict[str, int]:
    totals = totals or {}
    for k in ("groups_open", "held", "late"):
        if isinstance(stats.get(k), int):
            totals[k] = totals.get(k, 0) + stats[k]
    return totals


# ---------------------------------------------------- collect / respond ---

class _CountersCollector(Collector):
    """Counters (and gauges) read from ``read()`` (key -> value) at scrape time; ``specs`` /
    ``gauges``: key -> (metric name, help). Missing keys read 0."""

    def __init__(self, specs: dict[str, tuple[str, str]], read: Any,
                 gauges: dict[str, tuple[str, str]] | None = None):
        self.specs, self.read, self.gauges = specs, read, gauges or {}

    def collect(self) -> Iterator[Any]:
        values = self.read()
        for key, (name, doc) in self.specs.items():
            yield CounterMetricFamily(name, doc, value=values.get(key, 0))
        for key, (name, doc) in self.gauges.items():
            yield GaugeMetricFamily(name, doc, value=values.get(key, 0))


class CountersServer:
    """The metrics of a command that is not the processor (`collect`, `respond`): its own
    running totals, read when scraped (nothing per event); /health shows the same values.
    `endpoint`: one bound earlier (the port check); else `start()` binds (addr, port)."""

    def __init__(self, addr: str, port: int, specs: dict[str, tuple[str, str]], read: Any, *,
                 gauges: dict[str, tuple[str, str]] | None = None, endpoint: Endpoint | None = None):
        self.addr, self.port = addr, port
        self.read = read
        self.registry = CollectorRegistry()
        self.registry.register(_CountersCollector(specs, read, gauges))
        self.endpoint = endpoint

    def start(self) -> "CountersServer":
        if self.endpoint is None:
            self.endpoint = Endpoint(self.addr, self.port)
        self.endpoint.registry = self.registry
        self.endpoint.health = lambda: dict(self.read())
        self.port = self.endpoint.port
        return self

    def stop(self) -> None:
        """The command is done: stop serving (a borrowed endpoint too)."""
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None


# -------------------------------------------------------------------- agent ---

AGENT_PER_SOURCE = (   # key of a source's health entry, counter name, help
    ("received", "sigstream_agent_events", "Events read, by source."),
    ("published", "sigstream_agent_published", "Events handed to the publisher, by source."),
    ("filtered", "sigstream_agent_filtered", "Events excluded by filters, by source."),
    ("dropped", "sigstream_agent_dropped", "Events dropped (queue full), by source."),
    ("events_lost", "sigstream_agent_events_lost",
     "Events the source itself reports lost (ETW buffers), by source."),
)


class AgentCollector(Collector):
    """The agent's counters, read from its health document at scrape time."""

    def __init__(self, health: Callable[[], dict[str, Any]]):
        self.health = health

    def collect(self) -> Iterator[Any]:
        h = self.health()
        sources = h.get("sources") or {}
        for key, name, doc in AGENT_PER_SOURCE:
            yield _counter(name, doc, ["source"],
                           {s: int(v.get(key, 0) or 0) for s, v in sources.items()})
        yield CounterMetricFamily("sigstream_agent_spooled", "Events written to the disk spool.",
                                  value=h.get("spooled", 0))
        yield CounterMetricFamily("sigstream_agent_publisher_dropped",
                                  "Events the publisher dropped (spool full or rejected by Kafka).",
                                  value=int((h.get("publisher") or {}).get("dropped", 0) or 0))
        yield CounterMetricFamily("sigstream_agent_rate_limited_seconds",
                                  "Time the publisher waited for the events/s budget.",
                                  value=h.get("rate_limited_s", 0))
        queue = h.get("queue") or {}
        yield GaugeMetricFamily("sigstream_agent_queue_events", "Events queued.", value=queue.get("depth", 0))
        yield GaugeMetricFamily("sigstream_agent_queue_bytes", "Bytes queued.", value=queue.get("bytes", 0))
        yield GaugeMetricFamily("sigstream_spool_records", "Records in the disk spool, not yet sent.",
                                value=h.get("spool_unsent", 0))
        yield GaugeMetricFamily("sigstream_spool_bytes", "Size of the disk spool.",
                                value=int((h.get("publisher") or {}).get("spool_bytes", 0) or 0))
        if h.get("rss_bytes") is not None:
            yield GaugeMetricFamily("sigstream_agent_rss_bytes", "Resident memory.", value=h["rss_bytes"])
        yield GaugeMetricFamily("sigstream_agent_up", "1 when every source runs and the publisher "
                                "is alive (the health status is ok).", value=int(h.get("status") == "ok"))
