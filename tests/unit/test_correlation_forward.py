"""Correlation over a partitioned stream without a broker: stream.correlation_forward (families,
the forwarder stage, per-partition evaluation, snapshot / restore / skip of applied records)
and connectors.correlation_kafka.CorrelationLoop driven by fakes (crash, rebalance)."""
from __future__ import annotations

import math
import random
import textwrap
from pathlib import Path

import orjson
import pytest

from sigstream.connectors.correlation_kafka import CorrelationLoop
from sigstream.stream.correlation_forward import (CorrelationForwarder, PartitionState, correlation_families,
                                                  decode_record, family_key)
from sigstream.stream.correlation_stage import CorrelationStage
from sigstream.stream.correlation import Correlator
from sigstream.stream.rules import load_rules

IDS = {n: f"{i:08d}-0000-4000-8000-0000000000aa" for i, n in enumerate(["fail", "ok", "recon", "other"], 1)}
COUNT_ID = "c0000001-0000-4000-8000-000000000000"
CHAIN_ID = "c0000002-0000-4000-8000-000000000000"
ORDER_ID = "c0000003-0000-4000-8000-000000000000"


def base(name: str) -> str:
    return textwrap.dedent(f"""\
        title: rule {name}
        id: {IDS[name]}
        name: {name}
        status: test
        logsource: {{product: windows, service: security}}
        detection:
          sel: {{EventID: 1}}
          condition: sel
        level: low
        """)


RULES = [base(n) for n in IDS] + [
    textwrap.dedent(f"""\
        title: many failures per user
        id: {COUNT_ID}
        name: many_failures
        status: test
        level: medium
        correlation:
          type: event_count
          rules: [fail]
          group-by: [User]
          timespan: 10m
          condition: {{gte: 3}}
        """),
    textwrap.dedent(f"""\
        title: failures then success
        id: {CHAIN_ID}
        status: test
        level: high
        correlation:
          type: temporal_ordered
          rules: [many_failures, ok]
          group-by: [Account]
          timespan: 10m
          aliases:
            Account:
              many_failures: User
              ok: TargetUserName
        """),
    textwrap.dedent(f"""\
        title: recon on a host
        id: {ORDER_ID}
        status: test
        level: high
        correlation:
          type: value_count
          rules: [recon]
          group-by: [Computer]
          timespan: 5m
          condition: {{field: CommandLine, gte: 2}}
        """),
]


@pytest.fixture
def loaded(tmp_path: Path):
    f = tmp_path / "rules.yml"
    f.write_text("---\n".join(RULES))
    loaded = load_rules([f], use_cache=False)
    assert loaded.errors == [], [str(e) for e in loaded.errors]
    assert len(loaded.correlations) == 3
    return loaded


T0 = 1_795_000_000.0
# generate: false is the default: the referenced rules and the chained-into correlation
SUPPRESSED = frozenset({IDS["fail"], IDS["ok"], IDS["recon"], COUNT_ID})


def iso(t: float) -> str:
    from sigstream.stream.event_time import iso_utc
    return iso_utc(t)


def alert(rule: str, t: float, host: str = "H1", **fields) -> dict:
    event = {"EventID": 1, "Computer": host, "TimeCreated": iso(t), "EventRecordID": int(t) % 100000,
             "Noise": "x" * 50, **fields}
    return {"alert_id": f"{rule}-{host}-{t}", "rule": {"id": IDS[rule], "name": rule, "title": f"rule {rule}"},
            "host": host, "event_time": iso(t), "event": event}


def scenario(seed: int = 0) -> list[dict]:
    """Base alerts over 3 hosts: failures of two users spread over hosts, a success, recon."""
    rnd = random.Random(seed)
    out = []
    for i in range(9):
        out.append(alert("fail", T0 + 10 * i, host=f"H{i % 3}", User="alice"))
    for i in range(4):
        out.append(alert("fail", T0 + 7 + 20 * i, host=f"H{(i + 1) % 3}", User="bob"))
    out.append(alert("ok", T0 + 200, host="H2", TargetUserName="alice"))
    out.append(alert("ok", T0 + 205, host="H0", TargetUserName="bob"))
    for i in range(3):
        out.append(alert("recon", T0 + 30 * i, host="H1", CommandLine=f"whoami /{i}"))
    out.append(alert("other", T0 + 1, host="H1"))
    rnd.shuffle(out)
    return out


def hunt_ids(loaded, alerts: list[dict]) -> list[str]:
    stage = CorrelationStage(Correlator(loaded.correlations), suppressed=loaded.suppressed,
                             lateness_s=math.inf)
    out = stage.feed(list(alerts), None, 0.0) + stage.finish(0.0)
    return sorted(a["alert_id"] for a in out if "correlation" in a)


