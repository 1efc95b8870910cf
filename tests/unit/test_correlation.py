"""Unit tests for stream.correlation (evaluation), stream.event_time and stream.correlation_alert.

Correlation rules are written as YAML and loaded through stream.rules.load_rules, as in use.
Matches are fed by hand: the detection rules only need to load.
"""
from __future__ import annotations

import json
import logging
import random
import textwrap
from pathlib import Path

import jsonschema
import pytest

from sigstream.stream.correlation import Correlator, Match, match_from_alert
from sigstream.stream.correlation_alert import correlation_alert
from sigstream.stream.event_time import EventTimeBuffer, event_time, iso_utc, parse_time
from sigstream.stream.rules import LoadedRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "alert.schema.json").read_text())

T0 = parse_time("2026-11-24T10:00:00Z")
IDS = {n: f"{i:08d}-0000-4000-8000-000000000000" for i, n in enumerate(
    ["a", "b", "c", "failed_login", "successful_login", "internal_error", "new_network_connection"], 1)}


def at(hhmm: str) -> float:
    """'10:04' / '10:05:00.000001' -> epoch seconds on 2026-11-24 (UTC)."""
    return parse_time(f"2026-11-24T{hhmm if hhmm.count(':') == 2 else hhmm + ':00'}Z")


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


def corr_yaml(ctype: str, rules: list[str], condition, *, group_by=("User",), timespan="5m",
              title="corr", cid="99999999-0000-4000-8000-000000000000", name=None, extra="") -> str:
    cond = condition if isinstance(condition, str) else json.dumps(condition)
    lines = [f"title: {title}", f"id: {cid}"]
    if name:
        lines.append(f"name: {name}")
    lines += ["status: test", "level: high", "tags: [attack.t1110, attack.credential-access]",
              "correlation:", f"  type: {ctype}", f"  rules: {json.dumps(rules)}",
              f"  group-by: {json.dumps(list(group_by))}", f"  timespan: {timespan}"]
    if condition is not None:
        lines.append(f"  condition: {cond}")
    return "\n".join(lines) + "\n" + extra


def load(tmp_path: Path, *docs: str, bases=("a", "b", "c")) -> LoadedRules:
    f = tmp_path / "rules.yml"
    f.write_text("---\n".join([*(base(b) for b in bases), *docs]))
    loaded = load_rules([f], use_cache=False)
    assert loaded.errors == [], [str(e) for e in loaded.errors]
    return loaded


def correlator(tmp_path: Path, *docs: str, bases=("a", "b", "c"), **kw) -> Correlator:
    return Correlator(load(tmp_path, *docs, bases=bases).correlations, **kw)


_seq = [0]


def m(rule: str, time: float, host: str | None = "H1", alert_id: str | None = None, **fields) -> Match:
    _seq[0] += 1
    return Match(IDS.get(rule), rule, time, fields, alert_id or f"{rule}-{_seq[0]:06d}", host, _seq[0])


def run(c: Correlator, matches, *, flush: bool = True):
    out = []
    for x in matches:
        out += c.feed(x)
    if flush:
        out += c.flush()
    return out


def alice(rule: str, *times: str, **fields):
    return [m(rule, at(t), User="alice", **fields) for t in times]


# ------------------------------------------------------------------ sliding window, reset

def test_sliding_window_fires_across_bucket_boundaries(tmp_path):
    # 10:04, 10:06, 10:08 span two 5-minute buckets; the sliding window holds all three
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    (r,) = run(c, alice("a", "10:04", "10:06", "10:08"))
    assert r.value == 3 and r.group == {"User": "alice"} and r.window == "sliding"
    assert r.first_time == at("10:04") and r.last_time == at("10:08") == r.decided_at


@pytest.mark.parametrize("last, fires", [("10:05:00", True), ("10:05:00.000001", False)])
def test_window_is_inclusive_to_the_microsecond(tmp_path, last, fires):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    assert bool(run(c, alice("a", "10:00", "10:02", last))) is fires


def test_old_matches_slide_out_of_the_window(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    assert run(c, alice("a", "10:00", "10:01", "10:06", "10:07")) == []
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    (r,) = run(c, alice("a", "10:00", "10:01", "10:06", "10:07", "10:08"))
    assert r.first_time == at("10:06")          # the window ending at 10:08


def test_firing_resets_the_group(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    results = run(c, alice("a", *(f"10:0{i}" for i in range(6))))
    assert len(results) == 2                    # 6 failures, gte 3: two alerts, not four
    first, second = ({e.alert_id for e in r.events} for r in results)
    assert len(first) == len(second) == 3 and not first & second


@pytest.mark.parametrize("cond, n, fires", [({"gt": 3}, 3, False), ({"gt": 3}, 4, True),
                                            ({"gte": 3}, 2, False), ({"gte": 3}, 3, True)])
def test_event_count_at_least_boundaries(tmp_path, cond, n, fires):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], cond))
    assert bool(run(c, alice("a", *(f"10:0{i}" for i in range(n))))) is fires


