"""A fake pywintrace (``import etw``) for Linux tests.

Mirrors the parts of pywintrace 0.2.0 that ``connectors/etw.py`` uses:

* ``etw.ETW(session_name=None, ring_buf_size=1024, max_str_len=1024, min_buffers=0,
  max_buffers=0, event_callback=None, task_name_filters=None, properties=None,
  providers=None, ignore_exists_error=True, event_id_filters=None,
  providers_event_id_filters=None, ...)`` with ``start()`` / ``stop()``
  (etw/etw.py: ``ETW.start`` = ``EventProvider.start`` (StartTraceW, then
  EnableTraceEx2 per provider) + ``EventConsumer.start``; ``ETW.stop`` =
  ``EventProvider.stop`` (EnableTraceEx2 disable, ControlTraceW STOP) +
  ``EventConsumer.stop``); a random uuid4 session name when none is given;
* ``etw.ProviderInfo(name, guid, level=4, any_keywords=None, all_keywords=None, params=None)``,
  ``etw.GUID("{...}")``, ``etw.etw.ProviderParameters(event_property, event_filters)`` whose
  ``.get()`` is the ENABLE_TRACE_PARAMETERS pointer to pass as ``params``;
* ``etw.etw.TraceProperties()`` with ``.get().contents`` (EVENT_TRACE_PROPERTIES:
  ``EventsLost``, ``RealTimeBuffersLost`` ...);
* ``etw.evntrace.ControlTraceW(TRACEHANDLE(0), name, props, code)`` returning a Win32
  status (0, or 4201 ERROR_WMI_INSTANCE_NOT_FOUND when no session has that name).

The callback receives exactly what pywintrace's ``EventConsumer._processEvent`` passes:
``(event_id, out)`` with ``out = {"EventHeader": {...}, "Task Name": ..., "Description": ...,
<properties>, "EventExtendedData": {...}}`` (see ``fakes/recordings.py``). As ETW does, the
user's ``SID`` is in ``EventExtendedData`` only for a provider enabled with
``EVENT_ENABLE_PROPERTY_SID`` (a recording's SID is dropped otherwise).

System-wide state (like ETW itself, sessions outlive the ETW object): ``SESSIONS``.
Test knobs: ``RECORDINGS`` (replayed to a session whose providers match, in order,
on its consumer thread), ``FAIL_ENABLE`` (EnableTraceEx2 fails after StartTraceW
succeeded: the session exists but start raises), ``FAIL_PROVIDER_STOP`` (the
provider-disable step of ``stop`` raises before the session is stopped), ``CALLS``.
"""
from __future__ import annotations

import sys
import threading
import types
import uuid

ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_ALREADY_EXISTS = 183
ERROR_WMI_INSTANCE_NOT_FOUND = 4201

SESSIONS: dict[str, "_Session"] = {}
RECORDINGS: list = []
CALLS: list[tuple[str, str]] = []
FAIL_ENABLE = False
FAIL_PROVIDER_STOP = False
_lock = threading.Lock()


class FakeWinError(OSError):
    """What ``ctypes.WinError(status)`` raises on Windows (an OSError with ``winerror``)."""

    def __init__(self, winerror: int, msg: str = ""):
        super().__init__(winerror, msg or f"[WinError {winerror}]")
        self.winerror = winerror


def reset() -> None:
    global FAIL_ENABLE, FAIL_PROVIDER_STOP
    with _lock:
        SESSIONS.clear()
        RECORDINGS.clear()
        CALLS.clear()
    FAIL_ENABLE = False
    FAIL_PROVIDER_STOP = False


class _Session:
    def __init__(self, name: str, providers: list):
        self.name = name
        self.providers = providers
        self.events_lost = 0
        self.realtime_buffers_lost = 0
        self.consumers: list["ETW"] = []


def orphan(name: str, events_lost: int = 7) -> None:
    """Leave a session behind, as a crashed collector would."""
    with _lock:
        s = SESSIONS[name] = _Session(name, [])
        s.events_lost = events_lost


class GUID(str):
    """pywintrace's GUID is a ctypes structure; str() gives the braced form."""

    def __new__(cls, value: str):
        return super().__new__(cls, value.upper() if value.startswith("{") else "{" + value.upper() + "}")


class ProviderInfo:
    def __init__(self, name, guid, level=4, any_keywords=None, all_keywords=None, params=None):
        self.name, self.guid, self.level = name, guid, level
        self.any_bitmask = any_keywords or 0
        self.all_bitmask = all_keywords or 0
        self.params = params


EVENT_ENABLE_PROPERTY_SID = 0x1
EVENT_HEADER_FLAG_EXTENDED_INFO = 0x1


class _EnableParams:
    def __init__(self, event_property: int):
        self.Version = 2
        self.EnableProperty = event_property
        self.FilterDescCount = 0


class ProviderParameters:
    def __init__(self, event_property, event_filters):
        self._props = _Ptr(_EnableParams(event_property))
        self._props.contents.FilterDescCount = len(event_filters)

    def get(self):
        return self._props


class _Props:
    def __init__(self):
        self.EventsLost = 0
        self.RealTimeBuffersLost = 0
        self.BuffersWritten = 0
        self.LoggerThreadId = 0


class _Ptr:
    def __init__(self, contents):
        self.contents = contents


class TraceProperties:
    def __init__(self, ring_buf_size=1024, max_str_len=1024, min_buffers=0, max_buffers=0, props=None):
        self._ptr = _Ptr(_Props())

    def get(self):
        return self._ptr


class TRACEHANDLE(int):
    pass


EVENT_TRACE_CONTROL_QUERY = 0
EVENT_TRACE_CONTROL_STOP = 1
EVENT_TRACE_CONTROL_UPDATE = 2


