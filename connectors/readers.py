"""Read Windows events from EVTX / JSON / JSONL / XML files (optionally gzip'ed) and stdin.

Why one module past ~500 lines: every input format (EVTX, JSON lines, JSON arrays and
objects, XML via connectors.xml_events, gzip, stdin) shares the same detection of the
format, position counting and error reporting; split by format, each would repeat them.

Public API::

    find_event_files(paths) -> list[Path]
    read_records(path) -> Iterator[tuple[dict, SourceRef] | ReadError]   # raw decoded records
    read_events(paths, on_error=None) -> Iterator[tuple[dict, SourceRef]] # normalised events
    read_stdin_records(stream=None) -> Iterator[tuple[dict, SourceRef] | ReadError]
    read_stdin_events(on_error=None, stream=None) -> Iterator[tuple[dict, SourceRef]]

Standard input is read like a file (format and gzip detected by content), streamed;
only EVTX is spooled whole first (its parser needs to seek). Its path is ``"<stdin>"``.

``SourceRef.position`` (1-based) means:

* EVTX: the ordinal of the item in the EVTX parser's iteration order, i.e. the
  n-th record of the file (an unreadable record/chunk reported by the parser
  also consumes one position). It is *not* the EventRecordID (that one is in
  the event itself).
* JSON lines: the line number (several events on one line, i.e. a JSON array
  on one line, share it).
* JSON array: the index of the element in the array.
* Single / concatenated pretty-printed JSON objects: the line on which the
  object starts (1 for a file holding one object).
* XML (``wevtutil qe /f:xml`` stream of ``<Event>`` elements, or an ``<Events>``
  root as Event Viewer "Save as XML" writes it; UTF-8 or UTF-16 with BOM): the
  ordinal of the ``<Event>`` element. Read as a stream, element by element
  (:mod:`connectors.xml_events`); an element that cannot be read is one
  ReadError carrying its raw text (first ``xml_events.RAW_KEEP`` characters) in
  ``raw``, and reading goes on with the next element.

``ReadError.position`` is ``None`` for problems that concern the whole file
(cannot open, not an EVTX file, ...). Errors never stop the reading of other
records or files; they are passed to ``on_error`` (or logged when it is None).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, IO, Iterable, Iterator, NamedTuple, Union

import orjson

from .normalize import NormalizeError, normalize
from .xml_events import RAW_KEEP, event_record, split_events

__all__ = [
    "SourceRef", "ReadError", "EVENT_FILE_SUFFIXES", "find_event_files",
    "read_records", "read_events", "read_stdin_records", "read_stdin_events", "detect_format",
    "STDIN_PATH",
]

log = logging.getLogger(__name__)


class SourceRef(NamedTuple):  # a tuple: made per event, twice as cheap as a frozen dataclass
    path: str        # file path as given/found ("<stdin>" for stdin)
    position: int    # 1-based; see module doc (EVTX ordinal / line / array index)


@dataclass(frozen=True, slots=True)
class ReadError:
    path: str
    position: int | None
    reason: str
    raw: str | None = None   # the record's raw text (XML input), first RAW_KEEP characters

    def to_dict(self) -> dict:
        d = {"path": self.path, "position": self.position, "reason": self.reason}
        if self.raw is not None:
            d["raw"] = self.raw
        return d

    def __str__(self) -> str:
        where = self.path if self.position is None else f"{self.path}:{self.position}"
        return f"{where}: {self.reason}"


Item = Union[tuple[dict, SourceRef], ReadError]
ErrorCallback = Callable[[ReadError], None]

EVENT_FILE_SUFFIXES = (".evtx", ".json", ".jsonl", ".ndjson", ".xml")
_ALL_SUFFIXES = EVENT_FILE_SUFFIXES + tuple(s + ".gz" for s in EVENT_FILE_SUFFIXES)

_EVTX_MAGIC = b"ElfFile\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_EVTX_HEADER_SIZE = 4096
_EVTX_CHUNK_SIZE = 65536
EVTX_CHUNK_BYTES = _EVTX_CHUNK_SIZE
# give up on an EVTX file after this many consecutive unreadable items
MAX_CONSECUTIVE_EVTX_ERRORS = 100
# a '{' file whose first line is not a JSON value is parsed whole (pretty
# printed object(s)) only up to this (on-disk) size; larger ones as JSON lines
MAX_PRETTY_JSON_BYTES = 64 * 1024 * 1024
# gzip'ed EVTX files are decompressed to a temp file spooled in memory up to
_SPOOL_MAX = 64 * 1024 * 1024


# --------------------------------------------------------------------------
# file discovery
# --------------------------------------------------------------------------

def _has_event_suffix(name: str) -> bool:
    return name.lower().endswith(_ALL_SUFFIXES)


def find_event_files(paths: Iterable[str | os.PathLike],
                     on_error: Callable[[OSError], None] | None = None) -> list[Path]:
    """Expand ``paths`` into event files.

    Files are taken as given (whatever their extension); directories are
    searched recursively (symlinked directories are not followed) for
    ``*.evtx``, ``*.json``, ``*.jsonl``, ``*.ndjson``, ``*.xml`` and the same with ``.gz``
    (case-insensitive). Each directory's files are sorted; arguments keep their
    order; duplicates are dropped. A missing path raises FileNotFoundError, or with
    `on_error` is passed to it (as are directories that cannot be listed) and skipped.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p, onerror=on_error):
                dirs.sort()
                for name in files:
                    if _has_event_suffix(name):
                        found.append(Path(root, name))
            for f in sorted(found):
                add(f)
        elif p.exists():
            add(p)
        elif on_error is not None:
            on_error(FileNotFoundError(2, os.strerror(2), str(raw)))
        else:
            raise FileNotFoundError(f"no such file or directory: {str(raw)!r}")
    return out