class Recorder:
    def __init__(self):
        self.records: list[tuple[bytes, bytes, int]] = []

    def __call__(self, key: bytes, value: bytes, ts: int) -> None:
        self.records.append((key, value, ts))


# ------------------------------------------------------------------ families and forwarder

def test_a_chain_is_one_family_and_unrelated_correlations_are_apart(loaded):
    fams = correlation_families(loaded.correlations)
    assert len(fams) == 2
    chain = next(f for f in fams if len(f.correlations) == 2)
    assert {c.id for c in chain.correlations} == {COUNT_ID, CHAIN_ID}
    # only the fields the family reads: group-by names and alias targets
    assert chain.fields == ("Account", "TargetUserName", "User")
    other = next(f for f in fams if f is not chain)
    assert other.fields == ("CommandLine", "Computer")
    assert chain.key == family_key(reversed(chain.correlations))   # order does not matter
    assert chain.key != other.key


def test_forwarder_sends_compact_records_keyed_by_family(loaded):
    rec = Recorder()
    fwd = CorrelationForwarder(loaded.correlations, rec, suppressed=loaded.suppressed)
    fams = {f.key_bytes: f for f in fwd.families}
    a = alert("fail", T0 + 1.5, host="H7", User="alice")
    out = fwd.feed([a, alert("other", T0)], None, 0.0)
    assert [x["rule"]["name"] for x in out] == ["other"]   # generate: false is the default
    assert len(rec.records) == 1
    key, value, ts = rec.records[0]
    assert key in fams and len(fams[key].correlations) == 2
    assert ts == int((T0 + 1.5) * 1000)
    doc = orjson.loads(value)
    assert doc["fields"] == {"User": "alice"}                       # not the whole event
    assert doc["alert_id"] == a["alert_id"] and doc["host"] == "H7" and doc["rule_id"] == IDS["fail"]
    assert doc["rule_name"] == "fail" and doc["record_id"] == a["event"]["EventRecordID"]
    m = decode_record(value)
    assert m.time == T0 + 1.5 and m.fields == {"User": "alice"}
    assert not fwd.holds_state and fwd.finish(0.0) == [] and fwd.tick(0.0) == []


def test_forwarder_one_record_per_family_referencing_the_rule(loaded, tmp_path):
    extra = textwrap.dedent("""\
        title: recon also counted
        id: c0000009-0000-4000-8000-000000000000
        status: test
        correlation:
          type: event_count
          rules: [recon]
          group-by: [User]
          timespan: 1m
          condition: {gte: 5}
        """)
    f = tmp_path / "more.yml"
    f.write_text("---\n".join(RULES + [extra]))
    l2 = load_rules([f], use_cache=False)
    rec = Recorder()
    fwd = CorrelationForwarder(l2.correlations, rec)
    fwd.feed([alert("recon", T0, User="u", CommandLine="whoami")], None, 0.0)
    assert len(rec.records) == 2 and len({k for k, _, _ in rec.records}) == 2
    by_fields = [orjson.loads(v)["fields"] for _, v, _ in rec.records]
    assert {"User": "u"} in by_fields and {"CommandLine": "whoami", "Computer": "H1"} in by_fields


def test_generate_false_base_rules_are_forwarded_but_not_emitted(loaded):
    rec = Recorder()
    assert IDS["fail"] in loaded.suppressed and IDS["other"] not in loaded.suppressed
    fwd = CorrelationForwarder(loaded.correlations, rec, suppressed=frozenset({IDS["fail"]}))
    out = fwd.feed([alert("fail", T0, User="a"), alert("ok", T0, TargetUserName="a")], None, 0.0)
    assert [x["rule"]["name"] for x in out] == ["ok"]
    fwd = CorrelationForwarder(loaded.correlations, rec)          # nothing suppressed: all kept
    assert len(fwd.feed([alert("fail", T0, User="a")], None, 0.0)) == 1
    assert len(rec.records) == 3


def test_untimed_alerts_are_counted_not_forwarded(loaded):
    rec = Recorder()
    fwd = CorrelationForwarder(loaded.correlations, rec)
    a = alert("fail", T0, User="a")
    del a["event"]["TimeCreated"]
    a["event_time"] = None
    assert fwd.feed([a], None, 0.0) == [a]
    assert rec.records == [] and fwd.untimed == 1


# ------------------------------------------------------------------ evaluation, snapshots

