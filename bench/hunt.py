#!/usr/bin/env python3
"""Hunt benchmark: parse-only vs full-rule-set hunt throughput on the shared EVTX corpus.

Prints, in one run (medians over --runs):
  parse-only events/s   EVTX -> evtx JSON -> orjson -> normalised event, no rules
  load/compile seconds  the SigmaHQ Windows set, cold (no cache) and warm (cache)
  hunt events/s         read + normalise + match + alert documents, one core, through
                        `sigstream hunt`'s own path (hunting.hunt_files -> Detector);
                        first pass (buckets built lazily) and steady state;
                        with stream.enrich applied unless --no-enrich
  with correlations     the same with --correlations N rules over the most firing rules
  ratio                 hunt / parse-only (product goal: >= 1/3)
  peak RSS
Run alone: throughput on this 2-core machine halves when another job runs beside it.

    python bench/hunt.py [--runs 5] [--corpus ../shared/corpora] [--no-enrich]
    python bench/hunt.py --runs 3 --copies 10 --correlations 10     # the x10 corpus
    python bench/hunt.py --runs 3 --jobs 2    # + hunt with 1 and 2 processes (hunt --jobs): the corpus,
                                              #   its EVTX files x8, one EVTX file of its chunks x4,
                                              #   one JSON-lines file of its events x10
"""
from __future__ import annotations

import argparse
import collections
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
from sigstream.hunting import hunt_files  # noqa: E402
from sigstream.stream.correlation_stage import correlation_stages  # noqa: E402
from sigstream.stream.detector import Detector  # noqa: E402
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


class NullSink:
    def __init__(self):
        self.alerts = 0

    def add(self, alert):
        self.alerts += 1


def hunt(detector: Detector, files) -> tuple[int, int]:
    """`sigstream hunt`'s path (sigstream.hunting.hunt_files), alerts to a null sink."""
    sink = NullSink()
    stats = hunt_files(files, detector, sink, on_error=lambda e: None)
    return stats.events, sink.alerts


def jsonl_copy(files, copies: int, path: Path) -> int:
    """The corpus' normalised events, `copies` times over, as one JSON-lines file."""
    import orjson
    events = [orjson.dumps(ev, default=str) for ev, _ in read_events(files)]
    with open(path, "wb") as out:
        for _ in range(copies):
            for line in events:
                out.write(line + b"\n")
    return len(events) * copies


def evtx_copies(files, copies: int, folder: Path) -> list[Path]:
    """The corpus' EVTX files, `copies` times over (copies in a temporary folder)."""
    import shutil
    out = []
    for c in range(copies):
        for i, f in enumerate(files):
            if f.suffix.lower() == ".evtx":
                out.append(Path(shutil.copyfile(f, folder / f"{c}-{i}-{f.name}")))
    return out


def one_evtx_file(files, copies: int, path: Path) -> None:
    """One EVTX file made of the 64 KiB chunks of the corpus' whole EVTX files, `copies`
    times over (chunks are self-contained; the header is the first file's)."""
    from sigstream.connectors.readers import evtx_chunks
    whole = [f for f in files if evtx_chunks(f)]
    chunks = []
    for f in whole:
        data = f.read_bytes()
        chunks += [data[4096 + k * 65536:4096 + (k + 1) * 65536] for k in range(evtx_chunks(f))]
    path.write_bytes(whole[0].read_bytes()[:4096] + b"".join(chunks * copies))


def jobs_figures(engine: Engine, files, jobs: int, runs: int) -> list[str]:
    """hunt_files with 1 and `jobs` workers (hunt --jobs), on the corpus, on its EVTX files
    x8 and on one large JSON-lines file of its events (x10); steady state (the engine's
    buckets built)."""
    def rate(inputs, n, j):
        t = statistics.median(
            timed(lambda: hunt_files(inputs, Detector(engine), NullSink(), on_error=lambda e: None,
                                     jobs=j))[0] for _ in range(runs))
        return n / t
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "corpus-x10.jsonl"
        n_big = jsonl_copy(files, 10, big)
        n_corpus = parse_only(files)
        many = evtx_copies(files, 8, Path(tmp))
        n_many = parse_only(many)
        one_evtx = Path(tmp) / "corpus-chunks-x4.evtx"
        one_evtx_file(files, 4, one_evtx)
        n_one_evtx = parse_only([one_evtx])
        hunt_files([big], Detector(engine), NullSink(), on_error=lambda e: None)   # warm up
        for label, inputs, n in ((f"{len(files)} EVTX files", files, n_corpus),
                                 (f"{len(many)} EVTX files (x8)", many, n_many),
                                 (f"one EVTX file ({one_evtx.stat().st_size / 2**20:,.0f} MiB, the corpus' "
                                  "chunks x4)", [one_evtx], n_one_evtx),
                                 (f"one JSONL file ({big.stat().st_size / 2**20:,.0f} MiB)", [big], n_big)):
            r1 = rate(inputs, n, 1)
            rj = rate(inputs, n, jobs)
            lines.append(f"hunt --jobs 1 / {jobs:<5}  {r1:,.0f} / {rj:,.0f} events/s   (x{rj / r1:.2f}; "
                         f"{label}, {n:,} events)")
    return lines


