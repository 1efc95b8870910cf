#!/usr/bin/env python3
"""Pipeline benchmark on a real Kafka broker (started here with deploy/kafka/broker.sh).

1. throughput: events/s of ONE processor process (stream.processor.Processor with the Kafka
   source and sinks, in this process) with the full SigmaHQ Windows rule set
   (rules/windows + rules-emerging-threats + rules-threat-hunting, product windows) over the
   evtx-attack-samples events, pre-loaded into a topic (replicated --copies times, each copy
   from other host names: half the corpus is one host, and hosts are the partition keys).
   The clock runs from the first non-empty poll to the last commit, less the wait for more
   records just before it (the idle tail is excluded). --runs passes, each a new consumer
   group over the same records: the first runs against a broker whose fetch path is cold (a
   fresh JVM), the median of the others is the steady state a long-running processor sees;
   every pass is printed. The engine alone on the same events (no Kafka) is printed for
   comparison. --client: the Kafka library of the processor (kafka-python, confluent, or
   both side by side, passes interleaved); --workers N also times N spawned processor
   processes in one consumer group (as `run --workers N`).
2. latency: a `sigstream run` subprocess with one simple rule; this process offers --rate
   matching events/s for --seconds; latency per alert = alert detected_at (resp. the alert
   record's produce timestamp, resp. the moment a consumer here receives it) minus the
   moment the event was handed to the producer. p50/p90/p99/max.

    python bench/pipeline.py [--copies 6] [--runs 4] [--latency RATE[:EVERY]] [--seconds 20]
    python bench/pipeline.py --skip-latency --client both --workers 2
    BENCH_RUN_ARGS="--commit-interval 0" python bench/pipeline.py --skip-throughput   # extra `run` options

Run alone: the broker, the processor and the load generator share this machine's cores.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from typing import Any
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from _broker import Broker  # noqa: E402

from sigstream.connectors.kafka import (KafkaEventPublisher, KafkaSettings, KafkaSource, all_topics,  # noqa: E402
                                        client_available, client_kit, create_topics, event_topic_pattern)
from sigstream.connectors.readers import read_events  # noqa: E402
from sigstream.stream.engine import Engine  # noqa: E402
from sigstream.stream.enrich import enrich  # noqa: E402
from sigstream.stream.detector import Detector  # noqa: E402
from sigstream.stream.processor import Processor  # noqa: E402
from sigstream.stream.rules import RuleSelection, load_rules  # noqa: E402

SIGMA_DIRS = ("rules/windows", "rules-emerging-threats", "rules-threat-hunting")
SYSMON = "Microsoft-Windows-Sysmon/Operational"
LAT_RULE = textwrap.dedent("""
    title: Encoded PowerShell (latency bench)
    id: 9b0e4c61-3f55-4b8e-a1a2-7c9d0e6f1b23
    status: test
    level: high
    logsource: {product: windows, category: process_creation}
    detection:
      sel: {CommandLine|contains: '-enc'}
      condition: sel
