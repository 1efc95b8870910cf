"""Event-log source (connectors/eventlog.py) with the fake win32evtlog/win32event, and the
EvtRender XML normalisation (connectors/winevent.py)."""
from __future__ import annotations


import pytest

import fakes
from fakes import wait_until
from sigstream.connectors.eventlog import EventLogSource, bookmark_record_id, bookmark_xml
from sigstream.connectors.normalize import NormalizeError
from sigstream.connectors.winevent import parse_event_xml
from fakes import recordings as R

CH = R.SYSMON_CHANNEL


@pytest.fixture
def fake(monkeypatch):
    _, evtlog, _ = fakes.install(monkeypatch)
    return evtlog


def sysmon(rid, eid=13):
    return R.sysmon_xml(rid, eid, [("RuleName", "-"), ("EventType", "SetValue"),
                                   ("TargetObject", f"HKLM\\SOFTWARE\\k{rid}"), ("Image", "C:\\x.exe")])


class Collector:
    """emit() that acknowledges immediately (as the agent does once the publisher took it)."""

    def __init__(self, ack=True):
        self.events, self.pending, self.ack = [], [], ack

    def __call__(self, ev, ack):
        self.events.append(ev)
        if self.ack and ack:
            ack()
        elif ack:
            self.pending.append(ack)
        return True

    @property
    def rids(self):
        return [e["EventRecordID"] for e in self.events]


def _run(fake, tmp_path, collector, n_expected, **kw):
    src = EventLogSource(CH, collector, tmp_path, wait_ms=20, persist_interval_s=0.0, **kw)
    src.start()
    assert wait_until(lambda: len(collector.events) >= n_expected), collector.rids
    return src


# ---------------------------------------------------------------- normalisation --

def test_sysmon_1_normalised_field_by_field():
    ev = parse_event_xml(R.XML_SYSMON_1)
    assert ev["EventID"] == 1 and ev["EventRecordID"] == 1001
    assert ev["Channel"] == "Microsoft-Windows-Sysmon/Operational"
    assert ev["Provider_Name"] == "Microsoft-Windows-Sysmon"
    assert ev["Provider_Guid"] == "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}"
    assert ev["Computer"] == "WKS-FIN-042.corp.example.com"
    assert ev["TimeCreated"] == "2026-11-24T09:12:01.555012Z"       # 7 fraction digits -> µs, UTC
    assert (ev["Version"], ev["Level"], ev["Task"], ev["Opcode"]) == (5, 4, 1, 0)
    assert ev["Keywords"] == "0x8000000000000000"
    assert (ev["Execution_ProcessID"], ev["Execution_ThreadID"]) == (3140, 4200)
    assert ev["Security_UserID"] == "S-1-5-18"
    assert ev["Image"] == "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
    assert ev["CommandLine"].startswith("powershell.exe -nop -w hidden -enc ")
    assert ev["ParentImage"] == "C:\\Windows\\System32\\mshta.exe"
    assert ev["Product"] == "Microsoft® Windows® Operating System"
    assert (ev["ProcessId"], ev["ParentProcessId"], ev["TerminalSessionId"]) == (7444, 7312, 1)
    assert ev["LogonId"] == "0x2c3d4e"                               # hex ids stay as logged
    assert ev["UtcTime"] == "2026-11-24 09:12:01.553"
    assert not any(k.startswith("xmlns") or k.startswith("Correlation") for k in ev)


def test_sysmon_registry_and_wmi_events():
    e13 = parse_event_xml(R.XML_SYSMON_13)
    assert e13["TargetObject"].startswith("HKU\\S-1-5-21-1004336348-")
    assert e13["Details"] == "C:\\Users\\alice\\AppData\\Roaming\\upd.exe"
    assert e13["EventType"] == "SetValue" and e13["Version"] == 2
    e12 = parse_event_xml(R.XML_SYSMON_12)
    assert e12["User"] == ""                                         # <Data Name='User'/>
    e21 = parse_event_xml(R.XML_SYSMON_21)
    assert e21["EventID"] == 21 and e21["Consumer"].startswith("\\\\.\\ROOT\\subscription:")


def test_registry_paths_in_xml_kept_as_logged():
    # as the EVTX path gives them: Security 4656/4663 ObjectName is logged as \REGISTRY\MACHINE\..
    # and SigmaHQ rules match that form (only ETW kernel paths are translated, connectors/etw)
    xml = R.sysmon_xml(7, 12, [("TargetObject", "\\REGISTRY\\USER\\S-1-5-18\\Software\\x")])
    assert parse_event_xml(xml)["TargetObject"] == "\\REGISTRY\\USER\\S-1-5-18\\Software\\x"


