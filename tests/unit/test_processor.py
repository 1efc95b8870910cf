"""The stream processor on the in-memory transport (explicit clocks, no Kafka)."""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import orjson
import pytest

from sigstream.connectors.memory import (MemoryAlertSink, MemoryBroker, MemoryDeadLetterSink, MemoryProducer,
                               MemorySource, publish_events)
from sigstream.connectors.readers import read_events
from sigstream.stream.alerts import alert_id
from sigstream.stream.engine import Engine
from sigstream.stream.envelope import MAX_MESSAGE_BYTES, encode, event_fingerprint, host_key, wrap
from sigstream.stream.detector import Detector
from sigstream.stream.processor import Metrics, Processor
from sigstream.stream.rules import load_rule_text, load_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "sigma_rules"
SAMPLES = REPO / "samples"
PATTERN = r"sigstream\.events\..*"
SYSMON = "Microsoft-Windows-Sysmon/Operational"


class Clock:
    """Explicit clock: every reading advances it by `step` seconds."""

    def __init__(self, start: float = 1_764_000_000.0, step: float = 0.25):
        self.t, self.step = start, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.fixture(scope="module")
def rules():
    return load_rules([RULES], use_cache=False).rules


@pytest.fixture(scope="module")
def engine(rules):
    return Engine(rules, use_cache=False)


def sample_events():
    return [ev for ev, _ in read_events([SAMPLES])]


def make(broker, engine, alerts=None, dlq=None, group="g", **kw):
    kw.setdefault("clock", Clock())
    kw.setdefault("poll_timeout_s", 0)
    kw.setdefault("until_idle_s", 1.0)
    source = MemorySource(broker, PATTERN, group)
    assembler = kw.pop("assembler", None)
    detector = Detector(engine, reassemble=assembler is not None, assembler=assembler)
    return Processor(source, detector, alerts or MemoryAlertSink(broker), dlq or MemoryDeadLetterSink(broker),
                     **kw)


def proc_event(cmd: str, n: int, host: str = "WKS-1") -> dict:
    return {"EventID": 1, "Channel": SYSMON, "Computer": host, "EventRecordID": n,
            "TimeCreated": f"2026-11-24T08:00:{n % 60:02d}.000000Z",
            "Image": r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
            "ParentImage": r"C:\Windows\System32\mshta.exe", "CommandLine": cmd}


ENC_RULE = textwrap.dedent("""
    title: Encoded command
    id: 11111111-1111-4111-8111-111111111111
    status: test
    level: high
    logsource: {product: windows, category: process_creation}
    detection:
      sel: {CommandLine|contains: '-enc'}
      condition: sel
""")
OTHER_RULE = ENC_RULE.replace("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222") \
    .replace("Encoded command", "Hidden window").replace("'-enc'", "'-w hidden'")


def one_rule(text=ENC_RULE):
    loaded = load_rule_text(text)
    assert loaded.rules, loaded.errors
    return loaded.rules


def produce(broker, events):
    return publish_events(MemoryProducer(broker), events, collector_id="test")


# ------------------------------------------------------------------ semantics ---

def test_alerts_equal_hunt_on_the_bundled_samples(engine):
    events = sample_events()
    expected = {(h.rule.id, event_fingerprint(ev)) for ev in events for h in engine.match(ev)}
    expected_ids = {alert_id(h.rule.id, ev) for ev in events for h in engine.match(ev)}
    assert len(expected) >= 17   # README: at least 17 detections in fileless-intrusion.jsonl

    broker = MemoryBroker()
    produce(broker, events)
    p = make(broker, engine, batch_size=7)
    metrics = p.run()
    alerts = MemoryAlertSink(broker).alerts()
    got = {(a["rule"]["id"], a["source"]["event_id"]) for a in alerts}
    assert got == expected
    assert {a["alert_id"] for a in alerts} == expected_ids
    assert len(alerts) == len(expected)                        # no duplicates without a crash
    assert metrics.events == len(events) and metrics.alerts == len(alerts)
    assert metrics.dead_letters == 0 and metrics.batches >= len(events) // 7
    a = alerts[0]
    assert set(a["source"]) == {"topic", "partition", "offset", "event_id"}
    assert a["source"]["topic"].startswith("sigstream.events.")
    assert a["detected_at"].startswith("2025-11-24T") and a["detected_at"].endswith("Z")
    assert a["matched"] and a["event"]["Computer"] == a["host"]
    # everything was committed
    src = MemorySource(broker, PATTERN, "g")
    assert src.poll(1000, 0) == []


