"""Unit tests for connectors.normalize (all inputs are built here)."""

from __future__ import annotations

import copy

import orjson
import pytest

from sigstream.connectors.normalize import NormalizeError, normalize, to_utc_iso

TS = "2019-03-19T23:30:11.123456Z"


def evtx_system(event_id=1, channel="Microsoft-Windows-Sysmon/Operational", **extra):
    system = {
        "Provider": {"#attributes": {"Name": "Microsoft-Windows-Sysmon",
                                     "Guid": "5770385F-C22A-43E0-BF4C-06F5698FFBD9"}},
        "EventID": event_id,
        "Version": 5,
        "Level": 4,
        "Task": 1,
        "Opcode": 0,
        "Keywords": "0x8000000000000000",
        "TimeCreated": {"#attributes": {"SystemTime": TS}},
        "EventRecordID": 1234,
        "Correlation": None,
        "Execution": {"#attributes": {"ProcessID": 2000, "ThreadID": 3000}},
        "Channel": channel,
        "Computer": "host1.example.local",
        "Security": {"#attributes": {"UserID": "S-1-5-18"}},
    }
    system.update(extra)
    return system


def evtx_record(system=None, **body):
    ev = {"#attributes": {"xmlns": "http://schemas.microsoft.com/win/2004/08/events/event"},
          "System": system if system is not None else evtx_system()}
    ev.update(body)
    return {"Event": ev}


SYSTEM_EXPECTED = {
    "EventID": 1,
    "Channel": "Microsoft-Windows-Sysmon/Operational",
    "Provider_Name": "Microsoft-Windows-Sysmon",
    "Provider_Guid": "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}",   # braced, lower (as rendered)
    "Computer": "host1.example.local",
    "EventRecordID": 1234,
    "TimeCreated": TS,
    "Version": 5,
    "Level": 4,
    "Task": 1,
    "Opcode": 0,
    "Keywords": "0x8000000000000000",
    "Execution_ProcessID": 2000,
    "Execution_ThreadID": 3000,
    "Security_UserID": "S-1-5-18",
}


def subset(d: dict, expected: dict) -> dict:
    """The part of ``d`` that ``expected`` talks about (for readable diffs)."""
    return {k: d.get(k, "<missing>") for k in expected}


# --------------------------------------------------------------------------
# EVTX JSON shapes
# --------------------------------------------------------------------------

