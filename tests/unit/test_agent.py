"""Agent runtime (connectors/agent.py, sigstream agent) with fake ETW / event-log modules."""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner

import fakes
from fakes import wait_until
from sigstream.connectors.agent import (Agent, ConfigError, EventQueue, JsonLogFormatter, StreamSink, TokenBucket,
                                        config_from_dict, load_config, make_sink, rss_bytes)
from sigstream.connectors.sink_spec import SinkSpec, parse_sink_spec
from sigstream.connectors.sinks import EnvelopeLineSink
from sigstream.stream.errors import ConfigProblem
from fakes import recordings as R

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "windows" / "agent.example.yaml"


def base_cfg(tmp_path, **over):
    doc = {"host_id": "WKS-FIN-042", "computer_name": "WKS-FIN-042.corp.example.com",
           "state_dir": str(tmp_path / "state"),
           "sources": {"etw": {"providers": ["powershell", "powershell-core"]},
                       "eventlog": {"channels": [R.SYSMON_CHANNEL]}},
           "health": {"listen": "127.0.0.1:0"}, "logging": {"stats_interval_s": 0}}
    doc.update(over)
    return config_from_dict(doc)


class ListSink:
    def __init__(self, delay=0.0):
        self.events, self.delay, self.closed = [], delay, False

    def publish(self, ev):
        if self.delay:
            time.sleep(self.delay)
        self.events.append(ev)

    def flush(self, timeout_s=0):
        return True

    def close(self, timeout_s=0):
        self.closed = True

    @property
    def stats(self):
        return {"published": len(self.events), "spooled": 0, "dropped": 0}


# ---------------------------------------------------------------- config --

def test_example_config_loads(monkeypatch):
    monkeypatch.setenv("SIGSTREAM_SASL_PASSWORD", "s3cret")
    cfg = load_config(EXAMPLE)
    assert cfg.etw_enabled and cfg.eventlog_enabled
    assert [p.name for p in cfg.etw_providers][:2] == ["Microsoft-Windows-PowerShell", "PowerShellCore"]
    assert cfg.eventlog_channels[0].channel == "Microsoft-Windows-Sysmon/Operational"
    assert cfg.kafka["security_protocol"] == "SASL_SSL" and cfg.kafka["sasl_password"] == "s3cret"
    assert cfg.spool_max_bytes == 2 << 30
    assert cfg.health_listen.startswith("127.0.0.1:")


