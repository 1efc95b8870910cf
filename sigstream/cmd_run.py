"""`sigstream run` and `sigstream demo`: the streaming side (`alerts tail`: sigstream/cmd_alerts.py).

`run` without a broker is the embedded mode (collector thread -> in-process
MemoryBroker -> processor -> stdout); with `--bootstrap` (or SIGSTREAM_BOOTSTRAP)
it is a Kafka consumer-group member producing to the alerts and dlq topics.
Kafka is only reached through connectors.kafka, imported when a broker is used.
"""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import click
import yaml
from rich.console import Console
from rich.markup import escape

from sigstream.resources import bundled_rules, sample_files, samples_dir
from sigstream.cli import (_load, err_console, exit_no_rules, main, no_rules_message,
                           rule_options)
from sigstream.kafka_cli import (hidden_alias, kafka_options, open_metrics, quiet_kafka_client,
                                 resolve_bootstrap)
from sigstream.processing import (DEFAULT_GROUP, RuleWatcher, TeeSink,
                                  publish_files_to_kafka, run_embedded, run_kafka)
from sigstream.render import LiveSink, summary_table
from sigstream.stream.topics import ALERTS_TOPIC, DLQ_TOPIC, EVENT_TOPIC_PATTERN
from sigstream.stream.correlation_stage import DEFAULT_LATENESS_S

log = logging.getLogger("sigstream.run")

EXIT_FAILURE = 1
bootstrap_option = kafka_options("the embedded mode (no Kafka).")


def _extra_sinks(url: str | None, payload: str, secret_env: str | None, dead_letter: str | None,
                 alert_format: str) -> list[Any]:
    """Alert sinks besides the topic and stdout: the webhook, if configured."""
    if not url:
        return []
    import os

    from sigstream.connectors.webhook import WebhookSink
    secret = None
    if secret_env:
        if secret_env not in os.environ:
            raise click.UsageError(f"--webhook-secret-env: {secret_env} is not set")
        secret = os.environ[secret_env].encode()
    try:
        return [WebhookSink(url, payload=payload, alert_format=alert_format, secret=secret,
                            dead_letter=dead_letter)]
    except ValueError as e:
        raise click.UsageError(str(e))


def _dedup_wrapper(path: str | None) -> Callable[[Any], Any] | None:
    """--dedup FILE -> a function putting a DedupSink in front of the alert sinks."""
    if not path:
        return None
    from sigstream.stream.dedup import DedupPolicy, DedupSink, Deduplicator
    try:
        policy = DedupPolicy.from_dict(yaml.safe_load(Path(path).read_text()) or {})
    except Exception as e:
        raise click.UsageError(f"--dedup {path}: {e}")
    return lambda sink: DedupSink(sink, Deduplicator(policy), clock=time.time)


def engine_options(f: Callable) -> Callable:
    """Matching options shared with `hunt`: enrichment and IOC lists."""
    f = click.option("--ioc", "ioc_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="Known-bad hash list (as in `hunt --ioc`), matched against Sysmon Hashes. "
                          "Repeatable; reloaded with the rules.")(f)
    f = click.option("--no-enrich", is_flag=True,
                     help="Do not add the derived sigstream_* fields before matching (as `hunt`).")(f)
    return f


def _with_iocs(rules: list, opts: dict[str, Any], quiet: bool = False) -> list:
    if opts.get("ioc_paths"):
        from sigstream.stream.ioc import load_ioc_files
        iocs = load_ioc_files(opts["ioc_paths"])
        if not quiet:
            for p in iocs.problems:
                err_console.print(f"[yellow]ioc list[/yellow] {p}", soft_wrap=True)
        rules = rules + list(iocs.rules)
    return rules


