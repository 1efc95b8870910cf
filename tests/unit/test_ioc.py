"""stream.ioc: hash list formats, validation, matching through the Engine, reload."""
from __future__ import annotations

import os

import pytest

from sigstream.stream.alerts import build_alert
from sigstream.stream.engine import Engine
from sigstream.stream.ioc import IocWatcher, load_ioc_files, load_list, parse_hash, rule_id, rules_of

MD5 = "44d88612fea8a8f36de82e1278abb02f"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
IMP = "f34d5f2d4577ed6d9ceec516c1f5a744"
SYSMON = "Microsoft-Windows-Sysmon/Operational"


def ev(eid: int = 1, hashes: str = "", field: str = "Hashes", channel: str = SYSMON) -> dict:
    return {"EventID": eid, "Channel": channel, "Image": r"C:\Users\Public\a.exe", field: hashes}


def test_parse_hash():
    assert parse_hash(MD5.upper()) == ("md5", MD5)
    assert parse_hash(SHA1) == ("sha1", SHA1)
    assert parse_hash(f" {SHA256} ") == ("sha256", SHA256)
    assert parse_hash(f"imphash:{IMP}") == ("imphash", IMP)
    assert parse_hash(f"IMPHASH={IMP.upper()}") == ("imphash", IMP)
    for bad, why in [("xyz", "hexadecimal"), ("abcd", "no MD5"), (f"sha1:{MD5}", "40 hex"),
                     (f"crc32:{MD5}", "unknown hash algorithm"), ("md5:", "empty")]:
        with pytest.raises(ValueError, match=why):
            parse_hash(bad)


def test_plain_text_list_with_comments_meta_and_bad_lines(tmp_path):
    p = tmp_path / "apt-x.txt"
    p.write_text(f"# exported 2026-11-20\n{MD5}\n\n{SHA256}   # dropper\n# label: Loader X\n# level: critical\n"
                 f"imphash:{IMP}\nnot-a-hash\n{SHA1[:-1]}\n{MD5}\n")
    ioc = load_list(p)
    assert [str(x) for x in ioc.problems] == [
        f"{p}:8: not a hexadecimal hash: 'not-a-hash'",
        f"{p}:9: 39 hex digits is no MD5 (32), SHA1 (40) or SHA256 (64)"]
    assert ioc.entries["apt-x"] == ("high", [("md5", MD5), ("sha256", SHA256)])
    assert ioc.entries["Loader X"][0] == "critical"
    assert ioc.entries["Loader X"][1] == [("imphash", IMP), ("md5", MD5)]
    rules = rules_of(ioc)
    assert [r.title for r in rules] == ["Known-bad hash: apt-x (apt-x)", "Known-bad hash: Loader X (apt-x)"]
    assert [r.level for r in rules] == ["high", "critical"]
    assert all(r.logsource["product"] == "windows" and "ioc.hash" in r.tags for r in rules)


def test_csv_list(tmp_path):
    p = tmp_path / "feed.csv"
    p.write_text(f"hash,label,level\n{SHA256},Emotet,critical\n{MD5},Emotet\n{SHA1},\"Cobalt Strike, beacon\",medium\n"
                 f"zz,bad\n{IMP},x,severe\n")
    ioc = load_list(p)
    assert [x.line for x in ioc.problems] == [5, 6]
    assert "unknown level 'severe'" in ioc.problems[1].reason
    assert ioc.entries["Emotet"] == ("critical", [("sha256", SHA256), ("md5", MD5)])
    assert ioc.entries["Cobalt Strike, beacon"][0] == "medium"
    assert ioc.entries["x"][0] == "high"  # bad level: default, and reported