def test_config_errors_name_the_place(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level"):
        config_from_dict({"kafak": {}})
    with pytest.raises(ConfigError, match="sources.etw.providers\\[0\\]: unknown provider"):
        config_from_dict({"sources": {"etw": {"providers": ["nope"]}}})
    with pytest.raises(ConfigError, match="loopback"):
        config_from_dict({"health": {"listen": "0.0.0.0:8765"}})
    with pytest.raises(ConfigError, match="spool.max_bytes"):
        config_from_dict({"spool": {"max_bytes": "lots"}})
    with pytest.raises(ConfigError, match="SASL_PW_UNSET"):
        config_from_dict({"kafka": {"sasl_password_env": "SASL_PW_UNSET"}})


def test_custom_provider_and_sizes():
    cfg = config_from_dict({"sources": {"etw": {"providers": [
        {"name": "amsi"}, {"name": "x", "guid": "{11111111-2222-3333-4444-555555555555}", "level": 4,
                           "event_ids": [1]}]}},
        "queue": {"max_bytes": "32MiB"}})
    assert [p.event_ids for p in cfg.etw_providers] == [[1101], [1]]
    assert cfg.queue_max_bytes == 32 << 20


# ---------------------------------------------------------------- building blocks --

def test_queue_backpressure_then_timeout():
    q = EventQueue(max_events=2, max_bytes=10_000)
    assert q.put("a", 10, 0) and q.put("b", 10, 0)
    t0 = time.monotonic()
    assert q.put("c", 10, 0.1) is False                   # full: waited, then gave up
    assert time.monotonic() - t0 >= 0.09
    threading.Timer(0.1, lambda: q.get_batch(1, 0)).start()
    assert q.put("c", 10, None) is True                    # blocks until room
    assert q.get_batch(10, 0) == ["b", "c"]


def test_queue_byte_bound_and_oversized_single_event():
    q = EventQueue(max_events=100, max_bytes=100)
    assert q.put("big", 1000, 0)                            # one event always fits
    assert q.put("x", 10, 0) is False
    q.get_batch(1, 0)
    assert q.put("x", 60, 0) and not q.put("y", 60, 0)


def test_token_bucket_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s
    b = TokenBucket(100, burst=10, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        assert b.acquire() == 0
    for _ in range(50):
        b.acquire()
    assert now[0] == pytest.approx(0.5, rel=0.01)          # 50 events at 100/s
    assert TokenBucket(0).acquire() == 0


def test_rss_is_measured():
    r = rss_bytes()
    assert r is not None and r > 1 << 20


def test_json_log_formatter():
    rec = logging.LogRecord("sigstream.agent", logging.ERROR, __file__, 1, "x %s", ("y",), None)
    rec.source = "etw"
    doc = json.loads(JsonLogFormatter().format(rec))
    assert doc["msg"] == "x y" and doc["level"] == "error" and doc["source"] == "etw"
    assert doc["ts"].endswith("Z")


# ---------------------------------------------------------------- agent --

def test_agent_fake_sources_to_sink_with_filters_and_health(monkeypatch, tmp_path):
    etw, evtlog, _ = fakes.install(monkeypatch)
    etw.RECORDINGS.extend(R.ETW_ALL)
    for x in R.XML_SYSMON_ALL:
        evtlog.write(R.SYSMON_CHANNEL, x)
    noisy = R.sysmon_xml(1005, 1, [("Image", "C:\\Program Files\\Noisy\\agent.exe"), ("CommandLine", "x")])
    evtlog.write(R.SYSMON_CHANNEL, noisy)
    cfg = base_cfg(tmp_path, filters={"exclude_images": ["c:\\program files\\noisy\\*"],
                                      "exclude_event_ids": {R.SYSMON_CHANNEL: [21]}})
    sink = ListSink()
    agent = Agent(cfg, sink=sink)
    agent.start()
    try:
        assert wait_until(lambda: len(sink.events) >= 9 and agent.health()["filtered"] == 2)
        url = f"http://127.0.0.1:{agent.health_port}/health"
        doc = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert doc["status"] == "ok" and doc["host_id"] == "WKS-FIN-042"
        assert doc["sources"]["etw"]["published"] == 6
        assert doc["sources"]["etw"]["session"] == "sigstream-etw"
        assert doc["sources"][f"eventlog:{R.SYSMON_CHANNEL}"]["published"] == 3
        assert doc["filtered"] == 2 and doc["dropped"] == 0 and doc["events_lost"] == 0
        assert {"queue", "spooled", "uptime_s", "rss_bytes"} <= set(doc)
    finally:
        agent.shutdown()
    assert sink.closed and etw.SESSIONS == {}
    by_src = {}
    for e in sink.events:
        by_src.setdefault(e["Channel"], []).append(e)
    assert [e["EventID"] for e in by_src[R.SYSMON_CHANNEL]] == [1, 13, 12]
    assert all(e["Computer"] == "WKS-FIN-042.corp.example.com" for e in sink.events)
    # filtered events still move the bookmark (else they would be re-read forever)
    bm = Path(cfg.state_dir) / "bookmarks" / "bookmark-Microsoft-Windows-Sysmon_Operational.xml"
    assert "RecordId='1005'" in bm.read_text()


def test_slow_publisher_sheds_realtime_events_counts_and_reports(monkeypatch, tmp_path):
    etw, _, _ = fakes.install(monkeypatch)
    etw.RECORDINGS.extend([R.ETW_PS_4104] * 30)
    cfg = base_cfg(tmp_path, sources={"etw": {"providers": ["powershell"]}},
                   queue={"max_events": 2, "shed_after_s": 0.01})
    sink = ListSink(delay=0.05)
    agent = Agent(cfg, sink=sink)
    agent.start()
    try:
        assert wait_until(lambda: etw.running_sessions()[0].replayed.is_set(), 10)
        h = agent.health()
        assert h["dropped"] > 0 and h["sources"]["etw"]["dropped"] == h["dropped"]
        assert h["sources"]["etw"]["received"] == 30
    finally:
        agent.shutdown()
    assert len(sink.events) + agent.health()["dropped"] == 30      # nothing vanishes uncounted


def test_eventlog_backpressure_loses_nothing(monkeypatch, tmp_path):
    _, evtlog, _ = fakes.install(monkeypatch)
    for rid in range(1, 201):
        evtlog.write(R.SYSMON_CHANNEL, R.sysmon_xml(rid, 13, [("TargetObject", f"HKLM\\k{rid}")]))
    cfg = base_cfg(tmp_path, sources={"eventlog": {"channels": [R.SYSMON_CHANNEL]}},
                   queue={"max_events": 3, "shed_after_s": 0.001},
                   budget={"max_events_per_s": 2000, "burst": 10})
    sink = ListSink()
    agent = Agent(cfg, sink=sink)
    agent.start()
    try:
        assert wait_until(lambda: len(sink.events) == 200, 10)
    finally:
        agent.shutdown()
    assert [e["EventRecordID"] for e in sink.events] == list(range(1, 201))
    assert agent.health()["dropped"] == 0
    assert agent.bucket.waited_s > 0                                   # the budget slowed it down


def test_failed_source_start_stops_the_rest(monkeypatch, tmp_path):
    etw, _, _ = fakes.install(monkeypatch)
    etw.FAIL_ENABLE = True
    sink = ListSink()
    agent = Agent(base_cfg(tmp_path), sink=sink)
    with pytest.raises(OSError):
        agent.start()
    assert etw.SESSIONS == {} and sink.closed


def test_cli_agent_stdout_sink(monkeypatch, tmp_path):
    etw, evtlog, _ = fakes.install(monkeypatch)
    etw.RECORDINGS.append(R.ETW_PS_4104)
    evtlog.write(R.SYSMON_CHANNEL, R.XML_SYSMON_13)
    cfgfile = tmp_path / "agent.yaml"
    cfgfile.write_text(yaml.safe_dump({
        "host_id": "WKS-FIN-042", "state_dir": str(tmp_path / "state"),
        "sources": {"etw": {"providers": ["powershell"]}, "eventlog": {"channels": [R.SYSMON_CHANNEL]}},
        "health": {"enabled": False}, "logging": {"file": str(tmp_path / "agent.log")}}))
    out = tmp_path / "events.jsonl"
    from sigstream.cli import main
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        res = CliRunner().invoke(main, ["agent", "-c", str(cfgfile), "--sink", f"file://{out}",
                                        "--max-runtime", "1.5"])
    finally:
        for h in root.handlers[:]:
            if h not in saved[0]:
                root.removeHandler(h)
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert res.exit_code == 0, res.output
    envs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(e["source"] for e in envs) == ["powershell", "sysmon"]
    assert all(e["collector_id"] == "WKS-FIN-042" and e["v"] == 1 for e in envs)
    logs = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()]
    assert any(rec["msg"] == "agent stopped" for rec in logs)
    res = CliRunner().invoke(main, ["agent", "-c", str(cfgfile), "--check"])
    assert res.exit_code == 0 and "OK" in res.output


def test_stream_sink_writes_envelopes(tmp_path):
    import io
    buf = io.BytesIO()
    s = StreamSink(buf, "c1")
    assert StreamSink is EnvelopeLineSink          # one envelope sink for collect and the agent
    s.publish({"EventID": 1, "Channel": R.SYSMON_CHANNEL, "Computer": "h", "EventRecordID": 1})
    env = orjson.loads(buf.getvalue())
    assert env["source"] == "sysmon" and env["event"]["EventID"] == 1


def test_make_sink_follows_the_shared_sink_spec(monkeypatch, tmp_path):
    cfg = base_cfg(tmp_path, kafka={"bootstrap": "configured:9092"})
    out = tmp_path / "deep" / "events.jsonl"
    for _ in range(2):                              # the agent appends: a restart keeps what was written
        sink = make_sink(f"file://{out}", cfg)
        assert isinstance(sink, EnvelopeLineSink)
        sink.publish({"EventID": 1, "Channel": R.SYSMON_CHANNEL, "EventRecordID": 1})
        sink.close()
    assert len(out.read_bytes().splitlines()) == 2
    assert cfg.kafka_settings().bootstrap == "configured:9092"
    assert cfg.kafka_settings("other:9093").bootstrap == "other:9093"

    made = {}

    class Publisher:
        def __init__(self, settings, **kw):
            made.update(kw, bootstrap=settings.bootstrap)

    import sigstream.connectors.kafka as kafka_mod
    monkeypatch.setattr(kafka_mod, "KafkaEventPublisher", Publisher)
    make_sink(parse_sink_spec("kafka://k1:9092,k2:9092"), cfg)
    assert made["bootstrap"] == "k1:9092,k2:9092" and made["collector_id"] == "WKS-FIN-042"
    make_sink(None, cfg)
    assert made["bootstrap"] == "configured:9092"


def test_agent_bad_sink_spec(tmp_path):
    with pytest.raises(ConfigProblem, match=r"^unknown --sink 'kafak': use kafka\[://HOST:PORT\], stdout"):
        Agent(base_cfg(tmp_path), sink_spec="kafak")
    assert Agent(base_cfg(tmp_path), sink_spec="stdout").sink_spec == SinkSpec("stdout")


@pytest.mark.parametrize("spec, message", [
    ("kafak", "error: unknown --sink 'kafak': use kafka[://HOST:PORT], stdout or file://PATH"),
    ("file://", "error: --sink file://PATH needs a path"),
    ("kafka://", "error: --sink kafka://HOST:PORT needs an address"),
])
def test_cli_agent_bad_sink_is_a_usage_error(tmp_path, spec, message):
    from sigstream.cli import main
    cfgfile = tmp_path / "agent.yaml"
    cfgfile.write_text(yaml.safe_dump({"host_id": "h", "state_dir": str(tmp_path / "state")}))
    res = CliRunner().invoke(main, ["agent", "-c", str(cfgfile), "--sink", spec, "--check"])
    assert res.exit_code == 2 and message in res.output


def test_actions_enabled_without_a_key_is_a_config_error(monkeypatch, tmp_path):
    """The response side needs a signing key: a missing one is reported at load, clearly."""
    from sigstream.connectors.agent import ConfigError, config_from_dict

    for var in ("SIGSTREAM_ACTION_KEY", "SIGSTREAM_ACTION_KEYS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="actions: no usable signing key"):
        config_from_dict({"actions": {"enabled": True}})
    with pytest.raises(ConfigError, match="actions: no usable signing key"):
        config_from_dict({"actions": {"enabled": True, "keys": str(tmp_path / "missing.keys")}})
    cfg = config_from_dict({"actions": {"enabled": False}})
    assert cfg.actions is not None and not cfg.actions.enabled


def test_actions_section_takes_the_endpoint_hardening_options():
    cfg = config_from_dict({"actions": {"enabled": False, "allowed_types": ["kill_process"],
                                        "approver_keys": "approvers.keys", "max_action_bytes": 4096,
                                        "max_lifetime_s": 600, "future_skew_s": 30, "allow_hmac": False}})
    a = cfg.actions
    assert a.allowed_types == ["kill_process"] and a.approver_keys == "approvers.keys"
    assert (a.max_action_bytes, a.max_lifetime_s, a.future_skew_s, a.allow_hmac) == (4096, 600.0, 30.0, False)


# -------------------------------------------------------------- metrics --

def _scrape(port):
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):         # a parse error fails the test
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_agent_metrics_is_prometheus_and_health_stays_json(monkeypatch, tmp_path):
    etw, evtlog, _ = fakes.install(monkeypatch)
    etw.RECORDINGS.extend(R.ETW_ALL)
    for x in R.XML_SYSMON_ALL:
        evtlog.write(R.SYSMON_CHANNEL, x)
    sink = ListSink()
    agent = Agent(base_cfg(tmp_path, filters={"exclude_event_ids": {R.SYSMON_CHANNEL: [21]}}), sink=sink)
    agent.start()
    try:
        assert wait_until(lambda: len(sink.events) >= 9 and agent.health()["filtered"] == 1)
        m = _scrape(agent.health_port)
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{agent.health_port}/health",
                                                timeout=5).read())
    finally:
        agent.shutdown()
    sysmon = (("source", f"eventlog:{R.SYSMON_CHANNEL}"),)
    assert m[("sigstream_agent_published_total", (("source", "etw"),))] == 6
    assert m[("sigstream_agent_published_total", sysmon)] == 3
    assert m[("sigstream_agent_filtered_total", sysmon)] == 1
    assert m[("sigstream_agent_events_total", sysmon)] == doc["sources"][f"eventlog:{R.SYSMON_CHANNEL}"]["received"]
    assert m[("sigstream_agent_dropped_total", (("source", "etw"),))] == 0
    assert m[("sigstream_spool_records", ())] == 0 and m[("sigstream_agent_up", ())] == 1
    assert ("sigstream_agent_queue_events", ()) in m and ("sigstream_spool_bytes", ()) in m
    assert doc["status"] == "ok" and doc["published"] == 9 and doc["sources"]["etw"]["published"] == 6