# --------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------

def _open_maybe_gzip(path: Path) -> tuple[IO[bytes], bool]:
    f = open(path, "rb")
    head = f.read(2)
    f.seek(0)
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb"), True
    return f, False


def detect_format(path: str | os.PathLike) -> str:
    """``"evtx"``, ``"xml"`` or ``"json"`` (by content)."""
    fobj, _ = _open_maybe_gzip(Path(path))
    with fobj:
        return _format_of(fobj)


_UTF16_BOMS = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}


def _xml_encoding(head: bytes) -> str | None:
    """Text encoding of ``head`` if it starts (after BOM and blanks) with ``<``; else None."""
    enc = _UTF16_BOMS.get(head[:2])
    if enc is not None:
        text = head[2:].decode(enc, errors="ignore")
    elif head[:2] == b"<\x00":
        enc, text = "utf-16-le", head.decode("utf-16-le", errors="ignore")
    elif head[:2] == b"\x00<":
        enc, text = "utf-16-be", head.decode("utf-16-be", errors="ignore")
    else:
        enc = "utf-8-sig"
        text = head[3:].decode("utf-8", errors="ignore") if head[:3] == b"\xef\xbb\xbf" \
            else head.decode("utf-8", errors="ignore")
    return enc if text.lstrip()[:1] == "<" else None


def _peek(fobj: IO[bytes], n: int) -> bytes:
    """The first `n` bytes, left unread: read and rewind, or (stdin) what a BufferedReader
    holds (see _Sniffed: it holds the whole sniffed head)."""
    if fobj.seekable():
        head = fobj.read(n)
        fobj.seek(0)
        return head
    return fobj.peek(n)[:n]  # type: ignore[attr-defined]


def _format_of(fobj: IO[bytes]) -> str:
    head = _peek(fobj, 64)
    if head[:8] == _EVTX_MAGIC:
        return "evtx"
    return "xml" if _xml_encoding(head) else "json"


# --------------------------------------------------------------------------
# EVTX
# --------------------------------------------------------------------------

