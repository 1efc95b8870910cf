"""Script-block reassembly (stream/reassembly.py): pure, time passed in."""
from __future__ import annotations

import random

from sigstream.stream.reassembly import ScriptBlockAssembler

HOST = "WKS-FIN-042.corp.example.com"
CH = "Microsoft-Windows-PowerShell/Operational"


def frag(n, total, text, sbid="c0ffee00-1111-2222-3333-444455556666", rid=None, host=HOST):
    return {"EventID": 4104, "Channel": CH, "Computer": host, "Provider_Name": "Microsoft-Windows-PowerShell",
            "EventRecordID": 100 + n if rid is None else rid, "TimeCreated": f"2026-11-24T09:11:4{n}.000000Z",
            "MessageNumber": n, "MessageTotal": total, "ScriptBlockText": text, "ScriptBlockId": sbid,
            "Path": "C:\\x.ps1"}


def split(text, size):
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_non_4104_and_single_part_pass_through_unchanged():
    a = ScriptBlockAssembler()
    ev = {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational", "Image": "x"}
    assert a.feed(ev, 0)[0] is ev
    single = frag(1, 1, "Get-Process")
    assert a.feed(single, 0)[0] is single
    assert "sigstream_Reassembled" not in single
    assert a.pending == 0


def test_in_order():
    a = ScriptBlockAssembler()
    text = "".join(chr(65 + i % 26) for i in range(50_000))
    parts = split(text, 20_000)
    out = []
    for i, p in enumerate(parts, 1):
        got = a.feed(frag(i, len(parts), p), now=i)
        if i < len(parts):
            assert got == []
        out += got
    assert len(out) == 1
    ev = out[0]
    assert ev["ScriptBlockText"] == text
    assert ev["MessageNumber"] == 1 and ev["MessageTotal"] == 3
    assert ev["EventRecordID"] == 101 and ev["TimeCreated"] == "2026-11-24T09:11:41.000000Z"
    assert ev["sigstream_Fragments"] == [[1, 101], [2, 102], [3, 103]]
    assert ev["sigstream_Reassembled"] is True
    assert "sigstream_Incomplete" not in ev
    assert a.pending == 0 and a.buffered_bytes == 0


def test_out_of_order():
    a = ScriptBlockAssembler()
    text = "x" * 7 + "y" * 7 + "z" * 3
    parts = split(text, 7)
    order = [3, 1, 2]
    out = []
    for n in order:
        out += a.feed(frag(n, 3, parts[n - 1]), now=0)
    assert [e["ScriptBlockText"] for e in out] == [text]
    assert out[0]["EventRecordID"] == 101           # metadata of part 1, whatever arrived first
    assert out[0]["sigstream_Fragments"] == [[1, 101], [2, 102], [3, 103]]


def test_shuffled_many_blocks_interleaved():
    a = ScriptBlockAssembler()
    rnd = random.Random(7)
    blocks = {f"id-{k}": "".join(rnd.choice("abc;$ ") for _ in range(rnd.randint(30, 90))) for k in range(20)}
    evs = []
    for sbid, text in blocks.items():
        parts = split(text, 10)
        evs += [frag(i, len(parts), p, sbid=sbid) for i, p in enumerate(parts, 1)]
    rnd.shuffle(evs)
    out = [e for ev in evs for e in a.feed(ev, 0)]
    got = {e["ScriptBlockId"]: e["ScriptBlockText"] for e in out}
    assert got == {k: v for k, v in blocks.items() if len(v) > 10} | {k: v for k, v in blocks.items() if len(v) <= 10}
    assert a.pending == 0


def test_duplicate_part_is_dropped_and_late_duplicate_after_completion_too():
    a = ScriptBlockAssembler()
    assert a.feed(frag(1, 2, "ab"), 0) == []
    assert a.feed(frag(1, 2, "ab"), 0) == []               # redelivered
    out = a.feed(frag(2, 2, "cd"), 0)
    assert [e["ScriptBlockText"] for e in out] == ["abcd"]
    assert a.feed(frag(2, 2, "cd"), 1) == []               # after the block was emitted
    assert a.expire(10_000) == [] and a.flush() == []
    assert a.stats["duplicates"] == 2 and a.stats["completed"] == 1


def test_missing_part_timeout_emits_what_it_has_flagged():
    a = ScriptBlockAssembler(timeout_s=30)
    a.feed(frag(1, 3, "first-"), now=100)
    a.feed(frag(3, 3, "-third"), now=105)
    assert a.expire(now=134) == []                          # 29 s after the latest part
    out = a.expire(now=135)
    assert len(out) == 1
    ev = out[0]
    assert ev["ScriptBlockText"] == "first--third"
    assert ev["sigstream_Incomplete"] is True
    assert ev["sigstream_MissingParts"] == [2]
    assert ev["sigstream_Fragments"] == [[1, 101], [3, 103]]
    assert a.pending == 0 and a.stats["incomplete"] == 1


def test_missing_first_part_keeps_lowest_present_metadata():
    a = ScriptBlockAssembler(timeout_s=1)
    a.feed(frag(2, 2, "tail"), now=0)
    ev, = a.expire(5)
    assert ev["EventRecordID"] == 102 and ev["MessageNumber"] == 1
    assert ev["sigstream_MissingParts"] == [1]


def test_exact_multiple_length_and_empty_last_part():
    size = 20_000
    text = "Q" * (2 * size)                                  # exactly two full chunks
    # PowerShell may log an exact multiple either as 2 parts or as 2 full parts + an empty 3rd
    a = ScriptBlockAssembler()
    out = a.feed(frag(1, 2, text[:size]), 0) + a.feed(frag(2, 2, text[size:]), 0)
    assert [len(e["ScriptBlockText"]) for e in out] == [2 * size]
    b = ScriptBlockAssembler()
    out = b.feed(frag(1, 3, text[:size]), 0) + b.feed(frag(2, 3, text[size:]), 0)
    assert out == []                                         # waits for the (empty) last part
    last = frag(3, 3, "")
    out = b.feed(last, 0)
    assert len(out) == 1 and out[0]["ScriptBlockText"] == text
    assert "sigstream_Incomplete" not in out[0]
    # a last part whose ScriptBlockText is missing altogether counts as empty
    c = ScriptBlockAssembler()
    nolast = frag(2, 2, "")
    del nolast["ScriptBlockText"]
    out = c.feed(frag(1, 2, "abc"), 0) + c.feed(nolast, 0)
    assert out[0]["ScriptBlockText"] == "abc"


def test_string_numbers_from_json_replays():
    a = ScriptBlockAssembler()
    e1, e2 = frag(1, 2, "ab"), frag(2, 2, "cd")
    for e in (e1, e2):
        e["MessageNumber"], e["MessageTotal"], e["EventID"] = str(e["MessageNumber"]), "2", "4104"
    assert [x["ScriptBlockText"] for x in a.feed(e1, 0) + a.feed(e2, 0)] == ["abcd"]


def test_per_host_keys_do_not_mix():
    a = ScriptBlockAssembler()
    out = a.feed(frag(1, 2, "A1", host="h1"), 0) + a.feed(frag(1, 2, "B1", host="h2"), 0)
    out += a.feed(frag(2, 2, "B2", host="h2"), 0) + a.feed(frag(2, 2, "A2", host="h1"), 0)
    assert sorted((e["Computer"], e["ScriptBlockText"]) for e in out) == [("h1", "A1A2"), ("h2", "B1B2")]


def test_memory_cap_evicts_oldest_partial_and_counts():
    a = ScriptBlockAssembler(timeout_s=1000, max_bytes=3 * (10_000 + 512))
    assert a.feed(frag(1, 2, "a" * 10_000, sbid="old"), 0) == []
    assert a.feed(frag(1, 2, "b" * 10_000, sbid="mid"), 1) == []
    assert a.feed(frag(1, 2, "c" * 10_000, sbid="new"), 2) == []
    out = a.feed(frag(1, 2, "d" * 10_000, sbid="newest"), 3)
    assert len(out) == 1
    ev = out[0]
    assert ev["ScriptBlockId"] == "old"
    assert ev["sigstream_Incomplete"] is True and ev["sigstream_Evicted"] is True
    assert ev["sigstream_MissingParts"] == [2]
    assert a.stats["evicted"] == 1
    assert a.buffered_bytes <= a.max_bytes and a.pending == 3
    # the remaining blocks still complete normally
    done = a.feed(frag(2, 2, "B", sbid="mid"), 4)
    assert [e["ScriptBlockText"] for e in done] == ["b" * 10_000 + "B"]


def test_flush_emits_everything_pending():
    a = ScriptBlockAssembler()
    a.feed(frag(1, 2, "x", sbid="s1"), 0)
    a.feed(frag(1, 3, "y", sbid="s2"), 0)
    out = a.flush()
    assert sorted(e["ScriptBlockId"] for e in out) == ["s1", "s2"]
    assert all(e["sigstream_Incomplete"] for e in out)
    assert a.pending == 0


def test_input_events_are_not_modified():
    a = ScriptBlockAssembler()
    e1, e2 = frag(1, 2, "ab"), frag(2, 2, "cd")
    before = (dict(e1), dict(e2))
    a.feed(e1, 0)
    a.feed(e2, 0)
    assert (e1, e2) == before
