"""Unit tests for connectors.readers (inputs are generated in tmp_path)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path

import orjson
import pytest

from sigstream.connectors.readers import (
    ReadError,
    SourceRef,
    detect_format,
    find_event_files,
    read_events,
    read_records,
    read_stdin_events,
    read_stdin_records,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "evtx-attack-samples"
CHUNK = 65536
HEADER = 4096


def sysmon_event(n: int, **data) -> dict:
    """An EVTX-JSON (evtx package shape) Sysmon event."""
    return {"Event": {
        "#attributes": {"xmlns": "http://schemas.microsoft.com/win/2004/08/events/event"},
        "System": {
            "Provider": {"#attributes": {"Name": "Microsoft-Windows-Sysmon"}},
            "EventID": 1, "Version": 5, "Level": 4, "Task": 1, "Opcode": 0,
            "Keywords": "0x8000000000000000",
            "TimeCreated": {"#attributes": {"SystemTime": "2019-03-19T23:30:11.123456Z"}},
            "EventRecordID": n, "Channel": "Microsoft-Windows-Sysmon/Operational",
            "Computer": "host1"},
        "EventData": {"CommandLine": f"cmd.exe /c echo {n}", **data},
    }}


def flat_event(n: int) -> dict:
    return {"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational",
            "Hostname": "ws1", "EventTime": "2020-01-01 00:00:00", "ScriptBlockText": f"s{n}"}


def collect(paths):
    errors: list[ReadError] = []
    events = list(read_events(paths, errors.append))
    return events, errors


# --------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------

def test_dataclasses():
    ref = SourceRef("a.jsonl", 3)
    err = ReadError("a.jsonl", 3, "bad")
    assert err.to_dict() == {"path": "a.jsonl", "position": 3, "reason": "bad"}
    assert "a.jsonl:3" in str(err)
    with pytest.raises(AttributeError):
        ref.position = 4  # frozen
    assert not hasattr(ref, "__dict__")  # slots


# --------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------

def test_jsonl_bad_utf8_and_bad_json_lines(tmp_path):
    p = tmp_path / "events.jsonl"
    lines = [
        orjson.dumps(sysmon_event(1)),                     # 1 ok
        b"",                                              # 2 blank
        b'{"EventID": 1, "Channel": "x", "Image": "\xff\xfe bad"}',  # 3 non UTF-8
        orjson.dumps(flat_event(4)),                       # 4 ok
        b'{"EventID": 1, "Channel": ',                     # 5 truncated JSON
        b"   ",                                           # 6 blank (spaces)
        b'{"not": "an event"}',                            # 7 valid JSON, not an event
        b"42",                                            # 8 JSON but not an object
        orjson.dumps(sysmon_event(9)),                     # 9 ok
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    events, errors = collect([p])
    assert [ref.position for _, ref in events] == [1, 4, 9]
    assert all(ref.path == str(p) for _, ref in events)
    assert [e.position for e in errors] == [3, 5, 7, 8]
    by_pos = {e.position: e.reason for e in errors}
    assert "UTF-8" in by_pos[3]
    assert "invalid JSON" in by_pos[5]
    assert "not an event" in by_pos[7]
    assert "not an object" in by_pos[8]
    assert events[0][0]["CommandLine"] == "cmd.exe /c echo 1"
    assert events[1][0]["ScriptBlockText"] == "s4"
    assert events[1][0]["TimeCreated"] == "2020-01-01T00:00:00.000000Z"


def test_jsonl_crlf_and_no_trailing_newline(tmp_path):
    p = tmp_path / "e.ndjson"
    p.write_bytes(orjson.dumps(flat_event(1)) + b"\r\n" + orjson.dumps(flat_event(2)))
    events, errors = collect([p])
    assert errors == [] and [r.position for _, r in events] == [1, 2]


def test_jsonl_first_line_corrupt_rest_read(tmp_path):
    p = tmp_path / "e.json"
    p.write_bytes(b'{"EventID": 1, "Chan\n' + orjson.dumps(flat_event(2)) + b"\n")
    events, errors = collect([p])
    assert [r.position for _, r in events] == [2]
    assert [e.position for e in errors] == [1]


@pytest.mark.parametrize("name", ["e.jsonl.gz", "e.json.gz", "e.gz.unknownext"])
def test_gzip_jsonl(tmp_path, name):
    p = tmp_path / name
    with gzip.open(p, "wb") as f:
        for i in range(1, 4):
            f.write(orjson.dumps(sysmon_event(i)) + b"\n")
    events, errors = collect([p])
    assert errors == []
    assert [ev["EventRecordID"] for ev, _ in events] == [1, 2, 3]
    assert [r.position for _, r in events] == [1, 2, 3]


def test_truncated_gzip_reports_error(tmp_path):
    p = tmp_path / "e.jsonl.gz"
    data = gzip.compress(b"".join(orjson.dumps(sysmon_event(i, Pad="x" * 2000)) + b"\n"
                                  for i in range(1, 200)))
    p.write_bytes(data[: len(data) // 2])
    events, errors = collect([p])
    assert 0 < len(events) < 199
    assert errors and "cannot read further" in errors[-1].reason


# --------------------------------------------------------------------------
# JSON array / single pretty object / concatenated objects
# --------------------------------------------------------------------------

def test_json_array(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text(json.dumps([sysmon_event(1), "oops", flat_event(3)], indent=2))
    events, errors = collect([p])
    assert [r.position for _, r in events] == [1, 3]
    assert [(e.position, "not an object" in e.reason) for e in errors] == [(2, True)]


def test_json_array_invalid(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[{"EventID": 1}, {"EventID": ')
    events, errors = collect([p])
    assert events == [] and len(errors) == 1 and "invalid JSON" in errors[0].reason


def test_single_pretty_object(tmp_path):
    p = tmp_path / "sample.json"
    p.write_text(json.dumps(sysmon_event(7), indent=2) + "\n")
    events, errors = collect([p])
    assert errors == []
    assert len(events) == 1
    ev, ref = events[0]
    assert ref.position == 1 and ev["EventRecordID"] == 7 and ev["EventID"] == 1


def test_concatenated_pretty_objects(tmp_path):
    # (SigmaHQ regression_data has files with several pretty-printed objects)
    first = json.dumps(sysmon_event(1), indent=2)
    p = tmp_path / "multi.json"
    p.write_text(first + "\n" + json.dumps(sysmon_event(2), indent=2) + "\n")
    events, errors = collect([p])
    assert errors == []
    assert [ev["EventRecordID"] for ev, _ in events] == [1, 2]
    assert [r.position for _, r in events] == [1, first.count("\n") + 2]


def test_pretty_objects_with_broken_tail(tmp_path):
    p = tmp_path / "multi.json"
    p.write_text(json.dumps(sysmon_event(1), indent=2) + "\n{\n  \"Event\": \n")
    events, errors = collect([p])
    assert len(events) == 1 and len(errors) == 1 and "invalid JSON" in errors[0].reason


@pytest.mark.parametrize("encoding, bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe")])
def test_bom_encodings(tmp_path, encoding, bom):
    p = tmp_path / "ps.json"
    text = json.dumps([flat_event(1), flat_event(2)], indent=2, ensure_ascii=False)
    p.write_bytes(bom + text.encode(encoding))
    events, errors = collect([p])
    assert errors == [] and len(events) == 2


def test_utf16_jsonl(tmp_path):
    p = tmp_path / "ps.jsonl"
    text = "\n".join(json.dumps(flat_event(i)) for i in range(3)) + "\n"
    p.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    events, errors = collect([p])
    assert errors == [] and [r.position for _, r in events] == [1, 2, 3]


def test_empty_and_whitespace_files(tmp_path):
    (tmp_path / "a.json").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(b"\n\n  \n")
    events, errors = collect([tmp_path])
    assert events == [] and errors == []


def test_jsonl_is_streamed(tmp_path, monkeypatch):
    """JSON lines are read line by line: read() of the whole file is never called."""
    p = tmp_path / "big.jsonl"
    p.write_bytes(b"".join(orjson.dumps(flat_event(i)) + b"\n" for i in range(2000)))
    calls = []
    real_open = open

    class Spy(io.BufferedReader):
        def read(self, size=-1):
            calls.append(size)
            return super().read(size)

    def spy_open(file, mode="r", *a, **kw):
        if str(file) == str(p) and mode == "rb":
            return Spy(real_open(file, "rb", buffering=0))
        return real_open(file, mode, *a, **kw)

    import sigstream.connectors.readers as readers_mod
    monkeypatch.setattr(readers_mod, "open", spy_open, raising=False)
    events, errors = collect([p])
    assert len(events) == 2000 and errors == []
    assert all(size is not None and 0 <= size <= 65536 for size in calls), calls


# --------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------

def test_find_event_files_recursive_sorted(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    wanted = ["a/1.jsonl", "a/2.JSON", "b/deep/x.evtx", "b/deep/y.ndjson.gz", "b/z.json.gz",
              "top.evtx.gz", "top.ndjson"]
    for rel in wanted + ["a/readme.txt", "b/deep/x.evtx.bak", "notes.md"]:
        (tmp_path / rel).write_bytes(b"")
    found = find_event_files([tmp_path])
    assert found == sorted(tmp_path / w for w in wanted)


def test_find_event_files_explicit_files_and_order(tmp_path):
    odd = tmp_path / "events.txt"
    odd.write_bytes(b"")
    d = tmp_path / "d"
    d.mkdir()
    (d / "b.json").write_bytes(b"")
    (d / "a.json").write_bytes(b"")
    assert find_event_files([odd, str(d), d / "a.json"]) == [odd, d / "a.json", d / "b.json"]


def test_find_event_files_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_event_files([tmp_path / "nope.evtx"])
    with pytest.raises(FileNotFoundError):
        list(read_events([tmp_path / "nope.jsonl"]))


def test_read_events_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_bytes(orjson.dumps(flat_event(1)) + b"\n")
    with gzip.open(tmp_path / "b.json.gz", "wb") as f:
        f.write(json.dumps([flat_event(2), flat_event(3)]).encode())
    (tmp_path / "ignored.txt").write_text("garbage")
    events, errors = collect([tmp_path])
    assert errors == []
    assert [(Path(r.path).name, r.position) for _, r in events] == [("b.json.gz", 1), ("b.json.gz", 2),
                                                                   ("a.jsonl", 1)]


def test_stdin_events():
    data = orjson.dumps(flat_event(1)) + b"\n\nnot json\n" + orjson.dumps(sysmon_event(2)) + b"\n"
    errors: list[ReadError] = []
    events = list(read_stdin_events(errors.append, stream=io.BytesIO(data)))
    assert [r.position for _, r in events] == [1, 4]
    assert [(e.path, e.position) for e in errors] == [("<stdin>", 3)]


def _stdin_items(data: bytes) -> list:
    return list(read_stdin_records(io.BytesIO(data)))


def _as_read_from_file(tmp_path: Path, name: str, data: bytes) -> list:
    """What read_records gives for the same bytes in a file, with stdin's path."""
    p = tmp_path / name
    p.write_bytes(data)
    out = []
    for item in read_records(p):
        if isinstance(item, ReadError):
            out.append(ReadError("<stdin>", item.position, item.reason, item.raw))
        else:
            out.append((item[0], SourceRef("<stdin>", item[1].position)))
    return out


