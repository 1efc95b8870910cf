"""The endpoint agent runtime: sources -> bounded queue -> publisher (Kafka, spool on outage).

Threads:

* source threads: pywintrace's ETW consumer thread (real time: it cannot wait long,
  or ETW itself loses buffers) and one thread per event-log channel (can wait:
  the event log keeps the events, the bookmark says where to resume);
* the publisher thread: takes events off the queue, applies the events/s budget,
  hands them to the sink (:class:`connectors.kafka.KafkaEventPublisher`, or
  stdout/file for testing) and acknowledges them to their source (bookmark);
* the health server thread (loopback only): JSON on /health, Prometheus text on /metrics.

Back-pressure first, shedding last: the queue is bounded by events and by bytes.
A full queue blocks an event-log source for as long as needed (nothing is lost:
the event log still holds the events) and blocks the ETW callback at most
``queue.shed_after_s``; only then is an ETW event dropped, counted per source
in ``dropped`` and reported in the log (once per episode) and in the health
document. The events/s budget (token bucket) slows the publisher, which fills
the queue, which pushes back on the sources the same way. When the process RSS
exceeds ``budget.max_rss_mb`` the queue admits at most a tenth of its capacity
until memory is back under budget (reported as ``memory_over_budget``).

This module owns the runtime: building the sources, the publisher loop, the
health endpoint, start-up and orderly shutdown (bookmarks persisted, sink flushed).
The configuration is :mod:`connectors.agent_config`; the queue, the budgets and the
sink are :mod:`connectors.agent_queue`. Their public names are re-exported here.
"""
from __future__ import annotations

import fnmatch
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from sigstream.connectors.agent_config import (AgentConfig, ConfigError, EventLogChannel, JsonLogFormatter,
                                               config_from_dict, default_state_dir, load_config, parse_size,
                                               setup_logging)
from sigstream.connectors.agent_queue import EventQueue, TokenBucket, make_sink, rss_bytes
from sigstream.connectors.sink_spec import SinkSpec, parse_sink_spec
from sigstream.connectors.sinks import EnvelopeLineSink as StreamSink

log = logging.getLogger("sigstream.agent")

__all__ = ["Agent",
           # re-exported from connectors.agent_config / agent_queue / sinks:
           "AgentConfig", "ConfigError", "EventLogChannel", "config_from_dict", "default_state_dir",
           "load_config", "parse_size", "JsonLogFormatter", "setup_logging",
           "EventQueue", "TokenBucket", "make_sink", "rss_bytes", "StreamSink"]


# --------------------------------------------------------------------------
# the agent
# --------------------------------------------------------------------------

class _Filters:
    def __init__(self, cfg: AgentConfig):
        self.images = [p.lower() for p in cfg.exclude_images]
        self.ids = cfg.exclude_event_ids

    def excluded(self, ev: dict) -> bool:
        if self.ids:
            ch = ev.get("Channel")
            ids = self.ids.get(ch.lower()) if isinstance(ch, str) else None
            if ids and ev.get("EventID") in ids:
                return True
        if self.images:
            img = ev.get("Image")
            if isinstance(img, str) and img:
                low = img.lower()
                for p in self.images:
                    if low == p or fnmatch.fnmatchcase(low, p):
                        return True
        return False


