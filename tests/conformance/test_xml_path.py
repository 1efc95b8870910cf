"""The XML path (live EvtRender XML, wevtutil / Event Viewer XML exports) gives the EVTX path's
document: every evtx-attack-samples record rendered to XML by the evtx package and read back.

Strict: the same document, values and their types, for every record. (Rendered XML has no value
types; connectors/xml_events.py types its text by a rule plus the fields the manifests declare as
strings, ``STRING_FIELDS``. Before that table 1,862 records differed in the type of a field.)
"""
from __future__ import annotations

import orjson
import pytest

from sigstream.connectors.normalize import normalize
from sigstream.connectors.readers import find_event_files, read_events
from sigstream.connectors.xml_events import event_record

pytestmark = pytest.mark.conformance


def differing_fields(a: dict, b: dict) -> dict:
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
            for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")}


def same_types(a, b) -> bool:
    """== that also tells 1 from True from "1" (and 1 from 1.0), recursively."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_types(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same_types(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def rendered(attack_samples, tmp_path_factory):
    """(evtx files, xml files, per-record (evtx json, xml text)) with the same relative order."""
    from evtx import PyEvtxParser

    out = tmp_path_factory.mktemp("xml-export")
    evtx_files = [f for f in find_event_files([attack_samples]) if f.suffix.lower() == ".evtx"]
    xml_files, pairs = [], []
    for i, f in enumerate(evtx_files):
        xs = [r["data"] for r in PyEvtxParser(str(f)).records()]
        js = [orjson.loads(r["data"]) for r in PyEvtxParser(str(f)).records_json()]
        assert len(xs) == len(js)
        pairs.extend(zip(js, xs))
        dest = out / f"{i:04d}.xml"      # wevtutil style: <Event> elements one after another
        dest.write_bytes("\r\n".join(xs).encode("utf-8"))
        xml_files.append(dest)
    return evtx_files, xml_files, pairs


def test_every_record_normalises_identically(rendered):
    _, _, pairs = rendered
    assert len(pairs) == 8255
    differing = []
    for js, xml in pairs:
        a, b = normalize(js), normalize(event_record(xml))    # 0 unreadable: no exception
        if not same_types(a, b):
            differing.append((a.get("Provider_Name"), a["EventID"], differing_fields(a, b)
                              or {k: (repr(a[k]), repr(b[k])) for k in a if not same_types(a[k], b[k])}))
    assert differing == []


def test_same_types_tells_types_apart():
    assert same_types({"a": [1, "x"]}, {"a": [1, "x"]})
    assert not same_types({"a": 1}, {"a": True}) and not same_types({"a": "1"}, {"a": 1})
    assert not same_types([1], [1.0])


def _strip(alert: dict) -> dict:
    return {k: v for k, v in alert.items() if k not in ("detected_at", "source")}


def test_hunting_the_xml_export_gives_the_evtx_alerts(rendered, tmp_path):
    from sigstream.hunting import hunt_files
    from sigstream.resources import bundled_rules
    from sigstream.stream.detector import Detector
    from sigstream.stream.engine import Engine
    from sigstream.stream.enrich import enrich
    from sigstream.stream.rules import load_rules

    evtx_files, xml_files, _ = rendered
    errors = []
    assert sum(1 for _ in read_events(xml_files, on_error=errors.append)) == 8255
    assert errors == []

    loaded = load_rules([str(bundled_rules())], cache_dir=tmp_path)

    class Collect(list):
        add = list.append

        def flush(self):
            pass

        def close(self):
            pass

    got = {}
    for name, files in (("evtx", evtx_files), ("xml", xml_files)):
        sink = Collect()
        hunt_files(files, Detector(Engine(loaded.rules, enrich=enrich)), sink, on_error=errors.append)
        got[name] = sorted(map(_strip, sink), key=lambda a: orjson.dumps(a, option=orjson.OPT_SORT_KEYS))
    assert errors == []
    assert got["evtx"] and same_types(got["evtx"], got["xml"])
