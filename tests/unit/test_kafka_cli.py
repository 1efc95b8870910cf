"""The Kafka commands' shared options (sigstream/kafka_cli.py) without a broker: an
unreachable broker is one bounded error, one bootstrap resolution, hidden old spellings,
`alerts tail` history selection, `collect`'s size check."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from sigstream.cli import main
from sigstream.connectors.message import Message
from sigstream.kafka_cli import CONNECT_TIMEOUT_ENV, hidden_alias

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A port nothing listens on (bound a moment ago, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def no_bootstrap(monkeypatch):
    monkeypatch.delenv("SIGSTREAM_BOOTSTRAP", raising=False)
    monkeypatch.delenv(CONNECT_TIMEOUT_ENV, raising=False)


def test_unreachable_broker_is_one_bounded_error_per_command(no_bootstrap, tmp_path):
    """The issue's done-when: run, topics create (and tail, respond) against a closed port
    exit non-zero within 30 s (default --connect-timeout 10 s), at most 5 stderr lines,
    naming the address and what to check."""
    address = f"127.0.0.1:{closed_port()}"
    keys = tmp_path / "keys"
    assert CliRunner().invoke(main, ["actions", "keygen", "--out", str(keys)]).exit_code == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: []\n")
    commands = {
        "run": ["run", "--bootstrap", address],
        "topics create": ["topics", "create", "--bootstrap", address],
        "alerts tail": ["alerts", "tail", "--bootstrap", address],
        "respond": ["respond", "--policy", str(policy), "--keys", str(keys / "responder.keys"),
                    "--bootstrap", address],
    }
    t0 = time.monotonic()
    procs = {name: subprocess.Popen([sys.executable, "-m", "sigstream", *args], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    for name, proc in procs.items():
        _out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
        lines = err.strip().splitlines()
        assert proc.returncode != 0, (name, err)
        assert took < 30, (name, took)
        assert 1 <= len(lines) <= 5, (name, err)
        assert address in err and "is the broker running" in err and "Traceback" not in err, (name, err)


def test_connect_timeout_bounds_the_check_and_is_restored(no_bootstrap):
    address = f"127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["topics", "create", "--bootstrap", address, "--connect-timeout", "0.6"])
    assert res.exit_code == 1
    assert time.monotonic() - t0 < 5
    assert f"cannot reach Kafka at {address}" in res.output and "tried for 0.6s" in res.output
    assert CONNECT_TIMEOUT_ENV not in os.environ      # exported for the command only


@pytest.mark.parametrize("args, expected", [
    (["collect", "--no-progress", "samples"], "collect needs a broker"),
    (["topics", "create"], "topics create needs a broker"),
    (["alerts", "tail"], "alerts tail needs a broker"),
])
def test_commands_needing_a_broker_say_how_to_give_one(no_bootstrap, args, expected):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert expected in res.output and "--bootstrap HOST:PORT" in res.output and "$SIGSTREAM_BOOTSTRAP" in res.output


def test_collect_without_a_broker_points_to_the_other_sinks(no_bootstrap):
    res = CliRunner().invoke(main, ["collect", "--no-progress", str(ROOT / "samples")])
    assert "--sink stdout" in res.output and "--sink file://PATH" in res.output


def test_run_timeout_and_its_hidden_alias(monkeypatch, no_bootstrap):
    import sigstream.cmd_run as cmd_run
    seen = []

    def fake_embedded(*_a, **kw):
        seen.append(kw["until_idle"])
        raise SystemExit(0)
    monkeypatch.setattr(cmd_run, "run_embedded", fake_embedded)
    for args in (["--timeout", "3"], ["--until-idle", "4"], ["--until-idle", "4", "--timeout", "5"], []):
        CliRunner().invoke(main, ["run", "--no-cache", *args])
    assert seen == [3.0, 4.0, 5.0, None]
    helptext = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--timeout" in helptext and "--until-idle" not in helptext and "--connect-timeout" in helptext


def test_hidden_alias_of_a_flag_and_of_a_value():
    @click.command()
    @click.option("--from-beginning/--from-latest", default=True)
    @hidden_alias("--latest", "from_beginning", value=False)
    @click.option("--level", default=None)
    @hidden_alias("--min-level", "level")
    def cmd(from_beginning, level):
        click.echo(f"{from_beginning} {level}")

    def out(*args):
        return CliRunner().invoke(cmd, list(args)).output.strip()
    assert out() == "True None"
    assert out("--latest") == "False None"
    assert out("--latest", "--from-beginning") == "True None"    # the visible option wins
    assert out("--min-level", "high") == "True high"
    assert out("--min-level", "high", "--level", "low") == "True low"
    assert "--latest" not in out("--help") and "--min-level" not in out("--help")


def test_respond_and_tail_use_the_shared_vocabulary():
    respond = CliRunner().invoke(main, ["respond", "--help"]).output
    assert "--from-beginning / --from-latest" in respond and "--latest " not in respond
    tail = CliRunner().invoke(main, ["alerts", "tail", "--help"]).output
    for opt in ("--lines", "--from-beginning / --from-latest", "--follow / --no-follow", "--timeout",
                "--connect-timeout"):
        assert opt in tail, opt


# ------------------------------------------------------------ tail history ---

def msg(topic: str, partition: int, offset: int, ts: int | None, alert_id: str, level: str = "high",
        value: bytes | None = None) -> Message:
    a = {"alert_id": alert_id, "rule": {"id": "r", "title": "t", "level": level, "tags": []}, "host": "h"}
    return Message(value if value is not None else orjson.dumps(a), b"h", topic, partition, offset, ts, [])


def ids(msgs: list) -> list[str]:
    return [orjson.loads(m.value)["alert_id"] if m.value.startswith(b"{") else "?" for m in msgs]


def test_last_alerts_are_the_newest_by_time_across_partitions():
    from sigstream.cmd_alerts import _last_alerts, alert_filter
    hist = [msg("A", 0, 0, 100, "a1"), msg("A", 0, 1, 400, "a4"), msg("A", 1, 0, 200, "a2"),
            msg("A", 1, 1, 500, "a5", level="low"), msg("A", 2, 0, 300, "a3"),
            msg("A", 2, 1, 350, "junk", value=b"not json"), msg("R", 0, 0, 450, "result")]
    keep_all = alert_filter(None, None, None, None)
    assert ids(_last_alerts(hist, "A", 3, keep_all)) == ["a3", "a4", "a5", "result"]
    # the last N of those passing the filters, not the last N then filtered
    assert ids(_last_alerts(hist, "A", 3, alert_filter("high", None, None, None))) == ["a2", "a3", "a4", "result"]
    assert ids(_last_alerts(hist, "A", 0, keep_all)) == ["result"]
    # everything (--from-beginning): non-alerts stay, to be counted
    assert ids(_last_alerts(hist, "A", None, keep_all)) == ["a1", "a2", "a3", "?", "a4", "a5", "result"]


# -------------------------------------------------------- collect size check ---

class FakePublisher:
    collector_id = "c1"
    topic_prefix = "p"

    def __init__(self):
        self.records = []

    def publish_record(self, rec):
        self.records.append(rec)


def test_events_too_large_for_kafka_are_reported_not_published():
    from sigstream.cmd_collect import MAX_RECORD_BYTES, _SizeCheckedPublisher
    from sigstream.connectors.readers import SourceRef
    pub, refused = FakePublisher(), []
    checked = _SizeCheckedPublisher(pub, lambda ref, size: refused.append((ref, size)))
    small = {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational", "Computer": "ws1",
             "CommandLine": "cmd"}
    big = dict(small, CommandLine="A" * MAX_RECORD_BYTES)
    for i, ev in enumerate([small, big, small], 1):
        checked.publish(ev, SourceRef("f.jsonl", i))
    assert len(pub.records) == 2 and checked.rejected == 1
    assert refused[0][0] == SourceRef("f.jsonl", 2) and refused[0][1] > MAX_RECORD_BYTES
    rec = pub.records[0]
    assert rec.topic == "p.events.sysmon" and rec.key == b"ws1"
    env = orjson.loads(rec.value)
    assert env["collector_id"] == "c1" and env["event"]["CommandLine"] == "cmd"


# ------------------------------------------------------------ run's rate ---

def test_busy_time_leaves_out_the_waiting_for_events():
    """`run`'s events/s is over busy time: polls that return nothing (a --timeout at the
    end, a quiet topic) do not count."""
    from sigstream.connectors.memory import (MemoryAlertSink, MemoryBroker, MemoryDeadLetterSink,
                                             MemoryProducer, MemorySource, publish_events)
    from sigstream.connectors.readers import read_events
    from sigstream.stream.detector import Detector
    from sigstream.stream.engine import Engine
    from sigstream.stream.processor import Processor
    from sigstream.stream.rules import load_rules

    broker = MemoryBroker()
    publish_events(MemoryProducer(broker), (ev for ev, _ in read_events([ROOT / "samples"])))
    source = MemorySource(broker, r"sigstream\.events\..*", "g")
    slow_empty = source.poll

    def poll(n, timeout_s):
        got = slow_empty(n, timeout_s)
        if not got:
            time.sleep(0.2)       # a broker poll waiting for records
        return got
    source.poll = poll
    engine = Engine(load_rules([ROOT / "sigma_rules"], use_cache=False).rules, use_cache=False)
    p = Processor(source, Detector(engine), MemoryAlertSink(broker), MemoryDeadLetterSink(broker),
                  poll_timeout_s=0, until_idle_s=0.8)
    t0 = time.perf_counter()
    m = p.run()
    wall = time.perf_counter() - t0
    assert m.events > 0 and wall >= 0.8
    assert 0 < m.busy_s < wall - 0.6, (m.busy_s, wall)


# ------------------------------------------------------ --metrics-port ---

def scrape_at_stop(monkeypatch) -> list[str]:
    """Patch CountersServer.stop to scrape /metrics first: the totals at the end of the command."""
    import urllib.request

    from sigstream.metrics import CountersServer
    pages: list[str] = []
    stop = CountersServer.stop

    def scrape_then_stop(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            pages.append(r.read().decode())
        stop(self)
    monkeypatch.setattr(CountersServer, "stop", scrape_then_stop)
    return pages


def counter(page: str, name: str) -> float:
    (line,) = [x for x in page.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_collect_metrics_count_what_was_collected(monkeypatch, tmp_path):
    pages = scrape_at_stop(monkeypatch)
    src = tmp_path / "events.jsonl"
    good = [{"EventID": 1, "Channel": "Security", "Computer": "h", "EventRecordID": i} for i in range(7)]
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in good) + b"not json\n")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(main, ["collect", str(src), "--sink", f"file://{out}", "--no-progress",
                                    "--metrics-port", "0"])
    assert res.exit_code == 0, res.output
    assert len(out.read_bytes().splitlines()) == 7
    (page,) = pages
    assert counter(page, "sigstream_collect_events_total") == 7
    assert counter(page, "sigstream_collect_unreadable_records_total") == 1
    assert counter(page, "sigstream_collect_too_large_total") == 0


def test_kafka_client_errors_are_one_line_per_interval():
    """A broker gone while a command runs: kafka-python logs every retry on several loggers;
    the handlers show one line per interval, naming the broker, and no warnings."""
    import logging

    from sigstream.kafka_cli import KafkaTroubleFilter
    f = KafkaTroubleFilter(every_s=60)
    f.where = "k1:9092"

    def rec(name, level, msg="Connection failed: %s", args=("ECONNREFUSED",)):
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)
    first = rec("kafka.net.manager", logging.ERROR)
    assert f.filter(first)
    assert first.getMessage().startswith("Kafka at k1:9092: Connection failed: ECONNREFUSED (the client keeps retrying")
    assert not any(f.filter(rec(n, logging.ERROR)) for n in ("kafka.cluster", "kafka.coordinator", "kafka"))
    assert f.suppressed == 3
    assert not f.filter(rec("kafka.consumer.fetcher", logging.WARNING))
    assert f.filter(rec("sigstream.run", logging.ERROR)) and f.filter(rec("kafkaesque", logging.WARNING))