def test_xml_event_matches_the_evtx_path_shape():
    # the same event read by hunt from an EVTX export (evtx package JSON) normalises identically
    from sigstream.connectors.normalize import normalize
    evtx_json = {"Event": {
        "#attributes": {"xmlns": "http://schemas.microsoft.com/win/2004/08/events/event"},
        "System": {"Provider": {"#attributes": {"Name": "Microsoft-Windows-Sysmon",
                                                "Guid": "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}"}},
                   "EventID": 13, "Version": 2, "Level": 4, "Task": 13, "Opcode": 0,
                   "Keywords": "0x8000000000000000",
                   "TimeCreated": {"#attributes": {"SystemTime": "2026-11-24T09:12:01.555012Z"}},
                   "EventRecordID": 1002, "Correlation": None,
                   "Execution": {"#attributes": {"ProcessID": 3140, "ThreadID": 4200}},
                   "Channel": "Microsoft-Windows-Sysmon/Operational",
                   "Computer": "WKS-FIN-042.corp.example.com",
                   "Security": {"#attributes": {"UserID": "S-1-5-18"}}},
        "EventData": {"RuleName": "T1547.001,RunKey", "EventType": "SetValue",
                      "UtcTime": "2026-11-24 09:12:01.560",
                      "ProcessGuid": "{8e5f3a2b-1c4d-6e7f-0a1b-000000001f00}", "ProcessId": 7444,
                      "Image": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                      "TargetObject": "HKU\\S-1-5-21-1004336348-1177238915-682003330-1104\\Software\\Microsoft"
                                      "\\Windows\\CurrentVersion\\Run\\Updater",
                      "Details": "C:\\Users\\alice\\AppData\\Roaming\\upd.exe", "User": "CORP\\alice"}}}
    assert parse_event_xml(R.XML_SYSMON_13) == normalize(evtx_json)


def test_bad_xml_raises_normalize_error():
    with pytest.raises(NormalizeError):
        parse_event_xml("<Event><System>")
    with pytest.raises(NormalizeError):
        parse_event_xml("<BookmarkList/>")


def test_bookmark_xml_roundtrip():
    x = bookmark_xml(CH, 1234)
    assert x.startswith("<BookmarkList>") and "Channel='Microsoft-Windows-Sysmon/Operational'" in x
    assert bookmark_record_id(x) == 1234


# ---------------------------------------------------------------- bookmark --

def test_first_run_reads_from_oldest_and_persists_bookmark(fake, tmp_path):
    for x in R.XML_SYSMON_ALL:
        fake.write(CH, x)
    c = Collector()
    src = _run(fake, tmp_path, c, 4)
    src.stop()
    assert c.rids == [1001, 1002, 1003, 1004]
    assert [e["EventID"] for e in c.events] == [1, 13, 12, 21]
    assert bookmark_record_id(src.bookmark_path.read_text()) == 1004
    assert fake.CALLS[0][2] == fake.EvtSubscribeStartAtOldestRecord


def test_restart_resumes_after_last_record_no_duplicates_no_gaps(fake, tmp_path):
    for rid in range(1, 51):
        fake.write(CH, sysmon(rid))
    c1 = Collector()
    src = _run(fake, tmp_path, c1, 50)
    src.stop()
    # written while the agent was down
    for rid in range(51, 81):
        fake.write(CH, sysmon(rid))
    c2 = Collector()
    src2 = _run(fake, tmp_path, c2, 30)
    sub = fake.CALLS[-1]
    assert sub[2] == fake.EvtSubscribeStartAfterBookmark and sub[3] == 50
    # and live events keep coming while running
    for rid in range(81, 91):
        fake.write(CH, sysmon(rid))
    assert wait_until(lambda: len(c2.events) >= 40)
    src2.stop()
    all_rids = c1.rids + c2.rids
    assert all_rids == list(range(1, 91)), "no duplicates, no gaps"
    assert bookmark_record_id(src2.bookmark_path.read_text()) == 90
    assert src2.stats()["gap_records"] == 0


def test_unacknowledged_events_are_read_again_after_restart(fake, tmp_path):
    for rid in range(1, 11):
        fake.write(CH, sysmon(rid))
    c = Collector(ack=False)
    src = _run(fake, tmp_path, c, 10)
    for ack in c.pending[:6]:          # the publisher took 6; 4 were still queued at the "crash"
        ack()
    src.stop()
    assert bookmark_record_id(src.bookmark_path.read_text()) == 6
    c2 = Collector()
    src2 = _run(fake, tmp_path, c2, 4)
    src2.stop()
    assert c2.rids == [7, 8, 9, 10]


