"""The XML path (live EvtRender XML, wevtutil / Event Viewer XML exports) gives the EVTX path's
document: every evtx-attack-samples record rendered to XML by the evtx package and read back.

Residual differences (documented in connectors/xml_events.py): rendered XML has no value types,
so named EventData values whose text is a decimal integer / ``true`` / ``false`` become int / bool
while a few manifests declare such fields as strings (EVTX keeps them strings). Those are the
only differences allowed, counted exactly below.
"""
from __future__ import annotations

from collections import Counter

import orjson
import pytest

from sigstream.connectors.normalize import normalize
from sigstream.connectors.readers import find_event_files, read_events
from sigstream.connectors.xml_events import event_record

pytestmark = pytest.mark.conformance

# records of the corpus whose XML-path document differs (typing only), and the fields
RESIDUAL_RECORDS = 1862
RESIDUAL_FIELDS = {
    "IpPort", "Signed", "SourcePort", "DestPort", "AttributeValue", "Category ID", "Action ID",
    "Type ID", "Additional Actions ID", "Post Clean Status", "Execution ID", "Pre Execution Status",
    "State", "Source ID", "Origin ID", "Severity ID", "Status Code", "Threat ID", "Endpoint",
    "PreAuthType", "PrimaryGroupId", "Archived", "param3", "param1", "QueryStatus",
}


def typing_only(evtx_value, xml_value) -> bool:
    """An EVTX string that the XML path typed (``"0"`` -> 0, ``"true"`` -> True)."""
    if type(evtx_value) is not str or type(xml_value) not in (int, bool):
        return False
    return evtx_value == (str(xml_value).lower() if type(xml_value) is bool else str(xml_value))


def differing_fields(a: dict, b: dict) -> dict:
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
            for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")}


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


def test_every_record_normalises_identically_but_for_counted_typing(rendered):
    _, _, pairs = rendered
    assert len(pairs) == 8255
    differing, fields = 0, Counter()
    for js, xml in pairs:
        a, b = normalize(js), normalize(event_record(xml))    # 0 unreadable: no exception
        if a == b:
            continue
        differing += 1
        for k, (va, vb) in differing_fields(a, b).items():
            assert k in RESIDUAL_FIELDS and typing_only(va, vb), (k, va, vb, a.get("EventID"))
            fields[k] += 1
    assert differing == RESIDUAL_RECORDS, fields
    assert set(fields) == RESIDUAL_FIELDS


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
    assert got["evtx"] and len(got["evtx"]) == len(got["xml"])
    for a, b in zip(got["evtx"], got["xml"]):
        if a == b:
            continue
        # only the event's typed residual fields may differ
        assert {k: v for k, v in a.items() if k != "event"} == {k: v for k, v in b.items() if k != "event"}
        for k, (va, vb) in differing_fields(a["event"], b["event"]).items():
            assert k in RESIDUAL_FIELDS and typing_only(va, vb), (k, va, vb)
