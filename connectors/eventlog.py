"""Windows event log channel source (Sysmon by default) with a persisted bookmark.

pywin32's ``win32evtlog.EvtSubscribe`` in the pull model (a signal event from
``win32event.CreateEvent``, then ``EvtNext`` until it returns nothing), each
event rendered with ``EvtRender(h, EvtRenderEventXml)`` and normalised by
:func:`connectors.winevent.parse_event_xml`.

Bookmark (no loss across restarts, no duplicates in normal operation):

* each emitted event carries an ``ack`` callback; the agent calls it once the
  event is handed to the publisher (sent or spooled to disk). Only acknowledged
  record ids move the bookmark, so an event still in the agent's memory queue
  at a crash is read again after restart.
* the bookmark is the event log's own XML,
  ``<BookmarkList><Bookmark Channel='..' RecordId='N' IsCurrent='true'/></BookmarkList>``,
  written atomically (temp file + ``os.replace``) at most every
  ``persist_interval_s`` and on stop; on start the subscription resumes with
  ``EvtSubscribeStartAfterBookmark`` right after record N. Events written while
  the agent was down are therefore read after restart.
* without a bookmark file the first run starts at the oldest record
  (``start_at: oldest``, default) or only new events (``future``).
* a jump in record ids (the log wrapped and overwrote records before they
  were read; only checked with the default query ``*``) is logged and counted
  in ``gap_records``.

Unreadable records are never dropped silently: XML that the reader cannot recover
(:mod:`connectors.xml_events` already recovers control characters and other characters
XML forbids) is counted (``unreadable``, also in ``parse_errors``) and appended to the
dead-letter file ``<state_dir>/unreadable-<channel>.jsonl`` (one JSON object a line:
``time``, ``channel``, ``record_id``, ``reason``, ``raw``: the rendered XML, first
``DEAD_LETTER_RAW_CHARS`` characters); the bookmark then moves past the record.

At-least-once: a crash between publishing and the next bookmark write re-reads
up to ``persist_interval_s`` of events; their envelope ``event_id`` is stable
(Computer, Channel, EventRecordID ...), so consumers de-duplicate.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sigstream.connectors.winevent import parse_event_xml

log = logging.getLogger(__name__)

# win32evtlog constants (winevt.h)
EvtSubscribeToFutureEvents = 1
EvtSubscribeStartAtOldestRecord = 2
EvtSubscribeStartAfterBookmark = 3
EvtRenderEventXml = 1
WAIT_OBJECT_0 = 0

SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"
DEAD_LETTER_RAW_CHARS = 64 * 1024

_RID_RE = re.compile(r"RecordId\s*=\s*['\"](\d+)['\"]")
_XML_RID_RE = re.compile(r"<EventRecordID>\s*(\d+)\s*</EventRecordID>")


class EventLogUnavailable(RuntimeError):
    """pywin32's win32evtlog cannot be used here."""


def load_win32() -> tuple[Any, Any]:
    try:
        return importlib.import_module("win32evtlog"), importlib.import_module("win32event")
    except (ImportError, AttributeError, OSError) as e:
        raise EventLogUnavailable(
            f"pywin32 (win32evtlog) is not usable here: {type(e).__name__}: {e} "
            "(the event log source needs Windows and `pip install pywin32`)") from e


def bookmark_xml(channel: str, record_id: int) -> str:
    ch = channel.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
    return (f"<BookmarkList>\r\n  <Bookmark Channel='{ch}' RecordId='{record_id}' "
            f"IsCurrent='true'/>\r\n</BookmarkList>")


def bookmark_record_id(xml: str) -> int | None:
    m = _RID_RE.search(xml or "")
    return int(m.group(1)) if m else None


Emit = Callable[[dict, Callable[[], None] | None], Any]


