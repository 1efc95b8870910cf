#!/usr/bin/env python3
"""Hunt benchmark: parse-only vs full-rule-set hunt throughput on the shared EVTX corpus.

Prints, in one run (medians over --runs):
  parse-only events/s   EVTX -> evtx JSON -> orjson -> normalised event, no rules
  load/compile seconds  the SigmaHQ Windows set, cold (no cache) and warm (cache)
  hunt events/s         read + normalise + match + alert documents, one core,
                        first pass (buckets built lazily) and steady state;
                        with stream.enrich applied unless --no-enrich
  ratio                 hunt / parse-only (product goal: >= 1/3)
  peak RSS
Run alone: throughput on this 2-core machine halves when another job runs beside it.

    python bench/hunt.py [--runs 5] [--corpus ../shared/corpora] [--no-enrich]
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sigstream.connectors.readers import find_event_files, read_events  # noqa: E402
from sigstream.stream.alerts import build_alert  # noqa: E402
from sigstream.stream.engine import Engine  # noqa: E402
from sigstream.stream.rules import RuleSelection, load_rules  # noqa: E402

SIGMA_DIRS = ("rules/windows", "rules-emerging-threats", "rules-threat-hunting")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def parse_only(files) -> int:
    n = 0
    for _ in read_events(files):
        n += 1
    return n


def hunt(engine: Engine, files) -> tuple[int, int]:
    n = hits = 0
    for event, src in read_events(files):
        n += 1
        for hit in engine.match(event):
            hits += 1
            build_alert(hit, event, {"path": src.path, "position": src.position},
                        matched=engine.explain(hit, event))
    return n, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--enrich", action=argparse.BooleanOptionalAction, default=True,
                    help="apply stream.enrich.enrich before matching, as `sigstream hunt` does (default: on)")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    samples = corpus / "evtx-attack-samples"
    if not samples.is_dir():
        sys.exit(f"corpus not found at {corpus} (expected evtx-attack-samples/ and sigma/)")
    files = find_event_files([samples])
    rule_dirs = [corpus / "sigma" / d for d in SIGMA_DIRS]
    windows = RuleSelection(products=frozenset({"windows"}))

    parse_runs = [timed(lambda: parse_only(files)) for _ in range(args.runs)]
    events = parse_runs[0][1]
    parse_rate = statistics.median(events / t for t, _ in parse_runs)

    with tempfile.TemporaryDirectory() as cache:
        cold, loaded = timed(lambda: load_rules(rule_dirs, selection=windows, cache_dir=cache))
        warm_runs = [timed(lambda: load_rules(rule_dirs, selection=windows, cache_dir=cache))
                     for _ in range(3)]
    warm = statistics.median(t for t, _ in warm_runs)
    from sigstream.stream.enrich import enrich
    compile_s, engine = timed(lambda: Engine(loaded.rules, enrich=enrich if args.enrich else None))

    first_s, (n, hits) = timed(lambda: hunt(engine, files))
    gc.collect()
    steady = [timed(lambda: hunt(engine, files))[0] for _ in range(args.runs)]
    steady_rate = statistics.median(events / t for t in steady)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"corpus                 {len(files)} EVTX files, {events:,} events")
    print(f"rules                  {len(loaded.rules):,} Windows rules compiled "
          f"({len(loaded.errors)} rejected, {loaded.skipped} non-Windows skipped)")
    print(f"load cold / warm       {cold:.2f} s / {warm:.2f} s   (+ engine build {compile_s:.2f} s)")
    print(f"parse-only             {parse_rate:,.0f} events/s")
    print(f"enrichment             {'on' if args.enrich else 'off'}")
    print(f"hunt first pass        {n / first_s:,.0f} events/s   ({hits:,} detections)")
    print(f"hunt steady state      {steady_rate:,.0f} events/s")
    print(f"ratio hunt/parse       {steady_rate / parse_rate:.2f}   (goal >= 0.33)")
    print(f"peak RSS               {rss_mb:,.0f} MiB")


if __name__ == "__main__":
    main()