def correlation_yaml(top_rules: list[str]) -> str:
    """Correlations over the rules that fire most on the corpus: counts, distinct values,
    a temporal pair (generate: true, so the base alerts stay as they are)."""
    docs = []
    for i, rid in enumerate(top_rules):
        docs.append(f"""title: bench burst {i}
id: 00000000-0000-4000-8000-{i:012d}
correlation:
  type: event_count
  rules: [{rid}]
  group-by: [Computer]
  timespan: 5m
  generate: true
  condition: {{gte: 3}}
""")
        docs.append(f"""title: bench spread {i}
id: 00000000-0000-4000-8001-{i:012d}
correlation:
  type: value_count
  rules: [{rid}]
  group-by: [Computer]
  timespan: 1h
  generate: true
  condition: {{gte: 2, field: EventRecordID}}
""")
    for i in range(0, len(top_rules) - 1, 2):
        docs.append(f"""title: bench pair {i}
id: 00000000-0000-4000-8002-{i:012d}
correlation:
  type: temporal
  rules: [{top_rules[i]}, {top_rules[i + 1]}]
  group-by: [Computer]
  timespan: 10m
  generate: true
""")
    return "---\n".join(docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--copies", type=int, default=1,
                    help="read the corpus this many times per pass (10: the x10 corpus)")
    ap.add_argument("--correlations", type=int, default=0, metavar="N",
                    help="also measure with correlations over the N rules that fire most "
                         "(event_count and value_count each, temporal pairs)")
    ap.add_argument("--enrich", action=argparse.BooleanOptionalAction, default=True,
                    help="apply stream.enrich.enrich before matching, as `sigstream hunt` does (default: on)")
    ap.add_argument("--jobs", type=int, default=0, metavar="N",
                    help="also measure hunt_files with 1 and N worker processes (hunt --jobs) on the "
                         "corpus and on one JSON-lines file of its events x10")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    samples = corpus / "evtx-attack-samples"
    if not samples.is_dir():
        sys.exit(f"corpus not found at {corpus} (expected evtx-attack-samples/ and sigma/)")
    files = find_event_files([samples]) * args.copies
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

    first_s, (n, hits) = timed(lambda: hunt(Detector(engine), files))
    gc.collect()
    steady = [timed(lambda: hunt(Detector(engine), files))[0] for _ in range(args.runs)]
    steady_rate = statistics.median(events / t for t in steady)
    correlated = None
    if args.correlations:
        counts: collections.Counter = collections.Counter()
        sink = type("Count", (), {"add": lambda self, a: counts.update([a["rule"]["id"]])})()
        hunt_files(files, Detector(engine), sink, on_error=lambda e: None)
        top = [rid for rid, _ in counts.most_common(args.correlations)]
        with tempfile.TemporaryDirectory() as tmp:
            corr_file = Path(tmp) / "bench-correlations.yml"
            corr_file.write_text(correlation_yaml(top))
            with_corr = load_rules(rule_dirs + [corr_file], selection=windows, cache_dir=tmp)
        stages = lambda: correlation_stages(with_corr.correlations, with_corr.suppressed,  # noqa: E731
                                            lateness_s=float("inf"))
        runs = [timed(lambda: hunt(Detector(engine, stages=stages()), files)) for _ in range(args.runs)]
        correlated = (len(with_corr.correlations), statistics.median(events / t for t, _ in runs),
                      runs[0][1][1] - hits)
    jobs_lines = jobs_figures(engine, files, args.jobs, args.runs) if args.jobs > 1 else []
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
    if correlated:
        print(f"hunt with correlations {correlated[1]:,.0f} events/s   ({correlated[0]} correlation rules, "
              f"{correlated[2]:,} correlation alerts)")
    for line in jobs_lines:
        print(line)
    print(f"peak RSS               {rss_mb:,.0f} MiB")


if __name__ == "__main__":
    main()
