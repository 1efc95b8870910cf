#!/usr/bin/env python3
"""Collect benchmark: EVTX corpus -> envelopes -> a real Kafka broker, events/s.

Starts its own single-node broker (deploy/kafka/broker.sh, free ports, temp data dir),
creates the topics, then measures, over the evtx-attack-samples corpus replicated
(passes over the files, EventRecordID shifted per pass so event ids stay unique) to at
least --events events:

  end-to-end   read EVTX + normalise + envelope + publish + wait for every ack
               (what `sigstream collect` does)
  publish-only the same events pre-read into memory: envelope + publish + acks
  read-only    read EVTX + normalise, no Kafka (the reader's own ceiling)

and stops the broker. Run alone: the broker shares the machine's cores.

    python bench/collect.py [--events 50000] [--corpus ../shared/corpora/evtx-attack-samples]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sigstream.connectors.kafka import (KafkaEventPublisher, KafkaSettings, all_topics,  # noqa: E402
                              best_compression, create_topics)
from sigstream.connectors.readers import find_event_files, read_events  # noqa: E402
from _broker import Broker  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "evtx-attack-samples"


def events_from(files: list[Path], target: int):
    """Yield normalised events, passing over the files until `target` events."""
    n = passes = 0
    while n < target:
        for ev, _ in read_events(files, on_error=lambda e: None):
            if passes:
                ev = dict(ev)
                rid = ev.get("EventRecordID")
                ev["EventRecordID"] = (int(rid) if str(rid).isdigit() else 0) + passes * 10_000_000
            yield ev
            n += 1
            if n >= target:
                return
        passes += 1


def run_publish(settings: KafkaSettings, prefix: str, events, spool: Path) -> tuple[int, float, dict]:
    pub = KafkaEventPublisher(settings, collector_id="bench", spool_dir=spool, topic_prefix=prefix)
    t0 = time.perf_counter()
    n = 0
    try:
        for ev in events:
            pub.publish(ev)
            n += 1
        if not pub.flush(300):
            raise SystemExit(f"not everything acknowledged: {pub.stats}")
        seconds = time.perf_counter() - t0
        return n, seconds, pub.stats
    finally:
        pub.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = ap.parse_args()
    if not args.corpus.is_dir():
        print(f"bench/collect.py: corpus not found at {args.corpus}\n"
              "  (expected the evtx-attack-samples checkout in ../shared/corpora; pass --corpus DIR)",
              file=sys.stderr)
        return 2
    files = [f for f in find_event_files([args.corpus]) if f.suffix.lower() == ".evtx"]
    if not files:
        print(f"bench/collect.py: no .evtx files under {args.corpus}", file=sys.stderr)
        return 2

    t = time.perf_counter()
    n_read = sum(1 for _ in events_from(files, args.events))
    read_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="sigstream-bench-") as tmp, Broker() as broker:
        settings = KafkaSettings(broker.bootstrap, client_id="bench")
        results = {}
        for name, source in (("end-to-end", lambda: events_from(files, args.events)),
                             ("publish-only", None)):
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            create_topics(settings, all_topics(prefix), partitions=3)
            if source is None:
                events = list(events_from(files, args.events))
                it = iter(events)
            else:
                it = source()
            results[name] = run_publish(settings, prefix, it, Path(tmp) / f"spool-{name}")

    print(f"corpus: {len(files)} EVTX files, replicated to {args.events:,} events; "
          f"compression {best_compression()}, acks=all, idempotent")
    print(f"read-only     {n_read / read_s:>10,.0f} events/s  ({n_read:,} events, {read_s:.2f}s)")
    for name, (n, s, st) in results.items():
        print(f"{name:<13} {n / s:>10,.0f} events/s  ({n:,} events, {s:.2f}s, acked {st['acked']:,}, "
              f"spooled {st['spooled']:,}, dropped {st['dropped']:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
