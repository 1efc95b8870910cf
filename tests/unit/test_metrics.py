"""sigstream.metrics: `run --metrics-port` serves the processor's counters to Prometheus."""
from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from sigstream import metrics as metrics_mod
from sigstream.cli import main
from sigstream.connectors.readers import read_events
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.processor import Metrics
from sigstream.stream.rules import load_rule_text

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "sigma_rules"
SAMPLES = ROOT / "samples"


def scrape(port: int) -> dict[str, float]:
    """name{label=value} -> value, from the endpoint's text format."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


@pytest.fixture
def scraped_at_stop(monkeypatch):
    """Scrape the endpoint once more just before `run` stops it."""
    seen: dict = {}
    stop = metrics_mod.MetricsServer.stop

    def scrape_then_stop(self):
        self.drain()
        seen.update(scrape(self.port), port=self.port)
        stop(self)

    monkeypatch.setattr(metrics_mod.MetricsServer, "stop", scrape_then_stop)
    return seen


def test_embedded_run_serves_counters(scraped_at_stop):
    result = CliRunner().invoke(main, ["run", "-r", str(RULES), "--no-cache", "-f", "jsonl",
                                       "--input", str(SAMPLES), "--metrics-port", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    alerts = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    m = scraped_at_stop
    events = sum(1 for _ in read_events([SAMPLES]))
    assert m["sigstream_events_total"] == events
    levels: dict[str, int] = {}
    for a in alerts:
        levels[a["rule"]["level"]] = levels.get(a["rule"]["level"], 0) + 1
    assert alerts and {k: m[f"sigstream_alerts_total{{level={k}}}"] for k in levels} == levels
    assert m["sigstream_dead_letters_total"] == 0 and m["sigstream_errors_total"] == 0
    assert m["sigstream_commits_total"] >= 1 and m["sigstream_commit_failures_total"] == 0
    assert m["sigstream_reloads_total"] == 0
    assert m["sigstream_rules_loaded"] > 10
    assert m["sigstream_consumer_lag"] == 0                      # the in-memory source has lag()
    assert m["sigstream_alert_latency_seconds_count"] == len(alerts)
    assert m["sigstream_batch_seconds_count"] == m["sigstream_batches_total"] >= 1
    assert m["sigstream_batch_seconds_sum"] > 0
    assert m["port"] > 0


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
        self.metrics = Metrics(events=5, alerts=2, dead_letters=1, errors=1, batches=1, commits=3,
                               commit_failures=1, commits_held=2, reloads=1, rules=7)
        self.alert_sink = type("Sink", (), {"add": lambda s, a: None, "flush": lambda s: None,
                                            "close": lambda s: None})()
        self.detector = detector
        self.source = type("Source", (), {"lag": lambda s: 42})()
        self.on_batch = None


def test_gauges_histograms_and_correlation_groups():
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
        for alert in detector.detect(event, None, 1_795_514_400.5):     # 2026-11-24T10:00:00.5Z
            proc.alert_sink.add(alert)
        proc.on_batch(proc, 0.02)
        m = scrape(server.port)
    finally:
        server.stop()
    assert m["sigstream_events_total"] == 5 and m["sigstream_commits_held_total"] == 2
    assert m["sigstream_commit_failures_total"] == 1 and m["sigstream_reloads_total"] == 1
    assert m["sigstream_rules_loaded"] == 7 and m["sigstream_consumer_lag"] == 42
    assert m["sigstream_correlation_groups_open"] == 1
    assert m["sigstream_alerts_total{level=high}"] == 1
    assert m["sigstream_alert_latency_seconds_count"] == 1
    assert m["sigstream_alert_latency_seconds_sum"] == pytest.approx(0.5)
    assert m["sigstream_batch_seconds_count"] == 1 and m["sigstream_batch_seconds_sum"] == pytest.approx(0.02)