def test_groups_are_counted_apart_and_several_rules_count_together(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a", "b"], {"gte": 3}))
    ms = [m("a", at("10:00"), User="alice"), m("b", at("10:01"), User="bob"),
          m("b", at("10:02"), User="alice"), m("a", at("10:03"), User="bob"),
          m("a", at("10:04"), User="alice")]
    (r,) = run(c, ms)
    assert r.group == {"User": "alice"} and {e.rule_name for e in r.events} == {"a", "b"}


def test_without_group_by_everything_is_one_group(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 2}, group_by=()))
    (r,) = run(c, [m("a", at("10:00"), User="x"), m("a", at("10:01"))])
    assert r.group == {}


# ------------------------------------------------------------------ fixed windows (lt, lte, eq, neq)

def test_lt_is_decided_when_the_window_ends(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"lt": 3}))
    assert run(c, alice("a", "10:00", "10:02"), flush=False) == []   # undecided yet
    assert c.advance(at("10:05")) == []                               # window end is inclusive
    (r,) = c.advance(at("10:05:00.000001"))
    assert r.value == 2 and r.window == "fixed"
    assert r.first_time == at("10:00") and r.last_time == at("10:02") and r.decided_at == at("10:05")
    assert c.groups_open == 0


def test_lt_does_not_fire_when_enough_matches_come(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"lt": 3}))
    assert run(c, alice("a", "10:00", "10:02", "10:04")) == []


@pytest.mark.parametrize("cond, n, fires", [
    ({"lte": 2}, 2, True), ({"lte": 2}, 3, False), ({"eq": 2}, 2, True), ({"eq": 2}, 1, False),
    ({"eq": 2}, 3, False), ({"neq": 2}, 2, False), ({"neq": 2}, 3, True)])
def test_fixed_window_operators(tmp_path, cond, n, fires):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], cond))
    assert bool(run(c, alice("a", *(f"10:0{i}" for i in range(n))))) is fires


def test_a_window_is_closed_by_a_later_match_of_any_group(tmp_path):
    # no advance(): the feed at 10:30 (another user) decides alice's window first
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"lt": 3}))
    out = run(c, alice("a", "10:00") + [m("a", at("10:30"), User="bob")], flush=False)
    assert [r.group["User"] for r in out] == ["alice"]
    assert [r.group["User"] for r in c.flush()] == ["bob"]


def test_advance_interleaving_does_not_change_results(tmp_path):
    docs = corr_yaml("event_count", ["a"], {"lt": 2})
    ms = [m("a", at(t), User=u) for t, u in [("10:00", "u1"), ("10:03", "u2"), ("10:04", "u1"),
                                              ("10:09", "u3"), ("10:20", "u2")]]
    plain = [r.alert_id for r in run(correlator(tmp_path, docs), ms)]
    c = correlator(tmp_path, docs)
    ticked = []
    for x in ms:
        ticked += c.advance(x.time - 30) + c.feed(x) + c.advance(x.time + 1)
    ticked += c.flush()
    assert [r.alert_id for r in ticked] == plain and len(plain) == 3   # u2 (twice), u3


# ------------------------------------------------------------------ value types

def test_value_count_counts_distinct_values(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"gte": 3, "field": "TargetUserName"},
                                       group_by=("IpAddress",)))
    ms = [m("a", at(f"10:0{i}"), IpAddress="10.0.0.9", TargetUserName=u)
          for i, u in enumerate(["root", "root", "admin", "root", "guest"])]
    (r,) = run(c, ms)
    assert r.value == 3 and r.last_time == at("10:04")
    # one reference per distinct value: its latest match
    assert [e.alert_id for e in r.events] == [ms[i].alert_id for i in (2, 3, 4)]


def test_value_count_values_expire(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"gte": 3, "field": "U"}, group_by=()))
    assert run(c, [m("a", at("10:00"), U="x"), m("a", at("10:04"), U="y"),
                   m("a", at("10:06"), U="z")]) == []
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"gte": 3, "field": "U"}, group_by=()))
    # x seen again at 10:04: its latest occurrence keeps it in the window
    assert len(run(c, [m("a", at("10:00"), U="x"), m("a", at("10:04"), U="x"),
                       m("a", at("10:05"), U="y"), m("a", at("10:06"), U="z")])) == 1


