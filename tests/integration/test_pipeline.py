"""The whole pipeline on the session's real Kafka broker: collect -> topics -> run -> alerts.

Every test uses its own topic prefix and consumer group, runs `sigstream` as
subprocesses (as an operator would) and bounds every wait.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from sigstream.connectors.kafka import KafkaEventPublisher, KafkaSettings, KafkaSource, all_topics, create_topics
from sigstream.connectors.readers import read_events
from sigstream.stream.alerts import alert_id
from sigstream.stream.engine import Engine
from sigstream.stream.envelope import MAX_MESSAGE_BYTES, encode, event_fingerprint, wrap
from sigstream.stream.rules import load_rules

REPO = Path(__file__).resolve().parents[2]
CORPORA = REPO.parent / "shared" / "corpora"
EVTX_SAMPLES = CORPORA / "evtx-attack-samples"
SIGMA_WINDOWS = CORPORA / "sigma" / "rules" / "windows"
SYSMON = "Microsoft-Windows-Sysmon/Operational"
RULE_ID = "5d1f0c2e-7a43-4f7e-9d7b-0c3a1b2e4f60"
RULE = textwrap.dedent(f"""
    title: Hidden encoded PowerShell (pipeline test)
    id: {RULE_ID}
    status: test
    level: high
    tags: [attack.execution, attack.t1059.001]
    logsource: {{product: windows, category: process_creation}}
    detection:
      sel: {{CommandLine|contains: '-enc'}}
      condition: sel