def forwarded(loaded, alerts) -> list[tuple[bytes, bytes]]:
    rec = Recorder()
    fwd = CorrelationForwarder(loaded.correlations, rec, suppressed=loaded.suppressed)
    for a in alerts:
        fwd.feed([a], None, 0.0)
    return [(k, v) for k, v, _ in rec.records]


def evaluate(families, records, *, lateness=3600.0, state=None, start=0,
             suppressed=SUPPRESSED) -> tuple[PartitionState, list[str]]:
    st = state or PartitionState(families, lateness_s=lateness, suppressed=suppressed)
    ids = []
    for off, (k, v) in enumerate(records):
        if off >= start:
            ids += [a["alert_id"] for a in st.apply(off, k, v, 0.0)]
    return st, ids


def test_partitioned_evaluation_equals_the_in_memory_stage(loaded):
    alerts = scenario()
    want = hunt_ids(loaded, alerts)
    assert len(want) == 3       # the chain for alice and bob, recon (the counts feed the chain only)
    fams = correlation_families(loaded.correlations)
    st, ids = evaluate(fams, forwarded(loaded, alerts))
    ids += [a["alert_id"] for a in st.finish(0.0)]
    assert sorted(ids) == want
    # one partition per family gives the same as all families in one partition
    by_family: dict[bytes, list] = {}
    for k, v in forwarded(loaded, alerts):
        by_family.setdefault(k, []).append((k, v))
    split = []
    for recs in by_family.values():
        st, got = evaluate(fams, recs)
        split += got + [a["alert_id"] for a in st.finish(0.0)]
    assert sorted(split) == want


@pytest.mark.parametrize("lateness", [3600.0, 15.0])
def test_restore_at_any_commit_point_then_redelivery_gives_the_same_alerts(loaded, lateness):
    alerts = sorted(scenario(1), key=lambda a: a["event_time"])  # in order: lateness 15 is exact
    fams = correlation_families(loaded.correlations)
    records = forwarded(loaded, alerts)
    full, ids = evaluate(fams, records, lateness=lateness)
    want = sorted(ids + [a["alert_id"] for a in full.finish(0.0)])
    assert want == hunt_ids(loaded, alerts)
    for cut in range(len(records) + 1):
        st, before = evaluate(fams, records[:cut], lateness=lateness)
        snap = st.encode()                                # committed: snapshot with applied = cut-1
        restored = PartitionState.restore(snap, fams, lateness_s=lateness, suppressed=SUPPRESSED)
        assert restored.applied == cut - 1
        assert orjson.loads(restored.encode()) == orjson.loads(snap)
        # the consumer resumes before the snapshot (commit failed): those are skipped
        redeliver_from = max(0, cut - 3)
        _, after = evaluate(fams, records, lateness=lateness, state=restored, start=redeliver_from)
        assert restored.skipped == cut - redeliver_from
        after += [a["alert_id"] for a in restored.finish(0.0)]
        assert sorted(before + after) == want, cut


def test_duplicate_base_matches_are_counted_once(loaded):
    alerts = scenario(2)
    fams = correlation_families(loaded.correlations)
    records = forwarded(loaded, alerts)
    dup = records[:5] + records + records[3:9]            # a re-processing processor forwards again
    st, ids = evaluate(fams, dup)
    ids += [a["alert_id"] for a in st.finish(0.0)]
    assert sorted(ids) == hunt_ids(loaded, alerts)
    assert st.stats()["duplicates"] == 11


def test_bad_and_unknown_records_are_counted_and_skipped(loaded):
    fams = correlation_families(loaded.correlations)
    st = PartitionState(fams)
    assert st.apply(0, b"nope", b"{not json", 0.0) == []
    assert st.apply(1, b"unknown-family", forwarded(loaded, [alert("fail", T0, User="a")])[0][1], 0.0) == []
    assert (st.bad, st.unknown, st.applied) == (1, 1, 1)


# ------------------------------------------------------------------ the loop, with fakes

class Msg:
    def __init__(self, partition, offset, key, value):
        self.partition, self.offset, self.key, self.value = partition, offset, key, value
        self.topic = "t"


class FakeTopic:
    def __init__(self, parts: int):
        self.log: dict[int, list[Msg]] = {p: [] for p in range(parts)}
        self.committed: dict[int, int] = {p: 0 for p in range(parts)}

    def produce(self, part: int, key: bytes, value: bytes) -> None:
        self.log[part].append(Msg(part, len(self.log[part]), key, value))


