"""`sigstream collect` (event files / stdin -> Kafka event topics) and `sigstream topics`."""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from sigstream.cli import err_console, main
from sigstream.kafka_cli import (kafka_options, metrics_options, need_bootstrap, open_metrics,
                                 quiet_kafka_client, serve_counters)

EXIT_DROPPED = 1
EXIT_USAGE = 2
EXIT_PENDING = 3
DEFAULT_SOURCES = "sysmon,powershell,security,system,wmi,defender,other"


def _default_spool_dir(prefix: str, collector_id: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sigstream" / "spool" / f"{prefix}-{collector_id}"


# kafka-python's producer refuses records over max_request_size (1 MiB by default) for
# good; the envelope's record overhead stays well within the margin.
MAX_RECORD_BYTES = 1024 * 1024 - 4096


COLLECT_COUNTERS = {   # --metrics-port: counter key -> (name, help)
    "events": ("sigstream_collect_events", "Events read."),
    "unreadable": ("sigstream_collect_unreadable_records", "Records that could not be read."),
    "too_large": ("sigstream_collect_too_large", "Events too large for Kafka, not collected."),
    "published": ("sigstream_collect_published", "Envelopes handed to the Kafka publisher."),
    "acked": ("sigstream_collect_acked", "Envelopes acknowledged by Kafka."),
    "spooled": ("sigstream_collect_spooled", "Envelopes written to the disk spool."),
    "dropped": ("sigstream_collect_dropped", "Envelopes dropped (spool full or rejected by Kafka)."),
}
COLLECT_GAUGES = {     # the publisher's spool (stats keys of connectors.kafka.publisher)
    "spool_unsent": ("sigstream_spool_records", "Records in the disk spool, not yet sent."),
    "spool_bytes": ("sigstream_spool_bytes", "Size of the disk spool."),
}


class _SizeCheckedPublisher:
    """The Kafka publisher behind a size check: an envelope the producer would refuse goes
    to ``too_large(ref, size)`` instead (the rest continues). Encodes each event once."""

    def __init__(self, publisher: Any, too_large: Callable[[Any, int], None],
                 limit: int = MAX_RECORD_BYTES):
        from sigstream.connectors.spool import SpoolRecord
        from sigstream.stream.envelope import encode, host_key, wrap
        from sigstream.stream.topics import event_topic
        self._pub, self._too_large, self.limit = publisher, too_large, limit
        self._record, self._encode, self._host_key, self._wrap = SpoolRecord, encode, host_key, wrap
        self._topic = event_topic
        self.rejected = 0

    def publish(self, event: dict, ref: Any) -> None:
        env = self._wrap(event, self._pub.collector_id)
        value = self._encode(env)
        if len(value) > self.limit:
            self.rejected += 1
            self._too_large(ref, len(value))
            return
        self._pub.publish_record(self._record(self._topic(env["source"], self._pub.topic_prefix),
                                              self._host_key(event), value))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--source", "source_kind", type=click.Choice(["evtx", "jsonl", "stdin"]), default=None,
              help="What to read: event files (evtx, or JSON/JSON lines; the format of each file is "
                   "detected, .gz included; directories are searched recursively) or JSON lines on "
                   "stdin. Default: stdin without PATHs, files otherwise.")
@click.option("--sink", default="kafka", show_default=True, metavar="kafka[://HOST:PORT]|stdout|file://PATH",
              help="Where envelopes go. kafka: the event topics (<prefix>.events.<source>), "
                   "key = host, at --bootstrap (kafka://HOST:PORT: at these servers); "
                   "stdout / file://PATH: envelope JSON lines.")
@kafka_options("an error, unless --sink is kafka://HOST:PORT, stdout or file://PATH "
               "(no default broker address).")
@click.option("--collector-id", default=lambda: socket.gethostname(), show_default="host name",
              help="Recorded in every envelope; also names the default spool directory.")
@click.option("--topic-prefix", default="sigstream", show_default=True, help="Topic name prefix.")
@click.option("--spool-dir", type=click.Path(file_okay=False),
              help="Disk spool for events Kafka cannot take right now "
                   "(default: ~/.cache/sigstream/spool/<prefix>-<collector-id>). Records left there "
                   "by an earlier run are sent first.")
