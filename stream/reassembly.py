"""Reassembly of PowerShell script blocks split over several 4104 events.

PowerShell logs a script block longer than ~20,000 characters as several 4104
events ("Creating Scriptblock text (2 of 5)"), each with ``MessageNumber``,
``MessageTotal``, the same ``ScriptBlockId`` and one slice of
``ScriptBlockText``. Rules must see the whole block, so fragments are buffered
per (host, channel, ScriptBlockId) and emitted as ONE event.

Pure: no I/O, no clock. The caller passes ``now`` (seconds, any monotonic
origin) and calls :meth:`ScriptBlockAssembler.expire` periodically (and
:meth:`flush` at end of input).

The emitted event is a copy of the lowest-numbered fragment present with:

* ``ScriptBlockText``: the fragments' texts concatenated in MessageNumber order
  (missing parts are simply absent; see ``sigstream_MissingParts``);
* ``MessageNumber`` 1 and ``MessageTotal`` as logged; ``EventRecordID`` and
  ``TimeCreated`` of that first fragment (so the event id stays stable);
* ``sigstream_Fragments``: ``[[MessageNumber, EventRecordID], ...]`` in order
  (EventRecordID is None for live ETW events, which have none);
* ``sigstream_Reassembled: true``;
* when emitted without every part (timeout, memory-cap eviction, flush):
  ``sigstream_Incomplete: true`` and ``sigstream_MissingParts: [n, ...]``
  (``sigstream_Evicted: true`` when the memory cap forced it out).

Events that are not 4104, or 4104 with ``MessageTotal`` <= 1 (or missing /
not a number), pass straight through unchanged (the very same dict).
Duplicate fragments (same number again, e.g. a redelivered Kafka message) are
dropped; a fragment arriving after its block was emitted is dropped as a
duplicate too (a bounded memory of recently emitted blocks).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScriptBlockAssembler"]

_PART_OVERHEAD = 512            # rough per-fragment bookkeeping bytes
_RECENT_MAX = 4096              # emitted-block keys remembered to drop late duplicates


def _int(v: Any) -> int | None:
    if type(v) is int:
        return v
    if isinstance(v, str):
        s = v.strip()
        if s.isdigit():
            return int(s)
        try:
            f = float(s)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _size(text: str) -> int:
    # str is at most 4 bytes/char in CPython; ASCII script text is 1 byte/char
    return len(text) + _PART_OVERHEAD


@dataclass
class _Block:
    total: int
    first_seen: float
    last_seen: float
    parts: dict[int, dict] = field(default_factory=dict)
    sources: dict[int, Any] = field(default_factory=dict)   # MessageNumber -> caller's source
    nbytes: int = 0


class ScriptBlockAssembler:
    """Buffer multi-part 4104 events; emit each script block once, whole.

    ``timeout_s``: a block still missing parts ``timeout_s`` after its latest
    fragment arrived is emitted by :meth:`expire` with what it has.
    ``max_bytes``: cap of buffered text; beyond it the oldest blocks are
    emitted partial (``sigstream_Evicted``) and counted in ``stats["evicted"]``.
    """

    def __init__(self, timeout_s: float = 120.0, max_bytes: int = 64 * 1024 * 1024):
        self.timeout_s = float(timeout_s)
        self.max_bytes = int(max_bytes)
        self._blocks: OrderedDict[tuple, _Block] = OrderedDict()   # oldest first
        self._recent: OrderedDict[tuple, None] = OrderedDict()
        self._bytes = 0
        self.stats = dict(fragments=0, completed=0, incomplete=0, evicted=0, duplicates=0,
                          passed_through=0, conflicting_totals=0)

    # ------------------------------------------------------------------ API --
    def feed(self, event: dict, now: float) -> list[dict]:
        """Events ready after ``event``: [event] itself for anything not a multi-part
        4104, [] while a block is incomplete, [whole block] when its last part arrives
        (plus any blocks the memory cap forced out)."""
        return [ev for ev, _ in self.feed_with_source(event, None, now)]

    def expire(self, now: float) -> list[dict]:
        """Blocks whose latest fragment is ``timeout_s`` old or older, emitted with what
        they have (``sigstream_Incomplete``)."""
        return [ev for ev, _ in self.expire_with_source(now)]

    def flush(self) -> list[dict]:
        """Everything still buffered (end of input / shutdown), flagged incomplete."""
        return [ev for ev, _ in self.flush_with_source()]

    def feed_with_source(self, event: dict, source: Any, now: float) -> list[tuple[dict, Any]]:
        """As `feed`, with each event paired with its source: a whole block's source is
        the one given with its lowest-numbered fragment (where the block starts)."""
        if _int(event.get("EventID")) != 4104:
            self.stats["passed_through"] += 1
            return [(event, source)]
        total = _int(event.get("MessageTotal"))
        number = _int(event.get("MessageNumber"))
        sbid = event.get("ScriptBlockId")
        if total is None or total <= 1 or number is None or not 1 <= number <= total or not sbid:
            self.stats["passed_through"] += 1
            return [(event, source)]
        key = (event.get("Computer") or "", (event.get("Channel") or "").lower(), str(sbid).lower())
        self.stats["fragments"] += 1
        if key in self._recent:
            self.stats["duplicates"] += 1
            return []
        blk = self._blocks.get(key)
        if blk is None:
            blk = self._blocks[key] = _Block(total=total, first_seen=now, last_seen=now)
        elif total != blk.total:
            self.stats["conflicting_totals"] += 1
            blk.total = max(blk.total, total)
        if number in blk.parts:
            self.stats["duplicates"] += 1
            return []
        text = event.get("ScriptBlockText")
        n = _size(text if isinstance(text, str) else "")
        blk.parts[number] = event
        blk.sources[number] = source
        blk.nbytes += n
        blk.last_seen = now
        self._bytes += n
        out: list[tuple[dict, Any]] = []
        if len(blk.parts) == blk.total and all(i in blk.parts for i in range(1, blk.total + 1)):
            out.append(self._emit(key, complete=True))
        while self._bytes > self.max_bytes and self._blocks:
            oldest = next(iter(self._blocks))
            out.append(self._emit(oldest, complete=False, evicted=True))
        return out

    def expire_with_source(self, now: float) -> list[tuple[dict, Any]]:
        due = [k for k, b in self._blocks.items() if now - b.last_seen >= self.timeout_s]
        return [self._emit(k, complete=False) for k in due]

    def flush_with_source(self) -> list[tuple[dict, Any]]:
        return [self._emit(k, complete=False) for k in list(self._blocks)]

    @property
    def pending(self) -> int:
        return len(self._blocks)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    # ------------------------------------------------------------- internal --
    def _emit(self, key: tuple, complete: bool, evicted: bool = False) -> tuple[dict, Any]:
        blk = self._blocks.pop(key)
        self._bytes -= blk.nbytes
        self._recent[key] = None
        if len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        numbers = sorted(blk.parts)
        first = blk.parts[numbers[0]]
        merged = dict(first)
        texts = []
        for i in numbers:
            t = blk.parts[i].get("ScriptBlockText")
            texts.append(t if isinstance(t, str) else "")
        merged["ScriptBlockText"] = "".join(texts)
        merged["MessageNumber"] = 1
        merged["MessageTotal"] = blk.total
        merged["sigstream_Fragments"] = [[i, blk.parts[i].get("EventRecordID")] for i in numbers]
        merged["sigstream_Reassembled"] = True
        if complete:
            self.stats["completed"] += 1
        else:
            merged["sigstream_Incomplete"] = True
            merged["sigstream_MissingParts"] = [i for i in range(1, blk.total + 1) if i not in blk.parts]
            self.stats["incomplete"] += 1
            if evicted:
                merged["sigstream_Evicted"] = True
                self.stats["evicted"] += 1
        return merged, blk.sources[numbers[0]]