def test_value_count_without_the_value_is_not_counted(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"gte": 2, "field": "U"}, group_by=()))
    assert run(c, [m("a", at("10:00"), U="x"), m("a", at("10:01")), m("a", at("10:02"), U=None)]) == []
    assert c.stats["missing_value"] == 2


def test_value_count_lt_is_a_fixed_window(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"lt": 2, "field": "U"}, group_by=()))
    (r,) = run(c, [m("a", at("10:00"), U="x"), m("a", at("10:01"), U="x")])
    assert r.value == 1 and r.window == "fixed" and r.events_total == 2


def test_value_sum_is_sliding_and_takes_numbers_in_text(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_sum", ["a"], {"gte": 100, "field": "Bytes"}, group_by=()))
    ms = [m("a", at("10:00"), Bytes="40"), m("a", at("10:01"), Bytes="0x14"),   # 40 + 20
          m("a", at("10:02"), Bytes="lots"), m("a", at("10:03"), Bytes=True),   # ignored, counted
          m("a", at("10:04"), Bytes=39.5), m("a", at("10:04:30"), Bytes=" 0.5 ")]
    (r,) = run(c, ms)
    assert r.value == 100 and r.last_time == at("10:04:30") and r.events_total == 4
    assert c.stats["non_numeric_values"] == 2


def test_value_avg_is_decided_on_the_whole_window(tmp_path):
    cond = {"gte": 60, "field": "Bytes"}
    c = correlator(tmp_path, corr_yaml("value_avg", ["a"], cond, group_by=()))
    # a first value of 100 would pass alone; the window's average (100 + 0) / 2 does not
    assert run(c, [m("a", at("10:00"), Bytes=100), m("a", at("10:03"), Bytes=0)]) == []
    c = correlator(tmp_path, corr_yaml("value_avg", ["a"], cond, group_by=()))
    (r,) = run(c, [m("a", at("10:00"), Bytes=100), m("a", at("10:03"), Bytes=0),
                   m("a", at("10:04"), Bytes=90)])
    assert r.value == pytest.approx(190 / 3) and r.window == "fixed"


def test_value_avg_keeps_a_fractional_threshold(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_avg", ["a"], {"gt": 1.5, "field": "N"}, group_by=()))
    assert run(c, [m("a", at("10:00"), N=1), m("a", at("10:01"), N=2)]) == []   # 1.5 > 1.5: no
    c = correlator(tmp_path, corr_yaml("value_avg", ["a"], {"gt": 1.5, "field": "N"}, group_by=()))
    assert len(run(c, [m("a", at("10:00"), N=1), m("a", at("10:01"), N=3)])) == 1


@pytest.mark.parametrize("ctype, cond, value", [
    ("value_median", {"gte": 0, "field": "N"}, 25),                      # (20 + 30) / 2
    ("value_percentile", {"gte": 0, "field": "N", "percentile": 90}, 37),  # 30 + 0.7 * 10
    ("value_percentile", {"gte": 0, "field": "N", "percentile": 0}, 10),
    ("value_percentile", {"gte": 0, "field": "N", "percentile": 100}, 40)])
def test_percentile_interpolates_linearly(tmp_path, ctype, cond, value):
    c = correlator(tmp_path, corr_yaml(ctype, ["a"], cond, group_by=()))
    (r,) = run(c, [m("a", at(f"10:0{i}"), N=n) for i, n in enumerate([40, 10, 30, 20])])
    assert r.value == pytest.approx(value)


def test_percentile_condition_boundary(tmp_path):
    docs = corr_yaml("value_percentile", ["a"], {"gt": 37, "field": "N", "percentile": 90}, group_by=())
    assert run(correlator(tmp_path, docs), [m("a", at(f"10:0{i}"), N=n)
                                           for i, n in enumerate([40, 10, 30, 20])]) == []


# ------------------------------------------------------------------ temporal

def test_temporal_needs_every_rule_in_any_order(tmp_path):
    docs = corr_yaml("temporal", ["a", "b", "c"], None)
    (r,) = run(correlator(tmp_path, docs), alice("c", "10:00") + alice("a", "10:02") + alice("b", "10:04"))
    assert r.value == 3 and [e.rule_name for e in r.events] == ["c", "a", "b"]
    assert run(correlator(tmp_path, docs), alice("c", "10:00") + alice("a", "10:02")) == []
    # c slid out of the window before b came
    assert run(correlator(tmp_path, docs), alice("c", "10:00") + alice("a", "10:02")
               + alice("b", "10:05:01")) == []


def test_temporal_groups_by_user(tmp_path):
    docs = corr_yaml("temporal", ["a", "b"], None)
    ms = alice("a", "10:00") + [m("b", at("10:01"), User="bob")]
    assert run(correlator(tmp_path, docs), ms) == []


def test_temporal_with_a_count_condition(tmp_path):
    docs = corr_yaml("temporal", ["a", "b", "c"], {"gte": 2})
    (r,) = run(correlator(tmp_path, docs), alice("a", "10:00", "10:01") + alice("c", "10:02"))
    assert r.value == 2


def test_temporal_ordered_needs_the_listed_order(tmp_path):
    docs = corr_yaml("temporal_ordered", ["a", "b", "c"], None)
    assert len(run(correlator(tmp_path, docs), alice("a", "10:00") + alice("b", "10:01")
                   + alice("c", "10:02"))) == 1
    assert run(correlator(tmp_path, docs), alice("b", "10:00") + alice("a", "10:01")
               + alice("c", "10:02")) == []
    # a later a restarts the chain; b and c after it complete it within the span
    (r,) = run(correlator(tmp_path, docs), alice("a", "10:00") + alice("b", "10:01")
               + alice("a", "10:04") + alice("b", "10:06") + alice("c", "10:08"))
    assert r.first_time == at("10:04") and [e.rule_name for e in r.events] == ["a", "b", "c"]


def test_temporal_ordered_count_is_the_longest_in_order_chain(tmp_path):
    docs = corr_yaml("temporal_ordered", ["a", "b", "c"], {"gte": 2})
    out = run(correlator(tmp_path, docs), alice("c", "10:00") + alice("b", "10:01")
              + alice("a", "10:02") + alice("c", "10:03"))
    (r,) = out
    assert r.value == 2 and [e.rule_name for e in r.events] == ["a", "c"] and r.last_time == at("10:03")


def test_extended_temporal_condition(tmp_path):
    docs = corr_yaml("temporal", ["a", "b", "c"], "a and (b or c)")
    assert run(correlator(tmp_path, docs), alice("b", "10:00") + alice("c", "10:01")) == []
    (r,) = run(correlator(tmp_path, docs), alice("c", "10:00") + alice("a", "10:01"))
    assert r.window == "sliding" and {e.rule_name for e in r.events} == {"a", "c"}


def test_extended_condition_with_not_is_decided_at_window_end(tmp_path):
    docs = corr_yaml("temporal", ["a", "b"], "a and not b")
    (r,) = run(correlator(tmp_path, docs), alice("a", "10:00"))
    assert r.window == "fixed" and r.decided_at == at("10:05")
    # a b after the a, inside the window, cancels it
    assert run(correlator(tmp_path, docs), alice("a", "10:00") + alice("b", "10:04")) == []
    # b's window ends before a; a's own window has no b
    assert len(run(correlator(tmp_path, docs), alice("b", "10:00") + alice("a", "10:06"))) == 1


def test_extended_temporal_ordered_condition(tmp_path):
    docs = corr_yaml("temporal_ordered", ["a", "b", "c"], "(a and c) or b")
    assert len(run(correlator(tmp_path, docs), alice("b", "10:00"))) == 1
    assert run(correlator(tmp_path, docs), alice("c", "10:00") + alice("a", "10:01")) == []
    assert len(run(correlator(tmp_path, docs), alice("a", "10:00") + alice("c", "10:01"))) == 1


# ------------------------------------------------------------------ group-by: aliases, missing

ALIAS_EXTRA = """\
  aliases:
    internal_ip:
      internal_error: destination.ip
      new_network_connection: source.ip
    remote_ip:
      internal_error: source.ip
      new_network_connection: destination.ip
"""


def test_aliases_map_a_field_per_rule(tmp_path):
    # the specification's example
    docs = corr_yaml("temporal", ["internal_error", "new_network_connection"], None,
                     group_by=("internal_ip", "remote_ip"), timespan="10s", extra=ALIAS_EXTRA)
    c = correlator(tmp_path, docs, bases=("internal_error", "new_network_connection"))
    err = m("internal_error", T0, **{"destination.ip": "10.0.0.5", "source.ip": "1.2.3.4"})
    other = m("new_network_connection", T0 + 1, **{"source.ip": "10.0.0.6", "destination.ip": "1.2.3.4"})
    conn = m("new_network_connection", T0 + 2, source={"ip": "10.0.0.5"}, destination={"ip": "1.2.3.4"})
    (r,) = run(c, [err, other, conn])      # nested objects are found by the dotted name too
    assert r.group == {"internal_ip": "10.0.0.5", "remote_ip": "1.2.3.4"}
    assert [e.alert_id for e in r.events] == [err.alert_id, conn.alert_id]


def test_alias_keyed_by_name_applies_to_a_rule_listed_by_id(tmp_path):
    extra = "  aliases:\n    who:\n      a: TargetUserName\n"
    docs = corr_yaml("event_count", [IDS["a"], "b"], {"gte": 2}, group_by=("who",), extra=extra)
    c = correlator(tmp_path, docs)
    # a maps who -> TargetUserName; b is not mapped and uses a field named "who"
    (r,) = run(c, [m("a", at("10:00"), TargetUserName="alice"), m("b", at("10:01"), who="alice")])
    assert r.group == {"who": "alice"}


def test_missing_group_by_field_is_not_counted(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 2}))
    assert run(c, [m("a", at("10:00"), User="alice"), m("a", at("10:01")),
                   m("a", at("10:02"), User=None)]) == []
    assert c.stats["missing_group_field"] == 2
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 2}))
    (r,) = run(c, [m("a", at("10:00"), User=""), m("a", at("10:01"), User="")])
    assert r.group == {"User": ""}                        # an empty string is a value