def _engine_factory(opts: dict[str, Any]) -> Callable[[list], Any]:
    """The same Engine construction as `hunt`: enrichment unless --no-enrich."""
    from sigstream.stream.engine import Engine
    enrich = None
    if not opts.get("no_enrich"):
        try:
            from sigstream.stream.enrich import enrich
        except ImportError:  # pragma: no cover - older trees without enrichment
            enrich = None
    return lambda rules: Engine(rules, enrich=enrich) if enrich else Engine(rules)


def _rule_loader(opts: dict[str, Any]) -> Callable[[], list]:
    def load() -> list:
        loaded = _load(dict(opts, strict=False), quiet=True)
        if loaded.errors:
            log.warning("reload: %d rule error(s), first: %s", len(loaded.errors), loaded.errors[0])
        return _with_iocs(list(loaded.rules), opts, quiet=True)
    return load


def _detector(opts: dict[str, Any], lateness_s: float = DEFAULT_LATENESS_S) -> Any:
    """The shared Detector (as `hunt` builds it): the engine, then the correlation stage
    when the rule set has correlation rules."""
    from sigstream.stream.correlation_stage import correlation_stages
    from sigstream.stream.detector import Detector
    loaded = _load(opts)
    rules = _with_iocs(list(loaded.rules), opts)
    if not rules:   # as hunt: the folder named, exit 2
        exit_no_rules(no_rules_message(loaded, opts.get("rule_paths") or ()))
    return Detector(_engine_factory(opts)(rules),
                    stages=correlation_stages(loaded.correlations, loaded.suppressed,
                                              lateness_s=lateness_s))


def _summary(m: Any, seconds: float, mode: str) -> None:
    # the rate over the processor's busy time: waiting for events (empty polls, a --timeout
    # at the end) is not throughput
    busy = min(getattr(m, "busy_s", 0.0) or seconds, seconds)
    rate = m.events / busy if busy > 0 else 0.0
    err_console.print(
        f"[bold]{mode}[/bold]: {m.events:,} events, {m.alerts:,} alerts, {m.dead_letters:,} dead letters, "
        f"{m.rules:,} rules{f', {m.reloads} reload(s)' if m.reloads else ''}, {seconds:.2f}s, "
        f"{rate:,.0f} events/s (busy {busy:.2f}s)", highlight=False)


# --------------------------------------------------------------------- run ---

@main.command()
@rule_options
@engine_options
@bootstrap_option
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help="Embedded mode: event files/directories to replay (default: the bundled samples/).")
@click.option("--group", default=DEFAULT_GROUP, show_default=True, help="Kafka consumer group id.")
@click.option("--from-beginning/--from-latest", default=True, show_default=True,
              help="Where a group with no committed offsets starts.")
@click.option("--topic-prefix", default="sigstream", show_default=True,
              help="Topics are <prefix>.events.<source>, <prefix>.alerts, <prefix>.dlq.")
@click.option("--topics", metavar="PATTERN",
              help=r"Regex of the event topics to consume [default: ^<prefix>\.events\..*].")
@click.option("--alerts-topic", help="[default: <prefix>.alerts]")
@click.option("--dlq-topic", help="[default: <prefix>.dlq]")
@click.option("--timeout", "until_idle", type=click.FloatRange(0), metavar="SECONDS",
              help="Exit 0 after no new events for this long (default: run until signalled).")
@hidden_alias("--until-idle", "until_idle", type=click.FloatRange(0))
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="Records per poll.")
@click.option("--commit-interval", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              metavar="SECONDS", help="With a broker: flush the alerts and commit offsets at most "
                                      "this often (0: after every batch) and whenever the topics "
                                      "run dry; a crash redelivers at most this much (same alert ids).")
@click.option("--session-timeout", type=click.FloatRange(6, 1800), default=45.0, show_default=True,
              metavar="SECONDS", help="Group session timeout: how long until the partitions of a "
                                      "crashed member are handed to the others.")