EVTX_CASES = [
    pytest.param(
        evtx_record(EventData={"RuleName": "-", "Image": r"C:\Windows\System32\cmd.exe",
                               "CommandLine": "cmd.exe /c whoami", "ProcessId": 4460}),
        {**SYSTEM_EXPECTED, "Image": r"C:\Windows\System32\cmd.exe",
         "CommandLine": "cmd.exe /c whoami", "ProcessId": 4460, "RuleName": "-"},
        id="dict-eventdata(evtx-package)"),
    pytest.param(
        evtx_record(EventData={"Data": [
            {"#attributes": {"Name": "TargetObject"}, "#text": r"HKLM\SOFTWARE\Run\x"},
            {"#attributes": {"Name": "Details"}, "#text": "1234"},
            {"#attributes": {"Name": "Empty"}},
        ]}),
        {**SYSTEM_EXPECTED, "TargetObject": r"HKLM\SOFTWARE\Run\x", "Details": "1234",
         "Empty": None},
        id="named-data-list"),
    pytest.param(
        evtx_record(EventData={"Data": {"#attributes": {"Name": "ScriptBlockText"},
                                        "#text": "Get-Process"}}),
        {**SYSTEM_EXPECTED, "ScriptBlockText": "Get-Process"},
        id="single-named-data-dict"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=400, channel="Windows PowerShell"),
                    EventData={"Data": {"#text": ["Available", "None", "NewEngineState=Available"]}}),
        {"EventID": 400, "Channel": "Windows PowerShell",
         "Data": ["Available", "None", "NewEngineState=Available"]},
        id="unnamed-classic-data-text-list"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=800, channel="Windows PowerShell"),
                    EventData={"Data": ["a", "b"]}),
        {"EventID": 800, "Data": ["a", "b"]},
        id="unnamed-data-list-of-strings"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=600, channel="Windows PowerShell"),
                    EventData={"Data": {"#text": "only one"}}),
        {"EventID": 600, "Data": "only one"},
        id="unnamed-data-single-string"),
    pytest.param(
        evtx_record(system=evtx_system(event_id={"#attributes": {"Qualifiers": 49152},
                                                 "#text": 18456}, channel="Application"),
                    EventData={"Data": {"#text": ["sa", " Reason: bad password"]},
                               "Binary": "18480000"}),
        {"EventID": 18456, "EventID_Qualifiers": 49152, "Channel": "Application",
         "Data": ["sa", " Reason: bad password"], "Binary": "18480000"},
        id="eventid-with-qualifiers"),
    pytest.param(
        evtx_record(system=evtx_system(event_id="4104"), EventData={"ScriptBlockText": "x"}),
        {"EventID": 4104, "ScriptBlockText": "x"},
        id="eventid-string"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=1102, channel="Security"),
                    UserData={"LogFileCleared": {
                        "#attributes": {"xmlns": "http://manifests.microsoft.com/win/2004/08/windows/eventlog"},
                        "SubjectUserSid": "S-1-5-21-1", "SubjectUserName": "admin01"}}),
        {"EventID": 1102, "Channel": "Security", "SubjectUserSid": "S-1-5-21-1",
         "SubjectUserName": "admin01", "xmlns": "<missing>", "LogFileCleared_xmlns": "<missing>"},
        id="userdata-flattened"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=104, channel="System"),
                    UserData={"LogFileCleared": {"SubjectUserName": "a", "Channel": "Security",
                                                 "BackupPath": None}}),
        {"EventID": 104, "Channel": "System", "UserData_Channel": "Security",
         "SubjectUserName": "a", "BackupPath": None},
        id="userdata-channel-does-not-override-system-channel"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=4), EventData={"Version": "15.0", "State": "Started"}),
        {"EventID": 4, "Version": "15.0", "State": "Started"},
        id="eventdata-wins-over-system-version"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=1155, Channel=None), EventData=None),
        {"EventID": 1155, "Channel": "", "EventData": "<missing>"},
        id="null-eventdata-null-channel"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=3001, channel="Application"),
                    EventData={"#attributes": {"Name": "EVENT_PROCESSTERMINATION_CROSSPROCESS"},
                               "param1": r"C:\Windows\System32\lsass.exe"}),
        {"EventID": 3001, "EventData_Name": "EVENT_PROCESSTERMINATION_CROSSPROCESS",
         "param1": r"C:\Windows\System32\lsass.exe"},
        id="eventdata-with-attributes"),
    pytest.param(
        evtx_record(system=evtx_system(event_id=91),
                    ProcessingErrorData={"ErrorCode": 15005, "DataItemName": "shellId"}),
        {"EventID": 91, "ProcessingErrorData": {"ErrorCode": 15005, "DataItemName": "shellId"}},
        id="unknown-event-child-kept-nested"),
    pytest.param(
        evtx_record(system=evtx_system(
            Correlation={"#attributes": {"ActivityID": "AE1A2CAB-0B85"}},
            TimeCreated={"#attributes": {"SystemTime": "2019-03-19T23:30:11.1234567Z"}},
            EventRecordID="99")),
        {"Correlation_ActivityID": "{AE1A2CAB-0B85}", "TimeCreated": "2019-03-19T23:30:11.123456Z",
         "EventRecordID": 99},
        id="system-correlation-7-digit-time-string-recordid"),
    pytest.param(
        {"Event": {"System": {
            "Provider": "", "Provider_attributes": {"Name": "Microsoft-Windows-Sysmon"},
            "EventID": 11, "TimeCreated": "", "TimeCreated_attributes": {"SystemTime": TS},
            "Channel": "Microsoft-Windows-Sysmon/Operational", "Computer": "h"},
            "EventData": {"TargetFilename": r"C:\x.ps1"}}},
        {"EventID": 11, "Provider_Name": "Microsoft-Windows-Sysmon", "TimeCreated": TS,
         "TargetFilename": r"C:\x.ps1", "Computer": "h"},
        id="separate-json-attributes-variant"),
]


