"""The Kafka commands against a real broker, as a user runs them (subprocesses): `alerts
tail` like `tail -f`, `topics create` quick and quiet, `collect` skipping an event too
large for Kafka with its file and line."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson

from sigstream.connectors.kafka import KafkaAlertSink, KafkaSettings, all_topics, create_topics
from sigstream.connectors.kafka.tail import TopicTail


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigstream", *args], capture_output=True,
                          text=True, timeout=timeout)


def fresh_prefix() -> str:
    return f"ux{uuid.uuid4().hex[:10]}"


def alert(i: int) -> dict:
    return {"alert_id": f"a{i:02d}", "host": f"HOST-{i % 5}", "event_time": "2026-12-02T03:20:16Z",
            "rule": {"id": "r1", "title": "Test rule", "level": "high", "tags": []},
            "attack": {"tactics": [], "techniques": []}, "matched": [], "event": {}}


def produce_alerts(bootstrap: str, topic: str, n: int) -> None:
    """n alerts on a 3-partition topic, one at a time so that their timestamps increase."""
    settings = KafkaSettings(bootstrap)
    create_topics(settings, [topic], partitions=3)
    sink = KafkaAlertSink(settings, topic)
    try:
        for i in range(n):
            sink.add(alert(i))
            sink.flush()
            time.sleep(0.005)
    finally:
        sink.close()


def tail_ids(bootstrap: str, prefix: str, *args: str) -> list[str]:
    res = cli("alerts", "tail", "--bootstrap", bootstrap, "--topic-prefix", prefix, "-f", "jsonl", *args)
    assert res.returncode == 0, res.stderr
    return [orjson.loads(line)["alert_id"] for line in res.stdout.splitlines()]


def test_alerts_tail_shows_the_last_alerts_then_stops_or_follows(kafka_bootstrap):
    prefix = fresh_prefix()
    produce_alerts(kafka_bootstrap, f"{prefix}.alerts", 15)
    every = [f"a{i:02d}" for i in range(15)]
    assert tail_ids(kafka_bootstrap, prefix, "--no-follow") == every[-10:]
    assert tail_ids(kafka_bootstrap, prefix, "--no-follow", "-n", "3") == every[-3:]
    assert tail_ids(kafka_bootstrap, prefix, "--from-beginning", "--no-follow") == every
    assert tail_ids(kafka_bootstrap, prefix, "--from-latest", "--no-follow") == []
    # following: the last 2, then nothing new until --timeout ends it
    t0 = time.monotonic()
    assert tail_ids(kafka_bootstrap, prefix, "-n", "2", "--timeout", "2") == every[-2:]
    assert time.monotonic() - t0 >= 2


def test_alerts_tail_follows_new_alerts(kafka_bootstrap):
    prefix = fresh_prefix()
    produce_alerts(kafka_bootstrap, f"{prefix}.alerts", 3)
    proc = subprocess.Popen([sys.executable, "-m", "sigstream", "alerts", "tail", "--bootstrap",
                             kafka_bootstrap, "--topic-prefix", prefix, "-f", "jsonl", "-n", "1",
                             "--max", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()      # the history is shown before following
        assert orjson.loads(first)["alert_id"] == "a02"
        settings = KafkaSettings(kafka_bootstrap)
        sink = KafkaAlertSink(settings, f"{prefix}.alerts")
        sink.add(dict(alert(99)))
        sink.flush()
        sink.close()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [orjson.loads(line)["alert_id"] for line in out.splitlines()] == ["a99"]


def test_topics_create_is_quick_and_quiet(kafka_bootstrap):
    prefix = fresh_prefix()
    t0 = time.monotonic()
    res = cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    took = time.monotonic() - t0
    names = all_topics(prefix)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"created {n}" for n in names]
    assert res.stderr.strip() == f"{len(names)} created, 0 already existed ({kafka_bootstrap})"
    assert took < 20, took      # the issue: 30 s; Python start-up included
    again = cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"exists  {n}" for n in names]
    assert again.stderr.strip() == f"0 created, {len(names)} already existed ({kafka_bootstrap})"


def test_collect_skips_an_event_too_large_for_kafka(kafka_bootstrap, tmp_path):
    prefix = fresh_prefix()
    events = [{"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational", "Computer": "ws-1",
               "EventRecordID": i, "CommandLine": f"cmd /c echo {i}"} for i in range(4)]
    events[1]["CommandLine"] = "A" * (3 * 1024 * 1024)
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    errors = tmp_path / "errors.jsonl"
    res = cli("collect", str(src), "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix,
              "--spool-dir", str(tmp_path / "spool"), "--no-progress", "--errors", str(errors))
    assert res.returncode == 0, res.stderr
    assert "3 events collected (of 4 read)" in res.stderr and "too large for Kafka 1" in res.stderr
    (bad,) = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert bad["path"] == str(src) and bad["position"] == 2 and "too large" in bad["reason"]
    tail = TopicTail(KafkaSettings(kafka_bootstrap), [f"{prefix}.events.sysmon"], None)
    try:
        got = sorted(orjson.loads(m.value)["event"]["EventRecordID"] for m in tail.history())
    finally:
        tail.close()
    assert got == [0, 2, 3]


def test_respond_metrics_count_what_was_handled(kafka_bootstrap, tmp_path, monkeypatch):
    import urllib.request

    from click.testing import CliRunner

    from sigstream.cli import main
    from sigstream.connectors.kafka import KafkaRecordProducer
    from sigstream.metrics import CountersServer

    pages: list[str] = []
    stop = CountersServer.stop

    def scrape_then_stop(self):      # the totals when the command ends
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            pages.append(r.read().decode())
        stop(self)
    monkeypatch.setattr(CountersServer, "stop", scrape_then_stop)
    prefix = fresh_prefix()
    topic = f"{prefix}.alerts"
    produce_alerts(kafka_bootstrap, topic, 3)
    junk = KafkaRecordProducer(KafkaSettings(kafka_bootstrap), topic)
    junk.send(b"not an alert", b"x")
    junk.flush()
    junk.close()
    assert CliRunner().invoke(main, ["actions", "keygen", "--out", str(tmp_path / "keys")]).exit_code == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: []\n")
    res = CliRunner().invoke(main, [
        "respond", "--policy", str(policy), "--keys", str(tmp_path / "keys" / "responder.keys"),
        "--bootstrap", kafka_bootstrap, "--topic", topic, "--from-beginning", "--group", f"g-{prefix}",
        "--state", str(tmp_path / "approvals.sqlite"), "--timeout", "5", "--metrics-port", "0"])
    assert res.exit_code == 0, res.output
    assert "3 alert(s) handled, 1 message(s) rejected" in res.output
    (page,) = pages
    values = {line.split()[0]: float(line.split()[1]) for line in page.splitlines()
              if line.startswith("sigstream_respond_") and "_created" not in line}
    assert values["sigstream_respond_alerts_total"] == 3
    assert values["sigstream_respond_rejected_total"] == 1
    assert values["sigstream_respond_sent_total"] == 0