class _ZeroPadded(io.RawIOBase):
    """Read-only view of a file followed by ``pad`` zero bytes.

    Used to complete a truncated last chunk so that the parser can still read
    the records that are fully present in it.
    """

    def __init__(self, f: IO[bytes], size: int, pad: int):
        self._f = f
        self._size = size
        self._total = size + pad
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        else:
            pos = self._total + offset
        self._pos = max(0, pos)
        return self._pos

    def readinto(self, b) -> int:
        n = len(b)
        if self._pos >= self._total or n == 0:
            return 0
        n = min(n, self._total - self._pos)
        got = 0
        if self._pos < self._size:
            self._f.seek(self._pos)
            data = self._f.read(min(n, self._size - self._pos))
            got = len(data)
            b[:got] = data
        if got < n:
            b[got:n] = bytes(n - got)
        self._pos += n
        return n

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


def _evtx_source(path: Path, opened: tuple[IO[bytes], bool] | None = None,
                 ) -> tuple[Any, int, bytes] | ReadError:
    """Open an EVTX file (plain or gzip; or take it `opened`): (source, size, header) or an error."""
    spath = str(path)
    fobj, gz = opened or _open_maybe_gzip(path)
    if gz:
        tmp = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MAX)
        try:
            with fobj:
                while True:
                    block = fobj.read(1 << 20)
                    if not block:
                        break
                    tmp.write(block)
        except (OSError, EOFError, zlib.error) as e:
            tmp.close()
            return ReadError(spath, None, f"cannot decompress gzip'ed EVTX: {e}")
        size = tmp.tell()
        tmp.seek(0)
        fobj = tmp
    else:
        size = os.fstat(fobj.fileno()).st_size
    header = fobj.read(128)
    fobj.seek(0)
    if header[:8] != _EVTX_MAGIC:
        fobj.close()
        return ReadError(spath, None, "not an EVTX file (missing 'ElfFile' signature)")
    return fobj, size, header


def _complete_records_end(chunk: bytes) -> int:
    """Offset just after the last complete record of a (partial) chunk; 0 if none.

    Layout: 512-byte chunk header ("ElfChnk\\0"), then records, each starting
    with the magic ``2a 2a 00 00``, its size (uint32) and ending with a copy of
    that size.
    """
    if len(chunk) < 512 or chunk[:8] != b"ElfChnk\x00":
        return 0
    off = 512
    end = 0
    n = len(chunk)
    while off + 28 <= n and chunk[off:off + 4] == b"\x2a\x2a\x00\x00":
        rsize = struct.unpack_from("<I", chunk, off + 4)[0]
        if rsize < 28 or off + rsize > n:
            break
        if struct.unpack_from("<I", chunk, off + rsize - 4)[0] != rsize:
            break
        off += rsize
        end = off
    return end


def _gz_or_tmp(fobj: Any) -> bool:
    return not isinstance(fobj, io.BufferedReader)


def _read_evtx(path: Path, opened: tuple[IO[bytes], bool] | None = None) -> Iterator[Item]:
    spath = str(path)
    source_info = _evtx_source(path, opened)
    if isinstance(source_info, ReadError):
        yield source_info
        return
    fobj, size, header = source_info
    full_chunks, partial, declared_chunks = _evtx_layout(header, size)
    truncated = partial != 0 or full_chunks < declared_chunks
    source: Any = fobj
    if not _gz_or_tmp(fobj) and not partial:
        source = spath  # the parser reads a path faster than a Python file object
    elif partial:
        # Make the partial last chunk readable: keep its complete records and
        # replace everything after the last complete one with zeros (a record
        # cut in the middle would otherwise be parsed with zeroed/missing values).
        chunk_start = _EVTX_HEADER_SIZE + full_chunks * _EVTX_CHUNK_SIZE
        fobj.seek(chunk_start)
        valid = _complete_records_end(fobj.read(partial))
        fobj.seek(0)
        keep = chunk_start + valid if valid else chunk_start
        source = _ZeroPadded(fobj, keep, size - keep + _EVTX_CHUNK_SIZE - partial
                             if valid else 0)

    read = [0]
    try:
        gave_up = yield from _parse_evtx(spath, source, read)
    finally:
        if source is not spath:
            source.close()
        fobj.close()
    pos = read[0]
    if truncated and not gave_up:
        yield ReadError(
            spath, pos + 1,
            f"EVTX file is truncated ({size} bytes; header declares {declared_chunks} chunks "
            f"= {_EVTX_HEADER_SIZE + declared_chunks * _EVTX_CHUNK_SIZE} bytes, "
            f"last chunk {'has only %d bytes' % partial if partial else 'missing'}); "
            "records after the ones read are lost")