""")


# ----------------------------------------------------------------- helpers ---

def fresh(name: str) -> str:
    return f"it-{name}-{uuid.uuid4().hex[:8]}"


def sigstream(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sigstream.cli import main; main()", "--log-level", "info", "--log-format", "json",
            *map(str, args)]


def env() -> dict:
    e = dict(os.environ)
    e.pop("SIGSTREAM_BOOTSTRAP", None)
    e["PYTHONUNBUFFERED"] = "1"
    return e


class Proc:
    """A `sigstream run` subprocess whose stderr is collected by a thread."""

    def __init__(self, args: list[str]):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
                                  cwd=REPO)
        self.lines: list[str] = []
        self.out = b""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for raw in self.p.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip())

    def logs(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def assigned(self) -> bool:
        return any(d.get("msg", "").startswith("partitions assigned") for d in self.logs())

    def final_metrics(self) -> dict:
        docs = [d for d in self.logs() if d.get("msg") == "processor metrics"]
        assert docs, self.tail()
        return docs[-1]

    def wait(self, timeout: float) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
            pytest.fail(f"sigstream did not exit within {timeout}s\n{self.tail()}")
        self._t.join(5)
        self.out = self.p.stdout.read()
        return rc

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def run_args(bootstrap: str, prefix: str, group: str, rules: Path | str, *extra: str) -> list[str]:
    return sigstream("run", "-r", rules, "--bootstrap", bootstrap, "--topic-prefix", prefix,
                     "--group", group, *extra)


def make_topics(bootstrap: str, prefix: str, partitions: int = 3) -> None:
    create_topics(KafkaSettings(bootstrap=bootstrap), all_topics(prefix), partitions, timeout_s=30)


def publish(bootstrap: str, prefix: str, events: list[dict], spool: Path) -> None:
    pub = KafkaEventPublisher(KafkaSettings(bootstrap=bootstrap), collector_id="it", spool_dir=spool,
                              topic_prefix=prefix)
    try:
        for ev in events:
            pub.publish(ev)
        assert pub.flush(60), pub.stats
    finally:
        pub.close()


def read_topic(bootstrap: str, topic: str, *, want: int | None = None, timeout: float = 60,
               idle: float = 4.0) -> list:
    """Every message of `topic` (private group, never commits): until `want` are read
    (then one more short poll for extras) or `idle` seconds without news, within `timeout`."""
    src = KafkaSource(KafkaSettings(bootstrap=bootstrap), [topic], fresh("reader"), from_beginning=True)
    out: list = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            got = src.poll(1000, 0.5)
            if got:
                out.extend(got)
                last = time.monotonic()
                continue
            if want is not None:
                if len(out) >= want and time.monotonic() - last >= 1.0:
                    break
            elif out and time.monotonic() - last >= idle:
                break
    finally:
        src.close()
    return out


def alerts_of(msgs: list) -> list[dict]:
    return [orjson.loads(m.value) for m in msgs]


def write_rule(tmp_path: Path) -> Path:
    p = tmp_path / "rules"
    p.mkdir(exist_ok=True)
    (p / "enc.yml").write_text(RULE)
    return p


def proc_events(n: int, hosts: int = 12, start: int = 1) -> list[dict]:
    """n Sysmon process creations; every 2nd one matches RULE."""
    out = []
    for i in range(start, start + n):
        cmd = f"powershell.exe -nop -enc QQBCAEMA{i}" if i % 2 == 0 else f"cmd.exe /c echo {i}"
        out.append({"EventID": 1, "Channel": SYSMON, "Computer": f"WKS-{i % hosts:03d}.corp.example.com",
                    "EventRecordID": i, "TimeCreated": f"2026-11-25T10:{(i // 60) % 60:02d}:{i % 60:02d}.000000Z",
                    "Image": r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
                    "CommandLine": cmd})
    return out


def expected_ids(events: list[dict]) -> set[str]:
    return {alert_id(RULE_ID, ev) for ev in events if "-enc" in ev["CommandLine"]}


def assert_consistent_duplicates(alerts: list[dict]) -> None:
    by_id: dict[str, set] = defaultdict(set)
    for a in alerts:
        by_id[a["alert_id"]].add((a["rule"]["id"], a["source"]["event_id"]))
    assert all(len(v) == 1 for v in by_id.values()), "an alert_id named two different alerts"


# ------------------------------------------------------------------- tests ---

@pytest.mark.skipif(not EVTX_SAMPLES.is_dir() or not SIGMA_WINDOWS.is_dir(),
                    reason=f"needs the shared corpora {EVTX_SAMPLES} and {SIGMA_WINDOWS} (absent)")
def test_end_to_end_collect_run_alerts_equal_in_process_engine(kafka_bootstrap, tmp_path):
    """All 277 EVTX files of evtx-attack-samples (~8k events) with the SigmaHQ windows rules."""
    prefix, group = fresh("e2e"), fresh("g")
    make_topics(kafka_bootstrap, prefix)
    col = subprocess.run(sigstream("collect", "--sink", f"kafka://{kafka_bootstrap}", "--topic-prefix", prefix,
                                   "--collector-id", "it", "--spool-dir", tmp_path / "spool",
                                   "--no-progress", EVTX_SAMPLES),
                         env=env(), cwd=REPO, capture_output=True, timeout=300)
    assert col.returncode == 0, col.stderr.decode()[-3000:]

    proc = Proc(run_args(kafka_bootstrap, prefix, group, SIGMA_WINDOWS, "--product", "windows",
                         "--until-idle", "8"))
    assert proc.wait(300) == 0, proc.tail()

    from sigstream.stream.enrich import enrich      # `run` matches like `hunt`: enriched events
    loaded = load_rules([SIGMA_WINDOWS], selection=None)
    engine = Engine([r for r in loaded.rules if r.logsource.get("product", "").lower() == "windows"],
                    enrich=enrich)
    from sigstream.stream.reassembly import ScriptBlockAssembler   # ... and whole script blocks, like `hunt`
    assembler = ScriptBlockAssembler()
    expected = set()
    events = 0

    def detect(ev):
        for hit in engine.match(ev):
            expected.add((hit.rule.id, event_fingerprint(ev)))
    for ev, _ in read_events([EVTX_SAMPLES]):
        events += 1
        for whole in assembler.feed(ev, time.monotonic()):
            detect(whole)
    for whole in assembler.flush():
        detect(whole)
    assert len(expected) > 500

    alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=len(expected), timeout=120))
    got = {(a["rule"]["id"], a["source"]["event_id"]) for a in alerts}
    assert got == expected
    assert_consistent_duplicates(alerts)
    m = proc.final_metrics()
    assert m["events"] == events and m["dead_letters"] == 0


def alerts_while_running(proc: Proc, bootstrap: str, topic: str, at_least: int,
                         timeout_s: float = 120) -> int:
    """How many alerts `topic` holds once it has `at_least` (or `proc` ended, or time ran out)."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline and proc.p.poll() is None:
        seen = len(read_topic(bootstrap, topic, timeout=3, idle=0.5))
        if seen >= at_least:
            break
    return seen