def test_group_values_keep_type_and_case(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 2}))
    assert run(c, [m("a", at("10:00"), User="Alice"), m("a", at("10:01"), User="alice"),
                   m("a", at("10:02"), User=1), m("a", at("10:03"), User="1")]) == []


def test_host_of_a_correlation(tmp_path):
    by_host = corr_yaml("event_count", ["a"], {"gte": 2}, group_by=("Computer",))
    (r,) = run(correlator(tmp_path, by_host), [m("a", at("10:00"), host="x", Computer="WKS1"),
                                               m("a", at("10:01"), host="y", Computer="WKS1")])
    assert r.host == "WKS1"
    docs = corr_yaml("event_count", ["a"], {"gte": 2})
    (r,) = run(correlator(tmp_path, docs), alice("a", "10:00", "10:01"))
    assert r.host == "H1"                                    # the one host of all the matches
    (r,) = run(correlator(tmp_path, docs), [m("a", at("10:00"), host="x", User="u"),
                                            m("a", at("10:01"), host="y", User="u")])
    assert r.host is None


# ------------------------------------------------------------------ chaining, generate

SPEC_CHAIN = [
    """\
title: Correlation - Multiple Failed Logins Followed by Successful Login
id: b180ead8-d58f-40b2-ae54-c8940995b9b6
status: experimental
correlation:
    type: temporal_ordered
    rules:
        - multiple_failed_login
        - successful_login
    group-by:
        - User
    timespan: 10m
level: high
""",
    """\
title: Multiple failed logons
id: a8418a5a-5fc4-46b5-b23b-6c73beb19d41
name: multiple_failed_login
correlation:
    type: event_count
    rules:
        - failed_login
    group-by:
        - User
    timespan: 10m
    condition:
        gte: 3
"""]


