"""stream.correlation_stage: correlations inside the Detector (hunt and embedded run)."""
from __future__ import annotations

import math
import textwrap

from sigstream.stream.correlation_stage import correlation_stages
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text

SEC = "Security"
RULES = textwrap.dedent("""
    title: failed logon
    id: 5a1e0000-0000-4000-8000-000000000001
    name: failed_logon
    status: test
    level: low
    logsource: {product: windows, service: security}
    detection:
      sel: {EventID: 4625}
      condition: sel
    ---
    title: spray
    id: 5a1e0000-0000-4000-8000-000000000002
    status: test
    level: high
    correlation:
      type: event_count
      rules: [failed_logon]
      group-by: [IpAddress]
      timespan: 5m
      condition: {gte: 3}
""")


def failure(minute: int, second: int = 0, ip: str = "10.0.0.9", host: str = "DC1", time: bool = True) -> dict:
    ev = {"EventID": 4625, "Channel": SEC, "Computer": host, "EventRecordID": minute * 100 + second,
          "IpAddress": ip, "TargetUserName": "alice"}
    if time:
        ev["TimeCreated"] = f"2026-11-24T10:{minute:02d}:{second:02d}.000000Z"
    return ev


def detector(lateness: float = math.inf) -> tuple[Detector, object]:
    loaded = load_rule_text(RULES)
    (stage,) = correlation_stages(loaded.correlations, loaded.suppressed, lateness_s=lateness)
    return Detector(Engine(loaded.rules, use_cache=False), stages=[stage]), stage


def run(d: Detector, events: list[dict]) -> list[dict]:
    out: list[dict] = []
    for ev in events:
        out += d.detect(ev, None, 0.0)
    return out + d.finish(0.0)


def test_sliding_window_over_hosts_fires_once_and_base_alerts_are_suppressed():
    d, stage = detector()
    alerts = run(d, [failure(4, host="DC1"), failure(6, host="DC2"), failure(8, host="WKS-3")])
    (alert,) = alerts                    # generate: false (default): the base rule is silent
    assert alert["rule"]["title"] == "spray"
    assert alert["correlation"]["group"] == {"IpAddress": "10.0.0.9"}
    assert alert["correlation"]["value"] == 3 and alert["correlation"]["events_total"] == 3
    assert stage.stats()["untimed"] == 0


def test_files_out_of_order_give_the_same_alert_in_hunt():
    ordered = run(detector()[0], [failure(4), failure(6), failure(8)])
    reversed_ = run(detector()[0], [failure(8), failure(6), failure(4)])
    assert [a["alert_id"] for a in ordered] == [a["alert_id"] for a in reversed_]


def test_outside_the_window_does_not_fire():
    assert run(detector()[0], [failure(0), failure(6), failure(12)]) == []


def test_untimed_match_is_counted_not_correlated_and_holds_no_state():
    d, stage = detector()
    assert run(d, [failure(1, time=False)] * 3) == []
    assert stage.stats()["untimed"] == 3
    assert not d.holds_state


def test_stage_holds_state_until_finish_with_lateness():
    d, stage = detector(lateness=60.0)
    d.detect(failure(1), None, 0.0)
    assert d.holds_state
    d.finish(0.0)
    assert not stage.buffer.held