XML_EVENTS = (b'<Events><Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>'
              b'<EventID>1</EventID><Channel>Microsoft-Windows-Sysmon/Operational</Channel>'
              b'<Computer>h</Computer></System><EventData><Data Name="CommandLine">a</Data></EventData>'
              b'</Event><Event><broken></Event></Events>')


@pytest.mark.parametrize("name, data", [
    ("lines.jsonl", orjson.dumps(flat_event(1)) + b"\n\nnot json\n" + orjson.dumps(sysmon_event(2)) + b"\n"),
    ("array.json", b"\n  " + json.dumps([flat_event(1), 3, sysmon_event(2)]).encode()),
    ("pretty.json", json.dumps(flat_event(1), indent=2).encode() + b"\n" +
     json.dumps(flat_event(2), indent=2).encode()),
    ("bom.jsonl", b"\xef\xbb\xbf" + orjson.dumps(flat_event(1)) + b"\n"),
    ("utf16.jsonl", ("\ufeff" + json.dumps(flat_event(1)) + "\r\n").encode("utf-16-le")),
    ("events.xml", XML_EVENTS),
    ("empty.json", b""),
    ("blank.json", b"  \n\n"),
])
def test_stdin_records_are_those_of_the_same_bytes_in_a_file(tmp_path, name, data):
    expected = _as_read_from_file(tmp_path, name, data)
    assert _stdin_items(data) == expected
    assert _stdin_items(gzip.compress(data)) == expected


