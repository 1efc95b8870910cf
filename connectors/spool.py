"""A disk spool: an ordered, size-capped, crash-safe queue of (topic, key, value) records.

The event publisher (connectors/kafka/) writes records here when the broker
cannot take them, and reads them back, in order, when it can.

Layout: a directory of segment files ``<id>.seg`` (``id`` a 20-digit decimal,
segments are read in id order). A segment is a sequence of records::

    magic  b"SR"        2 bytes
    length u32 BE       bytes of the body
    crc32  u32 BE       of the body
    body:  u16 topic length, topic (UTF-8),
           i32 key length (-1: no key), key,
           value (the rest)

Guarantees and policies:

* **Order.** Records come back in the order they were appended (prepended
  segments, see :meth:`Spool.prepend`, come first).
* **Crash safety.** On open every segment is scanned; a torn or corrupt record
  (short read, bad magic, bad CRC) ends that segment: the file is truncated
  there and a warning is logged. Nothing raises.
* **Durability** (``fsync``): ``"always"`` fsyncs after every append,
  ``"batch"`` (default) on :meth:`flush`, on segment roll-over and on close,
  ``"never"`` leaves it to the OS.
* **Cap.** ``max_bytes`` bounds the bytes of all segment files. An append that
  would exceed it is refused (``append`` returns False); the caller counts and
  reports the drop. Space is given back only when whole segments are deleted.
* **Acknowledgement.** Reading does not delete. The owner deletes a segment
  with :meth:`delete_segment` once every record read from it was delivered.

A Spool is not thread-safe; the publisher uses it from one thread.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

MAGIC = b"SR"
_HEADER = struct.Struct(">2sII")        # magic, body length, crc32
_TOPIC_LEN = struct.Struct(">H")
_KEY_LEN = struct.Struct(">i")
SUFFIX = ".seg"
FIRST_SEGMENT_ID = 10**12               # leaves room below for prepended segments
MAX_RECORD_BYTES = 64 * 1024 * 1024
FSYNC_POLICIES = ("always", "batch", "never")


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Cursor:
    """A read position: segment id, byte offset in it."""
    segment: int
    offset: int


def encode_record(rec: SpoolRecord) -> bytes:
    topic = rec.topic.encode("utf-8")
    key = rec.key
    body = b"".join((
        _TOPIC_LEN.pack(len(topic)), topic,
        _KEY_LEN.pack(-1 if key is None else len(key)), key or b"",
        rec.value,
    ))
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes) -> SpoolRecord:
    (tlen,) = _TOPIC_LEN.unpack_from(body, 0)
    pos = _TOPIC_LEN.size
    topic = body[pos:pos + tlen].decode("utf-8")
    pos += tlen
    (klen,) = _KEY_LEN.unpack_from(body, pos)
    pos += _KEY_LEN.size
    key = None
    if klen >= 0:
        key = body[pos:pos + klen]
        pos += klen
    return SpoolRecord(topic, key, body[pos:])


def scan_segment(path: Path) -> tuple[int, int, str | None]:
    """(records, bytes of the valid prefix, problem or None) of a segment file."""
    records = good = 0
    problem = None
    with open(path, "rb") as f:
        while True:
            head = f.read(_HEADER.size)
            if not head:
                break
            if len(head) < _HEADER.size:
                problem = "torn record header"
                break
            magic, length, crc = _HEADER.unpack(head)
            if magic != MAGIC or length > MAX_RECORD_BYTES:
                problem = "bad record header"
                break
            body = f.read(length)
            if len(body) < length:
                problem = "torn record"
                break
            if zlib.crc32(body) != crc:
                problem = "record checksum mismatch"
                break
            records += 1
            good += _HEADER.size + length
    return records, good, problem


class Spool:
    def __init__(self, directory: str | os.PathLike, *, max_bytes: int = 1 << 30,
                 segment_bytes: int = 16 << 20, fsync: str = "batch"):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, segment_bytes)
        self.fsync = fsync
        self._sizes: dict[int, int] = {}       # segment id -> bytes
        self._counts: dict[int, int] = {}      # segment id -> records
        self._writer = None                    # file object of the tail segment
        self._writer_id: int | None = None
        self._reader = None
        self._reader_id: int | None = None
        self.recovered_problems: list[str] = []
        self._recover()
        first = min(self._sizes) if self._sizes else None
        self._cursor = Cursor(first, 0) if first is not None else None
        self.unread = sum(self._counts.values())   # records after the cursor

    # ------------------------------------------------------------ recovery --
    def _recover(self) -> None:
        for p in sorted(self.dir.glob("*" + SUFFIX)):
            try:
                seg = int(p.stem)
            except ValueError:
                continue
            records, good, problem = scan_segment(p)
            size = p.stat().st_size
            if problem or good != size:
                msg = (f"spool segment {p.name}: {problem or 'trailing bytes'} at byte {good} "
                       f"of {size}; kept {records} record(s), discarded the rest")
                log.warning(msg)
                self.recovered_problems.append(msg)
                with open(p, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
                size = good
            if records == 0:
                p.unlink(missing_ok=True)
                continue
            self._sizes[seg] = size
            self._counts[seg] = records
        for p in self.dir.glob("*.tmp"):
            p.unlink(missing_ok=True)

    # ----------------------------------------------------------- properties --
    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    @property
    def segments(self) -> list[int]:
        return sorted(self._sizes)

    def records_in(self, segment: int) -> int:
        return self._counts.get(segment, 0)

    def path_of(self, segment: int) -> Path:
        return self.dir / f"{segment:020d}{SUFFIX}"

    def is_tail(self, segment: int) -> bool:
        return segment == self._writer_id

    # --------------------------------------------------------------- writing --
    def _open_writer(self) -> None:
        seg = (max(self._sizes) + 1) if self._sizes else FIRST_SEGMENT_ID
        self._writer = open(self.path_of(seg), "ab")
        self._writer_id = seg
        self._sizes[seg] = 0
        self._counts[seg] = 0
        if self._cursor is None:
            self._cursor = Cursor(seg, 0)

    def seal(self) -> None:
        """Close the tail segment; the next append starts a new one."""
        if self._writer is not None:
            self._writer.flush()
            if self.fsync != "never":
                os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = self._writer_id = None

    def append(self, rec: SpoolRecord) -> bool:
        """Append one record; False (nothing written) if the size cap would be exceeded."""
        data = encode_record(rec)
        if self.bytes + len(data) > self.max_bytes:
            return False
        if self._writer is not None and self._sizes[self._writer_id] + len(data) > self.segment_bytes \
                and self._sizes[self._writer_id] > 0:
            self.seal()
        if self._writer is None:
            self._open_writer()
        self._writer.write(data)
        self._sizes[self._writer_id] += len(data)
        self._counts[self._writer_id] += 1
        self.unread += 1
        if self.fsync == "always":
            self._writer.flush()
            os.fsync(self._writer.fileno())
        return True

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self.fsync != "never":
                os.fsync(self._writer.fileno())

    def _write_segment(self, seg: int, records: list[SpoolRecord] | list[bytes]) -> int:
        """Atomically (temp file + rename) write a whole segment; returns its size."""
        path = self.path_of(seg)
        tmp = path.with_suffix(".tmp")
        size = 0
        with open(tmp, "wb") as f:
            for r in records:
                data = r if isinstance(r, bytes) else encode_record(r)
                f.write(data)
                size += len(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir()
        return size

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def prepend(self, records: list[SpoolRecord]) -> int | None:
        """Write records as a new segment read BEFORE every other one (ignores the cap:
        these are records the caller held in memory and must not lose). The cursor moves
        to its start. Returns the segment id (None if ``records`` is empty)."""
        if not records:
            return None
        seg = (min(self._sizes) - 1) if self._sizes else FIRST_SEGMENT_ID - 1
        self._sizes[seg] = self._write_segment(seg, records)
        self._counts[seg] = len(records)
        self.unread += len(records)
        self._close_reader()
        self._cursor = Cursor(seg, 0)
        return seg

    # --------------------------------------------------------------- reading --
    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = self._reader_id = None

    @property
    def cursor(self) -> Cursor | None:
        return self._cursor

    def read(self, max_records: int) -> list[tuple[int, Cursor, SpoolRecord]]:
        """Up to ``max_records`` unread records as (segment id, cursor before it, record);
        moves the cursor past them. Use :meth:`seek` to give records back."""
        out: list[tuple[int, Cursor, SpoolRecord]] = []
        if self.unread <= 0 or self._cursor is None:
            return out
        if self._writer is not None:
            self._writer.flush()
        while len(out) < max_records and self.unread > 0:
            cur = self._cursor
            if cur.segment not in self._sizes or cur.offset >= self._sizes[cur.segment]:
                later = [s for s in self._sizes if s > cur.segment]
                if not later:
                    break
                self._cursor = Cursor(min(later), 0)
                continue
            if self._reader_id != cur.segment:
                self._close_reader()
                self._reader = open(self.path_of(cur.segment), "rb")
                self._reader_id = cur.segment
            self._reader.seek(cur.offset)
            head = self._reader.read(_HEADER.size)
            magic, length, crc = _HEADER.unpack(head)
            body = self._reader.read(length)
            if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
                # cannot happen for a file we scanned/wrote ourselves, unless the disk changed
                # under us: skip the rest of the segment rather than loop
                log.error("spool segment %s is corrupt at byte %d; skipping its rest",
                          self.path_of(cur.segment).name, cur.offset)
                self.unread = max(0, self.unread - 1)
                self._sizes[cur.segment] = cur.offset
                continue
            out.append((cur.segment, cur, _decode_body(body)))
            self._cursor = Cursor(cur.segment, cur.offset + _HEADER.size + length)
            self.unread -= 1
        return out

    def seek(self, cursor: Cursor, records_given_back: int) -> None:
        """Move the cursor back to ``cursor`` (from :meth:`read`), making
        ``records_given_back`` records unread again."""
        self._cursor = cursor
        self.unread += records_given_back

    def fully_read(self, segment: int) -> bool:
        """Has the cursor moved past every record of ``segment``?"""
        cur = self._cursor
        if cur is None:
            return True
        if segment < cur.segment:
            return True
        return segment == cur.segment and cur.offset >= self._sizes.get(segment, 0)

    def iter_records(self) -> Iterator[SpoolRecord]:
        """All stored records in order (does not move the cursor)."""
        self.flush()
        for seg in self.segments:
            with open(self.path_of(seg), "rb") as f:
                data = f.read(self._sizes[seg])
            pos = 0
            while pos + _HEADER.size <= len(data):
                _, length, _ = _HEADER.unpack_from(data, pos)
                pos += _HEADER.size
                yield _decode_body(data[pos:pos + length])
                pos += length

    # -------------------------------------------------------------- deletion --
    def delete_segment(self, segment: int) -> None:
        """Delete a segment whose records were all delivered (a tail segment is sealed first)."""
        if segment == self._writer_id:
            self.seal()
        if segment == self._reader_id:
            self._close_reader()
        cur = self._cursor
        if cur is not None and cur.segment == segment:
            unread_here = 0 if cur.offset >= self._sizes.get(segment, 0) else None
            if unread_here is None:
                raise ValueError(f"segment {segment} still has unread records")
            later = [s for s in self._sizes if s > segment]
            self._cursor = Cursor(min(later), 0) if later else None
        self.path_of(segment).unlink(missing_ok=True)
        self._sizes.pop(segment, None)
        self._counts.pop(segment, None)

    def compact_read_prefix(self) -> None:
        """Drop every record before the cursor: delete fully-read segments and rewrite the
        partly-read one from the cursor on (used at shutdown after the caller prepended the
        records it still holds)."""
        cur = self._cursor
        if cur is None:
            for seg in list(self._sizes):
                self.delete_segment(seg)
            return
        self.seal()
        self._close_reader()
        for seg in [s for s in self._sizes if s < cur.segment]:
            self.delete_segment(seg)
        if cur.offset > 0 and cur.segment in self._sizes:
            path = self.path_of(cur.segment)
            with open(path, "rb") as f:
                f.seek(cur.offset)
                rest = f.read()
            if rest:
                n = pos = 0
                while pos + _HEADER.size <= len(rest):
                    _, length, _ = _HEADER.unpack_from(rest, pos)
                    pos += _HEADER.size + length
                    n += 1
                self._sizes[cur.segment] = self._write_segment(cur.segment, [rest])
                self._counts[cur.segment] = n
                self._cursor = Cursor(cur.segment, 0)
            else:
                self.delete_segment(cur.segment)

    def close(self) -> None:
        self.seal()
        self._close_reader()
