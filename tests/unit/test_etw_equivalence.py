"""A script block recorded through ETW (pywintrace) and the same block read from the PowerShell
event log (4104 / 4103 in Microsoft-Windows-PowerShell/Operational, EVTX or rendered XML) give one
document, but for ``EventRecordID`` (an ETW event is no log record). The conventions are listed in
connectors/normalize.py ("ETW records").

The corpus records (evtx-attack-samples, every PowerShell/Operational 4104) are turned into what
pywintrace's ``EventConsumer._processEvent`` hands the callback for that event: ``(event_id,
{"EventHeader": {...}, <properties>, "Task Name", "Description", "EventExtendedData"})`` with the
header's ctypes ints, ``str(GUID)`` (StringFromCLSID: braced, upper case) for ProviderId and
ActivityId, the FILETIME ProcessTrace puts in TimeStamp, and the properties as TdhFormatProperty
strings, or ints where the manifest's out-type is an integer one (pywintrace converts
``TDH_OUTTYPE_INT`` and friends): both forms are tried.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

import fakes
from fakes import recordings as R
from fakes import wait_until
from sigstream.connectors.etw import KNOWN_PROVIDERS, EtwSource
from sigstream.connectors.normalize import normalize
from sigstream.connectors.winevent import normalize_etw, parse_event_xml
from sigstream.connectors.xml_events import event_record

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "evtx-attack-samples"
PS_OPERATIONAL = "Microsoft-Windows-PowerShell/Operational"
_FT_1601 = datetime(1601, 1, 1, tzinfo=timezone.utc)
_INT_PROPERTIES = ("MessageNumber", "MessageTotal")      # win:Int32 in the PowerShell manifest


def filetime(system_time: str) -> int:
    """``2019-09-09T13:35:08.655802Z`` (up to 7 fraction digits) -> FILETIME, exactly."""
    whole, _, frac = system_time.rstrip("Z").partition(".")
    dt = datetime.fromisoformat(whole).replace(tzinfo=timezone.utc)
    return int((dt - _FT_1601).total_seconds()) * 10_000_000 + int((frac + "0000000")[:7])


def etw_shape(evtx_json: dict, ints: bool) -> tuple[int, dict]:
    """An EVTX record (the evtx package's JSON, unnormalised) as pywintrace delivers the event."""
    sysd, data = evtx_json["Event"]["System"], evtx_json["Event"]["EventData"]
    attrs = {k: v["#attributes"] for k, v in sysd.items() if isinstance(v, dict) and "#attributes" in v}
    guid = "{" + attrs["Provider"]["Guid"].strip("{}").upper() + "}"
    activity = attrs.get("Correlation", {}).get("ActivityID") or R.NULL_GUID.strip("{}")
    hdr = {"Size": 512, "HeaderType": 0, "Flags": 0x241, "EventProperty": 0,
           "ThreadId": int(attrs["Execution"]["ThreadID"]), "ProcessId": int(attrs["Execution"]["ProcessID"]),
           "TimeStamp": filetime(attrs["TimeCreated"]["SystemTime"]), "ProviderId": guid,
           "EventDescriptor": {"Id": sysd["EventID"], "Version": sysd["Version"], "Channel": 16,
                               "Level": sysd["Level"], "Opcode": sysd["Opcode"], "Task": sysd["Task"],
                               "Keyword": int(sysd["Keywords"], 16)},
           "KernelTime": 3, "UserTime": 12, "ActivityId": "{" + activity.strip("{}").upper() + "}"}
    props = {k: (v if ints and k in _INT_PROPERTIES else ("" if v is None else str(v))) for k, v in data.items()}
    return sysd["EventID"], {"EventHeader": hdr, **props, "Description": "Creating Scriptblock text (%1 of %2):...",
                             "Task Name": "EXECUTE A REMOTE COMMAND",
                             "EventExtendedData": {"SID": attrs["Security"]["UserID"]}}


@pytest.fixture(scope="module")
def corpus_4104():
    """Every PowerShell/Operational 4104 of the corpus: (evtx json, rendered xml)."""
    if not CORPUS.is_dir():
        pytest.skip(f"EVTX attack samples not found at {CORPUS} (shared corpora absent)")
    from evtx import PyEvtxParser

    out = []
    for f in sorted(CORPUS.rglob("*.evtx")):
        xs = [r["data"] for r in PyEvtxParser(str(f)).records()]
        for j, x in zip((orjson.loads(r["data"]) for r in PyEvtxParser(str(f)).records_json()), xs):
            s = j["Event"]["System"]
            if s["EventID"] == 4104 and s.get("Channel") == PS_OPERATIONAL:
                out.append((j, x))
    assert len(out) == 4
    return out


def _without_record_id(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "EventRecordID"}


@pytest.mark.parametrize("ints", [False, True], ids=["properties-as-text", "int-out-types-as-ints"])
def test_corpus_4104_etw_and_event_log_give_one_document(corpus_4104, ints):
    for js, xml in corpus_4104:
        logged = normalize(js)                                  # EVTX path
        assert normalize(event_record(xml)) == logged           # rendered XML path
        live = normalize_etw(etw_shape(js, ints), logged["Computer"])
        assert orjson.dumps(live, option=orjson.OPT_SORT_KEYS) == \
            orjson.dumps(_without_record_id(logged), option=orjson.OPT_SORT_KEYS)   # types too
        # the fields a ScriptBlock rule or the reassembler reads, named
        for k in ("ScriptBlockText", "ScriptBlockId", "MessageNumber", "MessageTotal", "Path", "EventID",
                  "Channel", "Provider_Name", "Provider_Guid", "Computer", "Execution_ProcessID",
                  "Execution_ThreadID", "TimeCreated", "Security_UserID", "Correlation_ActivityID"):
            assert k in live, k


def test_corpus_4104_through_the_etw_session(corpus_4104, monkeypatch):
    """Delivered by the (fake) pywintrace session the ETW source starts: the SID arrives because
    the source enables EVENT_ENABLE_PROPERTY_SID."""
    etw, _, _ = fakes.install(monkeypatch)
    host = normalize(corpus_4104[0][0])["Computer"]           # one machine's session
    mine = [js for js, _ in corpus_4104 if normalize(js)["Computer"] == host]
    assert len(mine) == 3
    etw.RECORDINGS.extend(etw_shape(js, False) for js in mine)
    got: list = []
    src = EtwSource([KNOWN_PROVIDERS["powershell"]], got.append, host)
    src.start()
    try:
        assert wait_until(lambda: len(got) == len(mine))
    finally:
        src.stop()
    assert got == [_without_record_id(normalize(js)) for js in mine]


def test_timestamp_keeps_the_microseconds_both_paths_keep():
    # the event log writes 100 ns; both documents keep microseconds, truncated alike
    assert filetime("2026-11-24T09:11:45.4123457Z") == R.FT_1
    live = normalize_etw(R.ETW_PS_4104, R.HOST)
    assert live["TimeCreated"] == parse_event_xml(R.XML_PS_4104)["TimeCreated"] == "2026-11-24T09:11:45.412345Z"


def test_4103_module_logging_etw_and_event_log_give_one_document():
    live = normalize_etw(R.ETW_PS_4103, R.HOST)
    logged = parse_event_xml(R.XML_PS_4103)
    assert live == _without_record_id(logged)
    assert live["Payload"].endswith('value="http://10.0.0.5/stage2"\r\n')      # CRLF as logged
    assert live["UserData"] == "" and "Correlation_ActivityID" not in live


def test_pywintrace_texts_and_null_activity_are_not_event_content():
    live = normalize_etw(R.ETW_PS_4103, R.HOST)
    assert not {"Task Name", "Description", "EventHeader", "EventExtendedData"} & set(live)
    assert not any(k.startswith("sigstream_") for k in live)


def test_related_activity_id_from_the_extended_data():
    eid, out = R.ETW_PS_4104
    out = {**out, "EventExtendedData": {**out["EventExtendedData"],
                                         "RelatedActivityID": "{4D3F6A51-0C1B-0002-9B1D-3F4D1B0CDB02}"}}
    ev = normalize_etw((eid, out), R.HOST)
    assert ev["Correlation_RelatedActivityID"] == "{4D3F6A51-0C1B-0002-9B1D-3F4D1B0CDB02}"