class _Trickle(io.RawIOBase):
    """A pipe that hands out a few bytes per read, as a slow producer would."""

    def __init__(self, data: bytes, step: int):
        self.data, self.step = data, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.step, len(self.data))
        b[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


@pytest.mark.parametrize("step", [1, 3, 4096])
def test_stdin_read_a_few_bytes_at_a_time(tmp_path, step):
    data = b"\n\n   " + json.dumps([flat_event(1), flat_event(2)]).encode()
    expected = _as_read_from_file(tmp_path, "a.json", data)
    assert list(read_stdin_records(io.BufferedReader(_Trickle(data, step), 1))) == expected
    lines = b"".join(orjson.dumps(flat_event(n)) + b"\n" for n in range(5))
    got = list(read_stdin_records(io.BufferedReader(_Trickle(lines, step), 1)))
    assert [r.position for _, r in got] == [1, 2, 3, 4, 5]


def test_stdin_evtx(tmp_path):
    src = _real_evtx(1)
    from_file = _as_read_from_file(tmp_path, "a.evtx", src.read_bytes())
    assert from_file and _stdin_items(src.read_bytes()) == from_file


def test_find_event_files_reports_missing_paths_to_on_error(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    problems: list[OSError] = []
    found = find_event_files([tmp_path / "nope", tmp_path], on_error=problems.append)
    assert found == [tmp_path / "a.jsonl"]
    assert [(type(e), e.filename, e.strerror) for e in problems] == \
        [(FileNotFoundError, str(tmp_path / "nope"), "No such file or directory")]


# --------------------------------------------------------------------------
# EVTX
# --------------------------------------------------------------------------

def test_not_an_evtx_file(tmp_path):
    p = tmp_path / "fake.evtx"
    p.write_text('{"EventID": 1}\nthis is not an evtx file\n')
    events, errors = collect([p])
    assert events == []
    assert len(errors) == 1 and errors[0].position is None
    assert "not an EVTX" in errors[0].reason


def test_evtx_header_only(tmp_path):
    p = tmp_path / "short.evtx"
    p.write_bytes(b"ElfFile\x00" + b"\x00" * 40)
    events, errors = collect([p])
    assert events == [] and len(errors) == 1 and errors[0].position is None


def _real_evtx(min_chunks: int) -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"EVTX corpus not available at {CORPUS} (needed to build EVTX test inputs)")
    files = sorted((p for p in CORPUS.rglob("*.evtx")
                    if p.stat().st_size >= HEADER + min_chunks * CHUNK),
                   key=lambda p: (p.stat().st_size, str(p)))
    if not files:
        pytest.skip(f"no EVTX file with >= {min_chunks} chunks in {CORPUS}")
    return files[0]


def _count_records(path) -> int:
    from evtx import PyEvtxParser
    return sum(1 for _ in PyEvtxParser(str(path)).records_json())


def test_real_evtx_full(tmp_path):
    src = _real_evtx(1)
    p = tmp_path / "copy.evtx"
    shutil.copyfile(src, p)
    events, errors = collect([p])
    assert errors == []
    assert len(events) == _count_records(p) > 0
    assert [r.position for _, r in events] == list(range(1, len(events) + 1))
    for ev, _ in events:
        assert type(ev["EventID"]) is int and isinstance(ev["Channel"], str)
        assert ev["TimeCreated"].endswith("Z")


def test_truncated_evtx(tmp_path):
    src = _real_evtx(2)
    data = src.read_bytes()
    full = tmp_path / "full.evtx"
    full.write_bytes(data)
    total = _count_records(full)
    # keep the header, the first chunk and part of the second one
    cut = HEADER + CHUNK + 30000
    p = tmp_path / "truncated.evtx"
    p.write_bytes(data[:cut])
    first_chunk_only = tmp_path / "one_chunk.evtx"
    first_chunk_only.write_bytes(data[: HEADER + CHUNK])
    in_first_chunk = _count_records(first_chunk_only)

    events, errors = collect([p])
    assert in_first_chunk <= len(events) < total
    assert [r.position for _, r in events] == list(range(1, len(events) + 1))
    assert errors, "truncation must be reported"
    assert "truncated" in errors[-1].reason
    assert all(e.path == str(p) for e in errors)
    # the records read are the same as in the intact file
    full_events = [ev for ev, _ in read_events([full])]
    assert [ev for ev, _ in events] == full_events[: len(events)]


def test_truncated_inside_first_chunk(tmp_path):
    src = _real_evtx(1)
    p = tmp_path / "tiny.evtx"
    p.write_bytes(src.read_bytes()[: HEADER + 3000])
    events, errors = collect([p])
    assert errors and "truncated" in errors[-1].reason
    assert len(errors) < 10


def test_corrupt_chunk_in_the_middle(tmp_path):
    src = _real_evtx(3)
    data = bytearray(src.read_bytes())
    full = tmp_path / "full.evtx"
    full.write_bytes(data)
    total = _count_records(full)
    start = HEADER + CHUNK + 600  # damage the second chunk's string table / records
    data[start:start + 2400] = b"\xff" * 2400
    p = tmp_path / "corrupt.evtx"
    p.write_bytes(bytes(data))
    events, errors = collect([p])
    assert errors, "the damaged chunk must be reported"
    assert all(e.position is not None for e in errors)
    assert 0 < len(events) < total
    # records of the following chunks are still read
    last_ids = {ev["EventRecordID"] for ev, _ in read_events([full])}
    assert max(ev["EventRecordID"] for ev, _ in events) == max(last_ids)


@pytest.mark.parametrize("name", ["renamed.json", "packed.evtx.gz"])
def test_evtx_detected_by_content(tmp_path, name):
    src = _real_evtx(1)
    p = tmp_path / name
    if name.endswith(".gz"):
        p.write_bytes(gzip.compress(src.read_bytes()))
    else:
        shutil.copyfile(src, p)
    events, errors = collect([p])
    assert errors == []
    assert len(events) == _count_records(src)


def test_read_records_raw(tmp_path):
    p = tmp_path / "raw.jsonl"
    p.write_bytes(orjson.dumps({"anything": 1}) + b"\n")
    items = list(read_records(p))
    assert items == [({"anything": 1}, SourceRef(str(p), 1))]


def test_broken_pretty_object_is_one_error(tmp_path):
    p = tmp_path / "broken.json"
    text = json.dumps(sysmon_event(1), indent=2)
    p.write_text(text[: len(text) // 2])
    events, errors = collect([p])
    assert events == [] and len(errors) == 1 and "invalid JSON" in errors[0].reason


def test_pretty_object_with_bad_utf8_is_one_error(tmp_path):
    p = tmp_path / "bad.json"
    p.write_bytes(b'{\n  "EventID": 1,\n  "Image": "\xff"\n}\n')
    events, errors = collect([p])
    assert events == [] and len(errors) == 1 and "UTF-8" in errors[0].reason


# --------------------------------------------------------------------------
# XML input (wevtutil qe /f:xml, Event Viewer "Save as XML")
# --------------------------------------------------------------------------

def _xml_event(rid: int, cmd: str = "whoami", eid: int = 1) -> str:
    return ("<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"
            "<Provider Name='Microsoft-Windows-Sysmon' Guid='{5770385F-C22A-43E0-BF4C-06F5698FFBD9}'/>"
            f"<EventID>{eid}</EventID><Version>5</Version><Level>4</Level><Task>1</Task>"
            "<Opcode>0</Opcode><Keywords>0x8000000000000000</Keywords>"
            "<TimeCreated SystemTime='2024-01-02T03:04:05.1234567Z'/>"
            f"<EventRecordID>{rid}</EventRecordID><Correlation/>"
            "<Execution ProcessID='3140' ThreadID='4200'/>"
            "<Channel>Microsoft-Windows-Sysmon/Operational</Channel><Computer>h1</Computer>"
            "<Security UserID='S-1-5-18'/></System><EventData>"
            f"<Data Name='CommandLine'>{cmd}</Data><Data Name='ProcessId'>7444</Data>"
            "<Data Name='LogonId'>0x3e7</Data><Data Name='User'/></EventData></Event>")


def _xml_events(path):
    errors = []
    evs = [(ev, ref.position) for ev, ref in read_events([path], on_error=errors.append)]
    return evs, errors


def test_xml_stream_without_root(tmp_path):
    p = tmp_path / "wevtutil.xml"
    p.write_text("\r\n".join(_xml_event(i) for i in (1, 2, 3)) + "\r\n", encoding="utf-8")
    assert detect_format(p) == "xml"
    evs, errors = _xml_events(p)
    assert errors == []
    assert [(e["EventRecordID"], pos) for e, pos in evs] == [(1, 1), (2, 2), (3, 3)]
    ev = evs[0][0]
    assert ev["EventID"] == 1 and ev["ProcessId"] == 7444 and ev["LogonId"] == "0x3e7"
    assert ev["User"] == "" and "Correlation" not in ev
    assert ev["Provider_Guid"] == "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}"
    assert ev["TimeCreated"] == "2024-01-02T03:04:05.123456Z"


def test_xml_events_root_utf16_and_rendering_info(tmp_path):
    body = _xml_event(7).replace("</EventData>", "</EventData><RenderingInfo Culture='en-US'>"
                                 "<Message>Process Create</Message></RenderingInfo>")
    text = "<?xml version='1.0' encoding='UTF-16'?>\r\n<Events>" + body + _xml_event(8) + "</Events>"
    p = tmp_path / "saved.xml"
    p.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    evs, errors = _xml_events(p)
    assert errors == [] and [e["EventRecordID"] for e, _ in evs] == [7, 8]
    assert "RenderingInfo" not in evs[0][0] and "Message" not in evs[0][0]


def test_xml_gz_found_in_directories(tmp_path):
    p = tmp_path / "sub" / "export.xml.gz"
    p.parent.mkdir()
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(_xml_event(5))
    assert find_event_files([tmp_path]) == [p]
    evs, errors = _xml_events(tmp_path)
    assert errors == [] and evs[0][0]["EventRecordID"] == 5


def test_xml_control_characters_and_crlf_kept(tmp_path):
    p = tmp_path / "ctl.xml"
    p.write_text(_xml_event(1, "a\x02b&#x1;c\r\nd") + _xml_event(2), encoding="utf-8")
    evs, errors = _xml_events(p)
    assert errors == []
    assert evs[0][0]["CommandLine"] == "a\x02b\x01c\r\nd"    # as the EVTX path gives them
    assert evs[1][0]["EventRecordID"] == 2


def test_xml_broken_element_in_the_middle_reported_with_position(tmp_path):
    broken = _xml_event(2).replace("</Data><Data Name='ProcessId'>", "</Data><Data Name='ProcessId'")
    truncated = _xml_event(4)[:200]
    p = tmp_path / "broken.xml"
    p.write_text(_xml_event(1) + broken + _xml_event(3) + truncated + _xml_event(5),
                 encoding="utf-8")
    evs, errors = _xml_events(p)
    assert [e["EventRecordID"] for e, _ in evs] == [1, 3, 5]
    assert [pos for _, pos in evs] == [1, 3, 5]
    assert [e.position for e in errors] == [2, 4]
    assert "does not parse" in errors[0].reason and errors[0].raw.startswith("<Event")
    assert "not closed" in errors[1].reason and errors[1].raw == truncated
    assert errors[0].to_dict()["raw"] == errors[0].raw


def test_xml_without_events_is_one_error(tmp_path):
    p = tmp_path / "sysmonconfig.xml"
    p.write_text("<Sysmon schemaversion='4.90'><EventFiltering/></Sysmon>", encoding="utf-8")
    evs, errors = _xml_events(p)
    assert evs == [] and len(errors) == 1 and errors[0].position is None
