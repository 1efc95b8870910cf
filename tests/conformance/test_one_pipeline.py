"""hunt and embedded run are one pipeline: the same alerts on the EVTX attack corpus.

Both drive `stream.detector.Detector`; hunt reads the files directly, embedded run
publishes them to the in-process broker and consumes them as the Kafka processor does.
(The same comparison through the real broker is tests/integration/test_pipeline.py.)
"""
from __future__ import annotations

from pathlib import Path

from sigstream.connectors.readers import find_event_files
from sigstream.hunting import hunt_files
from sigstream.processing import run_embedded
from sigstream.resources import bundled_rules
from sigstream.stream.correlation_stage import correlation_stages
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.enrich import enrich
from sigstream.stream.rules import load_rules


class Collect:
    def __init__(self):
        self.alerts: list[dict] = []

    def add(self, alert):
        self.alerts.append(alert)

    def flush(self):
        pass

    def close(self):
        pass


def detector(loaded, lateness_s: float) -> Detector:
    return Detector(Engine(loaded.rules, enrich=enrich),
                    stages=correlation_stages(loaded.correlations, loaded.suppressed, lateness_s=lateness_s))


def key(alert: dict) -> tuple:
    event = alert.get("event") or {}
    return (alert["alert_id"], alert["rule"]["id"], event.get("Computer"), event.get("EventRecordID"),
            tuple(m.get("field") for m in alert.get("matched") or ()))


def test_hunt_and_embedded_run_give_the_same_alerts(attack_samples: Path, tmp_path):
    loaded = load_rules([str(bundled_rules())], cache_dir=tmp_path)
    files = find_event_files([attack_samples])
    hunted = Collect()
    stats = hunt_files(files, detector(loaded, float("inf")), hunted, on_error=lambda e: None)
    assert stats.events > 8000 and hunted.alerts

    ran = Collect()
    metrics = run_embedded(detector(loaded, float("inf")), [str(f) for f in files], ran, batch_size=500)
    assert metrics.events == stats.events - stats.unreadable
    assert sorted(map(key, ran.alerts)) == sorted(map(key, hunted.alerts))
    # a reassembled script block is attributed to its first fragment on both paths
    by_id = {a["alert_id"]: a for a in ran.alerts}
    for a in hunted.alerts:
        if (a["event"] or {}).get("sigstream_Reassembled"):
            first = a["event"]["sigstream_Fragments"][0][1]
            assert a["event"]["EventRecordID"] == first == by_id[a["alert_id"]]["event"]["EventRecordID"]