def test_chained_correlation(tmp_path):
    loaded = load(tmp_path, *SPEC_CHAIN, bases=("failed_login", "successful_login"))
    c = Correlator(loaded.correlations)
    out = run(c, alice("successful_login", "10:00") + alice("failed_login", "10:01", "10:02", "10:03")
              + alice("successful_login", "10:04"))
    inner, outer = out
    assert inner.correlation.name == "multiple_failed_login" and outer.correlation.title.startswith("Correlation")
    assert outer.group == {"User": "alice"} and outer.first_time == at("10:03")
    assert [e.alert_id for e in outer.events][0] == inner.alert_id
    assert outer.events[0].rule_id == "a8418a5a-5fc4-46b5-b23b-6c73beb19d41"
    # generate: false (default) silences every referenced rule, the inner correlation too
    assert {r.name for r in loaded.rules if loaded.is_suppressed(r)} == {"failed_login", "successful_login"}
    assert [x.name for x in loaded.correlations if loaded.is_suppressed(x)] == ["multiple_failed_login"]


def test_chain_in_wrong_order_does_not_fire(tmp_path):
    loaded = load(tmp_path, *SPEC_CHAIN, bases=("failed_login", "successful_login"))
    out = run(Correlator(loaded.correlations),
              alice("successful_login", "10:00") + alice("failed_login", "10:01", "10:02", "10:03"))
    assert [r.correlation.name for r in out] == ["multiple_failed_login"]


def test_fixed_window_result_feeds_a_chain_at_its_end(tmp_path):
    quiet = corr_yaml("event_count", ["a"], {"lt": 2}, name="quiet_a",
                      cid="88888888-0000-4000-8000-000000000000", title="quiet")
    outer = corr_yaml("temporal_ordered", ["quiet_a", "b"], None, timespan="10m", title="outer")
    c = correlator(tmp_path, quiet, outer)
    out = run(c, alice("a", "10:00") + alice("b", "10:06"))
    assert [r.correlation.title for r in out] == ["quiet", "outer"]
    assert out[0].decided_at == at("10:05") and out[1].first_time == at("10:05")


