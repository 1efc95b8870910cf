"""Turn one decoded Windows event record (any supported shape) into a flat event dict.

Why one module past ~500 lines: the conventions below (GUID form, empty elements, typing,
line endings) must be applied identically to every input shape; keeping the shapes and the
conventions together is what makes the EVTX and XML paths give one document.

Supported input shapes, detected per record:

1. EVTX JSON as produced by the ``evtx`` package (``{"Event": {"System": ..,
   "EventData" | "UserData": ..}}``), including the ``Data`` list of named
   ``{"#attributes": {"Name": ..}, "#text": ..}`` entries, unnamed classic data
   (``{"Data": {"#text": [..]}}``), ``EventID`` with ``Qualifiers`` and the
   ``--separate-json-attributes`` variant (``Provider_attributes``).
2. Winlogbeat / Elastic Agent documents (``winlog.*``), nested or dotted keys.
3. Flat records (NXLog ``im_msvistalog``, OTRF/Mordor): ``EventID``,
   ``Channel``, ``Hostname``, ``SourceName`` ... with EventData at the top level.
4. Already normalised sigstream events: returned as-is (the very same dict)
   when nothing needs fixing.

Output contract (one flat dict per event):

* EventData/UserData field names as-is (``Image``, ``CommandLine`` ...).
* ``EventID`` (int), ``Channel`` (str, ``""`` when the source has none),
  ``Provider_Name``, ``Computer``, ``EventRecordID`` (int when numeric),
  ``TimeCreated`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, UTC, always 27 chars),
  and when present ``Provider_Guid``, ``Version``, ``Level``, ``Task``,
  ``Opcode``, ``Keywords``, ``Execution_ProcessID``, ``Execution_ThreadID``,
  ``Security_UserID``, ``Correlation_ActivityID``, ``EventID_Qualifiers`` ...
  (System element attributes are named ``<Element>_<Attribute>``).
* Unnamed classic data (e.g. "Windows PowerShell" 400/600/800) is kept under
  ``Data``: a list of strings, or a string when there is one item.
* EventData/UserData fields win over System-derived names on clashes, except
  for the routing keys ``EventID`` and ``Channel``: a payload field with one
  of those names is kept as ``EventData_<name>`` / ``UserData_<name>``
  (e.g. the ``Channel`` of System 104 "log cleared" events).
* Unknown content is kept (nested content may stay nested); ``null`` System
  elements and XML namespace declarations (``xmlns*`` attributes) are not
  copied. Values are not converted, except ``EventID``/``EventRecordID``.

One document per record, whichever way it was read (EVTX via the ``evtx``
package, rendered XML via :mod:`connectors.xml_events`: live EvtRender,
``wevtutil qe /f:xml``, Event Viewer "Save as XML"). Conventions, decided once:

* GUIDs (System): braced; ``Provider_Guid`` lower-case, ``Correlation_ActivityID``
  / ``Correlation_RelatedActivityID`` upper-case, as the event log renders them
  (Event Viewer, wevtutil, Winlogbeat, the ETW source); the ``evtx`` package's
  bare ``5770385F-...`` is converted here. GUIDs in EventData stay as logged.
* empty elements: an empty System element (``<Correlation/>``) is absent, an
  empty named ``Data`` is ``""``, an empty EventData is absent.
* types: as the EVTX binary XML gives them, i.e. as the provider's manifest
  declares them (ints for integer types, bools, ``0x..`` strings for hex types,
  ``Keywords`` a ``0x..`` string, strings for string types even when the text
  is ``49249`` or ``false``); rendered XML, which has only text, is typed by
  the rule in :mod:`connectors.xml_events` (decimal -> int, true/false -> bool)
  except for the string-declared fields it lists (``STRING_FIELDS``: Security
  ``IpPort``, Sysmon ``Signed``, every Defender field ...). On
  evtx-attack-samples the two paths give the same values of the same types for
  every record (before that table: 1,862 records differed in a type).
* line endings: kept as logged (CRLF stays CRLF), on both paths.
* characters XML forbids (control characters in event data): kept as the
  characters they are (the XML reader recovers them, see xml_events).
* binary data (``Binary``): the hex string, never typed.
* no live-only rewriting: registry paths and hex ids stay as logged.

ETW records (pywintrace, :func:`connectors.winevent.normalize_etw`) give the
event log's document of the same event, but for ``EventRecordID``, which an ETW
event does not have (tests/unit/test_etw_equivalence.py, with the corpus 4104s).
Decided once, per field:

* payload names: the ETW property names, which are the manifest's ``Data Name``s
  (``ScriptBlockText``, ``ScriptBlockId``, ``MessageNumber``, ``MessageTotal``,
  ``Path``; 4103 ``ContextInfo``, ``UserData``, ``Payload``); values as
  TdhFormatProperty gives them, ints for the manifest's integer fields whether
  pywintrace converted them or not (``INT_FIELDS``), text as logged (CRLF kept,
  empty ``Path`` is ``""``); a payload named ``EventID``/``Channel`` is
  ``EventData_<name>`` as above.
* ``EventID``, ``Version``, ``Level``, ``Task``, ``Opcode``: the header's
  EventDescriptor (ints); ``Keywords``: its ``Keyword`` as ``0x..`` lower-case hex.
* ``Provider_Name``/``Channel``: the manifest names of the provider GUID and of the
  descriptor's channel number (16 -> ``.../Operational``); ``Provider_Guid``
  lower-case braced (pywintrace's ``str(GUID)`` is upper-case).
* ``TimeCreated``: the header's ``TimeStamp`` (FILETIME: ProcessTrace converts
  real-time timestamps to system time) -> UTC, microseconds truncated, like the
  event log's 100 ns ``SystemTime``.
* ``Execution_ProcessID``/``Execution_ThreadID``: the header's ``ProcessId``/
  ``ThreadId`` (ints).
* ``Security_UserID``: the extended data's ``SID``: the ETW source enables every
  provider with ``EVENT_ENABLE_PROPERTY_SID``, or ETW would not carry it.
* ``Correlation_ActivityID``: the header's ``ActivityId``, upper-case braced, absent
  when all zeros (the event log's empty ``<Correlation/>``);
  ``Correlation_RelatedActivityID``: the extended data's ``RelatedActivityID``.
* ``Computer``: the agent's ``computer_name`` (default: the host's DNS name, what
  the event log writes); ETW events carry no host.
* not event content, so not in the document: pywintrace's ``Task Name`` and
  ``Description`` (manifest texts), the rest of the header (``Size``, ``Flags``,
  ``KernelTime`` ...) and other extended data.
* ETW-only rewriting: kernel registry paths (``\\REGISTRY\\MACHINE\\..``) become
  the ``HKLM\\..`` form the event log has (event-log input is never rewritten).

No marker field is added: an "already normalised" event is recognised by its
keys (``EventID`` int, ``Channel`` str, ``Computer``, ``Provider_Name``,
canonical ``TimeCreated``) and returned unchanged.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

from sigstream.stream.errors import EventProblem

__all__ = ["NormalizeError", "normalize", "to_utc_iso"]


class NormalizeError(EventProblem):
    """The record is not a (recognisable) Windows event."""


# Routing keys that a payload field must not overwrite.
_PROTECTED = ("EventID", "Channel")

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=_UTC)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def int_of_text(v: str) -> Any:
    """``"4104"``, ``"-1"``, ``"0x10"`` -> int; any other text unchanged."""
    s = v.strip()
    if s.isdigit() or (s[:1] == "-" and s[1:].isdigit()):
        return int(s)
    if s[:2] in ("0x", "0X"):
        try:
            return int(s, 16)
        except ValueError:
            return v
    return v


def _to_int(v: Any) -> Any:
    """int for int-like values (``4104``, ``"4104"``, ``"0x10"``); else unchanged."""
    t = type(v)
    if t is int:
        return v
    if t is str:
        return int_of_text(v)
    if t is float and v.is_integer():
        return int(v)
    if t is dict:  # {"#attributes": {...}, "#text": 4624}
        return _to_int(v.get("#text"))
    return v


def _event_id(v: Any) -> int:
    if type(v) is int:
        return v
    r = _to_int(v)
    if type(r) is not int or type(v) is bool:
        raise NormalizeError(f"EventID is not an integer: {v!r}")
    return r


def _fmt(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_UTC)  # naive timestamps are taken as UTC
    else:
        dt = dt.astimezone(_UTC)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:"
            f"{dt.minute:02d}:{dt.second:02d}.{dt.microsecond:06d}Z")


_STRPTIME_FORMATS = (
    "%m/%d/%Y %I:%M:%S %p",   # PowerShell / Event Viewer CSV, en-US
    "%m/%d/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%b %d, %Y @ %H:%M:%S.%f",  # Kibana CSV export
)


def _from_number(n: float) -> str | None:
    a = abs(n)
    if a < 1e11:          # seconds since epoch
        delta = timedelta(seconds=n)
        base = _EPOCH
    elif a < 1e14:        # milliseconds
        delta = timedelta(milliseconds=n)
        base = _EPOCH
    elif a < 1e16:        # microseconds
        delta = timedelta(microseconds=n)
        base = _EPOCH
    elif a < 1e18:        # Windows FILETIME (100 ns since 1601)
        delta = timedelta(microseconds=n // 10 if type(n) is int else n / 10)
        base = _FILETIME_EPOCH
    else:                 # nanoseconds since epoch
        delta = timedelta(microseconds=n // 1000 if type(n) is int else n / 1000)
        base = _EPOCH
    try:
        return _fmt(base + delta)
    except (OverflowError, ValueError):
        return None


def to_utc_iso(v: Any) -> Any:
    """Convert a timestamp to ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC).

    Accepts ISO-8601 strings (any fraction length, ``Z``/offset/naive,
    ``T`` or space separator, trailing `` UTC``), epoch seconds / ms / µs / ns,
    FILETIME integers, digit strings thereof, ``{"#attributes": {"SystemTime": ..}}``
    and a few common US-style text forms. Naive times are taken as UTC.
    Unparseable values are returned unchanged (never dropped).
    """
    t = type(v)
    if t is str:
        # fast path: already canonical (the evtx package emits this form)
        if len(v) == 27 and v[26] == "Z" and v[19] == "." and v[10] == "T":
            return v
        s = v.strip()
        if not s:
            return v
        if s.endswith(" UTC"):
            s = s[:-4]
        try:
            return _fmt(datetime.fromisoformat(s))
        except ValueError:
            pass
        if s.isdigit() or (s[:1] == "-" and s[1:].isdigit()):
            r = _from_number(int(s))
            return v if r is None else r
        # /Date(1553038211123)/ (.NET JSON)
        if s.startswith("/Date(") and s.endswith(")/"):
            inner = s[6:-2]
            for sep in ("+", "-"):
                i = inner.find(sep, 1)
                if i > 0:
                    inner = inner[:i]
            if inner.lstrip("-").isdigit():
                try:
                    return _fmt(_EPOCH + timedelta(milliseconds=int(inner)))
                except (OverflowError, ValueError):
                    return v
        for fmt in _STRPTIME_FORMATS:
            try:
                return _fmt(datetime.strptime(s, fmt))
            except ValueError:
                continue
        return v
    if t is int or t is float:
        r = _from_number(v)
        return v if r is None else r
    if t is dict:
        a = v.get("#attributes")
        st = (a if type(a) is dict else v).get("SystemTime")
        if st is not None:
            return to_utc_iso(st)
        return v
    if isinstance(v, datetime):
        return _fmt(v)
    return v


def _put_payload(out: dict, fields: dict, prefix: str) -> None:
    """Merge payload ``fields`` into ``out``; payload wins except for routing keys."""
    saved = None
    for k in _PROTECTED:
        if k in fields and k in out:
            if saved is None:
                saved = {}
            saved[k] = out[k]
    out.update(fields)
    if saved is not None:
        for k, sv in saved.items():
            out[prefix + k] = out[k]
            out[k] = sv


def _braced(g: str, upper: bool) -> str:
    g = g.strip()
    g = g.upper() if upper else g.lower()
    return g if g[:1] == "{" else "{" + g + "}"


def _canon_guids(out: dict) -> None:
    """System GUIDs as the event log renders them (see module doc)."""
    g = out.get("Provider_Guid")
    if type(g) is str and g and (g[0] != "{" or not g.islower()):
        out["Provider_Guid"] = _braced(g, False)
    for k in ("Correlation_ActivityID", "Correlation_RelatedActivityID"):
        a = out.get(k)
        if type(a) is str and a and (a[0] != "{" or not a.isupper()):
            out[k] = _braced(a, True)


# --------------------------------------------------------------------------
# 1. EVTX JSON
# --------------------------------------------------------------------------

def _attrs_into(out: dict, prefix: str, attrs: dict) -> None:
    for ak, av in attrs.items():
        if ak[:5] != "xmlns":
            out[prefix + ak] = av


def _system_slow(out: dict, k: str, v: Any) -> None:
    """Generic System element: ``X_attr`` names for attributes, ``X`` for text."""
    if v is None:
        return
    if type(v) is not dict:
        out[k] = v
        return
    if k[-11:] == "_attributes":  # evtx_dump --separate-json-attributes
        base = k[:-11]
        if base == "TimeCreated" and "SystemTime" in v:
            out["TimeCreated"] = v["SystemTime"]
            rest = {a: b for a, b in v.items() if a != "SystemTime"}
            _attrs_into(out, base + "_", rest)
        else:
            _attrs_into(out, base + "_", v)
        return
    a = v.get("#attributes")
    n = 0
    if type(a) is dict:
        n = 1
        if k == "TimeCreated" and "SystemTime" in a:
            out["TimeCreated"] = a["SystemTime"]
            _attrs_into(out, "TimeCreated_", {x: y for x, y in a.items() if x != "SystemTime"})
        else:
            _attrs_into(out, k + "_", a)
    if "#text" in v:
        n += 1
        out[k] = v["#text"]
    if len(v) > n:  # other child elements: keep them, nested
        rest = {x: y for x, y in v.items() if x != "#attributes" and x != "#text"}
        if k in out:
            out[k + "_children"] = rest
        else:
            out[k] = rest


def _data_value(out: dict, data: Any) -> None:
    """EventData ``Data`` element: named entries -> fields, unnamed -> ``Data``."""
    unnamed: list = []
    items = data if type(data) is list else (data,)
    for it in items:
        if type(it) is dict:
            a = it.get("#attributes")
            name = a.get("Name") if type(a) is dict else None
            text = it.get("#text")
            if name is not None:
                out[name] = text
            elif type(text) is list:
                unnamed.extend(text)
            elif text is not None or len(it) == 0 or (len(it) == 1 and a is not None):
                unnamed.append(text)
            else:  # unexpected structure: keep as-is
                unnamed.append(it)
        else:
            unnamed.append(it)
    if unnamed:
        prev = out.get("Data")
        if prev is not None:  # also a Data field/name elsewhere: don't lose it
            out["Data_unnamed"] = unnamed if len(unnamed) > 1 else unnamed[0]
        else:
            out["Data"] = unnamed if len(unnamed) > 1 else unnamed[0]


def _event_data(out: dict, ed: Any) -> None:
    if type(ed) is not dict:
        if ed is not None:
            if type(ed) is list:  # list of Data-like entries
                tmp: dict = {}
                _data_value(tmp, ed)
                _put_payload(out, tmp, "EventData_")
            else:
                out["EventData"] = ed
        return
    if "Data" not in ed and "#attributes" not in ed and "#text" not in ed:
        # common case (evtx package, named data already mapped)
        if "EventID" in ed or "Channel" in ed:
            _put_payload(out, ed, "EventData_")
        else:
            out.update(ed)
        return
    tmp = {}
    for k, v in ed.items():
        if k == "Data":
            _data_value(tmp, v)
        elif k == "#attributes":
            if type(v) is dict:
                _attrs_into(tmp, "EventData_", v)
            else:
                tmp["EventData_attributes"] = v
        elif k == "#text":
            tmp["EventData_text"] = v
        else:
            tmp[k] = v
    _put_payload(out, tmp, "EventData_")


def _user_data(out: dict, ud: Any) -> None:
    if type(ud) is not dict:
        if ud is not None:
            out["UserData"] = ud
        return
    tmp: dict = {}
    for child, cv in ud.items():
        if type(cv) is dict:
            for k, v in cv.items():
                if k == "#attributes":
                    if type(v) is dict:
                        _attrs_into(tmp, child + "_", v)
                elif k == "#text":
                    tmp[child] = v
                else:
                    tmp[k] = v
        elif child == "#attributes":
            if type(cv) is dict:
                _attrs_into(tmp, "UserData_", cv)
        else:
            tmp[child] = cv
    _put_payload(out, tmp, "UserData_")


# System elements that are plain values in the evtx package's output.
_SYS_PLAIN = frozenset(("EventID", "Version", "Level", "Task", "Opcode", "Keywords",
                        "EventRecordID", "Channel", "Computer"))
# System elements that carry only attributes: element -> {attr: output name}
_SYS_ATTR_ELEMS = tuple(
    (elem, {a: f"{elem}_{a}" for a in attrs})
    for elem, attrs in (
        ("Provider", ("Name", "Guid", "EventSourceName")),
        ("Execution", ("ProcessID", "ThreadID", "ProcessorID", "KernelTime", "UserTime")),
        ("Security", ("UserID",)),
        ("Correlation", ("ActivityID", "RelatedActivityID")),
    )
)
_PROVIDER_NAMES = _SYS_ATTR_ELEMS[0][1]
_EXECUTION_NAMES = _SYS_ATTR_ELEMS[1][1]
_SYS_KNOWN = _SYS_PLAIN | {"TimeCreated"} | {e for e, _ in _SYS_ATTR_ELEMS}


def _norm_evtx(record: dict, ev: dict) -> dict:
    sysd = ev["System"]
    if type(sysd) is not dict:
        raise NormalizeError("EVTX record has no 'System' element")
    out = sysd.copy()  # plain System values are kept as they are
    pop = out.pop
    v = pop("TimeCreated", None)
    if v is not None:
        a = v.get("#attributes") if type(v) is dict else None
        if a is not None and len(v) == 1 and len(a) == 1 and "SystemTime" in a:
            out["TimeCreated"] = a["SystemTime"]
        else:
            _system_slow(out, "TimeCreated", v)
    # unrolled for speed: Provider / Execution / Security / Correlation
    v = pop("Provider", None)
    if v is not None:
        a = v.get("#attributes") if type(v) is dict else None
        if type(a) is dict and len(v) == 1:
            for ak, av in a.items():
                out[_PROVIDER_NAMES.get(ak) or "Provider_" + ak] = av
        else:
            _system_slow(out, "Provider", v)
    v = pop("Execution", None)
    if v is not None:
        a = v.get("#attributes") if type(v) is dict else None
        if type(a) is dict and len(v) == 1:
            for ak, av in a.items():
                out[_EXECUTION_NAMES.get(ak) or "Execution_" + ak] = av
        else:
            _system_slow(out, "Execution", v)
    v = pop("Security", None)
    if v is not None:
        a = v.get("#attributes") if type(v) is dict else None
        if type(a) is dict and len(v) == 1 and len(a) == 1 and "UserID" in a:
            out["Security_UserID"] = a["UserID"]
        else:
            _system_slow(out, "Security", v)
    v = pop("Correlation", None)
    if v is not None:
        _system_slow(out, "Correlation", v)
    eid = out.get("EventID")
    if type(eid) is dict:
        del out["EventID"]
        _system_slow(out, "EventID", eid)
    if "TimeCreated" not in out or "Provider_Name" not in out:
        # unusual System layout (e.g. evtx_dump --separate-json-attributes:
        # "Provider_attributes": {...}); flatten unknown elements. Otherwise
        # unknown System elements are kept as they are (checking every key
        # costs more than the rest of the System handling).
        for k in sysd:
            if k not in _SYS_KNOWN and k in out:
                _system_slow(out, k, pop(k))
    eid = out.get("EventID")
    if eid is None:
        raise NormalizeError("EVTX record has no System/EventID")
    if type(eid) is not int:
        out["EventID"] = _event_id(eid)
    ch = out.get("Channel")
    if type(ch) is not str:
        out["Channel"] = "" if ch is None else str(ch)
    rid = out.get("EventRecordID")
    if rid is not None and type(rid) is not int:
        out["EventRecordID"] = _to_int(rid)
    tc = out.get("TimeCreated")
    if tc is not None and not (type(tc) is str and len(tc) == 27 and tc[26] == "Z"):
        out["TimeCreated"] = to_utc_iso(tc)
    _canon_guids(out)

    if len(ev) == 3 and "#attributes" in ev and len(record) == 1:
        ed = ev.get("EventData")
        if type(ed) is dict and "Data" not in ed and "#attributes" not in ed \
                and "#text" not in ed and "EventID" not in ed and "Channel" not in ed:
            out.update(ed)  # the common shape
            return out
    for k, v in ev.items():
        if k == "System" or k == "#attributes":
            continue
        if k == "EventData":
            _event_data(out, v)
        elif k == "UserData":
            _user_data(out, v)
        elif v is not None:
            out[k] = v  # e.g. ProcessingErrorData, RenderingInfo: kept nested
    if len(record) > 1:  # extra top-level keys next to "Event"
        for k, v in record.items():
            if k != "Event" and k not in out:
                out[k] = v
    return out


# --------------------------------------------------------------------------
# 2. Winlogbeat / Elastic Agent
# --------------------------------------------------------------------------

# winlog.<key> -> output name (scalar values)
_WINLOG_MAP = {
    "channel": "Channel",
    "event_id": "EventID",
    "computer_name": "Computer",
    "provider_name": "Provider_Name",
    "provider_guid": "Provider_Guid",
    "record_id": "EventRecordID",
    "version": "Version",
    "task": "Task",
    "opcode": "Opcode",
    "keywords": "Keywords",
    "level": "Level",
    "activity_id": "Correlation_ActivityID",
    "related_activity_id": "Correlation_RelatedActivityID",
}


def _unflatten_winlog(record: dict) -> tuple[dict, dict]:
    """Split dotted ``winlog.*`` keys into a nested winlog dict; return (winlog, rest).

    Rare path: the input (including a nested ``winlog`` next to dotted keys)
    is never modified.
    """
    wl_src = record.get("winlog")
    wl: dict = copy.deepcopy(wl_src) if type(wl_src) is dict else {}
    rest: dict = {}
    for k, v in record.items():
        if k[:7] != "winlog.":
            if k != "winlog":
                rest[k] = v
            continue
        sub = k[7:]
        if sub[:11] == "event_data." or sub[:10] == "user_data.":
            # payload field names are taken whole (they may contain dots)
            head, _, name = sub.partition(".")
            parts = [head, name]
        else:
            parts = sub.split(".")
        d = wl
        for p in parts[:-1]:
            nxt = d.get(p)
            if type(nxt) is not dict:
                nxt = d[p] = {}
            d = nxt
        d[parts[-1]] = v
    if wl_src is not None and type(wl_src) is not dict:
        rest["winlog"] = wl_src
    return wl, rest


def _norm_winlogbeat(record: dict) -> dict:
    wl = record.get("winlog")
    if type(wl) is dict:
        rest = None
        for k in record:
            if k[:7] == "winlog.":
                wl, rest = _unflatten_winlog(record)
                break
    else:
        wl, rest = _unflatten_winlog(record)
    out: dict = {}
    for k, v in wl.items():
        name = _WINLOG_MAP.get(k)
        if name is not None:
            if v is not None:
                out[name] = v
    proc = wl.get("process")
    if type(proc) is dict:
        if "pid" in proc:
            out["Execution_ProcessID"] = proc["pid"]
        th = proc.get("thread")
        if type(th) is dict and "id" in th:
            out["Execution_ThreadID"] = th["id"]
    user = wl.get("user")
    if type(user) is dict and "identifier" in user:
        out["Security_UserID"] = user["identifier"]

    if "EventID" not in out:
        evm = record.get("event")
        code = evm.get("code") if type(evm) is dict else record.get("event.code")
        if code is None:
            raise NormalizeError("winlogbeat record has no winlog.event_id / event.code")
        out["EventID"] = code
    out["EventID"] = _event_id(out["EventID"])
    ch = out.get("Channel")
    if type(ch) is not str:
        out["Channel"] = "" if ch is None else str(ch)
    if "Provider_Name" not in out:
        evm = record.get("event")
        prov = evm.get("provider") if type(evm) is dict else record.get("event.provider")
        if prov is not None:
            out["Provider_Name"] = prov
    if "Computer" not in out:
        host = record.get("host")
        hn = host.get("name") if type(host) is dict else record.get("host.name")
        if hn is not None:
            out["Computer"] = hn
    rid = out.get("EventRecordID")
    if rid is not None and type(rid) is not int:
        out["EventRecordID"] = _to_int(rid)
    _canon_guids(out)
    tc = wl.get("time_created")
    if tc is None:
        tc = record.get("@timestamp")
    if tc is None:
        evm = record.get("event")
        tc = evm.get("created") if type(evm) is dict else record.get("event.created")
    if tc is not None:
        out["TimeCreated"] = to_utc_iso(tc)

    ed = wl.get("event_data")
    if type(ed) is dict:
        _put_payload(out, ed, "EventData_")
    elif ed is not None:
        out["EventData"] = ed
    ud = wl.get("user_data")
    if type(ud) is dict:
        _put_payload(out, ud, "UserData_")
    elif ud is not None:
        out["UserData"] = ud

    # keep everything else: winlog metadata (nested) and other top-level keys
    meta = {k: v for k, v in wl.items() if k != "event_data" and k != "user_data"}
    if meta:
        out.setdefault("winlog", meta)
    src = record if rest is None else rest
    for k, v in src.items():
        if k != "winlog" and k not in out:
            out[k] = v
    return out


# --------------------------------------------------------------------------
# 3./4. flat records (NXLog, Mordor) and already normalised events
# --------------------------------------------------------------------------

_FLAT_EVENTID_ALIASES = ("EventId", "event_id", "EventCode", "eventid")
# canonical name -> source aliases (first present wins); originals are kept
_FLAT_ALIASES = (
    ("Computer", ("Hostname", "hostname", "computer_name", "ComputerName", "MachineName")),
    ("Provider_Name", ("SourceName", "ProviderName", "Provider", "provider_name")),
    ("EventRecordID", ("RecordNumber", "RecordId", "record_id")),
    ("Provider_Guid", ("ProviderGuid",)),
    ("Execution_ProcessID", ("ExecutionProcessID",)),
    ("Execution_ThreadID", ("ExecutionThreadID",)),
    ("Security_UserID", ("UserID",)),
    ("Correlation_ActivityID", ("ActivityID",)),
    ("Correlation_RelatedActivityID", ("RelatedActivityID",)),
    ("Channel", ("channel", "LogName", "log_name")),
)
_FLAT_TIME_KEYS = ("EventTime", "@timestamp", "TimeGenerated", "timestamp", "SystemTime")


def _is_canonical(r: dict) -> bool:
    if type(r.get("EventID")) is not int or type(r.get("Channel")) is not str:
        return False
    if "Computer" not in r or "Provider_Name" not in r:
        return False
    tc = r.get("TimeCreated")
    if tc is None:
        if "EventTime" in r or "@timestamp" in r:
            return False
    elif not (type(tc) is str and len(tc) == 27 and tc[26] == "Z"):
        return False
    rid = r.get("EventRecordID")
    if rid is not None and type(rid) is not int:
        return False
    return "EventData" not in r and "UserData" not in r


def _norm_flat(record: dict) -> dict:
    if _is_canonical(record):
        return record
    out = dict(record)
    eid = out.get("EventID")
    if eid is None:
        for a in _FLAT_EVENTID_ALIASES:
            eid = out.get(a)
            if eid is not None:
                break
        else:
            raise NormalizeError(
                "not an event: no 'Event', 'winlog' or 'EventID' key "
                f"(keys: {', '.join(list(map(str, record))[:8])})")
    out["EventID"] = _event_id(eid)
    for canon, aliases in _FLAT_ALIASES:
        if out.get(canon) is None:
            for a in aliases:
                v = out.get(a)
                if v is not None:
                    if type(v) is dict and canon == "Provider_Name":
                        # {"#attributes": {"Name": ..}} style Provider
                        a2 = v.get("#attributes")
                        v = (a2 if type(a2) is dict else v).get("Name")
                        if v is None:
                            continue
                    out[canon] = v
                    break
    ch = out.get("Channel")
    if type(ch) is not str:
        out["Channel"] = "" if ch is None else str(ch)
    rid = out.get("EventRecordID")
    if rid is not None and type(rid) is not int:
        out["EventRecordID"] = _to_int(rid)
    tc = out.get("TimeCreated")
    if tc is None:
        for a in _FLAT_TIME_KEYS:
            tc = out.get(a)
            if tc is not None:
                break
    if tc is not None:
        out["TimeCreated"] = to_utc_iso(tc)
    ed = out.get("EventData")
    if type(ed) is dict or type(ed) is list:
        del out["EventData"]
        _event_data(out, ed)
    ud = out.get("UserData")
    if type(ud) is dict:
        del out["UserData"]
        _user_data(out, ud)
    return out


# --------------------------------------------------------------------------

def normalize(record: dict) -> dict:
    """Normalise one decoded record into a flat event dict (see module doc).

    Raises NormalizeError when the record is not a Windows event.
    The input is not modified; an already normalised event is returned as-is.
    """
    if type(record) is not dict:
        raise NormalizeError(f"record is a JSON {type(record).__name__}, not an object")
    ev = record.get("Event")
    if ev is not None and type(ev) is dict and "System" in ev:
        return _norm_evtx(record, ev)
    if "winlog" in record or "winlog.event_id" in record or "winlog.channel" in record \
            or "winlog.provider_name" in record:
        return _norm_winlogbeat(record)
    if not record:
        raise NormalizeError("empty JSON object")
    return _norm_flat(record)
