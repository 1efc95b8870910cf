"""Normalisation of live Windows event sources (ETW via pywintrace, EvtRender XML)
to sigstream's canonical event (see :mod:`connectors.normalize`).

Both live paths end in the same shape as EVTX input read by ``hunt``, so one
rule matches live ETW, event-log and EVTX input alike. Event-log XML goes through
:mod:`connectors.xml_events` and :func:`connectors.normalize.normalize` only (the same
document as the EVTX path, see there); ETW records, which carry no types, get these
fix-ups (:func:`finish`):

* field names: the EventData ``Name``s (ETW property names are the same names
  the manifest gives the event log), System fields as ``connectors.normalize``
  names them (``Provider_Name``, ``Execution_ProcessID``, ``Security_UserID`` ...);
* ``Channel``: the event log channel the provider writes to
  (``Microsoft-Windows-PowerShell/Operational``, ``Microsoft-Windows-Sysmon/Operational``,
  ...), also for ETW where the event carries only a channel number;
* types as the ``evtx`` package gives them for EVTX files: ``EventID``, ``Version``,
  ``Level``, ``Task``, ``Opcode``, ``EventRecordID``, ``Execution_ProcessID``/
  ``ThreadID`` and the numeric payload fields in :data:`INT_FIELDS` are ints
  (pywintrace and EvtRender give strings); ``Keywords`` is a ``0x..`` string;
* ``TimeCreated``: ISO-8601 UTC with microseconds and ``Z`` (ETW: FILETIME);
* kernel registry paths translated: ``\\REGISTRY\\MACHINE\\`` -> ``HKLM\\``,
  ``\\REGISTRY\\USER\\`` -> ``HKU\\`` (and the long ``HKEY_*`` spellings to
  the short ones), as Sysmon writes them to the event log;
* ``Provider_Guid``: lower-case, braced, as the event log renders it; activity ids upper-case,
  braced (the normaliser's GUID convention).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sigstream.connectors.normalize import NormalizeError, int_of_text, normalize, to_utc_iso
from sigstream.connectors.xml_events import event_record

__all__ = [
    "PROVIDERS", "INT_FIELDS", "translate_registry_path", "filetime_to_iso",
    "normalize_etw", "parse_event_xml", "finish",
]

_UTC = timezone.utc
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=_UTC)


# Known providers: GUID (lower, braced) -> (provider name, {ETW channel number: channel name}, default channel).
# Channel numbers are the manifest's (``wevtutil gp <provider> /ge /gm``): the PowerShell providers
# log 4103/4104 to channel 16 (Operational); 17/18 are Analytic/Debug.
PROVIDERS: dict[str, tuple[str, dict[int, str], str]] = {
    "{a0c1853b-5c40-4b15-8766-3cf1c58f985a}": (
        "Microsoft-Windows-PowerShell",
        {16: "Microsoft-Windows-PowerShell/Operational", 17: "Microsoft-Windows-PowerShell/Analytic",
         18: "Microsoft-Windows-PowerShell/Debug"},
        "Microsoft-Windows-PowerShell/Operational"),
    "{f90714a8-5509-434a-bf6d-b1624c8a19a2}": (
        "PowerShellCore",
        {16: "PowerShellCore/Operational", 17: "PowerShellCore/Analytic", 18: "PowerShellCore/Debug"},
        "PowerShellCore/Operational"),
    "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}": (
        "Microsoft-Windows-Sysmon", {}, "Microsoft-Windows-Sysmon/Operational"),
    "{1418ef04-b0b4-4623-bf7e-d74ab47bbdaa}": (
        "Microsoft-Windows-WMI-Activity", {}, "Microsoft-Windows-WMI-Activity/Operational"),
    # AMSI has no event-log channel of its own (events are analytic-only); sigstream names
    # the channel after the provider so rules can select on it.
    "{2a576b87-09a7-520e-c21a-4942f0271d67}": (
        "Microsoft-Antimalware-Scan-Interface", {}, "Microsoft-Antimalware-Scan-Interface/Operational"),
}

# Payload fields the manifests declare as integers (UInt16/32/64): ints, like the evtx package
# gives them for EVTX input. Anything not a plain decimal/0x string is left as it is.
INT_FIELDS = frozenset((
    "EventID", "Version", "Level", "Task", "Opcode", "EventRecordID",
    "Execution_ProcessID", "Execution_ThreadID",
    # PowerShell 4104/4103
    "MessageNumber", "MessageTotal",
    # Sysmon
    "ProcessId", "ParentProcessId", "SourceProcessId", "TargetProcessId", "SourceThreadId",
    "NewThreadId", "ThreadId", "SourcePort", "DestinationPort", "TerminalSessionId",
    # WMI-Activity 5857-5861
    "ProcessID", "ClientProcessId", "ResultCode",
    # AMSI 1101
    "scanResult", "contentSize", "originalSize",
))

_REG_PREFIXES = (
    ("\\registry\\machine\\", "HKLM\\"),
    ("\\registry\\user\\", "HKU\\"),
    ("hkey_local_machine\\", "HKLM\\"),
    ("hkey_users\\", "HKU\\"),
    ("hkey_current_user\\", "HKCU\\"),
    ("hkey_classes_root\\", "HKCR\\"),
)
_REG_EXACT = {"\\registry\\machine": "HKLM", "\\registry\\user": "HKU"}


def translate_registry_path(path: Any) -> Any:
    """``\\REGISTRY\\MACHINE\\SOFTWARE\\X`` -> ``HKLM\\SOFTWARE\\X``; non-registry values unchanged."""
    if not isinstance(path, str) or not path:
        return path
    c = path[0]
    if c != "\\" and c not in "hH":
        return path
    low = path[:20].lower()
    for prefix, short in _REG_PREFIXES:
        if low.startswith(prefix):
            return short + path[len(prefix):]
    return _REG_EXACT.get(path.lower(), path)


def filetime_to_iso(ft: Any) -> Any:
    """FILETIME (100 ns intervals since 1601-01-01 UTC; int or digit string) -> ISO-8601 UTC."""
    try:
        n = int(ft)
    except (TypeError, ValueError):
        return ft
    if n <= 0:
        return ft
    try:
        dt = _FILETIME_EPOCH + timedelta(microseconds=n // 10)
    except OverflowError:
        return ft
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_int(v: Any) -> Any:
    """pywintrace gives every value as text: numeric text -> int, anything else unchanged."""
    return int_of_text(v) if isinstance(v, str) else v


def finish(ev: dict) -> dict:
    """Type and path fix-ups shared by every live source (in place; returns ``ev``)."""
    for k in INT_FIELDS:
        if k in ev:
            ev[k] = _as_int(ev[k])
    for k, v in ev.items():
        if isinstance(v, str) and v[:1] == "\\" and v[:10].lower() == "\\registry\\":
            ev[k] = translate_registry_path(v)
    g = ev.get("Provider_Guid")
    if isinstance(g, str) and g:
        g = g.strip().lower()
        ev["Provider_Guid"] = g if g.startswith("{") else "{" + g + "}"
    for k in ("Correlation_ActivityID", "Correlation_RelatedActivityID"):
        a = ev.get(k)
        if isinstance(a, str) and a:
            a = a.strip().upper()
            ev[k] = a if a.startswith("{") else "{" + a + "}"
    kw = ev.get("Keywords")
    if isinstance(kw, int):
        ev["Keywords"] = hex(kw)
    tc = ev.get("TimeCreated")
    if tc is not None:
        ev["TimeCreated"] = to_utc_iso(tc)
    return ev


# --------------------------------------------------------------------------
# ETW (pywintrace)
# --------------------------------------------------------------------------

# Keys pywintrace adds next to the event's properties (etw/etw.py, EventConsumer._processEvent).
_ETW_META = ("EventHeader", "Task Name", "Description", "EventExtendedData", "UserData")


def _guid(s: Any) -> str:
    g = str(s).strip().lower()
    return g if g.startswith("{") else "{" + g + "}"


def normalize_etw(record: Any, computer: str) -> dict:
    """One pywintrace callback value -> canonical event.

    ``record`` is what pywintrace passes to ``event_callback``: a tuple
    ``(event_id, out)`` where ``out`` = ``{"EventHeader": {... ints ..., "TimeStamp":
    FILETIME, "ProviderId": "{GUID}", "EventDescriptor": {"Id", "Version", "Channel",
    "Level", "Opcode", "Task", "Keyword"}, "ActivityId": "{GUID}"}, "Task Name": "...",
    "Description": "...", <property name>: <value>, ..., "EventExtendedData": {"SID",
    "RelatedActivityID", ...}}``; the bare ``out`` dict is accepted too. Gives the event log's
    document of the same event but for ``EventRecordID`` (see :mod:`connectors.normalize`). ``computer``: the host name to put in ``Computer`` (ETW events
    carry none).
    """
    if isinstance(record, tuple) and len(record) == 2:
        record = record[1]
    if not isinstance(record, dict):
        raise NormalizeError(f"ETW record is a {type(record).__name__}, not a dict")
    hdr = record.get("EventHeader")
    if not isinstance(hdr, dict):
        raise NormalizeError("ETW record has no EventHeader")
    desc = hdr.get("EventDescriptor") or {}
    guid = _guid(hdr.get("ProviderId", ""))
    name, channels, default_channel = PROVIDERS.get(guid, (None, {}, ""))
    ch_no = _as_int(desc.get("Channel"))
    ev: dict[str, Any] = {
        "EventID": _as_int(desc.get("Id")),
        "Channel": channels.get(ch_no, default_channel),
        "Provider_Name": name or guid,
        "Provider_Guid": guid,
        "Computer": computer,
        "TimeCreated": filetime_to_iso(hdr.get("TimeStamp")),
        "Version": desc.get("Version"),
        "Level": desc.get("Level"),
        "Task": desc.get("Task"),
        "Opcode": desc.get("Opcode"),
        "Keywords": _as_int(desc.get("Keyword", 0)),
        "Execution_ProcessID": hdr.get("ProcessId"),
        "Execution_ThreadID": hdr.get("ThreadId"),
    }
    act = hdr.get("ActivityId")
    if act and str(act).strip("{}").strip("0-") != "":
        ev["Correlation_ActivityID"] = str(act)
    ext = record.get("EventExtendedData")
    if isinstance(ext, dict):
        if ext.get("RelatedActivityID"):
            ev["Correlation_RelatedActivityID"] = str(ext["RelatedActivityID"])
        if ext.get("SID"):
            ev["Security_UserID"] = ext["SID"]
    # pywintrace's "Task Name" / "Description" are manifest texts, not event content: the event
    # log's document has neither (see the ETW list in connectors.normalize)
    for k, v in record.items():
        if k in _ETW_META:
            # "UserData" is pywintrace's raw-bytes key only when it holds bytes; PowerShell
            # 4103 has a real string property of that name
            if k != "UserData" or isinstance(v, (bytes, bytearray)):
                continue
        if k in ("EventID", "Channel"):        # payload named like a routing key: keep aside
            ev["EventData_" + k] = v
            continue
        ev[k] = v
    if type(ev["EventID"]) is not int:
        raise NormalizeError(f"ETW EventDescriptor.Id is not an integer: {desc.get('Id')!r}")
    return finish(ev)


# --------------------------------------------------------------------------
# EvtRender XML (Windows event log, pywin32)
# --------------------------------------------------------------------------

def parse_event_xml(xml: str) -> dict:
    """One ``EvtRender(h, EvtRenderEventXml)`` string -> canonical event.

    The XML is the event log's: ``<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'>
    <System><Provider Name=.. Guid=../><EventID>..</EventID>...<TimeCreated SystemTime=../>
    <EventRecordID>..</EventRecordID><Correlation/><Execution ProcessID=.. ThreadID=../>
    <Channel>..</Channel><Computer>..</Computer><Security UserID=../></System>
    <EventData><Data Name='..'>..</Data>...</EventData></Event>`` (or ``UserData``).
    Read by :func:`connectors.xml_events.event_record` into the evtx package's JSON shape,
    then :func:`connectors.normalize.normalize`: the very document ``hunt`` makes of the
    same record in an EVTX export (no live-only fix-ups: registry paths and hex values stay
    as logged). Raises NormalizeError (``XmlEventError``) for XML that cannot be read.
    """
    return normalize(event_record(xml))