def test_wants(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a", IDS["b"]], {"gte": 2}))
    assert c.wants(None, "a") and c.wants(IDS["a"].upper(), None) is False   # a listed by name
    assert c.wants(IDS["b"].upper(), None) and c.wants(None, "b") is False
    assert not c.wants(IDS["c"], "c")


# ------------------------------------------------------------------ late input, caps

def test_late_match_is_counted_at_the_latest_time(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    late = m("a", at("09:50"), User="alice")
    (r,) = run(c, alice("a", "10:00", "10:01") + [late])
    assert c.late == 1 and r.last_time == at("10:01")
    (ev,) = [e.to_dict() for e in r.events if e.alert_id == late.alert_id]
    assert ev["late"] is True and ev["time"] == iso_utc(at("09:50"))


def test_group_cap_evicts_the_oldest_and_warns_once(tmp_path, caplog):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 2}), max_groups=2)
    with caplog.at_level(logging.WARNING, logger="sigstream.stream.correlation"):
        out = run(c, [m("a", at(f"10:0{i}"), User=f"u{i}") for i in range(5)]
                  + [m("a", at("10:05"), User="u0"), m("a", at("10:05"), User="u4")], flush=False)
    assert [r.group["User"] for r in out] == ["u4"]            # u0's first match was evicted
    assert c.groups_dropped_by_cap == 4 and c.groups_open <= 2
    assert len([r for r in caplog.records if "open groups" in r.getMessage()]) == 1


def test_spray_over_many_groups_stays_bounded(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"lt": 2, "field": "U"},
                                       group_by=("IpAddress",)), max_groups=1000)
    for i in range(20_000):
        c.feed(m("a", T0 + i / 1000, IpAddress=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", U="x"))
    assert c.groups_open == 1000 and c.groups_dropped_by_cap == 19_000


def test_group_event_cap(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"lt": 1000, "field": "U"}, group_by=()),
                   max_group_events=10)
    (r,) = run(c, [m("a", T0 + i, U=str(i)) for i in range(50)])
    assert r.value == 10 and r.events_total == 50 and c.stats["events_dropped_by_cap"] == 40
    assert len(r.events) == 50


def test_events_listed_are_capped_at_100(tmp_path):
    c = correlator(tmp_path, corr_yaml("event_count", ["a"], {"lt": 1000}, group_by=()))
    ms = [m("a", T0 + i) for i in range(250)]
    (r,) = run(c, ms)
    assert r.events_total == 250 and len(r.events) == 100
    assert [e.alert_id for e in r.events] == [x.alert_id for x in ms[:50] + ms[-50:]]


# ------------------------------------------------------------------ determinism, snapshot, alert id

MIXED = [
    corr_yaml("event_count", ["a"], {"gte": 3}, cid="11111111-0000-4000-8000-000000000001",
              name="burst", title="burst"),
    corr_yaml("value_count", ["a", "b"], {"lt": 3, "field": "Ip"}, timespan="3m",
              cid="11111111-0000-4000-8000-000000000002", title="few ips"),
    corr_yaml("value_avg", ["b"], {"gte": 50, "field": "N"}, timespan="4m",
              cid="11111111-0000-4000-8000-000000000003", title="avg"),
    corr_yaml("temporal_ordered", ["burst", "c"], None, timespan="10m",
              cid="11111111-0000-4000-8000-000000000004", title="chain"),
    corr_yaml("temporal", ["b", "c"], "c and not b", timespan="2m",
              cid="11111111-0000-4000-8000-000000000005", title="c without b"),
    corr_yaml("value_sum", ["b", "c"], {"gt": 300, "field": "N"},
              cid="11111111-0000-4000-8000-000000000006", title="sum"),
]


def _random_matches(seed: int, n: int = 600) -> list[Match]:
    rnd = random.Random(seed)
    t = T0
    out = []
    for i in range(n):
        t += rnd.choice([0, 0, 1, 5, 20, 45, 90, 200])
        out.append(Match(IDS[r := rnd.choice("aabbc")], r, t,
                         {"User": rnd.choice(["alice", "bob", "carol"]), "Ip": rnd.choice("wxyz"),
                          "N": rnd.choice([0, 10, 60, 99, "7", "n/a"])},
                         f"{seed}-{i:05d}", rnd.choice(["H1", "H2"]), i))
    return out


