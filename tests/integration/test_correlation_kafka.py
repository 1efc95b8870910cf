"""Correlation rules over Kafka on the real broker: the forwarder, the repartition topic, the
correlation consumer and its changelog give the same correlation alerts as `sigstream hunt`,
with two processors in one group and after a SIGKILL.

Correlations: failed logons per user (event_count grouped by TargetUserName, NOT the host:
one user's failures come from three hosts, i.e. from three event partitions), the chain
"many failures, then a success" (temporal_ordered over that correlation), and failures of
one user on several hosts (value_count of Computer: a second family on the same base rule).
File 1 holds the
start of each story, file 2 the rest, so correlations span both files.
"""
from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from sigstream.stream.event_time import iso_utc, parse_time

from .test_pipeline import Proc, alerts_of, env, fresh, make_topics, read_topic, run_args, sigstream

REPO = Path(__file__).resolve().parents[2]
T0 = parse_time("2026-11-25T08:00:00Z")
# murmur2 puts these hosts on event partitions 0, 1 and 2 (3 partitions), and the two
# correlation families (ids ...03+04 and ...06) on repartition partitions 1 and 0
HOSTS = ("WKS-A.corp.example.com", "DC-01.corp.example.com", "WKS-B.corp.example.com")

RULES = textwrap.dedent("""\
    title: failed logon (correlation test)
    id: 6b1f6a52-0c1e-4d55-9a0e-3f2f1a000001
    name: failed_logon
    status: test
    level: low
    logsource: {product: windows, service: security}
    detection:
      sel: {EventID: 4625}
      condition: sel
    ---
    title: successful logon (correlation test)
    id: 6b1f6a52-0c1e-4d55-9a0e-3f2f1a000002
    name: successful_logon
    status: test
    level: low
    logsource: {product: windows, service: security}
    detection:
      sel: {EventID: 4624}
      condition: sel
    ---
    title: many failed logons of one user
    id: 6b1f6a52-0c1e-4d55-9a0e-3f2f1a000003
    name: many_failures
    status: test
    level: medium
    correlation:
      type: event_count
      rules: [failed_logon]
      group-by: [TargetUserName]
      timespan: 15m
      condition: {gte: 3}
    ---
    title: failed logons of one user on several hosts
    id: 6b1f6a52-0c1e-4d55-9a0e-3f2f1a000006
    status: test
    level: medium
    correlation:
      type: value_count
      rules: [failed_logon]
      group-by: [TargetUserName]
      timespan: 15m
      condition: {field: Computer, gte: 2}
    ---
    title: failed logons then a success
    id: 6b1f6a52-0c1e-4d55-9a0e-3f2f1a000004
    status: test
    level: high
    correlation:
      type: temporal_ordered
      rules: [many_failures, successful_logon]
      group-by: [TargetUserName]
      timespan: 15m
    """)


def ev(n: int, eid: int, minute: float, user: str, host: str) -> dict:
    return {"EventID": eid, "Channel": "Security", "Provider_Name": "Microsoft-Windows-Security-Auditing",
            "Computer": host, "EventRecordID": n, "TimeCreated": iso_utc(T0 + minute * 60),
            "TargetUserName": user, "IpAddress": f"10.0.0.{n % 250}"}


def stories() -> tuple[list[dict], list[dict]]:
    """File 1: minutes 0-5; file 2: minutes 16-21 (after a gap longer than the lateness
    used by the SIGKILL test, so file 1's matches are released into the correlator then)."""
    f1, f2 = [], []
    n = 0

    def add(to, eid, minute, user, host):
        nonlocal n
        n += 1
        to.append(ev(n, eid, minute, user, host))
    for i, user in enumerate(["alice", "bob", "carol", "dave", "erin", "frank"]):
        hosts = HOSTS[i % 3:] + HOSTS[:i % 3]
        if user in ("alice", "bob"):          # 3+ failures in file 1 across hosts, success in file 2
            for k in range(3 + (user == "bob")):
                add(f1, 4625, 0.5 + k + i * 0.1, user, hosts[k % 3])
            add(f2, 4624, 17 + i * 0.1, user, hosts[0])
        elif user in ("carol", "dave"):       # failures split over the files (13-14 min apart)
            add(f1, 4625, 3 + i * 0.1, user, hosts[0])
            add(f1, 4625, 4 + i * 0.1, user, hosts[1])
            add(f2, 4625, 16.5 + i * 0.1, user, hosts[2])
            if user == "carol":
                add(f2, 4624, 18 + i * 0.1, user, hosts[1])
        elif user == "erin":                  # only two failures: nothing
            add(f1, 4625, 1 + i * 0.1, user, hosts[0])
            add(f2, 4625, 19, user, hosts[1])
        else:                                 # a success without failures, failures after it
            add(f2, 4624, 16.2, user, hosts[2])
            for k in range(3):
                add(f2, 4625, 19 + k * 0.5, user, hosts[k])
    for k in range(10):                       # noise: other logons of other users
        add(f1 if k < 5 else f2, 4624, 2 + k * 1.7, f"svc{k}", HOSTS[k % 3])
    return f1, f2


def write_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "logons.yml").write_text(RULES)
    f1, f2 = stories()
    p1, p2 = tmp_path / "events1.jsonl", tmp_path / "events2.jsonl"
    p1.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in f1))
    p2.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in f2))
    return rules, p1, p2