def ControlTraceW(handle, name, props_ptr, code):  # noqa: N802 - the Win32 name
    with _lock:
        CALLS.append(("control_stop" if code == EVENT_TRACE_CONTROL_STOP else "control_query", name))
        s = SESSIONS.get(name)
        if s is None:
            return ERROR_WMI_INSTANCE_NOT_FOUND
        props_ptr.contents.EventsLost = s.events_lost
        props_ptr.contents.RealTimeBuffersLost = s.realtime_buffers_lost
        if code == EVENT_TRACE_CONTROL_STOP:
            del SESSIONS[name]
            for c in s.consumers:
                c._end.set()
        return ERROR_SUCCESS


class ETW:
    def __init__(self, session_name=None, ring_buf_size=1024, max_str_len=1024, min_buffers=0,
                 max_buffers=0, event_callback=None, task_name_filters=None, properties=None,
                 providers=None, ignore_exists_error=True, event_id_filters=None,
                 providers_event_id_filters=None, pid_whitelist=None, pid_blacklist=None,
                 callback_data_flag=0, callback_wait_time=0.0, trace_logfile=None):
        self.session_name = session_name if session_name is not None else str(uuid.uuid4())
        self.providers = providers or []
        self.event_callback = event_callback
        self.ignore_exists_error = ignore_exists_error
        self.event_id_filters = event_id_filters or []
        self.providers_event_id_filters = providers_event_id_filters or {}
        self.ring_buf_size = ring_buf_size
        self.running = False
        self._end = threading.Event()
        self._thread: threading.Thread | None = None
        self.replayed = threading.Event()
        self.delivered = 0

    def start(self):
        with _lock:
            CALLS.append(("start", self.session_name))
            if self.session_name in SESSIONS:
                if not self.ignore_exists_error:
                    raise FakeWinError(ERROR_ALREADY_EXISTS, "Cannot create a file when that file already exists.")
                s = SESSIONS[self.session_name]      # pywintrace attaches to the existing session
            else:
                s = SESSIONS[self.session_name] = _Session(self.session_name, self.providers)
            self.running = True
            if FAIL_ENABLE:                           # StartTraceW done, EnableTraceEx2 fails
                raise FakeWinError(ERROR_ACCESS_DENIED, "Access is denied.")
            s.consumers.append(self)
        self._thread = threading.Thread(target=self._replay, daemon=True)
        self._thread.start()

    def _wanted(self, out: dict) -> bool:
        hdr = out["EventHeader"]
        guid = str(hdr["ProviderId"]).upper()
        if guid not in {str(p.guid).upper() for p in self.providers}:
            return False
        eid = hdr["EventDescriptor"]["Id"]
        if self.event_id_filters and eid not in self.event_id_filters:
            return False
        ids = self.providers_event_id_filters.get(guid)
        return not (ids and eid not in ids)

    def _replay(self):
        for rec in list(RECORDINGS):
            if self._end.is_set():
                break
            self.deliver(rec)
        self.replayed.set()

    def _provider(self, out: dict):
        guid = str(out["EventHeader"]["ProviderId"]).upper()
        return next((p for p in self.providers if str(p.guid).upper() == guid), None)

    def deliver(self, rec):
        event_id, out = rec
        ext = out.get("EventExtendedData")
        if isinstance(ext, dict) and "SID" in ext:
            p = self._provider(out)
            params = getattr(p, "params", None)
            if not (params and params.contents.EnableProperty & EVENT_ENABLE_PROPERTY_SID):
                ext = {k: v for k, v in ext.items() if k != "SID"}
                out = {**out, "EventExtendedData": ext} if ext else \
                    {k: v for k, v in out.items() if k != "EventExtendedData"}
        if self._wanted(out) and self.event_callback is not None:
            try:
                self.event_callback((event_id, out))
            except Exception as e:  # noqa: BLE001 - pywintrace logs callback errors
                CALLS.append(("callback_error", repr(e)))
            self.delivered += 1

    def stop(self):
        CALLS.append(("stop", self.session_name))
        if FAIL_PROVIDER_STOP:
            raise FakeWinError(ERROR_ACCESS_DENIED, "EnableTraceEx2 disable failed")
        self.running = False
        ControlTraceW(TRACEHANDLE(0), self.session_name, TraceProperties().get(), EVENT_TRACE_CONTROL_STOP)
        self._end.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def query(self):
        p = TraceProperties()
        ControlTraceW(TRACEHANDLE(0), self.session_name, p.get(), EVENT_TRACE_CONTROL_QUERY)
        return p.get().contents

    def control_stop(self, trace_properties):
        ControlTraceW(TRACEHANDLE(0), self.session_name, trace_properties.get(), EVENT_TRACE_CONTROL_STOP)


def running_sessions() -> list["ETW"]:
    with _lock:
        return [c for s in SESSIONS.values() for c in s.consumers]


# submodules: ``etw.etw`` (TraceProperties lives there) and ``etw.evntrace``
etw = types.ModuleType("etw.etw")
etw.TraceProperties = TraceProperties
etw.ETW = ETW
etw.ProviderInfo = ProviderInfo
etw.ProviderParameters = ProviderParameters
evntrace = types.ModuleType("etw.evntrace")
evntrace.ControlTraceW = ControlTraceW
evntrace.TRACEHANDLE = TRACEHANDLE
evntrace.EVENT_TRACE_CONTROL_QUERY = EVENT_TRACE_CONTROL_QUERY
evntrace.EVENT_TRACE_CONTROL_STOP = EVENT_TRACE_CONTROL_STOP
__path__: list[str] = []          # a package, so ``import etw.evntrace`` resolves via sys.modules
_ = sys