@click.option("--spool-max-mb", type=click.IntRange(1), default=1024, show_default=True,
              help="Spool size cap; beyond it events are dropped, counted and reported (exit 1).")
@click.option("--memory-limit", type=click.IntRange(1), default=10_000, show_default=True,
              help="Unacknowledged records held in memory before spilling to the spool.")
@click.option("--flush-timeout", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Seconds to wait at the end for Kafka to acknowledge everything.")
@click.option("--create-topics/--no-create-topics", default=True, show_default=True,
              help="Create the sigstream topics first if missing (needs the broker to be up; "
                   "skipped with a warning otherwise).")
@click.option("--partitions", type=click.IntRange(1), default=3, show_default=True,
              help="Partitions of topics created by --create-topics.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, writable=True),
              help="Write unreadable records and events too large for Kafka (file, position, "
                   "reason) to this JSONL file.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: on a terminal).")
@metrics_options
def collect(paths: tuple[str, ...], source_kind: str | None, sink: str, bootstrap: str | None,
            collector_id: str, topic_prefix: str, spool_dir: str | None, spool_max_mb: int,
            memory_limit: int, flush_timeout: float, create_topics: bool, partitions: int,
            errors_path: str | None, progress: bool | None, metrics_port: int | None,
            metrics_addr: str) -> None:
    """Read Windows events and publish them as envelopes to Kafka (or stdout / a file).

    Every event is normalised, wrapped in an envelope (event_id, source, collector_id,
    ingest_time) and sent to <prefix>.events.<source> with the host as key, so each
    host's events stay in order. When Kafka is unreachable or slow, events go to a disk
    spool and are sent, in order, once it is back: nothing is lost silently (said once,
    with the spool directory). An event too large for Kafka (over 1 MiB as an envelope) is
    reported with its file and line (--errors FILE), counted, and skipped.
    The broker: --bootstrap, else $SIGSTREAM_BOOTSTRAP, else --sink kafka://HOST:PORT;
    there is no default address.

    \b
    Examples:
      sigstream collect --bootstrap 127.0.0.1:9092 samples/
      sigstream collect --sink kafka://kafka1:9092 --collector-id dc01 C:/logs/*.evtx
      zcat events.jsonl.gz | sigstream collect --source stdin
      sigstream collect --sink stdout samples/ | head
      sigstream collect --sink file://envelopes.jsonl <your-evtx-dir>
    Exit status: 0 all events delivered (or written); 1 events were dropped (spool full or
    rejected by Kafka); 2 usage error; 3 not everything was acknowledged within
    --flush-timeout: the rest is in the spool and is sent by the next run.
    """
    import orjson

    from sigstream.connectors.readers import ReadError, find_event_files, read_events, read_stdin_events
    from sigstream.connectors.sink_spec import parse_sink_spec
    from sigstream.stream.errors import ConfigProblem

    try:
        spec = parse_sink_spec(sink)
    except ConfigProblem as e:
        raise click.UsageError(str(e))
    kind = source_kind or ("stdin" if not paths else "files")
    if kind == "stdin" and paths:
        raise click.UsageError("--source stdin takes no PATHs")
    if kind != "stdin" and not paths:
        raise click.UsageError(f"--source {kind} needs at least one PATH")
    files: list[Path] = []
    if kind != "stdin":
        try:
            files = find_event_files(paths)
        except FileNotFoundError as e:
            raise click.UsageError(str(e))

    endpoint = open_metrics(metrics_port, metrics_addr)     # a port in use stops us here
    errors_out = open(errors_path, "wb") if errors_path else None
    unreadable = reported = 0

    def report(err: Any, what: str) -> None:
        nonlocal reported
        reported += 1
        if reported <= 20:
            err_console.print(f"[yellow]{what}[/yellow] {err}", soft_wrap=True)
        elif reported == 21:
            err_console.print("[yellow]… more records not collected (see --errors FILE)[/yellow]")
        if errors_out:
            errors_out.write(orjson.dumps(err.to_dict()) + b"\n")

    def on_error(err: Any) -> None:
        nonlocal unreadable
        unreadable += 1
        report(err, "unreadable record")

    def too_large(ref: Any, size: int) -> None:
        report(ReadError(ref.path, ref.position, f"event too large for Kafka: {size:,} bytes as an "
                                                 f"envelope, the producer takes at most "
                                                 f"{MAX_RECORD_BYTES:,}; not collected"),
               "event too large")

    # ---- the sink
    publisher = line_sink = checked = None
    if not spec.is_kafka:
        try:
            line_sink = spec.open_lines(collector_id)
        except ConfigProblem as e:
            raise click.UsageError(str(e))
    else:
        from sigstream.connectors.kafka import KafkaError, KafkaEventPublisher, KafkaSettings, all_topics
        from sigstream.connectors.kafka import create_topics as do_create
        from sigstream.connectors.kafka import KafkaConnectError
        server = spec.bootstrap or need_bootstrap(
            bootstrap, "collect", " (or write envelopes elsewhere: --sink stdout / --sink file://PATH)")
        quiet_kafka_client(server)
        settings = KafkaSettings.from_env(bootstrap=server, client_id=f"sigstream-collect-{collector_id}")
        if create_topics:
            try:
                created = do_create(settings, all_topics(topic_prefix), partitions=partitions, timeout_s=10)
                if created:
                    err_console.print(f"created topics: {', '.join(created)}", highlight=False, soft_wrap=True)
            except KafkaConnectError:
                pass    # the publisher says it once, with the spool directory
            except KafkaError as e:
                err_console.print(f"[yellow]warning[/yellow] could not create topics ({e}); "
                                  "continuing (events are spooled if the topics are missing)",
                                  soft_wrap=True)
        sdir = Path(spool_dir) if spool_dir else _default_spool_dir(topic_prefix, collector_id)
        publisher = KafkaEventPublisher(settings, collector_id=collector_id, spool_dir=sdir,
                                        topic_prefix=topic_prefix, memory_limit=memory_limit,
                                        spool_max_bytes=spool_max_mb * 1024 * 1024)
        checked = _SizeCheckedPublisher(publisher, too_large)

    show = progress if progress is not None else sys.stderr.isatty()
    events = 0
    t0 = time.perf_counter()
    delivered = True

    def counters() -> dict[str, int]:       # read when scraped, from the running totals
        stats = publisher.stats if publisher is not None else {}
        return {"events": events, "unreadable": unreadable,
                "too_large": checked.rejected if checked is not None else 0, **stats}
    exporter = serve_counters(endpoint, COLLECT_COUNTERS, counters, COLLECT_GAUGES)
    try:
        with _Progress(show, len(files) if files else None) as bar:
            def items() -> Iterator[tuple[dict, Any]]:
                if kind == "stdin":
                    yield from read_stdin_events(on_error=on_error)
                else:
                    for f in files:
                        yield from read_events([f], on_error=on_error)
                        bar.file_done(f)
            for event, src in items():
                events += 1
                if checked is not None:
                    checked.publish(event, src)
                else:
                    line_sink.publish(event)
                if events % 1000 == 0:
                    bar.update(events, publisher.stats if publisher else None)
        if publisher is not None:
            if show:
                err_console.print(f"waiting for Kafka to acknowledge (at most {flush_timeout:g}s) …",
                                  highlight=False)
            delivered = publisher.flush(flush_timeout)
    finally:
        if exporter is not None:
            exporter.stop()         # (an earlier exit: the endpoint stops when the command closes)
        if publisher is not None:
            publisher.close(timeout_s=0 if not delivered else 5)
        if line_sink is not None:
            line_sink.close()
        if errors_out:
            errors_out.close()
    seconds = time.perf_counter() - t0
    rate = events / seconds if seconds > 0 else 0.0
    stats = publisher.stats if publisher else {}
    too_big = checked.rejected if checked is not None else 0
    dropped = stats.get("dropped", 0)
    left = stats.get("spool_unsent", 0)
    err_console.print(
        f"{events - too_big:,} events collected{f' (of {events:,} read)' if too_big else ''}, "
        f"{rate:,.0f} events/s, {seconds:.2f}s; "
        f"spooled {stats.get('spooled', 0):,}, dropped {dropped:,}, "
        f"unreadable records {unreadable:,}"
        + (f", too large for Kafka {too_big:,}" if too_big else "")
        + (f", {left:,} awaiting delivery in the spool" if left else ""), highlight=False, soft_wrap=True)
    if dropped:
        err_console.print(f"[red]error[/red] {dropped:,} event(s) were DROPPED (spool full or rejected)",
                          soft_wrap=True)
        sys.exit(EXIT_DROPPED)
    if publisher is not None and (not delivered or left):
        err_console.print(f"[yellow]warning[/yellow] Kafka did not acknowledge everything within "
                          f"{flush_timeout:g}s; {left:,} record(s) kept in {publisher.spool.dir}, "
                          "sent by the next run with the same spool directory", soft_wrap=True)
        sys.exit(EXIT_PENDING)


class _Progress:
    """A rich progress bar on stderr (files done, events, spool), or nothing."""

    def __init__(self, enabled: bool, total_files: int | None):
        self.enabled, self.total = enabled, total_files

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("[bold]collecting"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.description}"),
                                console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def file_done(self, f: Path) -> None:
        if self.enabled:
            self.bar.update(self.task, advance=1)

    def update(self, events: int, stats: dict | None) -> None:
        if self.enabled:
            extra = ""
            if stats:
                extra = f", acked {stats['acked']:,}, spooled {stats['spooled']:,}"
                if stats["dropped"]:
                    extra += f", [red]dropped {stats['dropped']:,}[/red]"
            self.bar.update(self.task, description=f"{events:,} events{extra}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


@main.group()
def topics() -> None:
    """Manage the sigstream Kafka topics."""


@topics.command("create")
@kafka_options("an error (this command needs a broker).")
@click.option("--partitions", type=click.IntRange(1), default=3, show_default=True)
@click.option("--replication-factor", type=int, default=-1, show_default=True,
              help="-1: the broker's default.replication.factor.")
@click.option("--retention-hours", type=click.FloatRange(0, min_open=True),
              help="retention.ms of the new topics (default: the broker's).")
@click.option("--sources", default=DEFAULT_SOURCES, show_default=True,
              help="Comma-separated event sources; one topic <prefix>.events.<source> each.")
@click.option("--topic-prefix", default="sigstream", show_default=True)
def topics_create(bootstrap: str | None, partitions: int, replication_factor: int,
                  retention_hours: float | None, sources: str, topic_prefix: str) -> None:
    """Create the event topics plus alerts, dlq, actions and action-results (existing ones are kept).

    One request for all topics; one line per topic: `created` or `exists`.

    \b
    Examples:
      SIGSTREAM_BOOTSTRAP=127.0.0.1:9092 sigstream topics create
      sigstream topics create --bootstrap kafka1:9092 --partitions 12 --retention-hours 72
    """
    from sigstream.connectors.kafka import KafkaError, KafkaSettings, all_topics, create_topics

    bootstrap = need_bootstrap(bootstrap, "topics create")
    quiet_kafka_client(bootstrap)
    names = all_topics(topic_prefix, [s.strip() for s in sources.split(",") if s.strip()])
    settings = KafkaSettings.from_env(bootstrap=bootstrap, client_id="sigstream-admin")
    try:
        created = create_topics(settings, names, partitions=partitions,
                                retention_ms=int(retention_hours * 3600_000) if retention_hours else None,
                                replication_factor=replication_factor)
    except KafkaError as e:
        err_console.print(f"[red]error[/red] {e}", soft_wrap=True)
        sys.exit(1)
    for n in names:
        click.echo(f"{'created' if n in created else 'exists '} {n}")
    err_console.print(f"{len(created)} created, {len(names) - len(created)} already existed "
                      f"({bootstrap})", highlight=False, soft_wrap=True)
