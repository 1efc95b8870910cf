"""sigstream.metrics: one endpoint per command, /metrics (Prometheus text) and /health (JSON)."""
from __future__ import annotations

import json
import socket
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from sigstream import metrics as metrics_mod
from sigstream.cli import main
from sigstream.connectors.readers import read_events
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.envelope import source_of
from sigstream.stream.processor import Metrics
from sigstream.stream.rules import load_rule_text
from sigstream.stream.topics import event_topic

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "sigma_rules"
SAMPLES = ROOT / "samples"
FILELESS = SAMPLES / "fileless-intrusion.jsonl"


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int) -> dict[str, float]:
    """name{label=value} -> value, parsed as Prometheus text (a parse error fails the test)."""
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def health(port: int) -> tuple[int, dict]:
    status, body = get(port, "/health")
    return status, json.loads(body)


def family(m: dict[str, float], name: str) -> dict[str, float]:
    """The samples of one metric: label string -> value."""
    return {k[len(name) + 1:-1]: v for k, v in m.items() if k.startswith(name + "{")}


@pytest.fixture
def scraped_at_stop(monkeypatch):
    """Scrape /metrics and /health once more just before `run` detaches its metrics."""
    seen: dict = {}
    stop = metrics_mod.MetricsServer.stop

    def scrape_then_stop(self):
        self.drain()
        seen.update(scrape(self.port), port=self.port, health=health(self.port))
        stop(self)

    monkeypatch.setattr(metrics_mod.MetricsServer, "stop", scrape_then_stop)
    return seen