def _evtx_layout(header: bytes, size: int) -> tuple[int, int, int]:
    """(full chunks, bytes of a partial last chunk, chunks the header declares) of an EVTX
    file of `size` bytes; it is whole when there is no partial chunk and none is missing."""
    declared = struct.unpack_from("<H", header, 42)[0] if len(header) >= 44 else 0
    full, partial = divmod(max(0, size - _EVTX_HEADER_SIZE), _EVTX_CHUNK_SIZE)
    return full, partial, declared


def _parse_evtx(spath: str, source: Any, read: list[int]) -> Generator[Item, None, bool]:
    """The records of an EVTX file (a path or a file object), positions from 1; read[0]:
    the last position given out. Returns True if it gave up on the file (too many
    consecutive unreadable records) or could not parse it at all."""
    from evtx import PyEvtxParser  # deferred: only needed for EVTX input

    try:
        it = PyEvtxParser(source, number_of_threads=1).records_json()
    except Exception as e:  # noqa: BLE001 - the parser raises plain OSError/RuntimeError
        yield ReadError(spath, None, f"cannot parse EVTX file: {e}")
        return True
    pos = consecutive = 0
    loads = orjson.loads
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return False
        except Exception as e:  # noqa: BLE001
            pos = read[0] = pos + 1
            consecutive += 1
            yield ReadError(spath, pos, f"unreadable EVTX record: {e}")
            if consecutive >= MAX_CONSECUTIVE_EVTX_ERRORS:
                yield ReadError(spath, None, f"giving up on the file after {consecutive} "
                                             "consecutive unreadable EVTX records")
                return True
            continue
        pos = read[0] = pos + 1
        consecutive = 0
        try:
            data = loads(rec["data"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            yield ReadError(spath, pos, f"EVTX record is not valid JSON: {e}")
            continue
        yield data, SourceRef(spath, pos)


def evtx_chunks(path: str | os.PathLike) -> int:
    """How many chunks a plain EVTX file can be read in independently (`read_evtx_chunks`):
    its chunk count when it is whole (no partial chunk, none missing), else 0 (gzip, not
    EVTX, truncated: read it whole)."""
    try:
        with open(path, "rb") as f:
            header = f.read(128)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return 0
    if header[:8] != _EVTX_MAGIC:
        return 0
    chunks, partial, declared = _evtx_layout(header, size)
    return chunks if not partial and chunks >= declared else 0


def read_evtx_chunks(path: str | os.PathLike, first: int, end: int, read: list[int]) -> Iterator[Item]:
    """The records of chunks [first, end) of a whole plain EVTX file (see evtx_chunks), as
    the file's reader reads them there (chunks are independent: each carries its own string
    and template tables); positions from 1 at the first chunk; read[0]: the last position
    given out. Unreadable records are counted towards giving up from the first chunk on
    (the whole-file reader counts from the file's start)."""
    spath = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(_EVTX_HEADER_SIZE)
            f.seek(_EVTX_HEADER_SIZE + first * _EVTX_CHUNK_SIZE)
            data += f.read((end - first) * _EVTX_CHUNK_SIZE)
    except OSError as e:
        yield ReadError(spath, None, f"cannot read: {e}")
        return
    for item in _parse_evtx(spath, io.BytesIO(data), read):
        if first and type(item) is ReadError and "chunk number" in item.reason:
            # the parser numbers the chunks of what it was given: make them the file's
            item = ReadError(item.path, item.position, _CHUNK_NUMBER.sub(
                lambda m: f"chunk number {int(m.group(1)) + first}", item.reason), item.raw)
        yield item


_CHUNK_NUMBER = re.compile(r"chunk number (\d+)")


# --------------------------------------------------------------------------
# JSON / JSON lines
# --------------------------------------------------------------------------

def _json_error_reason(data: bytes | str, e: Exception | None) -> str:
    if isinstance(data, bytes):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as ue:
            return f"invalid UTF-8 at byte {ue.start}: {data[max(0, ue.start - 8):ue.start + 8]!r}"
    return f"invalid JSON: {e}"


def _emit(obj: Any, spath: str, pos: int) -> Iterator[Item]:
    if type(obj) is dict:
        yield obj, SourceRef(spath, pos)
    elif type(obj) is list:
        for el in obj:
            if type(el) is dict:
                yield el, SourceRef(spath, pos)
            else:
                yield ReadError(spath, pos, f"JSON {type(el).__name__} in list is not an object")
    else:
        yield ReadError(spath, pos, f"JSON {type(obj).__name__} is not an object")


def _iter_jsonl(lines: Iterable[bytes | str], spath: str, start: int = 1) -> Iterator[Item]:
    """JSON lines: one value per line, streamed; bad lines become ReadErrors."""
    loads = orjson.loads
    lineno = start - 1
    it = iter(lines)
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            yield ReadError(spath, lineno + 1, f"cannot read further: {e}")
            return
        lineno += 1
        try:
            obj = loads(line)
        except orjson.JSONDecodeError as e:
            if not line.strip():
                continue  # blank line
            yield ReadError(spath, lineno, _json_error_reason(line, e))
            continue
        if type(obj) is dict:
            yield obj, SourceRef(spath, lineno)
        else:
            yield from _emit(obj, spath, lineno)


def _iter_concatenated(text: str, spath: str, report_first: bool = False) -> Iterator[Item] | None:
    """One or more (pretty printed) JSON values one after another.

    Returns None when the first value cannot be decoded (the caller falls back
    to JSON lines), unless ``report_first``: then that is one ReadError.
    """
    decoder = json.JSONDecoder()
    n = len(text)
    i = 0
    line = 1          # line number at index `counted`
    counted = 0
    items: list[Item] = []
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            if not items and not report_first:
                return None
            items.append(ReadError(spath, line, f"invalid JSON: {e.msg} (line {e.lineno} "
                                                f"column {e.colno}); rest of file skipped"))
            break
        items.extend(_emit(obj, spath, line))
        i = end
    return iter(items)


def _read_json(path: Path, opened: tuple[IO[bytes], bool] | None = None) -> Iterator[Item]:
    spath = str(path)
    fobj, gz = opened or _open_maybe_gzip(path)
    with fobj:
        try:
            head = _peek(fobj, 4096)
        except (OSError, EOFError, zlib.error) as e:
            yield ReadError(spath, None, f"cannot read: {e}")
            return
        if head[:8] == _EVTX_MAGIC:  # an EVTX file with a .json name
            fobj.close()
            yield from _read_evtx(path)
            return
        # text encoding: UTF-16 (Windows PowerShell redirection) or UTF-8 (default)
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            stream: Any = io.TextIOWrapper(fobj, encoding="utf-16", errors="strict", newline="")
            first = head.decode("utf-16", errors="ignore").lstrip()
        else:
            stream = fobj
            if head[:3] == b"\xef\xbb\xbf":
                fobj.read(3)
                head = head[3:]
            first = head.lstrip()
        if not first:
            if len(head) < 4096:
                return  # empty / whitespace-only file
            yield from _iter_jsonl(stream, spath)  # lots of leading blank lines
            return
        c0 = first[:1]
        if c0 in (b"[", "["):
            yield from _read_json_whole(stream, spath)
            return
        if c0 in (b"{", "{"):
            # JSON lines unless the first line is not a complete value
            first_line = stream.readline()
            lines_consumed = 1
            while first_line and not first_line.strip():
                first_line = stream.readline()
                lines_consumed += 1
            try:
                orjson.loads(first_line)
                is_jsonl = True
            except orjson.JSONDecodeError:
                is_jsonl = False
            if not is_jsonl:
                on_disk = 0 if spath == STDIN_PATH else os.path.getsize(path)
                if on_disk <= MAX_PRETTY_JSON_BYTES or first_line.strip() in (b"{", "{"):
                    rest = stream.read()
                    whole = first_line + rest
                    pretty = first_line.strip() in (b"{", "{")
                    text = whole if isinstance(whole, str) else _decode_utf8(whole)
                    if text is not None:
                        items = _iter_concatenated("\n" * (lines_consumed - 1) + text, spath,
                                                   report_first=pretty)
                        if items is not None:
                            yield from items
                            return
                    elif pretty:
                        yield ReadError(spath, None, _json_error_reason(whole, None))
                        return
                    # not parseable as a whole: report line by line
                    yield from _iter_jsonl(whole.splitlines(keepends=True), spath,
                                           start=lines_consumed)
                    return
            yield from _iter_jsonl([first_line], spath, start=lines_consumed)
            yield from _iter_jsonl(stream, spath, start=lines_consumed + 1)
            return
        yield from _iter_jsonl(stream, spath)


def _decode_utf8(b: bytes) -> str | None:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_json_whole(stream: Any, spath: str) -> Iterator[Item]:
    try:
        data = stream.read()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        yield ReadError(spath, None, f"cannot read: {e}")
        return
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        # maybe JSON lines whose values are arrays, or several arrays
        text = data if isinstance(data, str) else _decode_utf8(data)
        if text is None:
            yield ReadError(spath, None, _json_error_reason(data, e))
            return
        items = _iter_concatenated(text, spath)
        if items is None:
            yield ReadError(spath, None, f"invalid JSON: {e}")
            return
        yield from items
        return
    if type(obj) is list:
        for i, el in enumerate(obj, 1):
            if type(el) is dict:
                yield el, SourceRef(spath, i)
            else:
                yield ReadError(spath, i, f"array element is a JSON {type(el).__name__}, not an object")
    else:
        yield from _emit(obj, spath, 1)


# --------------------------------------------------------------------------
# XML
# --------------------------------------------------------------------------

def _read_xml(path: Path, opened: tuple[IO[bytes], bool] | None = None) -> Iterator[Item]:
    """``<Event>`` elements, streamed: wevtutil style (no root) or an ``<Events>`` root.

    Invalid UTF-8 bytes are decoded as U+FFFD (the element is still read).
    """
    spath = str(path)
    fobj, _ = opened or _open_maybe_gzip(path)
    with fobj:
        enc = _xml_encoding(_peek(fobj, 64)) or "utf-8-sig"
        stream = io.TextIOWrapper(fobj, encoding=enc, errors="replace", newline="")
        state = {"error": None}

        def chunks() -> Iterator[str]:
            while True:
                try:
                    block = stream.read(1 << 20)
                except (OSError, EOFError, zlib.error) as e:
                    state["error"] = e
                    return
                if not block:
                    return
                yield block

        n = 0
        for n, raw, problem in split_events(chunks()):
            if problem is not None:
                yield ReadError(spath, n, f"unreadable XML event: {problem}", raw[:RAW_KEEP])
                continue
            try:
                rec = event_record(raw)
            except NormalizeError as e:
                yield ReadError(spath, n, f"unreadable XML event: {e}", raw[:RAW_KEEP])
                continue
            yield rec, SourceRef(spath, n)
        if state["error"] is not None:
            yield ReadError(spath, n + 1, f"cannot read further: {state['error']}")
        elif n == 0:
            yield ReadError(spath, None, "no <Event> elements (not Windows event XML)")


# --------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------

_READERS: dict[str, Callable[[Path, tuple[IO[bytes], bool]], Iterator[Item]]] = {
    "evtx": _read_evtx,
    "json": _read_json,
    "xml": _read_xml,
}


def read_records(path: str | os.PathLike) -> Iterator[Item]:
    """Raw decoded records of one file: ``(record, SourceRef)`` or ``ReadError`` items.

    The format is detected by content (EVTX signature, gzip magic); a file
    named ``*.evtx`` that is not an EVTX file yields one ReadError.
    """
    p = Path(path)
    spath = str(path)
    try:
        fobj, gz = _open_maybe_gzip(p)  # opened once here, handed to the reader
    except (OSError, EOFError, zlib.error) as e:
        yield ReadError(spath, None, f"cannot read: {e}")
        return
    try:
        fmt = _format_of(fobj)
    except (OSError, EOFError, zlib.error) as e:
        fobj.close()
        yield ReadError(spath, None, f"cannot read: {e}")
        return
    name = p.name.lower()
    if fmt != "evtx" and (name.endswith(".evtx") or name.endswith(".evtx.gz")):
        fobj.close()
        yield ReadError(spath, None, "not an EVTX file (missing 'ElfFile' signature)")
        return
    try:
        yield from _READERS[fmt](p, (fobj, gz))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        yield ReadError(spath, None, f"read failed: {e}")


def _log_error(err: ReadError) -> None:
    log.warning("%s", err)


def _normalised(items: Iterable[Item], report: ErrorCallback) -> Iterator[tuple[dict, SourceRef]]:
    for item in items:
        if type(item) is ReadError:
            report(item)
            continue
        rec, ref = item
        try:
            ev = normalize(rec)
        except NormalizeError as e:
            report(ReadError(ref.path, ref.position, f"not an event: {e}"))
            continue
        except Exception as e:  # noqa: BLE001 - an odd record must not stop the stream
            report(ReadError(ref.path, ref.position,
                             f"cannot normalise record: {type(e).__name__}: {e}"))
            continue
        yield ev, ref


def read_events(paths: Iterable[str | os.PathLike] | str | os.PathLike,
                on_error: ErrorCallback | None = None) -> Iterator[tuple[dict, SourceRef]]:
    """Yield ``(normalised event, SourceRef)`` for every event in ``paths``.

    Records that cannot be read, decoded or normalised are reported to
    ``on_error`` (logged as warnings when None) and skipped. Missing paths
    raise FileNotFoundError before anything is read.
    """
    report = on_error or _log_error
    for p in find_event_files(paths):
        yield from _normalised(read_records(p), report)


STDIN_PATH = "<stdin>"
_SNIFF_MAX = 1 << 16


class _Prefixed(io.RawIOBase):
    """`head` (bytes already read from `src`), then the rest of `src`: non-seekable."""

    def __init__(self, head: bytes, src: Any):
        self._head, self._src = memoryview(head), src
        self._read = getattr(src, "read1", src.read)   # what is there, without waiting for more

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._read(len(b))
        b[:len(data)] = data
        return len(data)


def _sniffed(src: Any) -> io.BufferedReader:
    """`src` as a BufferedReader whose peek() holds the start of the input: at least 8
    bytes and the first non-blank one (or all of it, or _SNIFF_MAX bytes), read as it
    comes (a pipe fed slowly is not waited on for more)."""
    read = getattr(src, "read1", src.read)
    head = b""
    while len(head) < _SNIFF_MAX:
        if len(head) >= 8 and head.lstrip(b"\xef\xbb\xbf \t\r\n"):
            break
        block = read(_SNIFF_MAX - len(head))
        if not block:
            break
        head += block
    return io.BufferedReader(_Prefixed(head, src), buffer_size=max(_SNIFF_MAX, len(head)))


def read_stdin_records(stream: IO[bytes] | None = None) -> Iterator[Item]:
    """Raw decoded records of standard input (or `stream`), like read_records: format and
    gzip by content; path ``"<stdin>"``, positions as for a file of that format."""
    src = stream if stream is not None else sys.stdin.buffer
    try:
        fobj: Any = _sniffed(src)
        gz = _peek(fobj, 2) == _GZIP_MAGIC
        if gz:
            fobj = _sniffed(gzip.GzipFile(fileobj=fobj, mode="rb"))
        fmt = _format_of(fobj)
    except (OSError, EOFError, zlib.error) as e:
        yield ReadError(STDIN_PATH, None, f"cannot read: {e}")
        return
    try:
        # EVTX: handed over as if compressed, so the reader spools it to a seekable file
        yield from _READERS[fmt](Path(STDIN_PATH), (fobj, gz or fmt == "evtx"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        yield ReadError(STDIN_PATH, None, f"read failed: {e}")


def read_stdin_events(on_error: ErrorCallback | None = None,
                      stream: IO[bytes] | None = None) -> Iterator[tuple[dict, SourceRef]]:
    """Normalised events of standard input (or `stream`): see read_stdin_records."""
    yield from _normalised(read_stdin_records(stream), on_error or _log_error)