class EventLogSource:
    """Subscribe to ``channel``; ``emit(event, ack)`` per event, from this source's thread."""

    kind = "eventlog"

    def __init__(self, channel: str, emit: Emit, state_dir: str | os.PathLike, *,
                 query: str = "*", start_at: str = "oldest", batch_size: int = 64,
                 wait_ms: int = 1000, persist_interval_s: float = 2.0, name: str | None = None,
                 modules: tuple[Any, Any] | None = None):
        if start_at not in ("oldest", "future"):
            raise ValueError(f"start_at must be 'oldest' or 'future', not {start_at!r}")
        self.channel = channel
        self.name = name or f"eventlog:{channel}"
        self.emit = emit
        self.query = query or "*"
        self.start_at = start_at
        self.batch_size = batch_size
        self.wait_ms = wait_ms
        self.persist_interval_s = persist_interval_s
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", channel)
        self.bookmark_path = Path(state_dir) / f"bookmark-{safe}.xml"
        self.dead_letter_path = Path(state_dir) / f"unreadable-{safe}.jsonl"
        self._modules = modules
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._acked: int | None = None          # highest record id handed to the publisher
        self._persisted: int | None = None
        self._last_persist = 0.0
        self._last_read: int | None = None
        self._counts = dict(events=0, parse_errors=0, unreadable=0, gap_records=0, resubscribes=0, acked=0)
        self.error: BaseException | None = None

    # ----------------------------------------------------------- bookmark --
    def load_bookmark(self) -> int | None:
        try:
            return bookmark_record_id(self.bookmark_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("cannot read bookmark %s: %s; starting as if there were none", self.bookmark_path, e)
            return None

    def persist_bookmark(self, force: bool = False) -> None:
        with self._lock:
            rid = self._acked
            if rid is None or rid == self._persisted:
                return
            now = time.monotonic()
            if not force and now - self._last_persist < self.persist_interval_s:
                return
            self._last_persist = now
        self.bookmark_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.bookmark_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(bookmark_xml(self.channel, rid))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.bookmark_path)
        with self._lock:
            self._persisted = rid

    def _ack(self, rid: int) -> None:
        with self._lock:
            self._counts["acked"] += 1
            if self._acked is None or rid > self._acked:
                self._acked = rid
        self.persist_bookmark()

    # ------------------------------------------------------------ control --
    def start(self) -> None:
        if self._modules is None:
            self._modules = load_win32()
        self._stop.clear()
        start_rid = self.load_bookmark()
        self._acked = self._persisted = self._last_read = start_rid
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.persist_bookmark(force=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _subscribe(self, evt: Any, ev_mod: Any, signal: Any) -> Any:
        rid = self._last_read
        if rid is not None:
            bm = evt.EvtCreateBookmark(bookmark_xml(self.channel, rid))
            flags = EvtSubscribeStartAfterBookmark
            log.info("%s: resuming after record %d", self.name, rid)
        else:
            bm = None
            flags = EvtSubscribeStartAtOldestRecord if self.start_at == "oldest" else EvtSubscribeToFutureEvents
            log.info("%s: no bookmark, starting at the %s record", self.name,
                     "oldest" if flags == EvtSubscribeStartAtOldestRecord else "next new")
        return evt.EvtSubscribe(self.channel, flags, SignalEvent=signal, Query=self.query, Bookmark=bm)

    def _run(self) -> None:
        evt, ev_mod = self._modules
        signal = ev_mod.CreateEvent(None, 0, 0, None)
        sub = None
        backoff = 1.0
        try:
            while not self._stop.is_set():
                try:
                    if sub is None:
                        sub = self._subscribe(evt, ev_mod, signal)
                    handles = evt.EvtNext(sub, self.batch_size, 0, 0)
                    if not handles:
                        ev_mod.WaitForSingleObject(signal, self.wait_ms)
                        continue
                    for h in handles:
                        self._one(evt, h)
                    backoff = 1.0
                except Exception as e:  # noqa: BLE001 - pywintypes.error, stale query, ...
                    if getattr(e, "winerror", None) == 259:        # ERROR_NO_MORE_ITEMS
                        ev_mod.WaitForSingleObject(signal, self.wait_ms)
                        continue
                    self._counts["resubscribes"] += 1
                    log.error("%s: %s: %s; resubscribing after record %s in %.0fs", self.name,
                              type(e).__name__, e, self._last_read, backoff)
                    sub = None
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 60.0)
        except BaseException as e:  # noqa: BLE001
            self.error = e
            log.exception("%s: source thread failed", self.name)
        finally:
            for h in (sub, signal):
                close = getattr(h, "Close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001
                        pass

    def _one(self, evt: Any, h: Any) -> None:
        xml = evt.EvtRender(h, EvtRenderEventXml)
        try:
            ev = parse_event_xml(xml)
        except Exception as e:  # noqa: BLE001
            self._counts["parse_errors"] += 1
            self._counts["unreadable"] += 1
            m = _XML_RID_RE.search(xml if isinstance(xml, str) else "")
            rid = int(m.group(1)) if m else None
            self._dead_letter(xml, rid, f"{type(e).__name__}: {e}")
            if rid is not None:
                self._last_read = rid
                self._ack(rid)
            return
        rid = ev.get("EventRecordID")
        if type(rid) is int:
            prev = self._last_read
            if prev is not None and rid > prev + 1 and self.query == "*":
                self._counts["gap_records"] += rid - prev - 1
                log.error("%s: records %d..%d were overwritten before they could be read "
                          "(log too small or agent down too long)", self.name, prev + 1, rid - 1)
            self._last_read = rid
            self._counts["events"] += 1
            self.emit(ev, lambda r=rid: self._ack(r))
        else:
            self._counts["events"] += 1
            self.emit(ev, None)

    def _dead_letter(self, xml: Any, rid: int | None, reason: str) -> None:
        raw = xml if isinstance(xml, str) else repr(xml)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "channel": self.channel,
                 "record_id": rid, "reason": reason, "raw": raw[:DEAD_LETTER_RAW_CHARS]}
        try:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.dead_letter_path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(json.dumps(entry, ensure_ascii=True) + "\n")
            log.warning("%s: unreadable event XML, record %s (%s); kept in %s", self.name, rid, reason,
                        self.dead_letter_path)
        except OSError as e:
            log.error("%s: unreadable event XML, record %s (%s); cannot write %s (%s): %.2000r",
                      self.name, rid, reason, self.dead_letter_path, e, raw)

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self._counts)
        s.update(channel=self.channel, dead_letter=str(self.dead_letter_path), last_read_record=self._last_read, bookmark_record=self._persisted,
                 running=self.running)
        return s