def test_benign_baseline_gives_no_alerts(engine):
    broker = MemoryBroker()
    produce(broker, [ev for ev, _ in read_events([SAMPLES / "benign-baseline.jsonl"])])
    make(broker, engine).run()
    assert MemoryAlertSink(broker).alerts() == []


# ---------------------------------------------------------------- commit order ---

class Recorder:
    def __init__(self, calls, name, fail_flush=False):
        self.calls, self.name, self.fail_flush = calls, name, fail_flush
        self.items = []
        self.durable = []

    def add(self, *item):
        self.calls.append(f"{self.name}.add")
        self.items.append(item)

    def flush(self):
        self.calls.append(f"{self.name}.flush")
        if self.fail_flush:
            raise ConnectionError("broker unreachable")
        self.durable.extend(self.items)
        self.items = []

    def close(self):
        pass


class RecordingSource(MemorySource):
    def __init__(self, calls, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = calls

    def poll(self, max_records, timeout_s):
        got = super().poll(max_records, timeout_s)
        if got:
            self.calls.append("source.poll")
        return got

    def commit(self):
        self.calls.append("source.commit")
        super().commit()


def test_commit_only_after_alert_and_dead_letter_flush():
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc AAAA", i) for i in range(5)])
    MemoryProducer(broker).send("sigstream.events.sysmon", b"not json")
    calls: list[str] = []
    src = RecordingSource(calls, broker, PATTERN, "g")
    p = Processor(src, Detector(Engine(one_rule(), use_cache=False)), Recorder(calls, "alerts"),
                  Recorder(calls, "dlq"), clock=Clock(), batch_size=3, poll_timeout_s=0, until_idle_s=1)
    p.run()
    assert calls.count("source.commit") == 2
    # per batch: poll, adds..., alerts.flush, dlq.flush, commit
    compact = [c for c in calls if not c.endswith(".add")]
    assert compact == ["source.poll", "alerts.flush", "dlq.flush", "source.commit"] * 2
    for i, c in enumerate(calls):
        if c == "source.commit":
            assert calls[i - 1] == "dlq.flush" and calls[i - 2] == "alerts.flush"
    assert calls.index("dlq.add") < calls.index("source.commit", calls.index("source.poll", 1))


def test_failed_alert_flush_means_no_commit_and_redelivery_after_restart():
    broker = MemoryBroker(default_partitions=1)
    events = [proc_event("powershell -enc AAAA", i) for i in range(6)]
    produce(broker, events)
    eng = Engine(one_rule(), use_cache=False)
    calls: list[str] = []
    broken = Recorder(calls, "alerts", fail_flush=True)
    src = RecordingSource(calls, broker, PATTERN, "g")
    p = Processor(src, Detector(eng), broken, Recorder(calls, "dlq"), clock=Clock(), batch_size=4,
                  poll_timeout_s=0, until_idle_s=1)
    with pytest.raises(ConnectionError):
        p.run()
    assert "source.commit" not in calls
    assert broker.committed("g", "sigstream.events.sysmon", 0) is None
    # "restart": a new member of the same group with a working sink sees the whole batch again
    alerts = MemoryAlertSink(broker)
    make(broker, eng, alerts=alerts).run()
    got = alerts.alerts()
    assert len(got) == 6
    assert {a["alert_id"] for a in got} == {alert_id(one_rule()[0].id, ev) for ev in events}


def test_crash_between_batches_only_duplicates_with_same_alert_id():
    broker = MemoryBroker(default_partitions=1)
    events = [proc_event("powershell -enc AAAA", i) for i in range(10)]
    produce(broker, events)
    eng = Engine(one_rule(), use_cache=False)

    class CrashAfterFlush(MemoryAlertSink):
        """Flushes (alerts become durable) then 'dies' before the commit."""
        def flush(self):
            super().flush()
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        make(broker, eng, alerts=CrashAfterFlush(broker), batch_size=4).run()
    make(broker, eng, batch_size=4).run()
    got = MemoryAlertSink(broker).alerts()
    ids = [a["alert_id"] for a in got]
    assert len(set(ids)) == 10 and len(ids) == 14      # the first batch twice, same ids


# -------------------------------------------------------------- poison records ---

def test_poison_messages_are_dead_lettered_and_processing_continues():
    broker = MemoryBroker(default_partitions=1)
    prod = MemoryProducer(broker)
    topic = "sigstream.events.sysmon"
    good = proc_event("powershell -enc AAAA", 1)
    bad = [
        (b"this is not json", "not JSON"),
        (b"\xff\xfe\x00garbage\x80", "not JSON (or not UTF-8)"),
        (b"[1, 2, 3]", "JSON list"),
        (orjson.dumps({"v": 1, "event_id": "x", "source": "sysmon"}), "no 'event' object"),
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "exceeds"),
        (orjson.dumps({"v": 99, "event": {}}), "unsupported envelope version"),
        (None, "tombstone"),
    ]
    for value, _ in bad:
        prod.send(topic, value, key=b"WKS-1")
    prod.send(topic, encode(wrap(good, "test")), key=host_key(good))
    dlq = MemoryDeadLetterSink(broker)
    p = make(broker, Engine(one_rule(), use_cache=False), dlq=dlq, batch_size=3)
    m = p.run()
    dead = broker.messages("sigstream.dlq")
    assert len(dead) == len(bad) == m.dead_letters
    for (value, why), d in zip(bad, dead):
        assert why in d.header("reason").decode(), (why, d.header("reason"))
        if value is not None and len(value) > MAX_MESSAGE_BYTES:   # cut to fit a dlq record
            assert d.value == value[:512 * 1024] and "truncated" in d.header("reason").decode()
        else:
            assert d.value == value
        assert d.header("source_topic") == topic.encode()
    assert int(dead[0].header("source_offset")) == 0
    (alert,) = MemoryAlertSink(broker).alerts()
    assert alert["source"]["offset"] == len(bad)
    assert MemorySource(broker, PATTERN, "g").poll(100, 0) == []   # committed past the poison