""")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def fmt_ms(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return (f"p50 {pct(xs, 50) * 1000:7.1f} ms  p90 {pct(xs, 90) * 1000:7.1f} ms  "
            f"p99 {pct(xs, 99) * 1000:7.1f} ms  max {max(xs) * 1000:7.1f} ms  (n={len(xs):,})")


def iso_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# ----------------------------------------------------------------- throughput ---

def load_engine(corpus: Path, quiet: bool = False) -> Engine:
    t = time.perf_counter()
    loaded = load_rules([corpus / "sigma" / d for d in SIGMA_DIRS],
                        selection=RuleSelection(products=frozenset({"windows"})))
    engine = Engine(loaded.rules, enrich=enrich)  # as `sigstream run` does by default
    if not quiet:
        print(f"rules: {len(engine.rules):,} compiled ({len(loaded.errors)} load errors), "
              f"{time.perf_counter() - t:.1f}s to load")
    return engine


def throughput(bootstrap: str, corpus: Path, copies: int, batch_size: int, runs: int,
               clients: list[str], workers: int) -> None:
    settings = KafkaSettings(bootstrap=bootstrap)
    engine = load_engine(corpus)
    events = [ev for ev, _ in read_events([corpus / "evtx-attack-samples"])]
    t = time.perf_counter()
    hits = sum(len(engine.match(ev)) for ev in events)
    eng_rate = len(events) / (time.perf_counter() - t)
    t = time.perf_counter()
    hits = sum(len(engine.match(ev)) for ev in events)
    eng_rate = max(eng_rate, len(events) / (time.perf_counter() - t))
    print(f"engine only (no Kafka): {eng_rate:,.0f} events/s over {len(events):,} events, {hits:,} hits")

    prefix = f"bench-tp-{uuid.uuid4().hex[:6]}"
    create_topics(settings, all_topics(prefix), 3)
    with tempfile.TemporaryDirectory() as spool:
        pub = KafkaEventPublisher(settings, collector_id="bench", spool_dir=spool, topic_prefix=prefix)
        t = time.perf_counter()
        for c in range(copies):
            for ev in events:
                if c:   # another fleet: its hosts (the partition keys) spread over the partitions
                    ev = dict(ev, EventRecordID=f"{ev.get('EventRecordID')}-{c}",
                              Computer=f"{ev.get('Computer')}-{c}")
                pub.publish(ev)
        assert pub.flush(300), pub.stats
        pub.close()
    total = len(events) * copies
    print(f"pre-loaded {total:,} events into {prefix}.events.* (3 partitions each) in {time.perf_counter() - t:.1f}s")

    modes = [(client, 1) for client in clients] + ([(client, workers) for client in clients] if workers > 1 else [])
    summary = []
    for run in range(1, runs + 1):  # each pass: a new consumer group over the same records
        for client, n in modes:     # modes interleaved: the machine's noise hits them alike
            label = f"{client}{f' --workers {n}' if n > 1 else ''}"
            if n == 1:
                rate, m, secs, cpu, _ = processor_pass(settings, prefix, f"bench-tp-{client}-{run}",
                                                       batch_size, engine, client)
                detail = (f"{m.events:,} events, {m.alerts:,} alerts, {m.batches} batches, {secs:.1f}s, "
                          f"{cpu / max(m.events, 1) * 1e6:.0f} us CPU/event")
            else:
                rate, counts, secs = workers_pass(bootstrap, corpus, prefix, f"bench-w{n}-{client}-{run}",
                                                  batch_size, client, n)
                detail = f"events per worker {counts}, {secs:.1f}s"
            summary.append((label, rate))
            print(f"{label:<24} pass {run}{' (cold broker fetch path)' if run == 1 else ''}: "
                  f"{rate:,.0f} events/s ({detail}); {rate / eng_rate:.0%} of the engine-only rate")
    for label in dict.fromkeys(lb for lb, _ in summary):
        rates = [r for lb, r in summary if lb == label]
        steady = rates[1:] or rates
        print(f"processor {label} (Kafka in+out, batch {batch_size}): median "
              f"{statistics.median(steady):,.0f} events/s over passes {2 if len(rates) > 1 else 1}-{len(rates)} "
              f"(range {min(steady):,.0f}-{max(steady):,.0f}); first pass {rates[0]:,.0f}")


def processor_pass(settings: KafkaSettings, prefix: str, group: str, batch_size: int, engine: Engine,
                   client: str = "kafka-python", ready: Any = None):
    """One processor over every pre-loaded record; the clock runs from the first non-empty
    poll to the last commit, less the empty polls just before that commit (the processor
    commits its last batch once the topics run dry, after poll_timeout_s of waiting: a
    steady stream never waits like that). Returns (events/s, metrics, seconds,
    CPU seconds of this process over that span (all threads: librdkafka's included), epoch
    time of the first non-empty poll). ready: a barrier passed before subscribing (several workers start together)."""
    kit = client_kit(client)
    if ready is not None:
        ready.wait()
    source = kit.source(settings, event_topic_pattern(prefix), group, from_beginning=True,
                        max_poll_records=batch_size)
    alerts = kit.alert_sink(settings, f"{prefix}.alerts")
    dlq = kit.dead_letter_sink(settings, f"{prefix}.dlq")
    marks: dict[str, float] = {"dry": 0.0}

    class Timed:
        def poll(self, n, timeout_s):
            t = time.time()
            got = source.poll(n, timeout_s)
            if got and "first" not in marks:
                marks["first"], marks["cpu0"] = time.time(), time.process_time()
            if got:
                marks["dry"] = 0.0
            elif "first" in marks:   # waiting for records that will not come (see the doc)
                marks["dry"] += time.time() - t
            return got

        def commit(self):
            source.commit()
            marks["last"], marks["cpu1"] = time.time() - marks["dry"], time.process_time()

        def assignment(self):
            return source.assignment()

        def close(self):
            source.close()

    p = Processor(Timed(), Detector(engine), alerts, dlq, batch_size=batch_size, poll_timeout_s=0.5,
                  until_idle_s=5, commit_interval_s=1.0)  # `sigstream run`'s default
    m = p.run()
    alerts.close(), dlq.close(), source.close()
    if "first" not in marks:
        return 0.0, m, 0.0, 0.0, None
    secs = marks["last"] - marks["first"]
    return m.events / secs, m, secs, marks["cpu1"] - marks["cpu0"], marks["first"]


def _worker_pass(bootstrap: str, corpus: str, prefix: str, group: str, batch_size: int, client: str,
                 ready: Any, out: Any) -> None:
    engine = load_engine(Path(corpus), quiet=True)
    import logging
    logging.basicConfig(level=logging.ERROR)
    _, m, secs, _, first = processor_pass(KafkaSettings(bootstrap=bootstrap), prefix, group, batch_size,
                                          engine, client, ready)
    out.put((m.events, first, secs))


def workers_pass(bootstrap: str, corpus: Path, prefix: str, group: str, batch_size: int, client: str,
                 n: int) -> tuple[float, list[int], float]:
    """n processes (spawned, each a full processor, as `run --workers n`) in one group over the
    pre-loaded records; events/s = all events / (last commit - first poll) over the workers."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker_pass, args=(bootstrap, str(corpus), prefix, group, batch_size,
                                                    client, ready, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    return _workers_rate(results)


def _workers_rate(results: list[tuple[int, float | None, float]]) -> tuple[float, list[int], float]:
    spans = [(start, start + secs) for _, start, secs in results if start is not None]
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    events = sum(r[0] for r in results)
    return events / wall, [r[0] for r in results], wall


# -------------------------------------------------------------------- latency ---

def latency(bootstrap: str, rate: int, seconds: float, match_every: int = 1) -> None:
    settings = KafkaSettings(bootstrap=bootstrap)
    prefix = f"bench-lat-{uuid.uuid4().hex[:6]}"
    create_topics(settings, all_topics(prefix), 3)
    tmp = Path(tempfile.mkdtemp(prefix="sigstream-bench-"))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "r.yml").write_text(LAT_RULE)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sigstream.cli import main; main()", "--log-level", "info",
         "--log-format", "json", "run", "-r", str(tmp / "rules"), "--bootstrap", bootstrap,
         "--topic-prefix", prefix, "--group", "bench-lat", "--from-latest", *os.environ.get("BENCH_RUN_ARGS", "").split()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    assigned = threading.Event()

    def watch_log():
        for line in proc.stderr:
            if "partitions assigned" in line:
                assigned.set()
    threading.Thread(target=watch_log, daemon=True).start()

    received: dict[int, float] = {}
    detected: dict[int, float] = {}
    produced: dict[int, float] = {}
    stop = threading.Event()
    reader_ready = threading.Event()

    def read_alerts():
        src = KafkaSource(settings, [f"{prefix}.alerts"], f"bench-lat-reader-{uuid.uuid4().hex[:6]}",
                          from_beginning=True)
        while not stop.is_set():
            got = src.poll(1000, 0.2)
            if src.assignment():
                reader_ready.set()
            now = time.time()
            for m in got:
                a = orjson.loads(m.value)
                seq = int(a["event"]["EventRecordID"])
                received.setdefault(seq, now)
                detected.setdefault(seq, iso_ts(a["detected_at"]))
                if m.timestamp_ms:
                    produced.setdefault(seq, m.timestamp_ms / 1000)
        src.close()
    reader = threading.Thread(target=read_alerts, daemon=True)
    reader.start()
    if not assigned.wait(90) or not reader_ready.wait(60):
        proc.kill()
        sys.exit("latency: the processor or the alert reader did not join its group")
    time.sleep(2)

    sent: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as spool:
        pub = KafkaEventPublisher(settings, collector_id="bench", spool_dir=spool, topic_prefix=prefix,
                                  linger_ms=1)
        tick = 0.01
        per_tick = rate * tick
        t0 = time.time()
        seq = 0
        budget = 0.0
        while True:
            now = time.time()
            if now - t0 >= seconds:
                break
            budget = (now - t0) * rate - seq
            for _ in range(int(budget)):
                seq += 1
                ev = {"EventID": 1, "Channel": SYSMON, "Computer": f"WKS-{seq % 50:03d}",
                      "EventRecordID": seq, "TimeCreated": "2026-11-25T10:00:00.000000Z",
                      "Image": r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
                      "CommandLine": (f"powershell.exe -nop -w hidden -enc SQBFAFgA{seq}"
                                      if seq % match_every == 0 else f"cmd.exe /c echo {seq}")}
                if seq % match_every == 0:
                    sent[seq] = time.time()
                pub.publish(ev)
            nxt = t0 + (seq + per_tick) / rate
            time.sleep(max(0.0, min(tick, nxt - time.time())))
        offered = seq / (time.time() - t0)
        pub.flush(60)
        pub.close()
    deadline = time.time() + 60
    while len(received) < len(sent) and time.time() < deadline:
        time.sleep(0.2)
    stop.set()
    reader.join(5)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    print(f"offered {offered:,.0f} events/s for {seconds:.0f}s ({seq:,} events, {len(sent):,} matching "
          f"= 1 in {match_every}); "
          f"{len(received):,} alerts received")
    for name, ts in (("detected_at - send", detected), ("alert produced - send", produced),
                     ("alert received - send", received)):
        print(f"  {name:<22} {fmt_ms([ts[s] - sent[s] for s in ts if s in sent])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--copies", type=int, default=6, help="times the EVTX corpus is loaded (throughput)")
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=4,
                    help="processor passes over the pre-loaded records (throughput); the first "
                         "warms the broker's fetch path, the median of the others is reported")
    ap.add_argument("--latency", action="append", metavar="RATE[:MATCH_EVERY]",
                    help="latency scenario: offered events/s, 1 in MATCH_EVERY events matching "
                         "(repeatable; default: 5000:1 5000:20 1000:1)")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--client", choices=["kafka-python", "confluent", "both"], default="both",
                    help="Kafka client library of the processor (throughput); both: side by side "
                         "(confluent only when confluent-kafka is installed)")
    ap.add_argument("--workers", type=int, default=1,
                    help="also time N processor processes in one consumer group (throughput)")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.ERROR)

    def go(bootstrap: str) -> None:
        print(f"broker {bootstrap}, {os.cpu_count()} CPU(s)")
        if not args.skip_throughput:
            clients = ["kafka-python", "confluent"] if args.client == "both" else [args.client]
            if "confluent" in clients and not client_available("confluent"):
                if args.client == "confluent":
                    sys.exit("confluent-kafka is not installed: pip install sigstream[confluent]")
                print("confluent-kafka is not installed: kafka-python only")
                clients.remove("confluent")
            throughput(bootstrap, args.corpus, args.copies, args.batch_size, args.runs, clients, args.workers)
        if not args.skip_latency:
            for spec in args.latency or ["5000:1", "5000:20", "1000:1"]:
                rate, _, every = spec.partition(":")
                latency(bootstrap, int(rate), args.seconds, int(every or 1))

    if args.bootstrap:
        go(args.bootstrap)
    else:
        with Broker() as b:
            go(b.bootstrap)


if __name__ == "__main__":
    main()