class Agent:
    """Build with a config; :meth:`run` until :meth:`stop` (or a signal handler) is called."""

    def __init__(self, cfg: AgentConfig, sink: Any = None, sink_spec: SinkSpec | str | None = None,
                 sources: list | None = None):
        """``sink``: a ready sink (tests); else one is made at :meth:`start` from ``sink_spec``
        (``--sink``, :mod:`connectors.sink_spec`; a bad one raises ConfigProblem here)."""
        self.cfg = cfg
        self.sink_spec = sink_spec if isinstance(sink_spec, SinkSpec) else parse_sink_spec(sink_spec)
        self.sink = sink
        self.queue = EventQueue(cfg.queue_max_events, cfg.queue_max_bytes)
        self.bucket = TokenBucket(cfg.max_events_per_s, cfg.burst)
        self.filters = _Filters(cfg)
        self.sources: list = sources if sources is not None else []
        self._built_sources = sources is not None
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._drained = threading.Event()
        self._pub_thread: threading.Thread | None = None
        self._http: Any = None      # sigstream.metrics.Endpoint
        self._lock = threading.Lock()
        self.per_source: dict[str, dict[str, int]] = {}
        self.counts = dict(published=0, filtered=0, dropped=0, publish_errors=0)
        self._shedding: set[str] = set()
        self.memory_over_budget = False
        self.last_rss: int | None = None
        self.health_port: int | None = None
        self.fatal: BaseException | None = None

    # ----------------------------------------------------------- sources --
    def _src_counts(self, name: str) -> dict[str, int]:
        c = self.per_source.get(name)
        if c is None:
            c = self.per_source[name] = dict(received=0, published=0, filtered=0, dropped=0)
        return c

    def make_emit(self, name: str, realtime: bool) -> Callable[..., bool]:
        counts = self._src_counts(name)
        timeout = self.cfg.shed_after_s if realtime else None
        computer = self.cfg.computer_name

        def emit(event: dict, ack: Callable[[], None] | None = None) -> bool:
            counts["received"] += 1
            if self.filters.excluded(event):
                counts["filtered"] += 1
                if ack is not None:
                    ack()
                return True
            if not event.get("Computer"):
                event["Computer"] = computer
            size = len(orjson.dumps(event, default=str)) + 200
            if self.queue.put((name, event, ack), size, timeout):
                if name in self._shedding:
                    self._shedding.discard(name)
                    log.warning("queue has room again; %s no longer sheds events", name,
                                extra={"source": name, "dropped_total": counts["dropped"]})
                return True
            if self.queue.closed and not realtime:
                return False        # shutting down: not acknowledged, re-read after restart
            counts["dropped"] += 1
            with self._lock:
                self.counts["dropped"] += 1
            if name not in self._shedding:
                self._shedding.add(name)
                log.error("queue full for %.1fs (publisher too slow or over budget): %s is DROPPING "
                          "events; counted in the health document", self.cfg.shed_after_s, name,
                          extra={"source": name})
            return False
        return emit

    def build_sources(self) -> list:
        from sigstream.connectors.etw import EtwSource
        from sigstream.connectors.eventlog import EventLogSource
        cfg = self.cfg
        out: list = []
        if cfg.etw_enabled:
            out.append(EtwSource(cfg.etw_providers, self.make_emit("etw", realtime=True), cfg.computer_name,
                                 session_name=cfg.etw_session_name, ring_buf_size_kb=cfg.etw_buffer_kb,
                                 min_buffers=cfg.etw_min_buffers, max_buffers=cfg.etw_max_buffers))
        if cfg.eventlog_enabled:
            for ch in cfg.eventlog_channels:
                name = f"eventlog:{ch.channel}"
                out.append(EventLogSource(ch.channel, self.make_emit(name, realtime=False),
                                          Path(cfg.state_dir) / "bookmarks", query=ch.query,
                                          start_at=ch.start_at, batch_size=cfg.eventlog_batch_size, name=name))
        if not out:
            raise ConfigError("no source enabled (sources.etw / sources.eventlog)")
        return out

    # --------------------------------------------------------- publisher --
    def _publisher(self) -> None:
        last_check = last_stats = time.monotonic()
        try:
            while True:
                batch = self.queue.get_batch(500, 0.2)
                for name, ev, ack in batch:
                    self.bucket.acquire(1)
                    try:
                        self.sink.publish(ev)
                    except Exception as e:  # noqa: BLE001 - the publisher spools; this is a bug/fatal
                        self.counts["publish_errors"] += 1
                        log.exception("publishing failed: %s", e)
                        raise
                    self.per_source[name]["published"] += 1
                    self.counts["published"] += 1
                    if ack is not None:
                        ack()
                now = time.monotonic()
                if now - last_check >= 5.0:
                    last_check = now
                    self._housekeeping()
                if self.cfg.stats_interval_s and now - last_stats >= self.cfg.stats_interval_s:
                    last_stats = now
                    log.info("stats", extra={"stats": self.health()})
                if not batch and self._stop.is_set() and self._sources_stopped.is_set() and not len(self.queue):
                    break
        except BaseException as e:  # noqa: BLE001
            self.fatal = e
            self._stop.set()
        finally:
            self._drained.set()

    def _housekeeping(self) -> None:
        for s in self.sources:
            check = getattr(s, "check", None)
            if check is not None:
                try:
                    check()
                except Exception as e:  # noqa: BLE001
                    log.error("source %s check failed: %s", s.name, e)
        if self.cfg.max_rss_mb:
            rss = self.last_rss = rss_bytes()
            over = rss is not None and rss > self.cfg.max_rss_mb << 20
            if over != self.memory_over_budget:
                self.memory_over_budget = over
                self.queue.limit_factor = 0.1 if over else 1.0
                (log.warning if over else log.info)(
                    "memory %s budget (%d MiB RSS, budget %d MiB): queue capacity %s",
                    "over" if over else "back under", (rss or 0) >> 20, self.cfg.max_rss_mb,
                    "cut to 10%" if over else "restored")

    # ------------------------------------------------------------ health --
    def health(self) -> dict[str, Any]:
        sink_stats = dict(getattr(self.sink, "stats", {}) or {})
        sources = {}
        events_lost = 0
        ok = self.fatal is None
        for s in self.sources:
            st = dict(s.stats())
            st.update(self.per_source.get(s.name, {}))
            sources[s.name] = st
            events_lost += int(st.get("events_lost", 0) or 0)
            ok = ok and bool(st.get("running", True))
        return {
            "status": "ok" if ok else "degraded",
            "host_id": self.cfg.host_id,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "sources": sources,
            "queue": {"depth": len(self.queue), "bytes": self.queue.nbytes,
                      "max_events": self.queue.max_events, "max_bytes": self.queue.max_bytes,
                      "high_watermark": self.queue.high_watermark,
                      "limit_factor": self.queue.limit_factor},
            "published": self.counts["published"],
            "filtered": sum(c["filtered"] for c in self.per_source.values()),
            "dropped": self.counts["dropped"] + int(sink_stats.get("dropped", 0) or 0),
            "dropped_queue_full": self.counts["dropped"],
            "spooled": int(sink_stats.get("spooled", 0) or 0),
            "spool_unsent": int(sink_stats.get("spool_unsent", 0) or 0),
            "events_lost": events_lost,
            "rate_limited_s": round(self.bucket.waited_s, 3),
            "rss_bytes": self.last_rss if self.last_rss is not None else rss_bytes(),
            "memory_over_budget": self.memory_over_budget,
            "publisher": sink_stats,
        }

    def _start_health(self) -> None:
        """``health.listen``: /health (and /) the JSON document of :meth:`health`, /metrics
        the same counters in Prometheus text (sigstream.metrics, shared by every command).
        A port in use raises sigstream.metrics.MetricsPortError."""
        from sigstream.metrics import AgentCollector, Endpoint
        host, _, port = self.cfg.health_listen.rpartition(":")
        self._http = Endpoint(host.strip("[]"), int(port))
        self._http.health = self.health
        self._http.registry.register(AgentCollector(self.health))
        self.health_port = self._http.port
        log.info("health endpoint on http://%s:%d/health (Prometheus: /metrics)", host, self.health_port)

    # --------------------------------------------------------- lifecycle --
    def start(self) -> None:
        self._sources_stopped = threading.Event()
        if self.cfg.health_enabled:
            self._start_health()     # first: a port in use stops the agent before any work
        try:
            if self.sink is None:
                self.sink = make_sink(self.sink_spec, self.cfg)
            if not self._built_sources:
                self.sources = self.build_sources()
        except BaseException:
            if self._http is not None:
                self._http.stop()
            raise
        for s in self.sources:
            self._src_counts(s.name)
        self._pub_thread = threading.Thread(target=self._publisher, name="publisher", daemon=True)
        self._pub_thread.start()
        self.actions = None
        if self.cfg.actions is not None and self.cfg.actions.enabled:
            if not self.sink_spec.is_kafka:
                log.warning("actions need the Kafka sink; response side not started")
            else:
                from sigstream.connectors.agent_actions import ActionRunner
                self.actions = ActionRunner(self.cfg.actions, self.cfg.computer_name,
                                            self.cfg.kafka_settings(self.sink_spec.bootstrap),
                                            self.cfg.topic_prefix, Path(self.cfg.state_dir) / "actions").start()
        started = []
        try:
            for s in self.sources:
                s.start()
                started.append(s)
                log.info("source %s started", s.name, extra={"source": s.name})
        except BaseException:
            for s in reversed(started):
                try:
                    s.stop()
                except Exception:  # noqa: BLE001
                    log.exception("stopping %s", s.name)
            self._sources_stopped.set()
            self._shutdown_rest()
            raise

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_runtime_s: float | None = None) -> int:
        """Start, wait for :meth:`stop` (or ``max_runtime_s``), shut down. Exit code."""
        self.start()
        log.info("agent running", extra={"host_id": self.cfg.host_id, "sources": [s.name for s in self.sources]})
        self._stop.wait(max_runtime_s)
        self.shutdown()
        return 1 if self.fatal else 0

    def shutdown(self) -> None:
        """Stop sources (ETW session stopped), drain the queue into the publisher,
        flush/close it (unsent records stay in the spool), persist bookmarks."""
        self._stop.set()
        for s in self.sources:
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping source %s", s.name)
        self._sources_stopped.set()
        self._shutdown_rest()

    def _shutdown_rest(self) -> None:
        self._stop.set()
        if getattr(self, "actions", None) is not None:
            self.actions.stop()
        if self._pub_thread is not None:
            self._drained.wait()
        self.queue.close()
        if self.fatal is not None:
            log.error("publisher failed: %s", self.fatal)
        for s in self.sources:
            persist = getattr(s, "persist_bookmark", None)
            if persist is not None:
                try:
                    persist(force=True)
                except Exception:  # noqa: BLE001
                    log.exception("saving bookmark of %s", s.name)
        if self.sink is not None:
            try:
                self.sink.flush(10.0)
            except Exception:  # noqa: BLE001
                log.exception("flushing the publisher")
            try:
                self.sink.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the publisher")
        if self._http is not None:
            self._http.stop()
        log.info("agent stopped", extra={"stats": self.health()})
