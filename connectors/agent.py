"""The endpoint agent runtime: sources -> bounded queue -> publisher (Kafka, spool on outage).

Threads:

* source threads: pywintrace's ETW consumer thread (real time: it cannot wait long,
  or ETW itself loses buffers) and one thread per event-log channel (can wait:
  the event log keeps the events, the bookmark says where to resume);
* the publisher thread: takes events off the queue, applies the events/s budget,
  hands them to the sink (:class:`connectors.kafka.KafkaEventPublisher`, or
  stdout/file for testing) and acknowledges them to their source (bookmark);
* the health server thread (127.0.0.1 only, JSON).

Back-pressure first, shedding last: the queue is bounded by events and by bytes.
A full queue blocks an event-log source for as long as needed (nothing is lost:
the event log still holds the events) and blocks the ETW callback at most
``queue.shed_after_s``; only then is an ETW event dropped, counted per source
in ``dropped`` and reported in the log (once per episode) and in the health
document. The events/s budget (token bucket) slows the publisher, which fills
the queue, which pushes back on the sources the same way. When the process RSS
exceeds ``budget.max_rss_mb`` the queue admits at most a tenth of its capacity
until memory is back under budget (reported as ``memory_over_budget``).
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Callable, IO

import orjson
import yaml

from sigstream.stream.errors import ConfigProblem
from sigstream.stream.envelope import encode, wrap

log = logging.getLogger("sigstream.agent")

__all__ = ["AgentConfig", "ConfigError", "load_config", "Agent", "EventQueue", "TokenBucket",
           "rss_bytes", "JsonLogFormatter", "setup_logging", "StreamSink"]


class ConfigError(ConfigProblem):
    """The agent configuration is invalid (message says where)."""


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(v: Any, where: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        s = v.strip().lower().replace(" ", "")
        num = s.rstrip("kmgib")
        unit = s[len(num):]
        try:
            if unit in _UNITS:
                return int(float(num) * _UNITS[unit])
        except ValueError:
            pass
    raise ConfigError(f"{where}: {v!r} is not a size (e.g. 1073741824, 512MiB, 1GiB)")


def default_state_dir() -> Path:
    base = os.environ.get("PROGRAMDATA")
    if base:
        return Path(base) / "sigstream"
    return Path.home() / ".local" / "state" / "sigstream"


@dataclass
class EventLogChannel:
    channel: str
    query: str = "*"
    start_at: str = "oldest"


@dataclass
class AgentConfig:
    host_id: str = ""
    computer_name: str = ""
    state_dir: Path = field(default_factory=default_state_dir)
    etw_enabled: bool = True
    etw_session_name: str = "sigstream-etw"
    etw_providers: list = field(default_factory=list)            # list[EtwProvider]
    etw_buffer_kb: int = 1024
    etw_min_buffers: int = 0
    etw_max_buffers: int = 0
    eventlog_enabled: bool = True
    eventlog_channels: list = field(default_factory=list)        # list[EventLogChannel]
    eventlog_batch_size: int = 64
    kafka: dict = field(default_factory=dict)
    topic_prefix: str = "sigstream"
    spool_dir: Path | None = None
    spool_max_bytes: int = 1 << 30
    queue_max_events: int = 20_000
    queue_max_bytes: int = 64 << 20
    shed_after_s: float = 2.0
    max_events_per_s: float = 0.0           # 0 = unlimited
    burst: int = 0
    max_rss_mb: int = 0                     # 0 = unlimited
    exclude_images: list = field(default_factory=list)
    exclude_event_ids: dict = field(default_factory=dict)   # channel (lower) -> set(ids)
    health_listen: str = "127.0.0.1:8765"
    health_enabled: bool = True
    log_level: str = "INFO"
    log_file: str | None = None
    stats_interval_s: float = 60.0
    actions: Any = None                     # connectors.agent_actions.ActionsConfig

    def __post_init__(self) -> None:
        if not self.host_id:
            self.host_id = socket.getfqdn() or socket.gethostname()
        if not self.computer_name:
            self.computer_name = socket.getfqdn() or socket.gethostname()
        if self.spool_dir is None:
            self.spool_dir = Path(self.state_dir) / "spool"

    def kafka_settings(self) -> Any:
        """connectors.kafka.KafkaSettings from the `kafka:` section (unset keys: defaults)."""
        from sigstream.connectors.kafka import KafkaSettings
        return KafkaSettings(**{k: v for k, v in self.kafka.items() if v is not None})


_TOP_KEYS = {"host_id", "computer_name", "state_dir", "sources", "kafka", "spool", "queue", "budget",
             "filters", "health", "logging", "actions"}


def _section(doc: dict, name: str, keys: set[str]) -> dict:
    sec = doc.get(name) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{name}: expected a mapping")
    unknown = set(sec) - keys
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(keys))}")
    return sec


def config_from_dict(doc: dict) -> AgentConfig:
    from sigstream.connectors.etw import DEFAULT_PROVIDERS, KNOWN_PROVIDERS, EtwProvider

    if not isinstance(doc, dict):
        raise ConfigError("the configuration must be a YAML mapping")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_TOP_KEYS))}")
    kw: dict[str, Any] = {}
    for k in ("host_id", "computer_name"):
        if doc.get(k):
            kw[k] = str(doc[k])
    if doc.get("state_dir"):
        kw["state_dir"] = Path(os.path.expandvars(str(doc["state_dir"])))

    sources = _section(doc, "sources", {"etw", "eventlog"})
    etw = sources.get("etw") or {}
    if etw:
        unknown = set(etw) - {"enabled", "session_name", "providers", "buffer_kb", "min_buffers", "max_buffers"}
        if unknown:
            raise ConfigError(f"sources.etw: unknown key(s) {', '.join(sorted(unknown))}")
    kw["etw_enabled"] = bool(etw.get("enabled", True)) if "etw" in sources else False
    kw["etw_session_name"] = str(etw.get("session_name") or "sigstream-etw")
    for k, ck in (("buffer_kb", "etw_buffer_kb"), ("min_buffers", "etw_min_buffers"),
                  ("max_buffers", "etw_max_buffers")):
        if k in etw:
            kw[ck] = int(etw[k])
    provs = []
    for i, p in enumerate(etw.get("providers") or list(DEFAULT_PROVIDERS)):
        where = f"sources.etw.providers[{i}]"
        if isinstance(p, str):
            p = {"name": p}
        if not isinstance(p, dict) or "name" not in p and "guid" not in p:
            raise ConfigError(f"{where}: a provider name ({', '.join(KNOWN_PROVIDERS)}) or "
                              "{{name, guid, level, event_ids}}")
        base = KNOWN_PROVIDERS.get(str(p.get("name", "")).lower())
        if base is None and not p.get("guid"):
            raise ConfigError(f"{where}: unknown provider {p.get('name')!r} without a guid; "
                              f"known: {', '.join(KNOWN_PROVIDERS)}")
        provs.append(EtwProvider(
            name=str(p.get("provider_name") or (base.name if base else p.get("name"))),
            guid=str(p.get("guid") or base.guid),
            level=int(p.get("level", base.level if base else 4)),
            any_keywords=int(str(p.get("any_keywords", 0)), 0),
            all_keywords=int(str(p.get("all_keywords", 0)), 0),
            event_ids=[int(x) for x in p.get("event_ids", base.event_ids if base else [])]))
    kw["etw_providers"] = provs

    el = sources.get("eventlog") or {}
    kw["eventlog_enabled"] = bool(el.get("enabled", True)) if "eventlog" in sources else False
    chans = []
    for i, c in enumerate(el.get("channels") or ["Microsoft-Windows-Sysmon/Operational"]):
        if isinstance(c, str):
            c = {"channel": c}
        if not isinstance(c, dict) or not c.get("channel"):
            raise ConfigError(f"sources.eventlog.channels[{i}]: needs 'channel'")
        if c.get("start_at", "oldest") not in ("oldest", "future"):
            raise ConfigError(f"sources.eventlog.channels[{i}].start_at: 'oldest' or 'future'")
        chans.append(EventLogChannel(str(c["channel"]), str(c.get("query") or "*"),
                                     str(c.get("start_at", "oldest"))))
    kw["eventlog_channels"] = chans
    if "batch_size" in el:
        kw["eventlog_batch_size"] = int(el["batch_size"])

    kafka = _section(doc, "kafka", {"bootstrap", "topic_prefix", "client_id", "security_protocol",
                                    "sasl_mechanism", "sasl_username", "sasl_password",
                                    "sasl_password_env", "sasl_password_file", "ssl_cafile",
                                    "ssl_certfile", "ssl_keyfile"})
    kafka = dict(kafka)
    if "topic_prefix" in kafka:
        kw["topic_prefix"] = str(kafka.pop("topic_prefix"))
    env = kafka.pop("sasl_password_env", None)
    if env:
        if env not in os.environ:
            raise ConfigError(f"kafka.sasl_password_env: environment variable {env} is not set")
        kafka["sasl_password"] = os.environ[env]
    pfile = kafka.pop("sasl_password_file", None)
    if pfile:
        try:
            kafka["sasl_password"] = Path(pfile).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"kafka.sasl_password_file: {e}") from None
    kw["kafka"] = kafka

    spool = _section(doc, "spool", {"dir", "max_bytes"})
    if spool.get("dir"):
        kw["spool_dir"] = Path(os.path.expandvars(str(spool["dir"])))
    if "max_bytes" in spool:
        kw["spool_max_bytes"] = parse_size(spool["max_bytes"], "spool.max_bytes")

    q = _section(doc, "queue", {"max_events", "max_bytes", "shed_after_s"})
    if "max_events" in q:
        kw["queue_max_events"] = int(q["max_events"])
    if "max_bytes" in q:
        kw["queue_max_bytes"] = parse_size(q["max_bytes"], "queue.max_bytes")
    if "shed_after_s" in q:
        kw["shed_after_s"] = float(q["shed_after_s"])

    b = _section(doc, "budget", {"max_events_per_s", "burst", "max_rss_mb"})
    if b.get("max_events_per_s"):
        kw["max_events_per_s"] = float(b["max_events_per_s"])
    if b.get("burst"):
        kw["burst"] = int(b["burst"])
    if b.get("max_rss_mb"):
        kw["max_rss_mb"] = int(b["max_rss_mb"])

    f = _section(doc, "filters", {"exclude_images", "exclude_event_ids"})
    kw["exclude_images"] = [str(x) for x in (f.get("exclude_images") or [])]
    ids = f.get("exclude_event_ids") or {}
    if not isinstance(ids, dict):
        raise ConfigError("filters.exclude_event_ids: a mapping channel -> [event ids]")
    kw["exclude_event_ids"] = {str(k).lower(): {int(x) for x in v} for k, v in ids.items()}

    a = _section(doc, "actions", {"enabled", "keys", "dry_run", "keep_open", "rollback_after_s"})
    if a:
        from sigstream.connectors.agent_actions import ActionsConfig
        kw["actions"] = ActionsConfig(
            enabled=bool(a.get("enabled", False)), keys=a.get("keys"),
            dry_run=bool(a.get("dry_run", True)), keep_open=[str(x) for x in a.get("keep_open") or []],
            rollback_after_s=float(a.get("rollback_after_s", 900.0)))
        if kw["actions"].enabled:  # fail at start-up, not when the first request arrives
            from sigstream.stream.actions import load_keyring
            try:
                load_keyring(kw["actions"].keys)
            except (OSError, ValueError) as e:
                raise ConfigError(f"actions: no usable signing key: {e}") from None

    h = _section(doc, "health", {"enabled", "listen"})
    if "enabled" in h:
        kw["health_enabled"] = bool(h["enabled"])
    if h.get("listen"):
        kw["health_listen"] = str(h["listen"])
    host, _, port = kw.get("health_listen", "127.0.0.1:8765").rpartition(":")
    try:
        if not ip_address(host.strip("[]")).is_loopback or not 0 <= int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError("health.listen: must be a loopback address:port (e.g. 127.0.0.1:8765); "
                          "the endpoint has no authentication") from None

    lg = _section(doc, "logging", {"level", "file", "stats_interval_s"})
    if lg.get("level"):
        kw["log_level"] = str(lg["level"]).upper()
    if lg.get("file"):
        kw["log_file"] = os.path.expandvars(str(lg["file"]))
    if "stats_interval_s" in lg:
        kw["stats_interval_s"] = float(lg["stats_interval_s"])
    return AgentConfig(**kw)


def load_config(path: str | os.PathLike) -> AgentConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return config_from_dict(doc)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------

class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc, + ``extra`` fields)."""

    _STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in self._STD and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO", file: str | None = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if file:
        from logging.handlers import RotatingFileHandler
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = RotatingFileHandler(file, maxBytes=20 << 20, backupCount=5, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


# --------------------------------------------------------------------------
# budget helpers
# --------------------------------------------------------------------------

def rss_bytes() -> int | None:
    """Resident set size of this process, without psutil."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    if sys.platform == "win32":
        try:
            import ctypes
            from ctypes import wintypes

            class PMC(ctypes.Structure):
                _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                            ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                            ("QuotaNonPagedPoolUsage", ctypes.c_size_t), ("PagefileUsage", ctypes.c_size_t),
                            ("PeakPagefileUsage", ctypes.c_size_t)]
            pmc = PMC()
            pmc.cb = ctypes.sizeof(PMC)
            k32 = ctypes.windll.kernel32
            k32.GetCurrentProcess.restype = wintypes.HANDLE
            if k32.K32GetProcessMemoryInfo(k32.GetCurrentProcess(), ctypes.byref(pmc), pmc.cb):
                return int(pmc.WorkingSetSize)
        except Exception:  # noqa: BLE001
            return None
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024)   # peak, the best available
    except Exception:  # noqa: BLE001
        return None


class TokenBucket:
    """``rate`` tokens/s, at most ``burst`` banked. ``rate`` <= 0: unlimited."""

    def __init__(self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = float(rate)
        self.burst = float(burst or max(1.0, rate))
        self.tokens = self.burst
        self.clock, self.sleep = clock, sleep
        self.last = clock()
        self.waited_s = 0.0

    def acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens, sleeping until they are there; returns the seconds slept."""
        if self.rate <= 0:
            return 0.0
        slept = 0.0
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n - 1e-9:          # tolerance: float rounding must not spin
                self.tokens = max(0.0, self.tokens - n)
                self.waited_s += slept
                return slept
            wait = (n - self.tokens) / self.rate
            self.sleep(wait)
            slept += wait


class EventQueue:
    """FIFO bounded by item count and approximate bytes. ``limit_factor`` < 1 shrinks it."""

    def __init__(self, max_events: int, max_bytes: int):
        self.max_events = max(1, max_events)
        self.max_bytes = max(1, max_bytes)
        self.limit_factor = 1.0
        self._q: deque = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.high_watermark = 0
        self.closed = False

    def _room(self, size: int) -> bool:
        if not self._q:
            return True          # one event always fits, however large
        f = self.limit_factor
        return (len(self._q) < max(1, int(self.max_events * f))
                and self._bytes + size <= max(1, int(self.max_bytes * f)))

    def put(self, item: Any, size: int, timeout: float | None) -> bool:
        """Enqueue; wait at most ``timeout`` s for room (None: until room or close)."""
        with self._cond:
            if not self._room(size):
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._room(size):
                    if self.closed:
                        return False
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(0.5 if left is None else min(left, 0.5))
            self._q.append((item, size))
            self._bytes += size
            if len(self._q) > self.high_watermark:
                self.high_watermark = len(self._q)
            self._cond.notify_all()
            return True

    def get_batch(self, max_items: int, timeout: float) -> list:
        with self._cond:
            if not self._q:
                self._cond.wait(timeout)
            out = []
            while self._q and len(out) < max_items:
                item, size = self._q.popleft()
                self._bytes -= size
                out.append(item)
            if out:
                self._cond.notify_all()
            return out

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._q)

    @property
    def nbytes(self) -> int:
        return self._bytes