def test_start_at_future_without_bookmark(fake, tmp_path):
    fake.write(CH, sysmon(1))
    c = Collector()
    src = EventLogSource(CH, c, tmp_path, wait_ms=20, persist_interval_s=0, start_at="future")
    src.start()
    assert wait_until(lambda: fake.CALLS)
    fake.write(CH, sysmon(2))
    assert wait_until(lambda: c.events)
    src.stop()
    assert c.rids == [2]


def test_wrapped_log_gap_is_counted(fake, tmp_path):
    for rid in range(1, 6):
        fake.write(CH, sysmon(rid))
    c = Collector()
    _run(fake, tmp_path, c, 5).stop()
    for rid in range(6, 21):
        fake.write(CH, sysmon(rid))
    fake.overwrite_oldest(CH, 10)       # records 1..10 overwritten while the agent was down
    c2 = Collector()
    src = _run(fake, tmp_path, c2, 10)
    src.stop()
    assert c2.rids == list(range(11, 21))
    assert src.stats()["gap_records"] == 5      # 6..10 were never read


def test_unparseable_event_is_skipped_and_acknowledged(fake, tmp_path):
    fake.write(CH, sysmon(1))
    fake.write(CH, "<Event xmlns='x'><System><EventRecordID>2</EventRecordID><broken")
    fake.write(CH, sysmon(3))
    c = Collector()
    src = _run(fake, tmp_path, c, 2)
    src.stop()
    assert c.rids == [1, 3]
    assert src.stats()["parse_errors"] == 1
    assert bookmark_record_id(src.bookmark_path.read_text()) == 3


def test_missing_channel_is_retried_not_fatal(fake, tmp_path):
    c = Collector()
    src = EventLogSource(CH, c, tmp_path, wait_ms=20, persist_interval_s=0)
    src.start()
    assert wait_until(lambda: src.stats()["resubscribes"] >= 1)
    assert src.running
    src.stop()


@pytest.mark.windows
def test_real_sysmon_channel_subscription(tmp_path):  # pragma: no cover - needs Windows + Sysmon
    c = Collector()
    src = EventLogSource(CH, c, tmp_path, start_at="oldest")
    src.start()
    try:
        assert wait_until(lambda: c.events, 20)
        assert c.events[0]["Channel"] == CH
    finally:
        src.stop()


def test_control_characters_in_event_data_are_read_not_lost():
    xml = R.sysmon_xml(9, 1, [("CommandLine", "a\x02b\r\nc"), ("ProcessId", "0x278")])
    ev = parse_event_xml(xml)
    assert ev["CommandLine"] == "a\x02b\r\nc" and ev["ProcessId"] == "0x278"   # as the EVTX path


def test_unreadable_event_goes_to_the_dead_letter_file(fake, tmp_path):
    import json
    bad = "<Event xmlns='x'><System><EventRecordID>2</EventRecordID><broken"
    fake.write(CH, sysmon(1))
    fake.write(CH, bad)
    fake.write(CH, sysmon(3))
    c = Collector()
    src = _run(fake, tmp_path, c, 2)
    src.stop()
    assert c.rids == [1, 3] and src.stats()["unreadable"] == 1
    lines = src.dead_letter_path.read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[0])
    assert len(lines) == 1 and entry["record_id"] == 2 and entry["raw"] == bad
    assert entry["channel"] == CH and "does not parse" in entry["reason"]


def test_string_declared_fields_stay_strings_in_xml():
    """Rendered XML has no types: Sysmon's string ``Signed`` stays "true" (as in EVTX) while its
    UInt32 ``ProcessId`` becomes an int; a field no table names is typed by the rule."""
    ev = parse_event_xml(R.sysmon_xml(2001, 7, [("ProcessId", "7444"), ("Signed", "true"),
                                                 ("SignatureStatus", "Valid"), ("Custom", "false")], version=3))
    assert (ev["ProcessId"], ev["Signed"], ev["Custom"]) == (7444, "true", False)
    defender = R.sysmon_xml(2002, 1116, [("Threat ID", "2147725321"), ("Severity ID", "5")]).replace(
        "Microsoft-Windows-Sysmon'", "Microsoft-Windows-Windows Defender'")
    ev = parse_event_xml(defender)
    assert (ev["Provider_Name"], ev["Threat ID"], ev["Severity ID"]) == (
        "Microsoft-Windows-Windows Defender", "2147725321", "5")       # every Defender field: a string
    assert ev["EventRecordID"] == 2002 and ev["Version"] == 5           # System values are typed still
