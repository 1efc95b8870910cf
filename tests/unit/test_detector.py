"""stream.detector: the one pipeline hunt and the processor share."""
from __future__ import annotations

import textwrap

from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text

PS = "Microsoft-Windows-PowerShell/Operational"
RULE = textwrap.dedent("""
    title: AMSI utils in a script block
    id: 33333333-3333-4333-8333-333333333333
    status: test
    level: high
    logsource: {product: windows, category: ps_script}
    detection:
      sel: {ScriptBlockText|contains: 'AmsiUtils'}
      condition: sel
""")


def engine() -> Engine:
    return Engine(load_rule_text(RULE).rules, use_cache=False)


def fragment(n, total, text, rec, block="{split}"):
    return {"EventID": 4104, "Channel": PS, "Computer": "WKS-1", "EventRecordID": rec,
            "TimeCreated": "2026-11-24T08:00:00.000000Z", "MessageNumber": n,
            "MessageTotal": total, "ScriptBlockId": block, "ScriptBlockText": text}


def test_whole_block_is_attributed_to_its_first_fragment_whatever_the_arrival_order():
    d = Detector(engine())
    assert d.detect(fragment(2, 2, "iUtils')", 11), {"position": 2}, 100.0) == []
    assert d.holds_state
    (alert,) = d.detect(fragment(1, 2, "[Ref].Assembly.GetType('Ams", 10), {"position": 1}, 101.0)
    assert alert["source"] == {"position": 1}
    assert alert["detected_at"] == "1970-01-01T00:01:41.000000Z"   # processing time given, no clock read
    assert not d.holds_state


def test_incomplete_block_times_out_on_tick_and_is_flushed_on_finish():
    d = Detector(engine())
    d.detect(fragment(1, 3, "GetType('AmsiUtils')", 20), {"position": 7}, 0.0)
    assert d.tick(10.0) == []                       # not yet timed out
    (alert,) = d.tick(10_000.0)
    assert alert["event"]["sigstream_Incomplete"] is True and alert["source"] == {"position": 7}
    d.detect(fragment(1, 3, "GetType('AmsiUtils')", 30, block="{other}"), {"position": 8}, 0.0)
    (alert,) = d.finish(1.0)
    assert alert["event"]["sigstream_MissingParts"] == [2, 3]


class Recorder:
    """A stage that keeps every alert and adds one of its own at the end."""

    def __init__(self):
        self.seen: list[str] = []
        self.events = 0

    def feed(self, alerts, event, now):
        self.events += event is not None
        self.seen += [a["rule"]["title"] for a in alerts]
        return alerts

    def tick(self, now):
        return []

    def finish(self, now):
        return [{"rule": {"title": "stage"}}]

    @property
    def holds_state(self):
        return bool(self.seen)


def test_stages_see_every_event_and_alert_and_hold_commits():
    stage = Recorder()
    d = Detector(engine(), stages=[stage])
    d.detect({"EventID": 1, "Channel": "x"}, None, 0.0)
    assert stage.events == 1 and not d.holds_state
    d.detect(fragment(1, 1, "AmsiUtils", 1), None, 0.0)
    assert stage.seen == ["AMSI utils in a script block"] and d.holds_state
    assert [a["rule"]["title"] for a in d.finish(0.0)] == ["stage"]


def test_without_reassembly_fragments_are_matched_alone():
    d = Detector(engine(), reassemble=False)
    assert len(d.detect(fragment(1, 2, "AmsiUtils", 1), None, 0.0)) == 1
    assert not d.holds_state


def test_a_flushed_block_passes_each_stage_once_and_is_counted_once():
    # regression: finish()/tick() fed blocks already matched through the stages to them again
    stage = Recorder()
    d = Detector(engine(), stages=[stage])
    d.detect(fragment(1, 2, "GetType('AmsiUtils')", 40, block="{flushed}"), None, 0.0)
    out = d.finish(0.0)
    assert stage.seen == ["AMSI utils in a script block"]
    assert [a["rule"]["title"] for a in out] == ["AMSI utils in a script block", "stage"]
    assert d.alerts == 2
    d2 = Detector(engine(), stages=[Recorder()])
    d2.detect(fragment(1, 2, "GetType('AmsiUtils')", 41, block="{expired}"), None, 0.0)
    (alert,) = d2.tick(10_000.0)
    assert d2.stages[0].seen == ["AMSI utils in a script block"] and d2.alerts == 1


def test_what_a_stage_releases_goes_through_the_later_stages_only():
    first, second = Recorder(), Recorder()
    d = Detector(engine(), stages=[first, second])
    out = d.finish(0.0)
    assert [a["rule"]["title"] for a in out] == ["stage", "stage"]
    assert first.seen == [] and second.seen == ["stage"]