# --------------------------------------------------------------------------
# sinks
# --------------------------------------------------------------------------

class StreamSink:
    """Envelopes as JSON lines to a stream (``--sink stdout`` / ``--sink file://PATH``)."""

    def __init__(self, out: IO[bytes], collector_id: str, close_stream: bool = False):
        self.out, self.collector_id, self._close = out, collector_id, close_stream
        self._n = 0

    def publish(self, event: dict) -> None:
        self.out.write(encode(wrap(event, self.collector_id)) + b"\n")
        self._n += 1

    def flush(self, timeout_s: float = 0) -> bool:
        self.out.flush()
        return True

    def close(self, timeout_s: float = 0) -> None:
        self.out.flush()
        if self._close:
            self.out.close()

    @property
    def stats(self) -> dict[str, int]:
        return {"published": self._n, "spooled": 0, "dropped": 0}


def make_sink(spec: str | None, cfg: AgentConfig) -> Any:
    """``None``/``kafka`` -> KafkaEventPublisher; ``stdout``; ``file://PATH``."""
    if spec in (None, "", "kafka"):
        from sigstream.connectors.kafka import KafkaEventPublisher
        Path(cfg.spool_dir).mkdir(parents=True, exist_ok=True)
        return KafkaEventPublisher(cfg.kafka_settings(), collector_id=cfg.host_id, spool_dir=cfg.spool_dir,
                                   spool_max_bytes=cfg.spool_max_bytes, topic_prefix=cfg.topic_prefix)
    if spec == "stdout":
        return StreamSink(sys.stdout.buffer, cfg.host_id)
    if spec.startswith("file://"):
        p = Path(spec[7:])
        p.parent.mkdir(parents=True, exist_ok=True)
        return StreamSink(open(p, "ab"), cfg.host_id, close_stream=True)
    raise ConfigError(f"--sink: {spec!r} is not kafka, stdout or file://PATH")


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

    def __init__(self, cfg: AgentConfig, sink: Any = None, sink_spec: str | None = None,
                 sources: list | None = None):
        self.cfg = cfg
        self.sink_spec = sink_spec
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
        self._http: ThreadingHTTPServer | None = None
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
        host, _, port = self.cfg.health_listen.rpartition(":")
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.split("?")[0] not in ("/", "/health", "/metrics"):
                    self.send_error(404)
                    return
                doc = agent.health()
                body = json.dumps(doc, default=str).encode()
                self.send_response(200 if doc["status"] == "ok" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self._http.daemon_threads = True
        self.health_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="health", daemon=True).start()
        log.info("health endpoint on http://%s:%d/health", host, self.health_port)

    # --------------------------------------------------------- lifecycle --
    def start(self) -> None:
        self._sources_stopped = threading.Event()
        if self.sink is None:
            self.sink = make_sink(self.sink_spec, self.cfg)
        if not self._built_sources:
            self.sources = self.build_sources()
        for s in self.sources:
            self._src_counts(s.name)
        if self.cfg.health_enabled:
            self._start_health()
        self._pub_thread = threading.Thread(target=self._publisher, name="publisher", daemon=True)
        self._pub_thread.start()
        self.actions = None
        if self.cfg.actions is not None and self.cfg.actions.enabled:
            if self.sink_spec not in (None, "", "kafka"):
                log.warning("actions need the Kafka sink; response side not started")
            else:
                from sigstream.connectors.agent_actions import ActionRunner
                self.actions = ActionRunner(self.cfg.actions, self.cfg.computer_name, self.cfg.kafka_settings(),
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
            self._http.shutdown()
            self._http.server_close()
        log.info("agent stopped", extra={"stats": self.health()})