def test_sigkill_mid_stream_then_restart_loses_nothing(kafka_bootstrap, tmp_path):
    prefix, group = fresh("crash"), fresh("g")
    make_topics(kafka_bootstrap, prefix)
    events = proc_events(20_000)
    want = expected_ids(events)
    publish(kafka_bootstrap, prefix, events, tmp_path / "spool")
    rules = write_rule(tmp_path)

    # small batches, each flushed and committed (a slow member with many commits to kill mid-way)
    first = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--batch-size", "10",
                          "--commit-interval", "0", "--session-timeout", "15"))
    try:
        seen = alerts_while_running(first, kafka_bootstrap, f"{prefix}.alerts", at_least=200)
        assert first.p.poll() is None, f"processor exited early:\n{first.tail()}"
        assert seen >= 200, f"no alerts within 120s:\n{first.tail()}"
    finally:
        first.p.send_signal(signal.SIGKILL)
        first.wait(30)
    mid = len(read_topic(kafka_bootstrap, f"{prefix}.alerts", timeout=5, idle=1))
    assert mid < len(want), "the processor finished before the kill: the test proves nothing"

    # the restarted member first waits out the killed member's session (15s), then resumes
    second = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--batch-size", "500", "--until-idle", "8",
                           "--session-timeout", "15"))
    assert second.wait(300) == 0, second.tail()
    alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=len(want), timeout=120))
    ids = [a["alert_id"] for a in alerts]
    assert set(ids) == want                       # nothing lost
    assert_consistent_duplicates(alerts)          # duplicates only as the same alert
    resumed = second.final_metrics()["events"]
    assert 0 < resumed < len(events)              # resumed from the committed offsets


def test_poison_messages_go_to_dlq_and_valid_events_still_alert(kafka_bootstrap, tmp_path):
    from kafka import KafkaAdminClient, KafkaProducer   # test-only: a topic/producer for > 4 MiB
    from kafka.admin import NewTopic

    prefix, group = fresh("poison"), fresh("g")
    topic = f"{prefix}.events.sysmon"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(8 << 20)})])
    finally:
        admin.close()
    make_topics(kafka_bootstrap, prefix, partitions=1)   # the rest (alerts, dlq, ...)

    good_before, good_after = proc_events(2, start=100), proc_events(4, start=200)
    poison = [
        (b"definitely not json", "not JSON"),
        (b"\xff\xfe\x00\x80 binary \xc3\x28", "not JSON (or not UTF-8)"),
        (b"[1, 2, 3]", "JSON list"),
        (orjson.dumps({"v": 1, "event_id": "x", "source": "sysmon"}), "no 'event' object"),
        (b'{"v": 1, "event": {"x": "' + b"A" * (MAX_MESSAGE_BYTES + 4096) + b'"}}', "exceeds"),
    ]
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=8 << 20, acks="all")
    try:
        for ev in good_before:
            prod.send(topic, encode(wrap(ev, "it")), key=b"H")
        for value, _ in poison:
            prod.send(topic, value, key=b"H")
        for ev in good_after:
            prod.send(topic, encode(wrap(ev, "it")), key=b"H")
        prod.flush(60)
    finally:
        prod.close()

    proc = Proc(run_args(kafka_bootstrap, prefix, group, write_rule(tmp_path), "--until-idle", "8"))
    assert proc.wait(180) == 0, proc.tail()
    dead = read_topic(kafka_bootstrap, f"{prefix}.dlq", want=len(poison), timeout=60)
    assert len(dead) == len(poison)
    for (value, why), d in zip(poison, sorted(dead, key=lambda m: int(dict(m.headers)["source_offset"]))):
        h = dict(d.headers)
        assert why in h["reason"].decode(), h["reason"]
        assert h["source_topic"] == topic.encode()
        if len(value) > MAX_MESSAGE_BYTES:
            assert b"truncated" in h["reason"] and d.value == value[:len(d.value)]
        else:
            assert d.value == value
    alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=3, timeout=60))
    assert {a["alert_id"] for a in alerts} == expected_ids(good_before + good_after)
    assert {a["source"]["offset"] for a in alerts} & set(range(len(good_before) + len(poison), 20))
    m = proc.final_metrics()
    assert m["dead_letters"] == len(poison) and m["events"] == len(poison) + 6