@click.option("--watch-rules", is_flag=True, help="Reload the rules when rule files change (polls mtimes).")
@click.option("--correlation-lateness", type=click.FloatRange(0), default=DEFAULT_LATENESS_S,
              show_default=True, metavar="SECONDS",
              help="Correlation rules: hold matches this long (event time) to put them in order "
                   "before counting; older ones are counted as late.")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "jsonl"]),
              help="Alert output on stdout (embedded: default table on a terminal, else jsonl; "
                   "with a broker: only if given).")
@click.option("--alert-format", type=click.Choice(["native", "ecs", "ocsf"]), default="native",
              show_default=True, help="Shape of the jsonl alerts on stdout and of webhook posts "
                                      "(the alerts topic stays native: respond and tail read it).")
@click.option("--dedup", "dedup_path", type=click.Path(exists=True, dir_okay=False),
              help="De-duplication policy YAML (default/levels/rules -> {window, key}); same rule + "
                   "host + key within the window -> one alert with a count.")
@click.option("--webhook", "webhook_url", metavar="URL", help="Also POST every alert to this URL.")
@click.option("--webhook-payload", type=click.Choice(["json", "slack", "teams"]), default="json",
              show_default=True, help="json: the alert document; slack/teams: a text summary.")
@click.option("--webhook-secret-env", metavar="VAR",
              help="Environment variable holding the HMAC key for the X-Sigstream-Signature header.")
@click.option("--webhook-dead-letter", type=click.Path(dir_okay=False), metavar="FILE",
              help="JSONL file for alerts the webhook permanently refused.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics on /metrics and a JSON health document on "
                   "/health at this port (0: any free port).")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address the metrics endpoint listens on.")
@click.option("--kafka-client", type=click.Choice(["kafka-python", "confluent"]), default="kafka-python",
              show_default=True, help="Kafka library of the event consumer, the alert and dead-letter "
                                      "producers and correlation over Kafka; confluent (librdkafka) is "
                                      "faster: pip install sigstream[confluent].")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True, metavar="N",
              help="With a broker: N processor processes in the same consumer group (at most one "
                   "per partition is busy). Worker i serves metrics on --metrics-port + i - 1.")