def test_unexpected_exception_is_dead_lettered_not_fatal():
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc AAAA", i) for i in range(3)])
    real = Engine(one_rule(), use_cache=False)

    class Flaky:
        rules = real.rules
        explain = real.explain

        def match(self, event):
            if event["EventRecordID"] == 1:
                raise KeyError("boom")
            return real.match(event)

    m = make(broker, Flaky()).run()
    (d,) = broker.messages("sigstream.dlq")
    assert "processing failed: KeyError" in d.header("reason").decode()
    assert m.errors == 1 and m.alerts == 2 and m.events == 3


# ------------------------------------------------------------- stop, idle, reload ---

def test_until_idle_returns_after_idle_time_with_explicit_clock():
    broker = MemoryBroker()
    clock = Clock(step=0.1)
    p = make(broker, Engine(one_rule(), use_cache=False), clock=clock, until_idle_s=5)
    t0 = clock.t
    p.run()
    assert 5 <= clock.t - t0 < 6    # ~50 empty polls of the explicit clock


def test_idle_exit_hook_ends_the_run_once_drained():
    broker = MemoryBroker()
    produce(broker, [proc_event("powershell -enc A", i) for i in range(4)])
    p = make(broker, Engine(one_rule(), use_cache=False), until_idle_s=None, idle_exit=lambda: True)
    assert p.run().events == 4


