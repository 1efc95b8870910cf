"""collect -> Kafka through the real broker, including a broker outage and a collector restart."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict

import orjson
import pytest

from sigstream.connectors.kafka import (KafkaEventPublisher, KafkaSettings, KafkaSource, all_topics,
                              create_topics, event_topic, event_topic_pattern)

HOSTS = ["ws-%02d.corp.example" % i for i in range(6)]
CHANNELS = ["Microsoft-Windows-Sysmon/Operational", "Security",
            "Microsoft-Windows-PowerShell/Operational"]


def make_events(n: int, start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        host = HOSTS[i % len(HOSTS)]
        out.append({
            "EventID": 1, "Channel": CHANNELS[(i // len(HOSTS)) % len(CHANNELS)], "Computer": host,
            "EventRecordID": i, "TimeCreated": f"2026-01-01T00:00:{i % 60:02d}.000Z",
            "Image": r"C:\Windows\System32\cmd.exe", "CommandLine": f"cmd /c echo {i}",
        })
    return out


def fresh_prefix() -> str:
    return f"it{uuid.uuid4().hex[:10]}"


def consume_all(bootstrap: str, prefix: str, expected: int, timeout_s: float = 60,
                settle_s: float = 2.0) -> list:
    """Every message on the prefix's event topics (waits for `expected`, then `settle_s`
    more to catch duplicates)."""
    src = KafkaSource(KafkaSettings(bootstrap), event_topic_pattern(prefix),
                      group_id=f"verify-{uuid.uuid4().hex[:8]}", from_beginning=True)
    got = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(got) < expected:
            got += src.poll(2000, 0.5)
        settle = time.monotonic() + settle_s
        while time.monotonic() < settle:
            got += src.poll(2000, 0.2)
    finally:
        src.close()
    return got


def check_exactly_once_in_order(messages: list, events: list[dict], prefix: str) -> None:
    """Every event exactly once by event_id; per (topic, host) in publication order.
    (Events are identified by their EventRecordID, unique in make_events, because `collect`
    normalises events, which changes their content fingerprint.)"""
    envs = [orjson.loads(m.value) for m in messages]
    counts = Counter(env["event_id"] for env in envs)
    dups = {k: c for k, c in counts.items() if c > 1}
    assert not dups, f"{len(dups)} events delivered more than once"
    rids = Counter(int(env["event"]["EventRecordID"]) for env in envs)
    missing = {e["EventRecordID"] for e in events} - set(rids)
    assert not missing, f"{len(missing)} of {len(events)} events missing"
    assert len(messages) == len(events) == len(counts)
    seen: dict[tuple, list[int]] = defaultdict(list)
    for m, env in sorted(zip(messages, envs), key=lambda p: (p[0].topic, p[0].partition, p[0].offset)):
        assert m.key == env["event"]["Computer"].encode()
        assert m.topic == event_topic(env["source"], prefix)
        seen[(m.topic, m.key)].append(int(env["event"]["EventRecordID"]))
    for k, seq in seen.items():
        assert seq == sorted(seq), f"order broken for {k}"


def run_cli(*args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sigstream.cli import main; main()", *args],
                          input=input, capture_output=True, timeout=timeout)


def test_collect_jsonl_to_kafka(kafka_bootstrap, tmp_path):
    prefix = fresh_prefix()
    events = make_events(300)
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events) + b"not json\n")
    res = run_cli("collect", "--source", "jsonl", str(src), "--sink", f"kafka://{kafka_bootstrap}",
                  "--topic-prefix", prefix, "--collector-id", "it-collector",
                  "--spool-dir", str(tmp_path / "spool"), "--no-progress")
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert "300 events collected" in err and "unreadable records 1" in err and "dropped 0" in err

    messages = consume_all(kafka_bootstrap, prefix, len(events))
    check_exactly_once_in_order(messages, events, prefix)
    env = orjson.loads(messages[0].value)
    assert env["v"] == 1 and env["collector_id"] == "it-collector"
    assert env["ingest_time"].endswith("Z") and env["source"] in ("sysmon", "security", "powershell")
    assert {m.topic for m in messages} == {event_topic(s, prefix) for s in ("sysmon", "security", "powershell")}
    assert not list((tmp_path / "spool").glob("*.seg")), "delivered spool segments are deleted"


def test_collect_stdout_and_topics_create(kafka_bootstrap, tmp_path):
    events = make_events(5)
    res = run_cli("collect", "--source", "stdin", "--sink", "stdout",
                  input=b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert res.returncode == 0, res.stderr.decode()
    lines = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert [x["event"]["EventRecordID"] for x in lines] == list(range(5))

    prefix = fresh_prefix()
    res = run_cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix,
                  "--partitions", "2", "--retention-hours", "1")
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    assert f"created {prefix}.events.sysmon" in out and f"created {prefix}.action-results" in out
    # idempotent
    assert create_topics(KafkaSettings(kafka_bootstrap), all_topics(prefix)) == []


def _broker(kafka_broker, command: str) -> None:
    res = kafka_broker.run(command, timeout=150)
    assert res.returncode == 0, f"broker.sh {command}: {res.stdout}{res.stderr}\n{kafka_broker.log_tail()}"


def test_outage_spools_and_delivers_exactly_once_in_order(kafka_broker, kafka_bootstrap, tmp_path):
    prefix = fresh_prefix()
    settings = KafkaSettings(kafka_bootstrap)
    create_topics(settings, all_topics(prefix), partitions=3)
    events = make_events(4000)
    pub = KafkaEventPublisher(settings, collector_id="it", spool_dir=tmp_path / "spool",
                              topic_prefix=prefix, memory_limit=300, max_block_s=0.5,
                              spool_segment_bytes=64 * 1024)
    try:
        for e in events[:1000]:
            pub.publish(e)
        assert pub.flush(60)
        for e in events[1000:1500]:          # some of these are in flight when the broker stops
            pub.publish(e)
        _broker(kafka_broker, "stop")
        t0 = time.monotonic()
        for e in events[1500:3500]:          # broker down: must not block, must spool
            pub.publish(e)
        assert time.monotonic() - t0 < 30, "publishing during an outage must not block"
        assert pub.stats["spooled"] > 0 and pub.stats["dropped"] == 0
        assert pub.spool.bytes > 0
        _broker(kafka_broker, "start")
        for e in events[3500:]:
            pub.publish(e)
        assert pub.flush(120), pub.stats
        stats = pub.stats
    finally:
        pub.close(timeout_s=5)
    assert stats["dropped"] == 0 and stats["acked"] >= len(events)
    assert not list((tmp_path / "spool").glob("*.seg")), "delivered spool segments are deleted"
    check_exactly_once_in_order(consume_all(kafka_bootstrap, prefix, len(events)), events, prefix)


def test_collector_restart_during_outage_resends_from_spool(kafka_broker, kafka_bootstrap, tmp_path):
    prefix = fresh_prefix()
    settings = KafkaSettings(kafka_bootstrap)
    create_topics(settings, all_topics(prefix), partitions=3)
    events = make_events(1500)
    spool = tmp_path / "spool"
    pub = KafkaEventPublisher(settings, collector_id="it", spool_dir=spool, topic_prefix=prefix,
                              memory_limit=200, max_block_s=0.5, spool_segment_bytes=32 * 1024)
    for e in events[:300]:
        pub.publish(e)
    assert pub.flush(60)
    _broker(kafka_broker, "stop")
    try:
        for e in events[300:1000]:
            pub.publish(e)
        assert not pub.flush(1)
        pub.close(timeout_s=0)                # exits with the broker down: all kept on disk
        assert pub.stats["dropped"] == 0
    finally:
        _broker(kafka_broker, "start")
    pub2 = KafkaEventPublisher(settings, collector_id="it", spool_dir=spool, topic_prefix=prefix,
                               memory_limit=200)
    try:
        assert pub2.spool.unread == 700      # exactly what was not acknowledged
        for e in events[1000:]:
            pub2.publish(e)
        assert pub2.flush(120), pub2.stats
    finally:
        pub2.close()
    assert not list(spool.glob("*.seg"))
    check_exactly_once_in_order(consume_all(kafka_bootstrap, prefix, len(events)), events, prefix)


@pytest.mark.parametrize("cap_bytes", [20_000])
def test_spool_cap_drops_loudly_and_cli_exit_code(tmp_path, cap_bytes, caplog):
    """No broker at all: records spool up to the cap, then drops are counted and logged."""
    settings = KafkaSettings("127.0.0.1:1")   # nothing listens there
    pub = KafkaEventPublisher(settings, collector_id="it", spool_dir=tmp_path / "spool",
                              memory_limit=10, bootstrap_timeout_s=0.5, spool_max_bytes=cap_bytes)
    with caplog.at_level("ERROR", logger="sigstream.connectors.kafka"):
        for e in make_events(200):
            pub.publish(e)
    s = pub.stats
    assert s["dropped"] > 0 and s["spooled"] + s["dropped"] == 200
    assert sum("DROPPING" in r.getMessage() for r in caplog.records) == 1   # once per episode
    pub.close(timeout_s=0)

    src = tmp_path / "e.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in make_events(200)))
    res = run_cli("collect", str(src), "--sink", "kafka://127.0.0.1:1", "--no-create-topics",
                  "--spool-dir", str(tmp_path / "spool2"), "--spool-max-mb", "1", "--flush-timeout", "1",
                  "--no-progress", timeout=60)
    assert res.returncode == 3, res.stderr.decode()      # kept in the spool, not lost
    assert "awaiting delivery in the spool" in res.stderr.decode()


def test_alert_and_dead_letter_sinks_and_source_commit(kafka_bootstrap):
    """KafkaAlertSink / KafkaDeadLetterSink write acknowledged records; KafkaSource commits
    only on commit() (what it returned before is not redelivered to the group after it)."""
    from sigstream.connectors.kafka import KafkaAlertSink, KafkaDeadLetterSink, Message

    prefix = fresh_prefix()
    settings = KafkaSettings(kafka_bootstrap)
    create_topics(settings, all_topics(prefix), partitions=2)
    alerts = KafkaAlertSink(settings, f"{prefix}.alerts")
    for i in range(10):
        alerts.add({"alert_id": f"a{i}", "host": "ws-1", "rule": {"id": "r"}})
    alerts.close()
    dlq = KafkaDeadLetterSink(settings, f"{prefix}.dlq")
    dlq.add(Message(b"\xffnot json", b"ws-1", f"{prefix}.events.sysmon", 1, 42, None, [("x", b"y")]),
            "not JSON")
    dlq.close()

    group = f"g-{uuid.uuid4().hex[:6]}"

    def drain(expected: int, timeout_s: float = 30) -> list:
        src = KafkaSource(settings, [f"{prefix}.alerts", f"{prefix}.dlq"], group_id=group)
        got, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline and (len(got) < expected or not src.assignment()):
            got += src.poll(100, 0.5)
        return src, got

    src, got = drain(11)
    assert len(got) == 11
    assert src.assignment() == {(f"{prefix}.alerts", 0), (f"{prefix}.alerts", 1),
                                (f"{prefix}.dlq", 0), (f"{prefix}.dlq", 1)}
    (dead,) = [m for m in got if m.topic.endswith(".dlq")]
    assert dead.value == b"\xffnot json" and dead.key == b"ws-1"
    assert dict(dead.headers) == {"x": b"y", "reason": b"not JSON",
                                  "source_topic": f"{prefix}.events.sysmon".encode(),
                                  "source_partition": b"1", "source_offset": b"42"}
    a = [m for m in got if m.topic.endswith(".alerts")]
    assert {m.key for m in a} == {b"ws-1"} and len({m.partition for m in a}) == 1
    assert [orjson.loads(m.value)["alert_id"] for m in a] == [f"a{i}" for i in range(10)]
    assert all(isinstance(m.timestamp_ms, int) for m in got)
    src.close()                         # no commit: everything comes again
    src, again = drain(11)
    assert len(again) == 11
    src.commit()
    src.close()
    src, after = drain(0, timeout_s=30)  # committed: nothing left
    assert src.assignment(), "joined the group"
    after += src.poll(100, 2.0)
    assert after == []
    src.close()


def test_record_producer_fast_path_and_public_path_both_deliver(kafka_bootstrap):
    """KafkaRecordProducer appends plain records straight to kafka-python's accumulator and
    sends records with headers (and oversized ones) through KafkaProducer.send: all arrive,
    in order per key, and flush() accounts for every one."""
    from sigstream.connectors.kafka import DeliveryError, KafkaRecordProducer

    prefix = fresh_prefix()
    settings = KafkaSettings(kafka_bootstrap)
    topic = f"{prefix}.alerts"
    create_topics(settings, [topic], partitions=2)
    producer = KafkaRecordProducer(settings, topic)
    assert producer._append is not None, "kafka-python 3.0 internals as expected: fast path on"
    used = {"fast": 0}
    fast = producer._append

    def counting(partition, key, value):
        used["fast"] += 1
        return fast(partition, key, value)
    producer._append = counting
    for i in range(300):
        producer.send(orjson.dumps({"n": i}), b"host-%d" % (i % 3),
                      headers=[("h", b"1")] if i % 10 == 0 else None)
    producer.send(b"x" * (2 << 20), b"host-0")   # over max_request_size: refused by send()
    with pytest.raises(DeliveryError, match="(?i)too large|size"):
        producer.flush()
    assert used["fast"] == 270                    # the 30 with headers went through send()
    assert producer.acked == 300
    producer.close()

    src = KafkaSource(settings, [topic], group_id=f"g-{uuid.uuid4().hex[:6]}")
    got, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline and len(got) < 300:
        got += src.poll(500, 0.5)
    src.close()
    assert len(got) == 300
    for host in (b"host-0", b"host-1", b"host-2"):
        ns = [orjson.loads(m.value)["n"] for m in got if m.key == host]
        assert ns == sorted(ns) and len(ns) == 100
    assert sum(1 for m in got if m.headers) == 30
