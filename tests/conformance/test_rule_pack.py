"""sigstream's own rule pack (sigma_rules/) with enrichment: every rule loads, no rule fires on
the benign baseline, and on the EVTX attack samples no rule fires on more than a small fraction
of events (a rule that fires on everything is a defect). Prints which files/techniques the pack
detects and how many detections each rule makes. The pack's correlation rules run through the
shared Detector as in `hunt`: quiet on the baseline, and the Office -> persistence chain of
fileless-intrusion.jsonl is found. Correlation building blocks (suppressed helper rules, which
never alert on their own) are left out of the noise limit."""
from __future__ import annotations

import collections
from pathlib import Path

import math

from sigstream.connectors.readers import find_event_files, read_events
from sigstream.stream.correlation_stage import correlation_stages
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.enrich import enrich
from sigstream.stream.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "sigma_rules"
MAX_SHARE = 0.01      # of all events
MAX_SHARE_FLOOR = 10  # detections always tolerated (a sample file may repeat one attack)


def _engine(tmp_path) -> tuple[Engine, int]:
    loaded = load_rules([PACK], cache_dir=tmp_path)
    assert not loaded.errors, loaded.errors
    engine = Engine(loaded.rules, enrich=enrich, use_cache=False)
    assert not engine.errors
    return engine, len(loaded.rules)


def _hunt(tmp_path, path: Path) -> list[dict]:
    """`hunt` over `path`: the Detector with the pack's correlation stage (no lateness)."""
    loaded = load_rules([PACK], cache_dir=tmp_path)
    detector = Detector(Engine(loaded.rules, enrich=enrich, use_cache=False),
                        stages=correlation_stages(loaded.correlations, loaded.suppressed, lateness_s=math.inf))
    alerts = [a for ev, src in read_events([path]) for a in detector.detect(ev, None, 0.0)]
    return alerts + detector.finish(0.0)


def test_pack_correlations_load_and_helpers_are_suppressed(tmp_path):
    loaded = load_rules([PACK], cache_dir=tmp_path)
    assert len(loaded.correlations) >= 5
    assert {c.type for c in loaded.correlations} >= {"event_count", "value_count", "temporal_ordered"}
    helpers = [r for r in loaded.rules if loaded.is_suppressed(r)]
    assert helpers and all("Building Block" in r.title for r in helpers)   # no useful rule silenced


def test_pack_correlations_are_quiet_on_the_benign_baseline(tmp_path):
    assert _hunt(tmp_path, ROOT / "samples" / "benign-baseline.jsonl") == []


def test_pack_correlation_finds_the_office_to_persistence_chain(tmp_path):
    alerts = _hunt(tmp_path, ROOT / "samples" / "fileless-intrusion.jsonl")
    corr = [(a["rule"]["name"], a["correlation"]["group"]) for a in alerts if a.get("correlation")]
    assert corr == [("corr_office_script_host_then_persistence", {"Computer": "WKS-FIN-042.corp.example.com"})]


def test_pack_is_quiet_on_the_benign_baseline(tmp_path):
    engine, n_rules = _engine(tmp_path)
    assert n_rules >= 25
    hits = [(h.rule.title, src.position) for ev, src in read_events([ROOT / "samples" / "benign-baseline.jsonl"])
            for h in engine.match(ev)]
    assert hits == []


def test_pack_on_evtx_attack_samples(attack_samples, tmp_path):
    engine, n_rules = _engine(tmp_path)
    files = find_event_files([attack_samples])
    events = 0
    per_rule: collections.Counter[str] = collections.Counter()
    per_file: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for ev, src in read_events(files):
        events += 1
        for hit in engine.match(ev):
            per_rule[hit.rule.title] += 1
            per_file[str(Path(src.path).relative_to(attack_samples))][hit.rule.title] += 1
    assert not engine.errors, engine.errors[:5]

    print(f"\nsigstream rule pack ({n_rules} rules) on {len(files)} attack sample files, {events:,} events:")
    print("\n| file (tactic/name) | rules that fired (detections) |\n|---|---|")
    for f in sorted(per_file):
        print(f"| {f} | " + "; ".join(f"{t} ({n})" for t, n in per_file[f].most_common()) + " |")
    print("\n| rule | detections | files |\n|---|---|---|")
    titles = [r.rule.title for r in engine.rules]
    loaded = load_rules([PACK], cache_dir=tmp_path)
    helpers = {r.title for r in loaded.rules if loaded.is_suppressed(r)}   # never alert on their own
    for t in sorted(titles, key=lambda t: -per_rule[t]):
        print(f"| {t} | {per_rule[t]} | {sum(1 for c in per_file.values() if t in c)} |")

    limit = max(MAX_SHARE_FLOOR, int(events * MAX_SHARE))
    noisy = {t: n for t, n in per_rule.items() if n > limit and t not in helpers}
    assert not noisy, f"rules firing on more than {limit} of {events} events: {noisy}"
    assert len({f for f, c in per_file.items() if set(c) - helpers}) >= 10, "the pack should detect something in at least ten sample files"
