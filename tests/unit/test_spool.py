"""connectors.spool: order, crash recovery, cap, ack-by-segment deletion (no broker)."""
from __future__ import annotations

import pytest

from sigstream.connectors.spool import Spool, SpoolRecord, encode_record


def rec(i: int, topic: str = "t", key: bytes | None = b"host") -> SpoolRecord:
    return SpoolRecord(topic, key, f"value-{i}".encode())


def values(records) -> list[bytes]:
    return [r.value for r in records]


def read_all(sp: Spool, n: int = 10**9) -> list[SpoolRecord]:
    return [r for _, _, r in sp.read(n)]


def test_append_read_order_across_segments(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    for i in range(50):
        assert sp.append(rec(i, key=None if i % 7 == 0 else b"h%d" % (i % 3)))
    assert len(sp.segments) > 3
    assert sp.unread == 50
    got = read_all(sp, 20) + read_all(sp)
    assert values(got) == [f"value-{i}".encode() for i in range(50)]
    assert got[0].key is None and got[1].key == b"h1" and got[0].topic == "t"
    assert sp.unread == 0 and read_all(sp) == []
    # appends after a full read are read next
    sp.append(rec(50))
    assert values(read_all(sp)) == [b"value-50"]
    sp.close()


def test_reopen_keeps_records_in_order(tmp_path):
    sp = Spool(tmp_path, segment_bytes=150)
    for i in range(20):
        sp.append(rec(i))
    sp.close()
    sp2 = Spool(tmp_path, segment_bytes=150)
    assert sp2.unread == 20
    assert values(read_all(sp2)) == [f"value-{i}".encode() for i in range(20)]
    assert not sp2.recovered_problems


@pytest.mark.parametrize("cut", [1, 5, 11, -1])
def test_torn_last_record_is_skipped_on_reopen(tmp_path, cut):
    sp = Spool(tmp_path)
    for i in range(5):
        sp.append(rec(i))
    sp.close()
    (seg,) = sorted(tmp_path.glob("*.seg"))
    size = seg.stat().st_size
    last = len(encode_record(rec(4)))
    # simulate a crash in the middle of writing the last record
    with open(seg, "r+b") as f:
        f.truncate(size - last + cut if cut > 0 else size + cut)
    sp2 = Spool(tmp_path)
    assert sp2.recovered_problems, "the torn record must be reported"
    assert values(read_all(sp2)) == [f"value-{i}".encode() for i in range(4)]
    # the file was repaired: appending and reopening works
    sp2.append(rec(99))
    sp2.close()
    sp3 = Spool(tmp_path)
    assert not sp3.recovered_problems
    assert values(read_all(sp3))[-1] == b"value-99"


def test_corrupt_record_checksum_detected(tmp_path):
    sp = Spool(tmp_path)
    for i in range(3):
        sp.append(rec(i))
    sp.close()
    (seg,) = sorted(tmp_path.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0xFF           # flip a byte of the last record's value
    seg.write_bytes(bytes(data))
    sp2 = Spool(tmp_path)
    assert values(read_all(sp2)) == [b"value-0", b"value-1"]


def test_garbage_only_segment_is_removed(tmp_path):
    (tmp_path / f"{10**12:020d}.seg").write_bytes(b"\x00\x01garbage")
    sp = Spool(tmp_path)
    assert sp.unread == 0 and sp.segments == []
    assert sp.append(rec(1))
    assert values(read_all(sp)) == [b"value-1"]


def test_cap_refuses_and_reports(tmp_path):
    one = len(encode_record(rec(0)))
    sp = Spool(tmp_path, max_bytes=one * 3 + 1)
    assert [sp.append(rec(i)) for i in range(5)] == [True, True, True, False, False]
    assert sp.unread == 3
    assert sp.bytes <= sp.max_bytes
    # deleting delivered segments gives the space back
    read_all(sp)
    for seg in sp.segments:
        sp.delete_segment(seg)
    assert sp.bytes == 0
    assert sp.append(rec(9))


def test_segment_deletion_after_ack(tmp_path):
    sp = Spool(tmp_path, segment_bytes=100)
    for i in range(12):
        sp.append(rec(i))
    segs = sp.segments
    assert len(segs) >= 3
    first = segs[0]
    n_first = sp.records_in(first)
    got = sp.read(n_first)
    assert all(seg == first for seg, _, _ in got)
    assert sp.fully_read(first) and not sp.fully_read(segs[1])
    sp.delete_segment(first)
    assert not sp.path_of(first).exists()
    assert sp.cursor.segment == segs[1]
    with pytest.raises(ValueError):     # unread records: refuse to delete
        sp.delete_segment(segs[1])
    sp.close()
    # a deleted segment stays deleted; the rest is read in order after reopen
    sp2 = Spool(tmp_path, segment_bytes=100)
    assert values(read_all(sp2)) == [f"value-{i}".encode() for i in range(n_first, 12)]


def test_seek_gives_records_back(tmp_path):
    sp = Spool(tmp_path)
    for i in range(5):
        sp.append(rec(i))
    batch = sp.read(5)
    sp.seek(batch[2][1], 3)
    assert sp.unread == 3
    assert values(read_all(sp)) == [b"value-2", b"value-3", b"value-4"]


def test_prepend_and_compact_keep_order_across_restart(tmp_path):
    sp = Spool(tmp_path, segment_bytes=120)
    for i in range(10, 20):
        sp.append(rec(i))
    read = sp.read(4)               # 10..13 were sent, not acknowledged
    assert values(r for _, _, r in read) == [b"value-10", b"value-11", b"value-12", b"value-13"]
    held = [rec(i) for i in range(8, 14)]   # what the publisher still holds, in send order
    sp.compact_read_prefix()
    sp.prepend(held)
    sp.close()
    sp2 = Spool(tmp_path, segment_bytes=120)
    assert values(read_all(sp2)) == [f"value-{i}".encode() for i in range(8, 20)]


def test_fsync_policies(tmp_path):
    for policy in ("always", "batch", "never"):
        sp = Spool(tmp_path / policy, fsync=policy)
        sp.append(rec(1))
        sp.flush()
        sp.close()
        assert Spool(tmp_path / policy).unread == 1
    with pytest.raises(ValueError):
        Spool(tmp_path / "x", fsync="sometimes")