class FakeSource:
    """A group member owning `parts`; commit() commits what poll() returned."""

    def __init__(self, topic: FakeTopic, parts: list[int], batch: int = 3):
        self.topic, self.parts, self.batch = topic, parts, batch
        self.pos = {p: topic.committed[p] for p in parts}
        self.loop = None
        self.assigned_once = False

    def poll(self, n, timeout):
        if not self.assigned_once:
            self.assigned_once = True
            self.loop.on_assigned(self.parts)
        out = []
        for p in self.parts:
            recs = self.topic.log[p][self.pos[p]:self.pos[p] + self.batch]
            self.pos[p] += len(recs)
            out += recs
        return out

    def commit(self):
        self.topic.committed.update(self.pos)

    def assignment(self):
        return {("t", p) for p in self.parts}


class FakeChangelog:
    def __init__(self):
        self.durable: dict[bytes, bytes] = {}
        self.pending: dict[bytes, bytes] = {}
        self.writes = 0

    def load(self):
        return dict(self.durable)

    def write(self, key, value):
        self.pending[key] = value
        self.writes += 1

    def flush(self):
        self.durable.update(self.pending)
        self.pending.clear()


class ListSink:
    def __init__(self):
        self.added, self.durable = [], []

    def add(self, a):
        self.added.append(a)

    def flush(self):
        self.durable += self.added
        self.added = []


def make_loop(loaded, source, changelog, sink, fams, **kw):
    loop = CorrelationLoop(source, changelog, sink, families=fams, state_prefix="g",
                           suppressed=loaded.suppressed, lateness_s=3600.0, until_idle_s=0.0,
                           poll_timeout_s=0.0, commit_interval_s=0.0, **kw)
    source.loop = loop
    return loop


def fill_topic(loaded, alerts, parts=3) -> tuple[FakeTopic, list]:
    fams = correlation_families(loaded.correlations)
    topic = FakeTopic(parts)
    for k, v in forwarded(loaded, alerts):
        topic.produce(int.from_bytes(k[:4], "big") % parts, k, v)
    return topic, fams


def test_loop_crash_after_some_commits_then_restart_gives_the_same_alert_ids(loaded):
    alerts = scenario(3)
    want = set(hunt_ids(loaded, alerts))
    topic, fams = fill_topic(loaded, alerts)
    changelog, sink = FakeChangelog(), ListSink()
    first = make_loop(loaded, FakeSource(topic, [0, 1, 2], batch=2), changelog, sink, fams)
    for _ in range(3):                       # three batches, committed after each
        first.process_batch(first.source.poll(10, 0), 0.0)
        first.commit()
    first.process_batch(first.source.poll(10, 0), 0.0)   # processed, never committed: SIGKILL
    assert changelog.writes > 0 and any(topic.committed.values())
    second = make_loop(loaded, FakeSource(topic, [0, 1, 2], batch=2), changelog, sink, fams)
    second.drain()
    m = second.run()
    sink.flush()
    got = [a["alert_id"] for a in sink.durable]
    assert set(got) == want                  # nothing lost, nothing extra (duplicates allowed)
    assert m["restores"] == 3


def test_loop_rebalance_moves_partitions_with_their_state(loaded):
    alerts = scenario(4)
    want = set(hunt_ids(loaded, alerts))
    topic, fams = fill_topic(loaded, alerts, parts=2)
    changelog, sink = FakeChangelog(), ListSink()
    a = make_loop(loaded, FakeSource(topic, [0, 1], batch=2), changelog, sink, fams)
    a.process_batch(a.source.poll(10, 0), 0.0)
    a.commit()
    a.process_batch(a.source.poll(10, 0), 0.0)       # uncommitted when the partitions move
    a.on_revoked([0, 1])
    assert a.states == {}
    b = make_loop(loaded, FakeSource(topic, [0], batch=2), changelog, sink, fams)
    c = make_loop(loaded, FakeSource(topic, [1], batch=2), changelog, sink, fams)
    for loop in (b, c):
        loop.drain()
        loop.run()
    sink.flush()
    assert {x["alert_id"] for x in sink.durable} == want


def test_loop_stop_commits_without_deciding_windows(loaded):
    alerts = scenario(5)
    topic, fams = fill_topic(loaded, alerts)
    changelog, sink = FakeChangelog(), ListSink()
    loop = make_loop(loaded, FakeSource(topic, [0, 1, 2], batch=100), changelog, sink, fams)
    loop.process_batch(loop.source.poll(100, 0), 0.0)
    loop.stop()
    loop.run()
    assert loop.source.pos == topic.committed                 # committed on the way out
    held = [PartitionState.restore(v, fams).stats()["held"] for v in changelog.durable.values()]
    assert sum(held) == len(forwarded(loaded, alerts))        # nothing decided: all still held