def run(bootstrap: str | None, inputs: tuple[str, ...], group: str, from_beginning: bool,
        topic_prefix: str, topics: str | None, alerts_topic: str | None, dlq_topic: str | None,
        until_idle: float | None, batch_size: int, commit_interval: float, session_timeout: float,
        watch_rules: bool, correlation_lateness: float,
        fmt: str | None, alert_format: str, dedup_path: str | None, webhook_url: str | None,
        webhook_payload: str, webhook_secret_env: str | None, webhook_dead_letter: str | None,
        metrics_port: int | None, metrics_addr: str, **opts: Any) -> None:
    """Run the stream processor: event topics -> Sigma rules -> alerts topic.

    \b
    Embedded (no Kafka): replay files through an in-process queue, alerts on stdout:
      sigstream run -r sigma_rules/
      sigstream run -r sigma_rules/ --input <your-evtx-dir> -f jsonl > alerts.jsonl
    With a broker (consumer group; alerts to sigstream.alerts, bad records to sigstream.dlq):
      sigstream run -r sigma_rules/ --bootstrap 127.0.0.1:9092
      SIGSTREAM_BOOTSTRAP=kafka:9092 sigstream run -r rules/ --group soc --timeout 30

    \b
    Delivery: at-least-once. After every batch the alerts and dead letters are
    flushed (acked by the broker) and only then are the offsets committed; a
    crash re-processes the records after the last commit, so an alert may be
    delivered twice, always with the same alert_id.
    Signals: SIGTERM/SIGINT finish the batch, commit and exit 0; SIGHUP reloads
    the rules (a reload that yields no valid rule keeps the current set).
    """
    bootstrap = resolve_bootstrap(bootstrap)
    kafka_client, workers = opts.pop("kafka_client"), opts.pop("workers")
    _check_kafka_client(kafka_client, bootstrap)
    if workers > 1:
        _run_workers(workers, bootstrap, inputs)   # exits
    worker = _worker_index()
    if worker is not None and metrics_port:
        metrics_port += worker - 1   # workers of one machine cannot share a port
    metrics_at = open_metrics(metrics_port, metrics_addr)   # bound first: a port in use stops here
    topics = topics or "^" + re.escape(topic_prefix) + r"\.events\..*"
    alerts_topic = alerts_topic or f"{topic_prefix}.alerts"
    dlq_topic = dlq_topic or f"{topic_prefix}.dlq"
    detector = _detector(opts, lateness_s=correlation_lateness)
    loader = _rule_loader(opts)
    # IOC lists reload whenever they change; rule files with --watch-rules (or on SIGHUP)
    ioc_paths = list(opts.get("ioc_paths") or ())
    watched = (list(opts["rule_paths"] or [str(bundled_rules())]) if watch_rules else []) + ioc_paths
    watch = RuleWatcher(watched) if watched else None
    if bootstrap is None:
        fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    if alert_format != "native" and fmt not in (None, "jsonl"):
        raise click.UsageError(f"--alert-format {alert_format} needs -f jsonl (the table shows native alerts)")
    extras = _extra_sinks(webhook_url, webhook_payload, webhook_secret_env, webhook_dead_letter,
                          alert_format)
    wrap = _dedup_wrapper(dedup_path)

    def echo_sink(live: Any) -> Any:
        if live is not None and alert_format != "native":
            from sigstream.stream.alert_formats import FormattingSink
            live = FormattingSink(live, alert_format)
        return TeeSink(live, *extras) if (live is not None or extras) else None

    t0 = time.perf_counter()
    try:
        if bootstrap is None:
            metrics = run_embedded(detector, list(inputs) or [str(samples_dir())], echo_sink(LiveSink(fmt)),
                                   batch_size=batch_size, until_idle=until_idle, rule_loader=loader,
                                   watch=watch, group=group, wrap=wrap, metrics_at=metrics_at)
            mode = "embedded"
        else:
            if inputs:
                raise click.UsageError("--input is for the embedded mode; with a broker use "
                                       "`sigstream collect` to publish events")
            quiet_kafka_client(bootstrap)
            metrics = run_kafka(detector, bootstrap, group=group, topics=topics,
                                from_beginning=from_beginning, alerts_topic=alerts_topic,
                                dlq_topic=dlq_topic, batch_size=batch_size, until_idle=until_idle,
                                rule_loader=loader, watch=watch, session_timeout_s=session_timeout,
                                echo=echo_sink(LiveSink(fmt, summary=False) if fmt else None),
                                wrap=wrap, commit_interval_s=commit_interval,
                                topic_prefix=topic_prefix, metrics_at=metrics_at,
                                kafka_client=kafka_client)
            mode = f"kafka {bootstrap} group {group}" + (f" worker {worker}" if worker else "")
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: offsets since the last batch are not committed[/yellow]")
        sys.exit(130)
    except (click.ClickException, SystemExit):
        raise
    except Exception as e:
        log.debug("processor failed", exc_info=True)
        err_console.print(f"[red]processor stopped[/red]: {type(e).__name__}: {escape(str(e))} "
                          "(nothing after the last committed batch is lost: it is re-delivered on restart)")
        sys.exit(EXIT_FAILURE)
    _summary(metrics, time.perf_counter() - t0, mode)


def _worker_index() -> int | None:
    from sigstream.run_workers import worker_index
    return worker_index()


def _check_kafka_client(kafka_client: str, bootstrap: str | None) -> None:
    from sigstream.kafka_cli import BOOTSTRAP_ENV
    if kafka_client == "kafka-python":
        return
    if bootstrap is None:
        raise click.UsageError(f"--kafka-client {kafka_client} needs a broker (--bootstrap or "
                               f"${BOOTSTRAP_ENV}); the embedded mode does not use Kafka")
    from sigstream.connectors.kafka.clients import CONFLUENT_MISSING, client_available
    if not client_available(kafka_client):
        raise click.UsageError(CONFLUENT_MISSING)