def test_two_processors_in_one_group_split_the_partitions(kafka_bootstrap, tmp_path):
    prefix, group = fresh("group"), fresh("g")
    make_topics(kafka_bootstrap, prefix, partitions=4)
    rules = write_rule(tmp_path)
    procs = [Proc(run_args(kafka_bootstrap, prefix, group, rules, "--batch-size", "50")) for _ in range(2)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(p.assigned() for p in procs):
            assert all(p.p.poll() is None for p in procs), "\n".join(p.tail() for p in procs)
            time.sleep(0.3)
        assert all(p.assigned() for p in procs), "\n----\n".join(p.tail() for p in procs)
        time.sleep(4)     # let the group settle (the second join rebalances the first member)
        events = proc_events(4000, hosts=40)
        want = expected_ids(events)
        publish(kafka_bootstrap, prefix, events, tmp_path / "spool")
        alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=len(want), timeout=120))
        assert {a["alert_id"] for a in alerts} == want
        assert_consistent_duplicates(alerts)
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.p.send_signal(signal.SIGTERM)
    rcs = [p.wait(60) for p in procs]
    assert rcs == [0, 0], "\n----\n".join(p.tail() for p in procs)
    counts = [p.final_metrics()["events"] for p in procs]
    assert all(c > 0 for c in counts), counts          # each member got partitions and work
    assert sum(counts) >= len(events)


def test_sigterm_exits_zero_after_committing(kafka_bootstrap, tmp_path):
    prefix, group = fresh("term"), fresh("g")
    make_topics(kafka_bootstrap, prefix)
    events = proc_events(20_000)
    want = expected_ids(events)
    publish(kafka_bootstrap, prefix, events, tmp_path / "spool")
    rules = write_rule(tmp_path)

    # small batches, each committed: slow enough to be stopped mid-way (the commit on stop with
    # --commit-interval > 0 is covered by tests/unit/test_processor.py)
    first = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--batch-size", "10",
                          "--commit-interval", "0"))
    try:
        alerts_while_running(first, kafka_bootstrap, f"{prefix}.alerts", at_least=200)
    finally:
        first.p.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.tail()
    done = first.final_metrics()["events"]
    assert 0 < done < len(events), done
    assert any("SIGTERM" in line for line in first.lines)

    # the same group resumes exactly after what the first member processed: no duplicate at all
    second = Proc(run_args(kafka_bootstrap, prefix, group, rules, "--until-idle", "8"))
    assert second.wait(300) == 0, second.tail()
    assert second.final_metrics()["events"] == len(events) - done
    alerts = alerts_of(read_topic(kafka_bootstrap, f"{prefix}.alerts", want=len(want), timeout=120))
    ids = [a["alert_id"] for a in alerts]
    assert set(ids) == want and len(ids) == len(want)