def test_stop_finishes_the_batch_commits_and_returns():
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc AAAA", i) for i in range(10)])
    holder = {}

    class StopOnFirst(MemoryAlertSink):
        def add(self, alert):
            super().add(alert)
            holder["p"].stop()     # like SIGTERM arriving mid-batch

    p = make(broker, Engine(one_rule(), use_cache=False), alerts=StopOnFirst(broker), batch_size=4,
             until_idle_s=None)
    holder["p"] = p
    m = p.run()                    # returns although never idle
    assert m.batches == 1 and m.events == 4 and m.commits == 1
    assert len(MemoryAlertSink(broker).alerts()) == 4
    assert broker.committed("g", "sigstream.events.sysmon", 0) == 4


def test_reload_swaps_rules_between_batches():
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc A -w hidden", i) for i in range(4)])
    p = make(broker, Engine(one_rule(), use_cache=False), batch_size=2)
    p.process_batch(p.source.poll(2, 0))
    assert p.reload(one_rule(OTHER_RULE)) is True
    assert p.engine.rules[0].rule.title == "Encoded command"   # not mid-batch
    p.run()
    assert p.engine.rules[0].rule.title == "Hidden window"
    p.alert_sink.flush()
    titles = [a["rule"]["title"] for a in MemoryAlertSink(broker).alerts()]
    assert titles == ["Encoded command"] * 2 + ["Hidden window"] * 2
    assert p.metrics.reloads == 1


def test_reload_keeps_old_rules_when_new_set_is_empty_or_loader_fails(caplog):
    broker = MemoryBroker()
    eng = Engine(one_rule(), use_cache=False)
    loads = iter([[], RuntimeError("yaml broken"), SystemExit(2)])

    def loader():
        nxt = next(loads)
        if isinstance(nxt, BaseException):
            raise nxt
        return nxt

    p = make(broker, eng, rule_loader=loader)
    with caplog.at_level(logging.WARNING, logger="sigstream.stream.processor"):
        assert p.reload([]) is False
        for _ in range(3):
            p.request_reload()
            p._between_batches()
    assert p.engine is eng
    assert p.metrics.reloads_rejected == 4 and p.metrics.reloads == 0
    text = caplog.text
    assert "empty" in text and "yaml broken" in text and "keeping the 1 current rule" in text


def test_watch_triggers_reload():
    broker = MemoryBroker()
    changes = iter([True])
    p = make(broker, Engine(one_rule(), use_cache=False), rule_loader=lambda: one_rule(OTHER_RULE),
             watch=lambda: next(changes, False), watch_interval_s=0)
    p.run()
    assert p.engine.rules[0].rule.title == "Hidden window"


def test_metrics_snapshot_and_lag():
    broker = MemoryBroker()
    produce(broker, [proc_event("powershell -enc A", i) for i in range(3)])
    p = make(broker, Engine(one_rule(), use_cache=False), log_interval_s=0)
    m = p.run()
    snap = m.snapshot()
    assert snap["events"] == 3 and snap["alerts"] == 3 and snap["lag"] == 0 and snap["rules"] == 1
    assert "events_per_s" in snap
    assert isinstance(m, Metrics)


def test_until_idle_does_not_count_while_the_source_owns_no_partitions():
    broker = MemoryBroker()

    class Joining(MemorySource):
        polls = 0

        def assignment(self):
            return set() if self.polls < 40 else {("t", 0)}

        def poll(self, max_records, timeout_s):
            self.polls += 1
            return super().poll(max_records, timeout_s)

    src = Joining(broker, PATTERN, "g")
    clock = Clock(step=0.1)
    p = Processor(src, Detector(Engine(one_rule(), use_cache=False)), MemoryAlertSink(broker),
                  MemoryDeadLetterSink(broker), clock=clock, poll_timeout_s=0, until_idle_s=2)
    p.run()
    assert src.polls >= 40 + 20   # 40 polls "joining" (not idle), then 2s of idle


# ------------------------------------------------------------ CLI (embedded) ---

def _cli(*args, env=None):
    from click.testing import CliRunner
    from sigstream.cli import main
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False,
                              env={"SIGSTREAM_BOOTSTRAP": "", **(env or {})})