def test_agent_health_port_in_use_fails_before_any_source_starts(monkeypatch, tmp_path):
    import socket
    from sigstream.metrics import MetricsPortError
    etw, _, _ = fakes.install(monkeypatch)
    etw.RECORDINGS.append(R.ETW_PS_4104)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        sink = ListSink()
        agent = Agent(base_cfg(tmp_path, health={"listen": f"127.0.0.1:{port}"}), sink=sink)
        with pytest.raises(MetricsPortError, match="in use"):
            agent.start()
        assert etw.SESSIONS == {} and sink.events == []
        # the CLI: --metrics-port (as run/collect/respond) replaces health.listen's port
        cfgfile = tmp_path / "agent.yaml"
        cfgfile.write_text(yaml.safe_dump({
            "host_id": "WKS-FIN-042", "state_dir": str(tmp_path / "state"),
            "sources": {"etw": {"providers": ["powershell"]}},
            "logging": {"file": str(tmp_path / "agent.log")}}))
        from sigstream.cli import main
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            res = CliRunner().invoke(main, ["agent", "-c", str(cfgfile), "--sink", "stdout",
                                            "--metrics-port", str(port), "--max-runtime", "5"])
        finally:
            for h in root.handlers[:]:
                if h not in saved[0]:
                    root.removeHandler(h)
                    h.close()
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    finally:
        busy.close()
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
    assert res.stdout == "" and etw.SESSIONS == {}