def _docs(results) -> list[dict]:
    return [correlation_alert(r) for r in results]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_snapshot_restore_continues_identically(tmp_path, seed):
    corrs = load(tmp_path, *MIXED).correlations
    ms = _random_matches(seed)
    whole = _docs(run(Correlator(corrs), ms))
    assert len({d["rule"]["title"] for d in whole}) >= 5       # the mix really fires
    half = len(ms) // 2
    first = Correlator(corrs)
    part = run(first, ms[:half], flush=False)
    snap = json.loads(json.dumps(first.snapshot()))             # JSON-able
    second = Correlator(corrs)
    assert second.restore(snap) == []
    part += run(second, ms[half:])
    assert _docs(part) == whole


@pytest.mark.parametrize("seed", [4, 5])
def test_same_input_same_results_with_or_without_advance(tmp_path, seed):
    corrs = load(tmp_path, *MIXED).correlations
    ms = _random_matches(seed)
    whole = _docs(run(Correlator(corrs), ms))
    c = Correlator(corrs)
    rnd = random.Random(seed)
    ticked = []
    for x in ms:
        if rnd.random() < 0.3:
            ticked += c.advance(x.time - rnd.choice([0, 1, 30]))
        ticked += c.feed(x)
    ticked += c.flush()
    assert _docs(ticked) == whole
    assert _docs(run(Correlator(corrs), ms)) == whole            # and again: replay is identical


def test_restore_skips_changed_correlations(tmp_path):
    first = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}))
    run(first, alice("a", "10:00", "10:01"), flush=False)
    snap = first.snapshot()
    changed = correlator(tmp_path, corr_yaml("event_count", ["a"], {"gte": 3}, timespan="10m"))
    assert changed.restore(snap) == ["99999999-0000-4000-8000-000000000000"]
    assert changed.groups_open == 0
    with pytest.raises(ValueError):
        changed.restore({"version": 99})


def test_alert_id_is_stable_and_specific(tmp_path):
    docs = corr_yaml("event_count", ["a"], {"gte": 2})

    def ids(ms):
        return [r.alert_id for r in run(correlator(tmp_path, docs), ms)]

    ms = alice("a", "10:00", "10:01")
    (one,) = ids(ms)
    assert ids(ms) == [one] and len(one) == 32 and int(one, 16) >= 0
    assert ids([m("a", x.time, alert_id=x.alert_id, User="bob") for x in ms]) != [one]   # other group
    assert ids(alice("a", "10:00", "10:01")) != [one]                                    # other matches


# ------------------------------------------------------------------ the alert document

def test_correlation_alert_document(tmp_path):
    c = correlator(tmp_path, corr_yaml("value_count", ["a"], {"gte": 2, "field": "Ip"}))
    (r,) = run(c, [m("a", at("10:00"), User="alice", Ip="x"), m("a", at("10:01"), User="alice", Ip="y")])
    doc = json.loads(json.dumps(correlation_alert(r, detected_at="2026-11-24T10:02:00.000000Z")))
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))
    assert not errors, [e.message for e in errors]
    assert doc["alert_id"] == r.alert_id and doc["rule"]["title"] == "corr"
    assert doc["rule"]["correlation_type"] == "value_count" and doc["rule"]["level"] == "high"
    assert doc["attack"]["techniques"] == ["T1110"] and doc["attack"]["tactics"] == ["TA0006"]
    assert doc["severity"]["name"] == "High" and doc["host"] == "H1"
    assert doc["event_time"] == "2026-11-24T10:01:00.000000Z" and doc["event"] == {}
    corr = doc["correlation"]
    assert corr["group"] == {"User": "alice"} and corr["value"] == 2 and corr["field"] == "Ip"
    assert corr["timespan"] == {"seconds": 300, "text": "5m"} and corr["condition"] == {"gte": 2}
    assert corr["first_time"] == "2026-11-24T10:00:00.000000Z" and corr["events_total"] == 2
    assert corr["events"][0] == {"rule_id": IDS["a"], "rule_name": "a", "host": "H1",
                                 "record_id": r.events[0].record_id, "time": "2026-11-24T10:00:00.000000Z",
                                 "alert_id": r.events[0].alert_id}
    assert doc["matched"][0] == {"selection": "correlation", "field": "value_count(Ip)",
                                 "value": {"gte": 2}, "event_value": 2}
    assert doc["matched"][1] == {"selection": "group-by", "field": "User", "value": "alice"}


def test_match_from_a_native_alert():
    alert = {"alert_id": "abc", "rule": {"id": IDS["a"], "name": "a"}, "host": "H1",
             "event_time": "2026-11-24T10:00:00.000000Z",
             "event": {"TimeCreated": "2026-11-24T10:00:01.500000Z", "EventRecordID": 7}}
    x = match_from_alert(alert)
    assert (x.rule_id, x.rule_name, x.time, x.record_id) == (IDS["a"], "a", T0 + 1.5, 7)
    assert match_from_alert({"event": {}, "rule": {}}) is None