def hunt_correlation_ids(rules: Path, *files: Path) -> set[str]:
    res = subprocess.run(sigstream("hunt", "-r", rules, "-f", "jsonl", "--no-cache", *files),
                         env=env(), cwd=REPO, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    alerts = [orjson.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return {a["alert_id"] for a in alerts if a.get("correlation")}


def collect(bootstrap: str, prefix: str, path: Path, spool: Path) -> None:
    res = subprocess.run(sigstream("collect", "--source", "jsonl", path, "--sink", f"kafka://{bootstrap}",
                                   "--topic-prefix", prefix, "--collector-id", "it", "--spool-dir", spool,
                                   "--no-progress"),
                         env=env(), cwd=REPO, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-3000:]


def correlation_alerts(bootstrap: str, prefix: str, want: int) -> list[dict]:
    alerts = alerts_of(read_topic(bootstrap, f"{prefix}.alerts", timeout=30, idle=3))
    return [a for a in alerts if a.get("correlation")]


def caught_up(bootstrap: str, group: str, topic_prefix: str) -> bool:
    """Has `group` committed the end offset of every partition of its topics (that has data)?"""
    from kafka import KafkaConsumer   # test-only inspection: never subscribes, never joins

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [tp for t in consumer.topics() if t.startswith(topic_prefix)
               for tp in _partitions(consumer, t)]
        for tp, end in consumer.end_offsets(tps).items():
            if end and (consumer.committed(tp) or 0) < end:
                return False
        return bool(tps)
    finally:
        consumer.close(autocommit=False)


def _partitions(consumer, topic):
    from kafka.structs import TopicPartition
    return [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]


def wait_for(cond, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs:
            assert p.p.poll() is None, f"processor exited early:\n{p.tail()}"
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n" + "\n---\n".join(p.tail() for p in procs))


def test_expected_correlations_exist(tmp_path):
    """The story is what the Kafka tests rely on: hunt finds correlations spanning both files."""
    rules, p1, p2 = write_inputs(tmp_path)
    both = hunt_correlation_ids(rules, p1, p2)
    assert len(both) == 9          # several hosts: alice, bob (x2), carol, dave, frank; chains: alice, bob, carol
    assert hunt_correlation_ids(rules, p1) < both   # the chains need file 2


def test_two_processors_give_the_same_correlations_as_hunt(kafka_bootstrap, tmp_path):
    rules, p1, p2 = write_inputs(tmp_path)
    want = hunt_correlation_ids(rules, p1, p2)
    prefix, group = fresh("corr2"), fresh("g")
    make_topics(kafka_bootstrap, prefix)
    collect(kafka_bootstrap, prefix, p1, tmp_path / "spool")
    extra = ("--until-idle", "8", "--session-timeout", "6", "--correlation-lateness", "3600")
    procs = [Proc(run_args(kafka_bootstrap, prefix, group, rules, *extra)) for _ in range(2)]
    try:
        wait_for(lambda: all(p.assigned() for p in procs), 45, "both processors assigned", procs)
        wait_for(lambda: caught_up(kafka_bootstrap, group, f"{prefix}.events")
                 and caught_up(kafka_bootstrap, f"{group}.correlation", f"{prefix}.correlation-input"),
                 45, "file 1 processed", procs)
        collect(kafka_bootstrap, prefix, p2, tmp_path / "spool")
        for p in procs:
            assert p.wait(90) == 0, p.tail()
    finally:
        for p in procs:
            p.kill()
    got = correlation_alerts(kafka_bootstrap, prefix, len(want))
    assert {a["alert_id"] for a in got} == want
    f1, f2 = stories()
    assert sum(p.final_metrics()["events"] for p in procs) >= len(f1) + len(f2)


@pytest.mark.parametrize("restart_client", ["kafka-python", "confluent"])
def test_sigkill_then_restart_gives_the_same_correlations_as_hunt(kafka_bootstrap, tmp_path, restart_client):
    """restart_client confluent: the restarted processor's correlation consumer and producers
    are librdkafka's, restoring what kafka-python's wrote (same key -> partition placement)."""
    rules, p1, p2 = write_inputs(tmp_path)
    want = hunt_correlation_ids(rules, p1, p2)
    prefix, group = fresh("corrkill"), fresh("g")
    make_topics(kafka_bootstrap, prefix)
    collect(kafka_bootstrap, prefix, p1, tmp_path / "spool")
    common = ("--session-timeout", "6", "--commit-interval", "0", "--correlation-lateness", "600")
    first = Proc(run_args(kafka_bootstrap, prefix, group, rules, *common))
    try:
        wait_for(lambda: caught_up(kafka_bootstrap, group, f"{prefix}.events")
                 and caught_up(kafka_bootstrap, f"{group}.correlation", f"{prefix}.correlation-input"),
                 60, "file 1 processed", [first])
    finally:
        first.kill()                       # SIGKILL: held matches exist only in the changelog
    first.wait(10)
    state = read_topic(kafka_bootstrap, f"{prefix}.correlation-state", timeout=10, idle=1)
    assert state, "no snapshot was written before the kill"
    collect(kafka_bootstrap, prefix, p2, tmp_path / "spool")
    second = Proc(run_args(kafka_bootstrap, prefix, group, rules, *common, "--until-idle", "6",
                           "--kafka-client", restart_client))
    assert second.wait(90) == 0, second.tail()
    got = correlation_alerts(kafka_bootstrap, prefix, len(want))
    ids = [a["alert_id"] for a in got]
    assert set(ids) == want                # nothing missing, nothing extra; duplicates allowed
    # file 1 was not re-processed: its matches came back from the changelog
    assert second.final_metrics()["events"] == len(stories()[1]), second.tail()
    restored = [d for d in second.logs() if d.get("event") == "correlation_restored"]
    assert sum(d["held"] for d in restored) > 0, second.tail()
    client_of_input = {d["logger"].rsplit(".", 1)[-1] for d in second.logs()
                       if "partitions assigned" in d.get("msg", "") and "correlation-input" in d["msg"]}
    assert client_of_input == {"confluent" if restart_client == "confluent" else "source"}, second.tail()
