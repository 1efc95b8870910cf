"""The in-process transport (connectors.memory): partitioning, groups, polling, sinks."""
from __future__ import annotations

import threading
import time

import orjson

from sigstream.connectors.memory import (MemoryAlertSink, MemoryBroker, MemoryDeadLetterSink, MemoryProducer,
                               MemorySource, publish_events)


def test_key_hash_partitioning_keeps_a_key_on_one_partition():
    b = MemoryBroker(default_partitions=4)
    p = MemoryProducer(b)
    parts = {p.send("t", b"x%d" % i, key=b"HOST-A").partition for i in range(20)}
    assert len(parts) == 1
    spread = {p.send("t", b"y", key=b"HOST-%d" % i).partition for i in range(50)}
    assert len(spread) > 1
    assert sum(b.end_offsets("t")) == 70
    # offsets are per partition and increase
    msgs = [m for m in b.messages("t") if m.key == b"HOST-A"]
    assert [m.offset for m in msgs] == sorted(m.offset for m in msgs)


def test_group_commit_and_resume():
    b = MemoryBroker(default_partitions=2)
    p = MemoryProducer(b)
    for i in range(10):
        p.send("sigstream.events.sysmon", b"%d" % i, key=b"k%d" % i)
    s = MemorySource(b, r"sigstream\.events\..*", "g")
    first = s.poll(4, 0)
    assert len(first) == 4
    s.commit()
    s.poll(3, 0)          # polled, not committed: re-delivered to the next member
    s.close()
    s2 = MemorySource(b, r"sigstream\.events\..*", "g")
    rest = s2.poll(100, 0)
    assert len(rest) == 6
    assert {m.value for m in first} | {m.value for m in rest} == {b"%d" % i for i in range(10)}
    # another group starts from the beginning; from_latest sees only new records
    assert len(MemorySource(b, ["sigstream.events.sysmon"], "other").poll(100, 0)) == 10
    latest = MemorySource(b, ["sigstream.events.sysmon"], "new", from_beginning=False)
    assert latest.poll(100, 0) == []
    p.send("sigstream.events.sysmon", b"late")
    assert [m.value for m in latest.poll(100, 0)] == [b"late"]


def test_pattern_picks_up_new_topics_and_lag():
    b = MemoryBroker(default_partitions=1)
    s = MemorySource(b, r"sigstream\.events\..*", "g")
    assert s.poll(10, 0) == []
    MemoryProducer(b).send("sigstream.events.powershell", b"a")
    MemoryProducer(b).send("unrelated", b"b")
    assert [m.topic for m in s.poll(10, 0)] == ["sigstream.events.powershell"]
    MemoryProducer(b).send("sigstream.events.powershell", b"c")
    assert s.lag() == 1


def test_poll_waits_for_a_producer_thread():
    b = MemoryBroker()
    s = MemorySource(b, ["t"], "g")
    b.create_topic("t")

    def later():
        time.sleep(0.1)
        MemoryProducer(b).send("t", b"hello")

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    got = s.poll(10, 5.0)
    assert [m.value for m in got] == [b"hello"]
    assert time.monotonic() - t0 < 4


def test_poll_timeout_returns_empty():
    b = MemoryBroker()
    t0 = time.monotonic()
    assert MemorySource(b, ["t"], "g").poll(10, 0.1) == []
    assert 0.09 <= time.monotonic() - t0 < 2


def test_sinks_publish_on_flush_only():
    b = MemoryBroker()
    alerts = MemoryAlertSink(b, "alerts")
    alerts.add({"alert_id": "abc", "host": "H", "rule": {}})
    assert b.messages("alerts") == []
    alerts.flush()
    (m,) = b.messages("alerts")
    assert orjson.loads(m.value)["alert_id"] == "abc" and m.key == b"H"
    assert m.header("alert_id") == b"abc"

    dlq = MemoryDeadLetterSink(b, "dlq")
    src = MemoryProducer(b).send("events", b"\xff\xfe", key=b"K")
    dlq.add(src, "not JSON")
    dlq.flush()
    (d,) = b.messages("dlq")
    assert d.value == b"\xff\xfe" and d.key == b"K"
    assert d.header("reason") == b"not JSON"
    assert d.header("source_topic") == b"events" and d.header("source_offset") == b"0"


def test_publish_events_routes_by_source_and_keys_by_host():
    b = MemoryBroker()
    n = publish_events(MemoryProducer(b), [
        {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational", "Computer": "H1"},
        {"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational", "Computer": "H2"},
    ])
    assert n == 2
    assert b.topics() == ["sigstream.events.powershell", "sigstream.events.sysmon"]
    (m,) = b.messages("sigstream.events.sysmon")
    assert m.key == b"H1" and orjson.loads(m.value)["event"]["Computer"] == "H1"