def test_ids_are_stable_and_distinct(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(f"{MD5},A\n{SHA1},B\n")
    first = {r.title: r.id for r in rules_of(load_list(p))}
    second = {r.title: r.id for r in rules_of(load_list(p))}
    assert first == second and len(set(first.values())) == 2
    assert first["Known-bad hash: A (l)"] == rule_id("l", "A")


def _engine(tmp_path, text: str, name: str = "bad.txt") -> Engine:
    p = tmp_path / name
    p.write_text(text)
    loaded = load_ioc_files([p])
    assert not loaded.problems
    return Engine(loaded.rules, use_cache=False)


@pytest.mark.parametrize("eid,field", [(1, "Hashes"), (6, "Hashes"), (7, "Hashes"), (15, "Hash"),
                                       (23, "Hashes"), (26, "Hashes")])
def test_matches_sysmon_hash_events(tmp_path, eid, field):
    engine = _engine(tmp_path, f"{SHA256}\n")
    hashes = f"SHA1={SHA1.upper()},MD5=00000000000000000000000000000000,SHA256={SHA256.upper()},IMPHASH={IMP.upper()}"
    assert [h.rule.title for h in engine.match(ev(eid, hashes, field))] == ["Known-bad hash: bad (bad)"]


def test_algorithm_qualified_match_avoids_cross_algorithm_hits(tmp_path):
    engine = _engine(tmp_path, f"{MD5}\n")  # an MD5 ...
    assert not engine.match(ev(1, f"SHA256={SHA256},IMPHASH={MD5.upper()}"))  # ... equal to an imphash
    assert engine.match(ev(1, f"MD5={MD5.upper()},IMPHASH={IMP}"))
    engine = _engine(tmp_path, f"imphash:{IMP}\n", "imp.txt")
    assert engine.match(ev(7, f"SHA256={SHA256},IMPHASH={IMP.upper()}"))
    assert not engine.match(ev(7, f"MD5={IMP},SHA256={SHA256}"))


def test_no_match_outside_sysmon_hash_events(tmp_path):
    engine = _engine(tmp_path, f"{SHA256}\n")
    assert not engine.match(ev(3, f"SHA256={SHA256}"))                    # network connection
    assert not engine.match(ev(1, f"SHA256={SHA256}", channel="Security"))
    assert not engine.match(ev(1, "SHA256=" + "0" * 64))


def test_thousands_of_hashes_and_alert_document(tmp_path):
    many = "\n".join(f"{i:064x}" for i in range(5000)) + f"\n{SHA256}\n"
    engine = _engine(tmp_path, many)
    event = ev(1, f"SHA256={SHA256.upper()}")
    hits = engine.match(event)
    assert len(hits) == 1
    alert = build_alert(hits[0], event, {"path": "x", "position": 1})
    assert alert["rule"]["title"] == "Known-bad hash: bad (bad)"
    assert alert["rule"]["level"] == "high"
    assert alert["matched"] and alert["matched"][-1]["value"] == f"SHA256={SHA256}"
    # (speed is measured by bench/, not here: a timed assertion fails on a busy machine)
    assert engine.match(ev(1, f"SHA256={'1' * 64},MD5={MD5}")) == []


def test_watcher_reloads_on_change(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.csv"
    a.write_text(f"{MD5}\n")
    b.write_text(f"{SHA1},Beacon,critical\n")
    w = IocWatcher([a, b])
    first = w.check()
    assert sorted(r.title for r in first) == ["Known-bad hash: Beacon (b)", "Known-bad hash: a (a)"]
    assert w.check() is None                              # nothing changed
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert w.check() is None                              # touched, same content
    a.write_text(f"{MD5}\n{SHA256}\nbad line\n")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 20_000_000))
    rules = w.check()
    assert rules is not None and len(rules) == 2
    assert [str(p) for p in w.problems] == [f"{a}:3: not a hexadecimal hash: 'bad line'"]
    engine = Engine(rules, use_cache=False)
    assert engine.match(ev(1, f"SHA256={SHA256}"))
    a.unlink()                                            # gone: keep the last good rules
    assert w.check() is None
    assert len(w._rules[a]) == 1


def test_hunt_cli_ioc_and_no_enrich(tmp_path):
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from sigstream.cli import main

    root = Path(__file__).resolve().parents[2]
    ioc = tmp_path / "samples-test.csv"
    # the placeholder hash of explorer.exe in samples/fileless-intrusion.jsonl, and a bad line
    ioc.write_text("65F9C32D6503AB09F506F0CC2F4C6330462C9809BBC6A278CEAC0CEEE07693C9,test-label,low\nnope,x\n")
    runner = CliRunner()
    samples = str(root / "samples" / "fileless-intrusion.jsonl")
    res = runner.invoke(main, ["hunt", "-r", str(root / "sigma_rules"), "--ioc", str(ioc), "-f", "jsonl", samples])
    assert res.exit_code == 0, res.output
    alerts = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    ioc_hits = [a for a in alerts if a["rule"]["title"] == "Known-bad hash: test-label (samples-test)"]
    assert ioc_hits and all(a["rule"]["level"] == "low" for a in ioc_hits)
    assert f"{ioc}:2:" in res.stderr
    assert any("sigstream_CommandLineDecoded" in a["event"] for a in alerts)
    res = runner.invoke(main, ["hunt", "-r", str(root / "sigma_rules"), "--no-enrich", "-f", "jsonl", samples])
    plain = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    # script-block reassembly metadata stays (it is not enrichment); derived fields do not
    reassembly = {"sigstream_Fragments", "sigstream_Reassembled", "sigstream_Incomplete",
                  "sigstream_MissingParts", "sigstream_Evicted"}
    assert not any(k.startswith("sigstream_") and k not in reassembly for a in plain for k in a["event"])
    assert len(plain) < len(alerts) - len(ioc_hits)  # enrichment-based rules need the fields