def _run_workers(workers: int, bootstrap: str | None, inputs: tuple[str, ...]) -> None:
    """run --workers N: supervise N `run` processes of one consumer group (sigstream.run_workers)."""
    from sigstream.kafka_cli import BOOTSTRAP_ENV
    from sigstream.run_workers import supervise, without_workers
    if bootstrap is None or inputs:
        raise click.UsageError(f"--workers needs a broker (--bootstrap or ${BOOTSTRAP_ENV}) and no --input: "
                               "the embedded mode is one process (for files: `sigstream hunt --jobs N`)")
    argv = sys.argv[1:]
    if not any(a == "--workers" or a.startswith("--workers=") for a in argv):
        raise click.UsageError("--workers must be given on the sigstream command line")
    sys.exit(supervise(workers, without_workers(argv)))   # workers inherit $SIGSTREAM_BOOTSTRAP


# -------------------------------------------------------------------- demo ---

@main.command()
@bootstrap_option
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help="Event files to replay instead of the bundled samples/.")
@click.option("-r", "--rules", "rule_paths", multiple=True, type=click.Path(exists=True),
              help="Rules to use instead of the bundled sigma_rules/.")
@click.option("--timeout", "until_idle", type=click.FloatRange(0), default=5.0, show_default=True,
              metavar="SECONDS", help="With a broker: stop after no new events for this long.")
@hidden_alias("--until-idle", "until_idle", type=click.FloatRange(0))
def demo(bootstrap: str | None, inputs: tuple[str, ...], rule_paths: tuple[str, ...],
         until_idle: float) -> None:
    """Replay the bundled sample intrusion end to end and show the alerts as they arrive.

    \b
    No Kafka needed (in-process queue):
      sigstream demo
    Through a real broker (collect -> topics -> processor -> sigstream.alerts):
      sigstream demo --bootstrap 127.0.0.1:9092
    """
    bootstrap = resolve_bootstrap(bootstrap)
    quiet_kafka_client(bootstrap)
    opts = {"rule_paths": rule_paths or (str(bundled_rules()),)}
    files = list(inputs) or [str(p) for p in sample_files()]
    console = Console(highlight=False, soft_wrap=True)
    detector = _detector(opts)
    console.print(f"[bold]sigstream demo[/bold]: {len(detector.engine.rules)} rules, replaying "
                  f"{', '.join(Path(f).name for f in files)} "
                  f"{'through Kafka at ' + bootstrap if bootstrap else 'through the in-process queue'}\n")
    live = LiveSink("table", console, summary=False, dedupe=True)
    t0 = time.perf_counter()
    if bootstrap is None:
        metrics = run_embedded(detector, files, live, batch_size=20, group="sigstream-demo")
    else:
        publish_files_to_kafka(bootstrap, files)
        metrics = run_kafka(detector, bootstrap, group=f"sigstream-demo-{uuid.uuid4().hex[:8]}",
                            topics=EVENT_TOPIC_PATTERN, from_beginning=True, alerts_topic=ALERTS_TOPIC,
                            dlq_topic=DLQ_TOPIC, batch_size=100, until_idle=until_idle, echo=live)
    seconds = time.perf_counter() - t0
    console.print()
    if live.shown:
        console.print(summary_table(live.shown))
    else:
        console.print("[green]No detections.[/green]")
    hosts = sorted({str(a.get("host")) for a in live.shown})
    console.print(f"\n{metrics.events:,} events -> {len(live.shown):,} alerts on {len(hosts)} host(s) "
                  f"({', '.join(hosts)}), {metrics.dead_letters} dead letters, {seconds:.2f}s")
    console.print("[dim]next: sigstream hunt -r sigma_rules/ samples/   |   "
                  "sigstream run -r sigma_rules/ --bootstrap HOST:PORT[/dim]")