def test_cli_run_embedded_equals_hunt():
    run = _cli("run", "-r", RULES, "-f", "jsonl", "--no-cache")
    assert run.exit_code == 0, run.output
    got = [orjson.loads(line) for line in run.stdout.splitlines() if line.strip()]
    hunt = _cli("hunt", "-r", RULES, SAMPLES, "-f", "jsonl", "--no-cache")
    want = [orjson.loads(line) for line in hunt.stdout.splitlines() if line.strip()]
    assert len(got) == len(want) >= 17
    assert {a["alert_id"] for a in got} == {a["alert_id"] for a in want}
    assert all(a["source"]["topic"].startswith("sigstream.events.") for a in got if not a.get("correlation"))
    assert f"embedded: 97 events, {len(want)} alerts, 0 dead letters" in run.stderr


def test_cli_demo_works_without_kafka():
    hunt = _cli("hunt", "-r", RULES, SAMPLES, "-f", "jsonl")
    n = len([line for line in hunt.stdout.splitlines() if line.strip()])
    res = _cli("demo")
    assert res.exit_code == 0, res.output
    assert f"97 events -> {n} alerts on 2 host(s)" in res.stdout
    assert "AMSI Bypass" in res.stdout and "Detections by rule" in res.stdout


def test_cli_alerts_tail_needs_a_broker():
    res = _cli("alerts", "tail")
    assert res.exit_code == 2 and "needs a broker" in res.output


def test_alert_filter():
    from sigstream.cmd_alerts import alert_filter
    a = {"host": "WKS-FIN-042.corp", "rule": {"id": "abc-1", "title": "AMSI Bypass Attempt", "level": "high",
                                               "tags": ["attack.t1562.001"]}}
    assert alert_filter("medium", "wks-fin", "amsi", "attack.t1562.001")(a)
    assert alert_filter(None, None, "abc-1", None)(a)
    assert not alert_filter("critical", None, None, None)(a)
    assert not alert_filter(None, "SRV", None, None)(a)
    assert not alert_filter(None, None, "zzz", None)(a)
    assert not alert_filter(None, None, None, "attack.t1059")(a)


def test_rule_watcher_sees_changes(tmp_path):
    import os
    from sigstream.processing import RuleWatcher
    (tmp_path / "a.yml").write_text(ENC_RULE)
    w = RuleWatcher([str(tmp_path)])
    assert w() is False
    st = (tmp_path / "a.yml").stat()
    os.utime(tmp_path / "a.yml", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert w() is True and w() is False
    (tmp_path / "b.yml").write_text(OTHER_RULE)
    assert w() is True


def test_failed_commit_is_not_fatal_and_only_causes_redelivery():
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc AAAA", i) for i in range(6)])

    class Rebalanced(MemorySource):
        fails = 1

        def commit(self):
            if self.fails:
                self.fails -= 1
                raise RuntimeError("offset commit failed: UnknownMemberIdError")
            super().commit()

    src = Rebalanced(broker, PATTERN, "g")
    p = Processor(src, Detector(Engine(one_rule(), use_cache=False)), MemoryAlertSink(broker),
                  MemoryDeadLetterSink(broker), clock=Clock(), batch_size=3, poll_timeout_s=0, until_idle_s=1)
    m = p.run()
    assert m.commit_failures == 1 and m.commits == 1 and m.events == 6
    assert len(MemoryAlertSink(broker).alerts()) == 6
    assert broker.committed("g", "sigstream.events.sysmon", 0) == 6


# ------------------------------------------------------- script-block reassembly ---

PS = "Microsoft-Windows-PowerShell/Operational"
SPLIT_RULE = textwrap.dedent("""
    title: AMSI utils in a script block
    id: 33333333-3333-4333-8333-333333333333
    status: test
    level: high
    logsource: {product: windows, category: ps_script}
    detection:
      sel: {ScriptBlockText|contains: 'AmsiUtils'}
      condition: sel
""")


def fragment(n, total, text, rec):
    return {"EventID": 4104, "Channel": PS, "Computer": "WKS-1", "EventRecordID": rec,
            "TimeCreated": f"2026-11-24T08:00:0{rec % 10}.000000Z", "MessageNumber": n,
            "MessageTotal": total, "ScriptBlockId": "{0b5c-split}", "ScriptBlockText": text}


def test_split_script_block_is_matched_whole_and_commit_waits_for_it():
    from sigstream.stream.reassembly import ScriptBlockAssembler
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [fragment(1, 2, "$a=[Ref].Assembly.GetType('System.Management.Automation.Ams", 10),
                     proc_event("cmd /c echo hi", 11),
                     fragment(2, 2, "iUtils');$a.GetField('amsiInitFailed')", 12)])
    p = make(broker, Engine(one_rule(SPLIT_RULE), use_cache=False), batch_size=2,
             assembler=ScriptBlockAssembler())
    first = p.source.poll(1, 0)
    assert first[0].topic == "sigstream.events.powershell" and first[0].offset == 0
    p.process_batch(first)
    p._commit()
    assert broker.committed("g", "sigstream.events.powershell", 0) is None   # fragment buffered
    assert p.metrics.commits_held >= 1
    m = p.run()
    (alert,) = MemoryAlertSink(broker).alerts()
    assert "AmsiUtils" in alert["event"]["ScriptBlockText"]
    assert alert["event"]["sigstream_Reassembled"] is True
    assert alert["source"]["topic"] == "sigstream.events.powershell" and alert["source"]["offset"] == 0
    assert alert["source"]["event_id"] == event_fingerprint(fragment(1, 2, "", 10))
    assert m.events == 3
    assert broker.committed("g", "sigstream.events.powershell", 0) == 2   # both fragments


