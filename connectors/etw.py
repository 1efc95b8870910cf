"""The ONE pywintrace adapter: a real-time ETW session feeding canonical events.

pywintrace (``import etw``, 0.2.0) is imported lazily, only when a session is
started: on non-Windows systems importing it fails with ``AttributeError``
(``ctypes.windll``), not ``ImportError``, so both are caught and reported as
:class:`EtwUnavailable`.

Session hygiene (ETW sessions are a system-wide resource: 64 of them, and they
survive the process that started them):

* one fixed, documented session name, :data:`SESSION_NAME` (``sigstream-etw``;
  ``logman query -ets`` shows it) instead of pywintrace's random uuid4 name;
* before starting, a session of that name left by a crashed run is stopped
  (``ControlTraceW(..., EVENT_TRACE_CONTROL_STOP)``), so it is reused, never
  leaked, and never silently attached to with stale providers
  (``ignore_exists_error=False``);
* :meth:`EtwSource.stop` stops the session (and, should pywintrace's own stop
  fail half-way, stops it by name); a failing :meth:`EtwSource.start` stops
  what it started before raising;
* ``EventsLost`` / ``RealTimeBuffersLost`` of the session are queried
  (``EVENT_TRACE_CONTROL_QUERY``) by :meth:`EtwSource.check` and exposed in
  :meth:`EtwSource.stats`; a session stopped from outside is restarted by
  ``check``.

Each provider is enabled with ``EVENT_ENABLE_PROPERTY_SID`` (``ProviderParameters``), so
every event carries the user's SID in its extended data, as the event log's
``<Security UserID>`` does.

Values: pywintrace gives properties as TdhFormatProperty's strings (ints/bools for the
integer/boolean out-types) and the EventHeader as ctypes ints;
:func:`connectors.winevent.normalize_etw` makes the canonical event (the event log's
document of the same event, see :mod:`connectors.normalize`).
"""
from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from sigstream.connectors.winevent import normalize_etw

log = logging.getLogger(__name__)

SESSION_NAME = "sigstream-etw"

ERROR_SUCCESS = 0
ERROR_MORE_DATA = 234
ERROR_WMI_INSTANCE_NOT_FOUND = 4201
EVENT_TRACE_CONTROL_QUERY = 0
EVENT_TRACE_CONTROL_STOP = 1
EVENT_ENABLE_PROPERTY_SID = 0x1   # evntcons.h: the user's SID in each event's extended data

TRACE_LEVEL_INFORMATION = 4
TRACE_LEVEL_VERBOSE = 5


class EtwUnavailable(RuntimeError):
    """pywintrace cannot be used here (not Windows, or not installed)."""


@dataclass
class EtwProvider:
    name: str
    guid: str                         # "{A0C1853B-5C40-4B15-8766-3CF1C58F985A}"
    level: int = TRACE_LEVEL_INFORMATION
    any_keywords: int = 0             # 0 = every keyword
    all_keywords: int = 0
    event_ids: list[int] = field(default_factory=list)   # [] = every event id


# Providers by the names used in the agent configuration.
KNOWN_PROVIDERS: dict[str, EtwProvider] = {
    # 4104 script blocks are Verbose (level 5); at level 3 only "suspicious" auto-logged blocks come.
    "powershell": EtwProvider("Microsoft-Windows-PowerShell", "{A0C1853B-5C40-4B15-8766-3CF1C58F985A}",
                              TRACE_LEVEL_VERBOSE, event_ids=[4103, 4104]),
    "powershell-core": EtwProvider("PowerShellCore", "{F90714A8-5509-434A-BF6D-B1624C8A19A2}",
                                   TRACE_LEVEL_VERBOSE, event_ids=[4103, 4104]),
    "amsi": EtwProvider("Microsoft-Antimalware-Scan-Interface", "{2A576B87-09A7-520E-C21A-4942F0271D67}",
                        TRACE_LEVEL_VERBOSE, event_ids=[1101]),
    "wmi-activity": EtwProvider("Microsoft-Windows-WMI-Activity", "{1418EF04-B0B4-4623-BF7E-D74AB47BBDAA}",
                                TRACE_LEVEL_VERBOSE, event_ids=[5857, 5858, 5859, 5860, 5861]),
    "sysmon": EtwProvider("Microsoft-Windows-Sysmon", "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}",
                          TRACE_LEVEL_VERBOSE),
}
DEFAULT_PROVIDERS = ("powershell", "powershell-core")


def load_etw() -> Any:
    """``import etw`` (pywintrace), or EtwUnavailable with the reason."""
    try:
        mod = importlib.import_module("etw")
        importlib.import_module("etw.evntrace")
        importlib.import_module("etw.etw")
    except (ImportError, AttributeError, OSError) as e:
        raise EtwUnavailable(
            f"pywintrace (import etw) is not usable here: {type(e).__name__}: {e} "
            "(ETW needs Windows and `pip install pywintrace`)") from e
    return mod


Emit = Callable[[dict], Any]