@pytest.mark.parametrize("record, expected", EVTX_CASES)
def test_evtx_shapes(record, expected):
    before = copy.deepcopy(record)
    out = normalize(record)
    assert subset(out, expected) == expected
    assert record == before, "input record must not be modified"
    assert type(out["EventID"]) is int
    assert type(out["Channel"]) is str


def test_evtx_full_output_exact():
    rec = evtx_record(EventData={"Image": "a.exe", "ProcessId": 7})
    assert normalize(rec) == {**SYSTEM_EXPECTED, "Image": "a.exe", "ProcessId": 7}


def test_evtx_from_json_text_roundtrip():
    raw = orjson.dumps(evtx_record(EventData={"CommandLine": "x"}))
    out = normalize(orjson.loads(raw))
    assert out["CommandLine"] == "x" and out["EventID"] == 1


def test_evtx_extra_top_level_keys_kept():
    rec = evtx_record(EventData={"A": "1"})
    rec["source"] = "collector-7"
    out = normalize(rec)
    assert out["source"] == "collector-7" and out["A"] == "1"


# --------------------------------------------------------------------------
# Winlogbeat / Elastic Agent
# --------------------------------------------------------------------------

WINLOG_NESTED = {
    "@timestamp": "2021-04-01T10:11:12.345Z",
    "host": {"name": "ws01"},
    "agent": {"type": "winlogbeat", "version": "8.11.0"},
    "event": {"code": "1", "provider": "Microsoft-Windows-Sysmon", "kind": "event"},
    "message": "Process Create",
    "winlog": {
        "channel": "Microsoft-Windows-Sysmon/Operational",
        "event_id": "1",
        "computer_name": "ws01.corp.local",
        "provider_name": "Microsoft-Windows-Sysmon",
        "provider_guid": "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}",
        "record_id": "5566",
        "version": 5,
        "task": "Process Create (rule: ProcessCreate)",
        "opcode": "Info",
        "process": {"pid": 2000, "thread": {"id": 3000}},
        "user": {"identifier": "S-1-5-18", "name": "SYSTEM"},
        "api": "wineventlog",
        "event_data": {"Image": r"C:\Windows\System32\cmd.exe", "ProcessId": "4460",
                       "CommandLine": "cmd /c whoami"},
    },
}

WINLOG_EXPECTED = {
    "EventID": 1,
    "Channel": "Microsoft-Windows-Sysmon/Operational",
    "Computer": "ws01.corp.local",
    "Provider_Name": "Microsoft-Windows-Sysmon",
    "Provider_Guid": "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}",
    "EventRecordID": 5566,
    "TimeCreated": "2021-04-01T10:11:12.345000Z",
    "Version": 5,
    "Execution_ProcessID": 2000,
    "Execution_ThreadID": 3000,
    "Security_UserID": "S-1-5-18",
    "Image": r"C:\Windows\System32\cmd.exe",
    "ProcessId": "4460",
    "CommandLine": "cmd /c whoami",
    "message": "Process Create",
    "host": {"name": "ws01"},
}