def test_incomplete_block_is_flushed_at_idle_exit():
    from sigstream.stream.reassembly import ScriptBlockAssembler
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [fragment(1, 3, "[Ref].Assembly.GetType('AmsiUtils')", 20)])
    p = make(broker, Engine(one_rule(SPLIT_RULE), use_cache=False), assembler=ScriptBlockAssembler())
    p.run()
    (alert,) = MemoryAlertSink(broker).alerts()
    assert alert["event"]["sigstream_Incomplete"] is True
    assert broker.committed("g", "sigstream.events.powershell", 0) == 1


def test_iso_utc_formats_like_strftime_across_seconds():
    import random
    from datetime import datetime, timezone

    from sigstream.stream.detector import iso_utc
    rnd = random.Random(7)
    ts = 1_764_000_000.0
    for _ in range(5000):
        ts += rnd.choice((0.0, 0.000001, 0.3, 0.999999, 1.0, 86400.5))
        expected = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert iso_utc(ts) == expected, ts


def test_commit_interval_commits_once_the_source_runs_dry():
    """With an interval, several batches share one flush+commit; all is committed when the
    source has nothing more, and nothing is committed before the alerts are written."""
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc AAAA", i) for i in range(10)])
    p = make(broker, Engine(one_rule(), use_cache=False), batch_size=3, commit_interval_s=3600)
    m = p.run()
    assert m.batches == 4 and m.events == 10
    assert m.commits == 1
    assert broker.committed("g", "sigstream.events.sysmon", 0) == 10
    assert len(MemoryAlertSink(broker).alerts()) == 10


def test_commit_interval_stop_commits_what_was_processed():
    broker = MemoryBroker(default_partitions=1)
    produce(broker, [proc_event("powershell -enc AAAA", i) for i in range(10)])
    holder = {}

    class StopOnSeventh(MemoryAlertSink):
        added = 0

        def add(self, alert):
            super().add(alert)
            StopOnSeventh.added += 1
            if StopOnSeventh.added == 7:   # like SIGTERM arriving in the third batch
                holder["p"].stop()

    p = make(broker, Engine(one_rule(), use_cache=False), alerts=StopOnSeventh(broker), batch_size=3,
             until_idle_s=None, commit_interval_s=3600)
    holder["p"] = p
    m = p.run()
    assert m.batches == 3 and m.commits == 1
    assert broker.committed("g", "sigstream.events.sysmon", 0) == 9