class EtwSource:
    """Real-time ETW session -> ``emit(event)`` for each canonical event.

    ``emit`` runs on pywintrace's consumer thread; it must return quickly (the
    agent's emit waits a bounded time for queue room, then sheds and counts).
    """

    kind = "etw"

    def __init__(self, providers: list[EtwProvider], emit: Emit, computer: str, *,
                 session_name: str = SESSION_NAME, ring_buf_size_kb: int = 1024,
                 min_buffers: int = 0, max_buffers: int = 0, etw_module: Any = None,
                 name: str = "etw"):
        if not providers:
            raise ValueError("no ETW providers configured")
        self.name = name
        self.providers = providers
        self.emit = emit
        self.computer = computer
        self.session_name = session_name
        self.ring_buf_size_kb = ring_buf_size_kb
        self.min_buffers = min_buffers
        self.max_buffers = max_buffers
        self._etw = etw_module
        self._job: Any = None
        self._lock = threading.Lock()
        self._counts = dict(events=0, parse_errors=0, orphans_stopped=0, restarts=0)
        self._lost = dict(events_lost=0, realtime_buffers_lost=0)
        self._lost_base = dict(events_lost=0, realtime_buffers_lost=0)   # from earlier sessions
        self.running = False

    # ------------------------------------------------------------ control --
    def _mod(self) -> Any:
        if self._etw is None:
            self._etw = load_etw()
        return self._etw

    def _control(self, code: int) -> tuple[int, Any]:
        """ControlTraceW by session name; (status, EVENT_TRACE_PROPERTIES contents)."""
        self._mod()  # imports pywintrace (a clear error off Windows) before its submodules
        et = importlib.import_module("etw.evntrace")
        props = importlib.import_module("etw.etw").TraceProperties()
        status = et.ControlTraceW(et.TRACEHANDLE(0), self.session_name, props.get(), code)
        return status, props.get().contents

    def stop_orphan(self) -> bool:
        """Stop a session named ``session_name`` left over by an earlier run. True if one was."""
        status, props = self._control(EVENT_TRACE_CONTROL_STOP)
        if status == ERROR_SUCCESS:
            self._counts["orphans_stopped"] += 1
            log.warning("stopped an orphaned ETW session %r left by an earlier run "
                        "(it had lost %s events)", self.session_name, getattr(props, "EventsLost", "?"))
            return True
        if status != ERROR_WMI_INSTANCE_NOT_FOUND:
            log.warning("stopping a possible orphaned ETW session %r: status %s", self.session_name, status)
        return False

    def start(self) -> None:
        mod = self._mod()
        with self._lock:
            if self.running:
                return
            self.stop_orphan()
            infos = []
            id_filters: dict[str, list[int]] = {}
            params_cls = importlib.import_module("etw.etw").ProviderParameters
            for p in self.providers:
                # one ENABLE_TRACE_PARAMETERS per provider (pywintrace writes SourceId into it)
                sid = params_cls(EVENT_ENABLE_PROPERTY_SID, []).get()
                infos.append(mod.ProviderInfo(p.name, mod.GUID(p.guid), p.level,
                                              p.any_keywords or None, p.all_keywords or None, sid))
                if p.event_ids:
                    id_filters[p.guid.upper()] = list(p.event_ids)
            self._job = mod.ETW(session_name=self.session_name, ring_buf_size=self.ring_buf_size_kb,
                                min_buffers=self.min_buffers, max_buffers=self.max_buffers,
                                providers=infos, event_callback=self._on_event,
                                ignore_exists_error=False, providers_event_id_filters=id_filters)
            try:
                self._job.start()
            except BaseException:
                log.error("starting ETW session %r failed; stopping what was started", self.session_name)
                self._stop_job()
                raise
            self.running = True
            log.info("ETW session %r started: %s", self.session_name,
                     ", ".join(f"{p.name} (level {p.level})" for p in self.providers))

    def _stop_job(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            try:
                job.stop()
            except Exception as e:  # noqa: BLE001 - make sure the session goes anyway
                log.warning("pywintrace stop of %r failed (%s: %s); stopping the session by name",
                            self.session_name, type(e).__name__, e)
        try:
            status, _ = self._control(EVENT_TRACE_CONTROL_STOP)
            if status == ERROR_SUCCESS:
                log.info("ETW session %r stopped by name", self.session_name)
        except Exception as e:  # noqa: BLE001
            log.error("could not stop ETW session %r: %s", self.session_name, e)

    def stop(self) -> None:
        with self._lock:
            if self._job is not None or self.running:
                self.check(restart=False)
                self._lost_base = dict(self._lost)
            self.running = False
            self._stop_job()

    def check(self, restart: bool = True) -> None:
        """Refresh EventsLost; restart the session if something stopped it from outside."""
        if not self.running:
            return
        try:
            status, props = self._control(EVENT_TRACE_CONTROL_QUERY)
        except Exception as e:  # noqa: BLE001
            log.warning("ETW session query failed: %s", e)
            return
        if status in (ERROR_SUCCESS, ERROR_MORE_DATA):
            self._lost["events_lost"] = self._lost_base["events_lost"] + int(getattr(props, "EventsLost", 0))
            self._lost["realtime_buffers_lost"] = (self._lost_base["realtime_buffers_lost"]
                                                   + int(getattr(props, "RealTimeBuffersLost", 0)))
        elif status == ERROR_WMI_INSTANCE_NOT_FOUND and restart:
            log.error("ETW session %r disappeared (stopped from outside?); restarting it", self.session_name)
            self._counts["restarts"] += 1
            self._lost_base = dict(self._lost)
            with self._lock:
                self.running = False
                self._stop_job()
            self.start()

    # ------------------------------------------------------------- events --
    def _on_event(self, record: Any) -> None:
        try:
            ev = normalize_etw(record, self.computer)
        except Exception as e:  # noqa: BLE001 - never raise into pywintrace's thread
            self._counts["parse_errors"] += 1
            if self._counts["parse_errors"] <= 10:
                log.warning("unparseable ETW event: %s: %s", type(e).__name__, e)
            return
        self._counts["events"] += 1
        self.emit(ev)

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self._counts)
        s.update(self._lost)
        s["session"] = self.session_name
        s["running"] = self.running
        return s