# ------------------------------------------------------------------ event time, reorder buffer

@pytest.mark.parametrize("value, expected", [
    ("2026-11-24T10:00:00.412000Z", T0 + 0.412),
    ("2026-11-24T10:00:00.4120001Z", T0 + 0.412),          # 7 digits (Windows ticks)
    ("2026-11-24T10:00:00.4Z", T0 + 0.4),
    ("2026-11-24T10:00:00Z", T0),
    ("2026-11-24T12:00:00+02:00", T0),
    ("2026-11-24 10:00:00.5", T0 + 0.5),                   # naive: UTC
    ("2026-11-24T10:00:00 UTC", T0),
    (T0, T0), (T0 * 1000, T0), (str(int(T0)), T0),
    ("yesterday", None), ("", None), (None, None), ([], None)])
def test_parse_time(value, expected):
    got = parse_time(value)
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-6))


def test_event_time_fallbacks():
    assert event_time({"TimeCreated": "2026-11-24T10:00:00.000000Z", "UtcTime": "x"}) == T0
    assert event_time({"TimeCreated": "garbage", "UtcTime": "2026-11-24 10:00:00.000"}) == T0
    assert event_time({"@timestamp": "2026-11-24T10:00:00Z"}) == T0
    assert event_time({}) is None
    assert iso_utc(T0 + 0.4120004) == "2026-11-24T10:00:00.412000Z"


def _tm(t: float, aid: str):
    return Match(None, "a", T0 + t, {}, aid)


def test_buffer_releases_in_time_order_after_lateness():
    buf = EventTimeBuffer(60)
    for t, aid in [(0, "p"), (30, "q"), (10, "r"), (10, "a")]:
        assert buf.add(_tm(t, aid)) is False
    assert buf.release() == []                          # nothing is 60 s old yet
    buf.add(_tm(100, "s"))
    assert [x.alert_id for x in buf.release()] == ["p", "a", "r", "q"]   # ties by alert_id
    assert buf.held == 1 and buf.watermark == T0 + 40


def test_buffer_late_match_is_counted_and_released_not_dropped(caplog):
    buf = EventTimeBuffer(10)
    buf.add(_tm(0, "a"))
    buf.add(_tm(50, "b"))
    assert [x.alert_id for x in buf.release()] == ["a"]
    with caplog.at_level(logging.WARNING, logger="sigstream.stream.event_time"):
        assert buf.add(_tm(-5, "late")) is True
    assert buf.late == 1 and "late match" in caplog.text
    assert [x.alert_id for x in buf.release()] == ["late"]
    assert [x.alert_id for x in buf.flush()] == ["b"]


def test_buffer_max_held_forces_release():
    buf = EventTimeBuffer(3600, max_held=2)
    for i in range(5):
        buf.add(_tm(i, f"m{i}"))
    assert [x.alert_id for x in buf.release()] == ["m0", "m1", "m2"] and buf.forced == 3


def test_buffer_then_correlator_equals_sorted_input(tmp_path):
    docs = corr_yaml("temporal_ordered", ["a", "b"], None)
    ordered = alice("a", "10:00") + alice("b", "10:01") + alice("a", "10:03") + alice("b", "10:04")
    shuffled = [ordered[1], ordered[0], ordered[3], ordered[2]]
    buf = EventTimeBuffer(120)
    c = correlator(tmp_path, docs)
    out = []
    for x in shuffled:
        buf.add(x)
        for y in buf.release():
            out += c.feed(y)
    for y in buf.flush():
        out += c.feed(y)
    out += c.flush()
    assert [r.alert_id for r in out] == [r.alert_id for r in run(correlator(tmp_path, docs), ordered)]
    assert len(out) == 2 and buf.late == 0


def test_a_correlation_that_cannot_be_prepared_is_left_out_not_fatal(tmp_path):
    from sigstream.stream.rules import Correlation
    refs = [f"r{i}" for i in range(18)]
    # (r0 or r1) and (r2 or r3) and ... : 2^9 = 512 terms
    expr = ("and", tuple(("or", (("rule", refs[i]), ("rule", refs[i + 1]))) for i in range(0, 18, 2)))
    huge = Correlation("x1", "huge", "temporal", tuple(refs), timespan_s=60, expression=expr)
    good = load(tmp_path, corr_yaml("event_count", ["a"], {"gte": 1})).correlations
    c = Correlator([huge, *good])
    assert [x.title for x, _ in c.errors] == ["huge"] and "too complex" in c.errors[0][1]
    assert c.correlations == good
    assert len(run(c, alice("a", "10:00"))) == 1
