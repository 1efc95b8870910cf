"""A fake pywin32 ``win32evtlog`` serving rendered event XML from in-memory channels.

Mirrors the pywin32 calls the event-log source makes (pywin32 ``win32evtlog`` docs):

* ``EvtSubscribe(ChannelPath, Flags, SignalEvent=None, Callback=None, Context=None,
  Query=None, Session=None, Bookmark=None)`` -> subscription handle; flags
  ``EvtSubscribeToFutureEvents`` (1), ``EvtSubscribeStartAtOldestRecord`` (2),
  ``EvtSubscribeStartAfterBookmark`` (3); a bookmark whose record is gone (log
  wrapped) starts at the oldest record still there, as without
  ``EvtSubscribeStrict``;
* ``EvtNext(ResultSet, Count, Timeout=-1, Flags=0)`` -> tuple of event handles, ``()``
  when there are no more (pywin32 maps ERROR_NO_MORE_ITEMS to an empty tuple);
* ``EvtRender(Event, Flags)``: ``EvtRenderEventXml`` (1) -> the event XML,
  ``EvtRenderBookmark`` (2) -> ``<BookmarkList>`` XML;
* ``EvtCreateBookmark(BookmarkXml=None)``, ``EvtUpdateBookmark(Bookmark, Event)``.

The channel contents are rendered XML strings exactly as ``EvtRender(...,
EvtRenderEventXml)`` returns them (see ``fakes/recordings.py``); the record id is
read from ``<EventRecordID>``. ``write(channel, xml)`` appends (signals subscribers),
``overwrite_oldest(channel, n)`` simulates a wrapped log. ``CALLS`` records subscriptions.
"""
from __future__ import annotations

import re
import threading

EvtSubscribeToFutureEvents = 1
EvtSubscribeStartAtOldestRecord = 2
EvtSubscribeStartAfterBookmark = 3
EvtSubscribeStrict = 0x10000
EvtRenderEventValues = 0
EvtRenderEventXml = 1
EvtRenderBookmark = 2

ERROR_EVT_CHANNEL_NOT_FOUND = 15007

CHANNELS: dict[str, list[str]] = {}
CALLS: list[tuple] = []
_SUBS: list["_Subscription"] = []
_lock = threading.Lock()
_RID = re.compile(r"<EventRecordID>(\d+)</EventRecordID>")
_BM_RID = re.compile(r"RecordId='(\d+)'")


class FakeEvtError(Exception):
    """pywintypes.error stand-in: (winerror, funcname, strerror)."""

    def __init__(self, winerror: int, func: str, msg: str):
        super().__init__(winerror, func, msg)
        self.winerror = winerror


def reset() -> None:
    with _lock:
        CHANNELS.clear()
        CALLS.clear()
        _SUBS.clear()


def record_id(xml: str) -> int:
    return int(_RID.search(xml).group(1))


def write(channel: str, xml: str) -> None:
    with _lock:
        CHANNELS.setdefault(channel, []).append(xml)
        subs = [s for s in _SUBS if s.channel == channel and not s.closed]
    for s in subs:
        if s.signal is not None:
            s.signal._ev.set()


def overwrite_oldest(channel: str, n: int) -> None:
    with _lock:
        del CHANNELS[channel][:n]


class _Handle:
    closed = False

    def Close(self):  # noqa: N802
        self.closed = True


class _EventHandle(_Handle):
    def __init__(self, channel: str, xml: str):
        self.channel, self.xml = channel, xml


class _Bookmark(_Handle):
    def __init__(self, channel: str | None, rid: int | None):
        self.channel, self.rid = channel, rid


class _Subscription(_Handle):
    def __init__(self, channel, last_rid, signal, query):
        self.channel, self.last_rid, self.signal, self.query = channel, last_rid, signal, query

    def Close(self):  # noqa: N802
        self.closed = True
        with _lock:
            if self in _SUBS:
                _SUBS.remove(self)


def EvtSubscribe(ChannelPath, Flags, SignalEvent=None, Callback=None, Context=None,  # noqa: N802,N803
                 Query=None, Session=None, Bookmark=None):
    with _lock:
        if ChannelPath not in CHANNELS:
            raise FakeEvtError(ERROR_EVT_CHANNEL_NOT_FOUND, "EvtSubscribe",
                               "The specified channel could not be found.")
        recs = CHANNELS[ChannelPath]
        mode = Flags & 0xFFFF
        if mode == EvtSubscribeStartAfterBookmark:
            if Bookmark is None:
                raise FakeEvtError(87, "EvtSubscribe", "The parameter is incorrect.")
            last = Bookmark.rid
        elif mode == EvtSubscribeStartAtOldestRecord:
            last = -1
        else:
            last = record_id(recs[-1]) if recs else -1
        CALLS.append(("subscribe", ChannelPath, mode, None if Bookmark is None else Bookmark.rid, Query))
        sub = _Subscription(ChannelPath, last, SignalEvent, Query)
        _SUBS.append(sub)
    if SignalEvent is not None:
        SignalEvent._ev.set()
    return sub


def EvtNext(ResultSet, Count, Timeout=-1, Flags=0):  # noqa: N802,N803
    with _lock:
        out = []
        for xml in CHANNELS.get(ResultSet.channel, []):
            if record_id(xml) > ResultSet.last_rid:
                out.append(_EventHandle(ResultSet.channel, xml))
                if len(out) >= Count:
                    break
        if out:
            ResultSet.last_rid = record_id(out[-1].xml)
        return tuple(out)


def EvtRender(Event, Flags):  # noqa: N802,N803
    if Flags == EvtRenderEventXml:
        return Event.xml
    if Flags == EvtRenderBookmark:
        return (f"<BookmarkList>\r\n  <Bookmark Channel='{Event.channel}' RecordId='{Event.rid}' "
                f"IsCurrent='true'/>\r\n</BookmarkList>")
    raise FakeEvtError(87, "EvtRender", "The parameter is incorrect.")


def EvtCreateBookmark(BookmarkXml=None):  # noqa: N802,N803
    if not BookmarkXml:
        return _Bookmark(None, None)
    m = _BM_RID.search(BookmarkXml)
    ch = re.search(r"Channel='([^']*)'", BookmarkXml)
    if not m or not ch:
        raise FakeEvtError(15005, "EvtCreateBookmark", "bookmark XML is invalid")
    return _Bookmark(ch.group(1), int(m.group(1)))


def EvtUpdateBookmark(Bookmark, Event):  # noqa: N802,N803
    Bookmark.channel, Bookmark.rid = Event.channel, record_id(Event.xml)
    return Bookmark