def test_embedded_run_counters_equal_what_was_processed(scraped_at_stop):
    result = CliRunner().invoke(main, ["run", "-r", str(RULES), "--no-cache", "-f", "jsonl",
                                       "--input", str(FILELESS), "--metrics-port", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    alerts = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    m = scraped_at_stop
    topics: dict[str, int] = {}
    for ev, _ in read_events([FILELESS]):
        t = event_topic(source_of(ev))
        topics[t] = topics.get(t, 0) + 1
    assert family(m, "sigstream_events_total") == {f"topic={t}": n for t, n in topics.items()}
    assert sum(topics.values()) == 72
    levels: dict[str, int] = {}
    for a in alerts:
        levels[a["rule"]["level"]] = levels.get(a["rule"]["level"], 0) + 1
    assert alerts and family(m, "sigstream_alerts_total") == {f"level={k}": n for k, n in levels.items()}
    assert family(m, "sigstream_dead_letters_total") == {"reason=invalid_envelope": 0,
                                                         "reason=processing_failed": 0}
    assert m["sigstream_errors_total"] == 0
    assert m["sigstream_commits_total"] >= 1 and m["sigstream_commit_failures_total"] == 0
    assert m["sigstream_reloads_total"] == 0 and m["sigstream_reloads_rejected_total"] == 0
    assert m["sigstream_rules_loaded"] > 10 and m["sigstream_rules_failed"] == 0
    lag = family(m, "sigstream_consumer_lag")          # the in-memory source: per partition
    assert lag and set(lag.values()) == {0} and all("partition=" in k for k in lag)
    assert {k.split("topic=")[1] for k in lag} == set(topics)
    assert m["sigstream_correlation_groups_open"] == 0 and m["sigstream_correlation_late_events_total"] == 0
    # every alert has an event age; those whose record was in the batch also an ingest latency
    assert m["sigstream_alert_event_age_seconds_count"] == len(alerts)
    assert 0 < m["sigstream_alert_latency_seconds_count"] <= len(alerts)
    assert 0 <= m["sigstream_alert_latency_seconds_sum"] < 60 * m["sigstream_alert_latency_seconds_count"]
    assert m["sigstream_batch_seconds_count"] == m["sigstream_batches_total"] >= 1
    code, doc = m["health"]
    assert code == 200 and doc["status"] == "ok" and doc["uptime_s"] >= 0
    assert doc["events"] == 72 and doc["alerts"] == len(alerts) and doc["dead_letters"] == 0


CORRELATION = textwrap.dedent("""
    title: encoded command
    id: 11111111-1111-4111-8111-111111111111
    status: test
    level: high
    logsource: {product: windows, category: process_creation}
    detection:
      sel: {CommandLine|contains: '-enc'}
      condition: sel
    ---
    title: encoded burst
    id: 33333333-3333-4333-8333-333333333333
    correlation:
      type: event_count
      rules: [11111111-1111-4111-8111-111111111111]
      group-by: [Computer]
      timespan: 5m
      generate: true
      condition: {gte: 30}
""")


class FakeProcessor:
    """What MetricsServer reads from a Processor."""

    def __init__(self, detector):
        self.metrics = Metrics(events=5, alerts=2, dead_letters=3, errors=1, batches=1, commits=3,
                               commit_failures=1, commits_held=2, reloads=1, rules=7,
                               dead_letter_reasons={"invalid_envelope": 2, "processing_failed": 1})
        self.alert_sink = SimpleNamespace(add=lambda a: None, flush=lambda: None, close=lambda: None)
        self.detector = detector
        self.source = SimpleNamespace(lag_by_partition=lambda: {("ev.sysmon", 0): 40, ("ev.sysmon", 1): 2})
        self.on_batch = None
        self.last_batch = ()


def record(topic, partition, offset, event, ingest_time):
    env = {"v": 1, "event_id": f"e{offset}", "source": "sysmon", "collector_id": "t",
           "ingest_time": ingest_time, "event": event}
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, value=orjson.dumps(env))


def test_batch_topics_reasons_lag_latencies_and_correlation_state():
    from sigstream.stream.correlation_stage import correlation_stages
    loaded = load_rule_text(CORRELATION)
    stages = correlation_stages(loaded.correlations, loaded.suppressed, lateness_s=0)
    detector = Detector(Engine(loaded.rules, use_cache=False), stages=stages)
    proc = FakeProcessor(detector)
    server = metrics_mod.MetricsServer("127.0.0.1", 0)
    server.attach(proc)
    server.start()
    try:
        event = {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational", "Computer": "WKS-1",
                 "CommandLine": "powershell -enc AAAA", "TimeCreated": "2026-11-24T10:00:00.000000Z"}
        quiet = dict(event, CommandLine="notepad")
        batch = [record("ev.sysmon", 0, 7, quiet, "2026-11-24T10:00:00.000000Z"),
                 record("ev.sysmon", 0, 8, event, "2026-11-24T10:00:00.000000Z"),
                 record("ev.other", 1, 3, quiet, "2026-11-24T10:00:00.000000Z")]
        proc.last_batch = batch
        coords = {"topic": "ev.sysmon", "partition": 0, "offset": 8, "event_id": "e8"}
        clock = 1_795_514_400.5                                          # 2026-11-24T10:00:00.5Z
        for alert in detector.detect(event, coords, clock):
            proc.alert_sink.add(alert)
        # the record's ingest time is 2026-11-24T10:00:00Z; the alert is handed over "now"
        handed = proc.alert_sink.seen[0][-1]
        detector.stages[0].buffer.late += 4          # as counted by the stage (stats()["late"])
        proc.on_batch(proc, 0.02)
        m = scrape(server.port)
        code, doc = health(server.port)
    finally:
        server.stop()
    assert family(m, "sigstream_events_total") == {"topic=ev.sysmon": 2, "topic=ev.other": 1}
    assert family(m, "sigstream_dead_letters_total") == {"reason=invalid_envelope": 2,
                                                         "reason=processing_failed": 1}
    assert m["sigstream_commits_held_total"] == 2 and m["sigstream_commit_failures_total"] == 1
    assert m["sigstream_reloads_total"] == 1 and m["sigstream_rules_loaded"] == 7
    assert family(m, "sigstream_consumer_lag") == {"partition=0,topic=ev.sysmon": 40,
                                                   "partition=1,topic=ev.sysmon": 2}
    assert proc.metrics.lag == 42
    assert m["sigstream_correlation_groups_open"] == 1
    assert m["sigstream_correlation_late_events_total"] == 4
    assert m["sigstream_alerts_total{level=high}"] == 1
    assert m["sigstream_alert_event_age_seconds_count"] == 1
    assert m["sigstream_alert_event_age_seconds_sum"] == pytest.approx(0.5)
    assert m["sigstream_alert_latency_seconds_count"] == 1
    assert m["sigstream_alert_latency_seconds_sum"] == pytest.approx(handed - 1_795_514_400.0)
    assert m["sigstream_batch_seconds_count"] == 1 and m["sigstream_batch_seconds_sum"] == pytest.approx(0.02)
    assert code == 200 and doc["status"] == "ok" and doc["events"] == 5 and doc["lag"] == 42


def test_endpoint_health_paths_and_degraded_status():
    ep = metrics_mod.Endpoint("127.0.0.1", 0)
    try:
        ep.health = lambda: {"status": "degraded", "sent": 3}
        code, doc = health(ep.port)
        assert code == 503 and doc["status"] == "degraded" and doc["sent"] == 3 and "uptime_s" in doc
        assert get(ep.port, "/")[0] == 503                  # / is the health document too
        assert get(ep.port, "/nope")[0] == 404
        ep.health = lambda: 1 / 0                            # a broken provider: degraded, not 500
        code, doc = health(ep.port)
        assert code == 503 and "ZeroDivisionError" in doc["error"]
    finally:
        ep.stop()


def test_counters_server_serves_counters_gauges_and_health():
    values = {"events": 4, "spool_bytes": 1024}
    ep = metrics_mod.Endpoint("127.0.0.1", 0)
    try:
        metrics_mod.CountersServer(ep.addr, ep.port, {"events": ("x_events", "Events.")},
                                   lambda: values, gauges={"spool_bytes": ("x_spool_bytes", "Bytes.")},
                                   endpoint=ep).start()
        values["events"] = 9                                 # read when scraped
        m = scrape(ep.port)
        assert m["x_events_total"] == 9 and m["x_spool_bytes"] == 1024
        assert health(ep.port)[1]["events"] == 9
    finally:
        ep.stop()


# --------------------------------------------------------------- port in use ---

@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_run_port_in_use_is_one_line_before_any_work(busy_port, monkeypatch):
    started = []
    monkeypatch.setattr("sigstream.cmd_run._detector", lambda *a, **k: started.append(1))
    result = CliRunner().invoke(main, ["run", "-r", str(RULES), "--no-cache", "-f", "jsonl",
                                       "--input", str(FILELESS), "--metrics-port", str(busy_port)])
    assert result.exit_code == 2, result.output
    assert not started                                   # rules were not even loaded
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--metrics-port {busy_port}" in lines[0]
    assert "in use" in lines[0] and result.stdout == ""


def test_collect_port_in_use_is_one_line_before_any_work(busy_port, tmp_path):
    out = tmp_path / "envelopes.jsonl"
    result = CliRunner().invoke(main, ["collect", "--sink", f"file://{out}", str(FILELESS),
                                       "--metrics-port", str(busy_port)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0]
    assert not out.exists() or out.read_bytes() == b""    # no event was read or written


def test_collect_serves_its_counters(monkeypatch, tmp_path):
    seen: dict = {}
    stop = metrics_mod.Endpoint.stop

    def scrape_then_stop(self):
        if self._httpd is not None and not seen:
            seen.update(scrape(self.port), health=health(self.port))
        stop(self)

    monkeypatch.setattr(metrics_mod.Endpoint, "stop", scrape_then_stop)
    out = tmp_path / "envelopes.jsonl"
    result = CliRunner().invoke(main, ["collect", "--sink", f"file://{out}", str(FILELESS),
                                       "--metrics-port", "0"])
    assert result.exit_code == 0, result.output
    written = len(out.read_bytes().splitlines())
    assert written == 72
    assert seen["sigstream_collect_events_total"] == written
    assert seen["sigstream_collect_unreadable_records_total"] == 0
    assert seen["sigstream_spool_records"] == 0 and seen["sigstream_spool_bytes"] == 0
    code, doc = seen["health"]
    assert code == 200 and doc["status"] == "ok" and doc["events"] == written


def test_processor_dead_letters_by_reason_and_events_by_topic():
    """A real Processor on the in-memory transport: poison records and a record whose
    detection raises are counted per reason; events per topic sum to the processor's total."""
    from sigstream.connectors.memory import (MemoryAlertSink, MemoryBroker, MemoryDeadLetterSink,
                                             MemoryProducer, MemorySource)
    from sigstream.stream.envelope import encode, host_key, wrap
    from sigstream.stream.processor import Processor

    broker = MemoryBroker(default_partitions=2)
    prod = MemoryProducer(broker)
    events = [{"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational", "Computer": f"WKS-{i}",
               "EventRecordID": i, "CommandLine": "powershell -enc AAAA" if i != 3 else "boom"}
              for i in range(6)]
    for ev in events:
        prod.send("sigstream.events.sysmon", encode(wrap(ev, "t")), key=host_key(ev))
    for bad in (b"not json", None, orjson.dumps({"v": 99, "event": {}})):
        prod.send("sigstream.events.security", bad, key=b"WKS-1")
    real = Engine(load_rule_text(CORRELATION).rules, use_cache=False)

    class Flaky:        # detection raising for one record: dead-lettered as processing_failed
        rules, explain, errors = real.rules, real.explain, real.errors

        def match(self, event):
            if event["CommandLine"] == "boom":
                raise KeyError("boom")
            return real.match(event)

    source = MemorySource(broker, r"sigstream\.events\..*", "g")
    proc = Processor(source, Detector(Flaky()), MemoryAlertSink(broker), MemoryDeadLetterSink(broker),
                     batch_size=4, poll_timeout_s=0, until_idle_s=0.5)
    server = metrics_mod.MetricsServer("127.0.0.1", 0)
    server.attach(proc)
    server.start()
    try:
        m_proc = proc.run()
        m = scrape(server.port)
    finally:
        server.stop()
    assert m_proc.events == 9 and m_proc.batches >= 3
    assert family(m, "sigstream_events_total") == {"topic=sigstream.events.sysmon": 6,
                                                   "topic=sigstream.events.security": 3}
    assert family(m, "sigstream_dead_letters_total") == {"reason=invalid_envelope": 3,
                                                         "reason=processing_failed": 1}
    assert len(broker.messages("sigstream.dlq")) == 4 == m_proc.dead_letters
    assert m["sigstream_alerts_total{level=high}"] == 5 == m_proc.alerts
    # the alerts' records were in their batches: every one has an ingest latency
    assert m["sigstream_alert_latency_seconds_count"] == 5


def test_kafka_source_lag_by_partition_from_fetched_high_watermarks():
    """KafkaSource.lag_by_partition: highwater (from the last fetch) minus position; a
    partition not fetched yet (no highwater) is left out rather than guessed."""
    from sigstream.connectors.kafka.source import KafkaSource
    tp = lambda t, p: SimpleNamespace(topic=t, partition=p)    # noqa: E731
    a, b, c = tp("ev.sysmon", 0), tp("ev.sysmon", 1), tp("ev.security", 0)
    high = {("ev.sysmon", 0): 120, ("ev.sysmon", 1): 7, ("ev.security", 0): None}
    pos = {("ev.sysmon", 0): 100, ("ev.sysmon", 1): 7, ("ev.security", 0): 0}
    src = KafkaSource.__new__(KafkaSource)
    src._consumer = SimpleNamespace(assignment=lambda: [a, b, c],
                                    highwater=lambda x: high[(x.topic, x.partition)],
                                    position=lambda x, timeout_ms=None: pos[(x.topic, x.partition)])
    assert src.lag_by_partition() == {("ev.sysmon", 0): 20, ("ev.sysmon", 1): 0}


def test_respond_port_in_use_is_one_line_before_connecting(busy_port, tmp_path):
    assert CliRunner().invoke(main, ["actions", "keygen", "--out", str(tmp_path / "keys")]).exit_code == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: []\n")
    result = CliRunner().invoke(main, [      # nothing listens on port 1: connecting would fail
        "respond", "--policy", str(policy), "--keys", str(tmp_path / "keys" / "responder.keys"),
        "--bootstrap", "127.0.0.1:1", "--connect-timeout", "1", "--state", str(tmp_path / "a.sqlite"),
        "--metrics-port", str(busy_port)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0]
    assert not (tmp_path / "a.sqlite").exists()          # the approval store was not opened


def test_confluent_source_lag_by_partition_from_cached_watermarks():
    """ConfluentSource.lag_by_partition: librdkafka's cached high watermark minus the position;
    a partition with no position yet (offset < 0) or no cached watermark is left out.
    (Checked once against the real broker: 100 records, 30 consumed -> lag 70.)"""
    pytest.importorskip("confluent_kafka")
    from sigstream.connectors.kafka.confluent import ConfluentSource
    tp = lambda t, p, o=-1001: SimpleNamespace(topic=t, partition=p, offset=o)    # noqa: E731
    positions = [tp("ev.sysmon", 0, 100), tp("ev.sysmon", 1, 7), tp("ev.security", 0),
                 tp("ev.other", 0, 5)]
    high = {("ev.sysmon", 0): 120, ("ev.sysmon", 1): 7, ("ev.security", 0): 3, ("ev.other", 0): -1001}
    src = ConfluentSource.__new__(ConfluentSource)
    src._consumer = SimpleNamespace(
        assignment=lambda: ["assigned"], position=lambda parts: positions,
        get_watermark_offsets=lambda x, cached=False: (0, high[(x.topic, x.partition)]) if cached
        else pytest.fail("a request to the broker from the metrics thread"))
    assert src.lag_by_partition() == {("ev.sysmon", 0): 20, ("ev.sysmon", 1): 0}