def _dotted(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("winlog", "process", "thread", "user", "event_data"):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("record", [
    pytest.param(WINLOG_NESTED, id="nested"),
    pytest.param(_dotted(WINLOG_NESTED), id="dotted"),
])
def test_winlogbeat(record):
    before = copy.deepcopy(record)
    out = normalize(record)
    assert subset(out, WINLOG_EXPECTED) == WINLOG_EXPECTED
    assert record == before
    # metadata kept (nested)
    assert out["winlog"]["api"] == "wineventlog"


def test_winlogbeat_dotted_keys_are_in_fixture():
    d = _dotted(WINLOG_NESTED)
    assert "winlog.event_data.CommandLine" in d and "winlog" not in d


def test_winlogbeat_user_data_and_event_code_fallback():
    rec = {"@timestamp": "2021-04-01T10:11:12Z", "event": {"code": 1102},
           "winlog": {"channel": "Security", "computer_name": "dc1",
                      "user_data": {"SubjectUserName": "bob", "xml_name": "LogFileCleared"}}}
    out = normalize(rec)
    assert out["EventID"] == 1102
    assert out["SubjectUserName"] == "bob"
    assert out["TimeCreated"] == "2021-04-01T10:11:12.000000Z"


def test_winlogbeat_event_data_channel_kept_separately():
    rec = {"winlog": {"channel": "System", "event_id": 104, "event_data": {"Channel": "Security"}}}
    out = normalize(rec)
    assert out["Channel"] == "System" and out["EventData_Channel"] == "Security"


# --------------------------------------------------------------------------
# flat records (NXLog / OTRF Mordor) and already normalised events
# --------------------------------------------------------------------------

FLAT_CASES = [
    pytest.param(
        {"EventTime": "2020-09-21 19:03:49", "Hostname": "WORKSTATION5.theshire.local",
         "Keywords": -9223372036854775808, "EventType": "INFO", "SeverityValue": 2,
         "EventID": 1, "SourceName": "Microsoft-Windows-Sysmon",
         "ProviderGuid": "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}", "Version": 5,
         "Task": 1, "RecordNumber": 3012345, "ProcessID": 3204, "ThreadID": 4168,
         "Channel": "Microsoft-Windows-Sysmon/Operational", "UserID": "S-1-5-18",
         "Image": r"C:\Windows\System32\cmd.exe", "ProcessId": "4460",
         "@timestamp": "2020-09-21T19:03:50.123Z"},
        {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational",
         "Computer": "WORKSTATION5.theshire.local", "Provider_Name": "Microsoft-Windows-Sysmon",
         "Provider_Guid": "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}", "EventRecordID": 3012345,
         "TimeCreated": "2020-09-21T19:03:49.000000Z", "Security_UserID": "S-1-5-18",
         "Image": r"C:\Windows\System32\cmd.exe", "ProcessId": "4460",
         # originals kept
         "Hostname": "WORKSTATION5.theshire.local", "ProcessID": 3204, "SeverityValue": 2},
        id="mordor-nxlog"),
    pytest.param(
        {"EventID": "4104", "Channel": "Microsoft-Windows-PowerShell/Operational",
         "Computer": "ws1", "ProviderName": "Microsoft-Windows-PowerShell",
         "TimeCreated": "2022-01-02T03:04:05+02:00", "ScriptBlockText": "iex $x",
         "MessageNumber": "1"},
        {"EventID": 4104, "Provider_Name": "Microsoft-Windows-PowerShell",
         "TimeCreated": "2022-01-02T01:04:05.000000Z", "MessageNumber": "1"},
        id="flat-computer-providername-offset-time"),
    pytest.param(
        {"EventID": 4688, "Channel": "Security", "Computer": "dc1",
         "EventData": {"NewProcessName": r"C:\x.exe", "Channel": "oops"}},
        {"EventID": 4688, "Channel": "Security", "NewProcessName": r"C:\x.exe",
         "EventData_Channel": "oops", "EventData": "<missing>"},
        id="flat-with-nested-eventdata"),
    pytest.param(
        {"EventID": 7045, "Hostname": "srv"},
        {"EventID": 7045, "Channel": "", "Computer": "srv"},
        id="flat-minimal"),
]


@pytest.mark.parametrize("record, expected", FLAT_CASES)
def test_flat_shapes(record, expected):
    before = copy.deepcopy(record)
    out = normalize(record)
    assert subset(out, expected) == expected
    assert record == before


def test_already_normalised_is_returned_as_is():
    ev = normalize(evtx_record(EventData={"Image": "a.exe"}))
    assert normalize(ev) is ev


@pytest.mark.parametrize("record", [c.values[0] for c in EVTX_CASES + FLAT_CASES]
                         + [WINLOG_NESTED, _dotted(WINLOG_NESTED)])
def test_normalize_is_idempotent(record):
    once = normalize(record)
    assert normalize(once) == once


def test_already_normalised_types_fixed():
    ev = {"EventID": "4104", "Channel": "Microsoft-Windows-PowerShell/Operational",
          "Computer": "h", "Provider_Name": "p", "TimeCreated": TS, "EventRecordID": "17",
          "ScriptBlockText": "x"}
    out = normalize(ev)
    assert out["EventID"] == 4104 and out["EventRecordID"] == 17
    assert ev["EventID"] == "4104"  # input untouched


def test_numeric_strings_in_eventdata_stay_strings():
    out = normalize(evtx_record(EventData={"ProcessId": "4460", "Details": "DWORD (0x00000001)",
                                           "LogonType": "3"}))
    assert out["ProcessId"] == "4460" and out["LogonType"] == "3"


# --------------------------------------------------------------------------
# timestamps
# --------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (TS, TS),
    ("2019-03-19T23:30:11.1234567Z", TS),
    ("2019-03-19T23:30:11.123Z", "2019-03-19T23:30:11.123000Z"),
    ("2019-03-19T23:30:11Z", "2019-03-19T23:30:11.000000Z"),
    ("2019-03-19 23:30:11", "2019-03-19T23:30:11.000000Z"),
    ("2019-03-20T01:30:11.5+02:00", "2019-03-19T23:30:11.500000Z"),
    ("2019-03-19T23:30:11.1234567Z UTC", TS),
    (1553038211, "2019-03-19T23:30:11.000000Z"),
    (1553038211.5, "2019-03-19T23:30:11.500000Z"),
    (1553038211123, "2019-03-19T23:30:11.123000Z"),
    ("1553038211123", "2019-03-19T23:30:11.123000Z"),
    (131975118111234560, "2019-03-19T23:30:11.123456Z"),  # FILETIME
    (1553038211123456789, "2019-03-19T23:30:11.123456Z"),  # epoch ns
    ("/Date(1553038211123)/", "2019-03-19T23:30:11.123000Z"),
    ("3/19/2019 11:30:11 PM", "2019-03-19T23:30:11.000000Z"),
    ({"#attributes": {"SystemTime": "2019-03-19T23:30:11.123456Z"}}, TS),
    ("not a time", "not a time"),
    ("", ""),
])
def test_timestamps(value, expected):
    assert to_utc_iso(value) == expected


def test_flat_epoch_timestamp_converted():
    out = normalize({"EventID": 1, "Channel": "c", "Computer": "h", "TimeCreated": 1553038211})
    assert out["TimeCreated"] == "2019-03-19T23:30:11.000000Z"


# --------------------------------------------------------------------------
# not events
# --------------------------------------------------------------------------

@pytest.mark.parametrize("record, reason", [
    ({"foo": 1, "bar": "x"}, "no 'Event'"),
    ({}, "empty"),
    ([1, 2], "not an object"),
    ("text", "not an object"),
    (None, "not an object"),
    ({"EventID": "abc", "Channel": "x"}, "EventID is not an integer"),
    ({"Event": {"System": {"Channel": "Security"}}}, "no System/EventID"),
    ({"Event": {"System": "x"}}, "no 'System' element"),
    ({"winlog": {"channel": "Security"}}, "no winlog.event_id"),
])
def test_not_events(record, reason):
    with pytest.raises(NormalizeError, match=reason):
        normalize(record)


def test_normalize_error_is_value_error():
    assert issubclass(NormalizeError, ValueError)
