"""The agent's configuration: :class:`AgentConfig`, :class:`ConfigError`, reading and
validating the YAML (``deploy/windows/agent.example.yaml`` documents it), and the
process logging the ``logging:`` section sets up (JSON lines, :func:`setup_logging`).

Validation fails at start-up with a message that says where (``queue.max_bytes: ...``),
never when the setting is first used.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import yaml

from sigstream.stream.errors import ConfigProblem
from sigstream.stream.logfmt import JsonLogFormatter  # noqa: F401 - the one JSON log format, re-exported

__all__ = ["AgentConfig", "ConfigError", "EventLogChannel", "config_from_dict", "load_config",
           "parse_size", "default_state_dir", "JsonLogFormatter", "setup_logging"]


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

    def kafka_settings(self, bootstrap: str | None = None) -> Any:
        """connectors.kafka.KafkaSettings from the `kafka:` section (unset keys: defaults);
        ``bootstrap`` (``--sink kafka://...``) replaces the configured servers."""
        from sigstream.connectors.kafka import KafkaSettings
        kw = {k: v for k, v in self.kafka.items() if v is not None}
        if bootstrap:
            kw["bootstrap"] = bootstrap
        return KafkaSettings(**kw)


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

    a = _section(doc, "actions", {"enabled", "keys", "dry_run", "keep_open", "rollback_after_s",
                                  "allow_hmac", "allowed_types", "approver_keys", "max_action_bytes",
                                  "max_lifetime_s", "future_skew_s"})
    if a:
        from sigstream.connectors.agent_actions import ActionsConfig
        types = a.get("allowed_types")
        kw["actions"] = ActionsConfig(
            enabled=bool(a.get("enabled", False)), keys=a.get("keys"),
            dry_run=bool(a.get("dry_run", True)), keep_open=[str(x) for x in a.get("keep_open") or []],
            rollback_after_s=float(a.get("rollback_after_s", 900.0)),
            allow_hmac=bool(a.get("allow_hmac", False)),
            allowed_types=None if types is None else [str(t) for t in types],
            approver_keys=a.get("approver_keys"),
            max_action_bytes=int(a.get("max_action_bytes", 64 * 1024)),
            max_lifetime_s=float(a.get("max_lifetime_s", 3600.0)),
            future_skew_s=float(a.get("future_skew_s", 60.0)))
        if kw["actions"].enabled:  # fail at start-up, not when the first request arrives
            from sigstream.stream.actions import load_keyring
            try:
                load_keyring(kw["actions"].keys, allow_hmac=kw["actions"].allow_hmac or None)
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
