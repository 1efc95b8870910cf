"""`run --kafka-client confluent` and `run --workers N` on the session's real broker.

The confluent tests skip when confluent-kafka is not installed (``pip install
sigstream[confluent]``). Helpers are the pipeline tests' (same subprocess conventions).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import signal
import time

import pytest
from integration.test_pipeline import (Proc, alerts_of, alerts_while_running, assert_consistent_duplicates,
                                       expected_ids, fresh, make_topics, proc_events, publish, read_topic,
                                       run_args, write_rule)

from sigstream.connectors.kafka import KafkaRecordProducer, KafkaSettings, create_topics

needs_confluent = pytest.mark.skipif(importlib.util.find_spec("confluent_kafka") is None,
                                     reason="confluent-kafka is not installed (pip install sigstream[confluent])")


def poison(bootstrap: str, topic: str) -> None:
    p = KafkaRecordProducer(KafkaSettings(bootstrap=bootstrap), topic)
    try:
        p.send(b"not an envelope", b"k")
        p.flush()
    finally:
        p.close()


@needs_confluent
def test_confluent_client_yields_the_same_alerts_as_kafka_python(kafka_bootstrap, tmp_path):
    prefix = fresh("clients")
    make_topics(kafka_bootstrap, prefix)
    events = proc_events(3000, hosts=30)
    want = expected_ids(events)
    publish(kafka_bootstrap, prefix, events, tmp_path / "spool")
    poison(kafka_bootstrap, f"{prefix}.events.sysmon")
    rules = write_rule(tmp_path)
    got: dict[str, dict] = {}
    for client in ("kafka-python", "confluent"):
        alerts_topic, dlq_topic = f"{prefix}.alerts-{client}", f"{prefix}.dlq-{client}"
        create_topics(KafkaSettings(bootstrap=kafka_bootstrap), [alerts_topic, dlq_topic], 3, timeout_s=30)
        proc = Proc(run_args(kafka_bootstrap, prefix, fresh("g"), rules, "--kafka-client", client,
                             "--alerts-topic", alerts_topic, "--dlq-topic", dlq_topic, "--timeout", "6"))
        assert proc.wait(180) == 0, proc.tail()
        m = proc.final_metrics()
        assert (m["events"], m["dead_letters"]) == (len(events) + 1, 1), m
        msgs = read_topic(kafka_bootstrap, alerts_topic, want=len(want), timeout=60)
        alerts = alerts_of(msgs)
        assert {a["alert_id"] for a in alerts} == want, client
        assert_consistent_duplicates(alerts)
        # key -> partition as the Java client places it (murmur2), whichever library produced
        got[client] = {a["alert_id"]: (msg.key, msg.partition) for a, msg in zip(alerts, msgs)}
        dead = read_topic(kafka_bootstrap, dlq_topic, want=1, timeout=30)
        assert [d.value for d in dead] == [b"not an envelope"]
        assert dead[0].header("source_topic") == f"{prefix}.events.sysmon".encode()
        assert dead[0].header("reason")
    assert got["confluent"] == got["kafka-python"]


@needs_confluent
def test_confluent_client_sigkill_then_restart_loses_nothing(kafka_bootstrap, tmp_path):
    prefix, group = fresh("cf-crash"), fresh("g")
    make_topics(kafka_bootstrap, prefix)
    events = proc_events(20_000)
    want = expected_ids(events)
    publish(kafka_bootstrap, prefix, events, tmp_path / "spool")
    rules = write_rule(tmp_path)
    common = ("--kafka-client", "confluent", "--session-timeout", "10")
    first = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--batch-size", "10", "--commit-interval", "0",
                          *common))
    try:
        seen = alerts_while_running(first, kafka_bootstrap, f"{prefix}.alerts", at_least=200)
        assert first.p.poll() is None, f"processor exited early:\n{first.tail()}"
        assert seen >= 200, f"no alerts within 120s:\n{first.tail()}"
    finally:
        first.p.send_signal(signal.SIGKILL)
        first.wait(30)
    mid = len(read_topic(kafka_bootstrap, f"{prefix}.alerts", timeout=5, idle=1))
    assert mid < len(want), "the processor finished before the kill: the test proves nothing"
    second = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--batch-size", "500", "--timeout", "8",
                           *common))
    assert second.wait(300) == 0, second.tail()
    alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=len(want), timeout=120))
    assert {a["alert_id"] for a in alerts} == want               # nothing lost
    assert_consistent_duplicates(alerts)
    assert 0 < second.final_metrics()["events"] < len(events)    # resumed from the committed offsets


def worker_logs(proc: Proc, msg: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for d in proc.logs():
        if "worker" in d and d.get("msg", "").startswith(msg):
            out.setdefault(d["worker"], []).append(d)
    return out


def test_run_workers_2_share_a_3_partition_topic_and_process_each_event_once(kafka_bootstrap, tmp_path):
    prefix, group = fresh("workers"), fresh("g")
    make_topics(kafka_bootstrap, prefix, partitions=3)
    rules = write_rule(tmp_path)
    proc = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--workers", "2", "--batch-size", "200"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(worker_logs(proc, "partitions assigned")) < 2:
            assert proc.p.poll() is None, proc.tail()
            time.sleep(0.3)
        assert set(worker_logs(proc, "partitions assigned")) == {1, 2}, proc.tail()
        time.sleep(5)     # let the group settle (the second join rebalances the first worker)
        events = proc_events(4000, hosts=40)
        want = expected_ids(events)
        publish(kafka_bootstrap, prefix, events, tmp_path / "spool")
        alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=len(want), timeout=120))
        assert {a["alert_id"] for a in alerts} == want
        assert_consistent_duplicates(alerts)
    finally:
        if proc.p.poll() is None:
            proc.p.send_signal(signal.SIGTERM)      # the parent forwards it to both workers
    assert proc.wait(90) == 0, proc.tail()
    finals = {w: docs[-1]["events"] for w, docs in worker_logs(proc, "processor metrics").items()}
    assert set(finals) == {1, 2}, proc.tail()
    assert all(n > 0 for n in finals.values()), finals     # both workers had partitions and work
    assert sum(finals.values()) == len(events), finals      # each event once (no rebalance meanwhile)
    # the last assignment of each worker: disjoint, together every partition of the sysmon topic
    last = [set(ast.literal_eval(docs[-1]["msg"].split(": ", 1)[1]))
            for docs in worker_logs(proc, "partitions assigned").values()]
    sysmon = [{p for t, p in a if t == f"{prefix}.events.sysmon"} for a in last]
    assert not (sysmon[0] & sysmon[1]) and sysmon[0] | sysmon[1] == {0, 1, 2}


def test_run_workers_names_a_worker_that_died(kafka_bootstrap, tmp_path):
    prefix, group = fresh("wdie"), fresh("g")
    make_topics(kafka_bootstrap, prefix, partitions=3)
    proc = Proc(run_args(kafka_bootstrap, prefix, group, write_rule(tmp_path), "--workers", "2"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(worker_logs(proc, "partitions assigned")) < 2:
            assert proc.p.poll() is None, proc.tail()
            time.sleep(0.3)
        started = [d for d in proc.logs() if d.get("msg", "").startswith("started 2 workers")]
        assert started, proc.tail()
        pid = int(started[0]["msg"].split("worker 2 (pid ")[1].split(")")[0])
        os.kill(pid, signal.SIGKILL)
        rc = proc.wait(90)
    finally:
        proc.kill()
    assert rc == 1, proc.tail()
    assert f"worker 2 (pid {pid}) was killed by SIGKILL" in "\n".join(proc.lines)
