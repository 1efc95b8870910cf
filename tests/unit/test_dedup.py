"""De-duplication windows with explicit timestamps (nothing reads a clock)."""
from __future__ import annotations

import pytest

from sigstream.connectors.sinks import ListSink
from sigstream.stream.dedup import DedupPolicy, DedupSink, Deduplicator, parse_duration

T0 = 1_800_000_000.0


def alert(rule="r1", host="WKS-1", level="high", n=0, **event):
    ev = {"Image": "C:\\x\\powershell.exe", "CommandLine": f"cmd {n}"}
    ev.update(event)
    return {"alert_id": f"{rule}-{host}-{n}", "rule": {"id": rule, "title": rule.upper(), "level": level},
            "host": host, "event": ev}


def dd(d):
    return Deduplicator(DedupPolicy.from_dict(d))


def test_first_alert_passes_then_suppressed_within_window_then_one_update():
    d = dd({"default": {"window": "5m"}})
    first = d.offer(alert(n=0), T0)
    assert first is not None and first["dedup"]["count"] == 1 and first["alert_id"] == "r1-WKS-1-0"
    assert d.offer(alert(n=1), T0 + 10) is None
    assert d.offer(alert(n=2), T0 + 299.9) is None
    assert d.expire(T0 + 299.99) == []
    [update] = d.expire(T0 + 300)
    assert update["alert_id"] == "r1-WKS-1-0"
    assert update["dedup"]["count"] == 3 and update["dedup"]["final"] is True
    assert update["dedup"]["first_seen"].startswith("2027-01-15T08:00:00")
    assert update["dedup"]["last_seen"].startswith("2027-01-15T08:04:59.9")
    assert d.suppressed == 2 and len(d) == 0


def test_window_boundary_starts_a_new_group():
    d = dd({"default": {"window": 60}})
    assert d.offer(alert(n=0), T0)
    assert d.offer(alert(n=1), T0 + 59) is None
    again = d.offer(alert(n=2), T0 + 60)             # window is [T0, T0+60)
    assert again is not None and again["dedup"]["count"] == 1
    [update] = d.expire(T0 + 60)                      # the closed group, counted 2
    assert update["dedup"]["count"] == 2 and update["alert_id"] == "r1-WKS-1-0"


def test_single_alert_groups_produce_no_update():
    d = dd({"default": {"window": 60}})
    d.offer(alert(), T0)
    assert d.expire(T0 + 61) == []


def test_groups_are_per_rule_and_host():
    d = dd({"default": {"window": 60}})
    assert d.offer(alert("r1", "A"), T0)
    assert d.offer(alert("r2", "A"), T0 + 1)
    assert d.offer(alert("r1", "B"), T0 + 2)
    assert d.offer(alert("r1", "a"), T0 + 3) is None    # host case-insensitive


def test_configurable_key_fields():
    d = dd({"default": {"window": 60, "key": ["Image"]}})
    assert d.offer(alert(n=0, Image="a.exe"), T0)
    assert d.offer(alert(n=1, Image="b.exe"), T0 + 1)
    assert d.offer(alert(n=2, Image="a.exe"), T0 + 2) is None
    assert d.offer(alert(n=3, Image="b.exe"), T0 + 3) is None
    ups = d.expire(T0 + 100)
    assert sorted(u["dedup"]["key"][0] for u in ups) == ["a.exe", "b.exe"]


def test_per_rule_and_per_level_settings():
    d = dd({"default": {"window": "1m"},
            "levels": {"critical": {"window": 0}},
            "rules": {"noisy": {"window": "1h", "key": "CommandLine"}}})
    # critical: never suppressed
    assert d.offer(alert("c", level="critical", n=0), T0)
    assert d.offer(alert("c", level="critical", n=1), T0 + 1)
    # rule override (long window, keyed by command line)
    assert d.offer(alert("noisy", n=0), T0)
    assert d.offer(alert("noisy", n=0), T0 + 3000) is None
    assert d.offer(alert("noisy", n=1), T0 + 3001)          # different command line
    # default
    assert d.offer(alert("other"), T0)
    assert d.offer(alert("other"), T0 + 61)


def test_no_policy_means_no_dedup():
    d = dd({})
    assert all(d.offer(alert(n=i), T0) for i in range(3))


def test_close_all_flushes_open_groups():
    d = dd({"default": {"window": 600}})
    d.offer(alert(n=0), T0)
    d.offer(alert(n=1), T0 + 1)
    [u] = d.close_all()
    assert u["dedup"]["count"] == 2 and len(d) == 0


def test_max_groups_closes_the_earliest():
    d = Deduplicator(DedupPolicy.from_dict({"default": {"window": 600}}), max_groups=2)
    d.offer(alert("r1"), T0)
    d.offer(alert("r1"), T0 + 1)
    d.offer(alert("r2"), T0 + 2)
    d.offer(alert("r3"), T0 + 3)      # evicts r1's group, its update is ready
    assert len(d) == 2
    [u] = d.expire(T0 + 4)
    assert u["rule"]["id"] == "r1" and u["dedup"]["count"] == 2


def test_sink_with_clock_passed_in():
    now = [T0]
    inner = ListSink()
    sink = DedupSink(inner, dd({"default": {"window": 10}}), clock=lambda: now[0])
    for i in range(3):
        sink.add(alert(n=i))
        now[0] += 1
    assert len(inner.alerts) == 1
    now[0] = T0 + 20
    sink.flush()
    assert [a["dedup"]["count"] for a in inner.alerts] == [1, 3]


def test_bad_settings():
    with pytest.raises(ValueError):
        DedupPolicy.from_dict({"default": {"window": "soon"}})
    with pytest.raises(ValueError):
        DedupPolicy.from_dict({"default": {"windw": 5}})
    assert parse_duration("1.5h") == 5400 and parse_duration(30) == 30 and parse_duration("250ms") == 0.25
