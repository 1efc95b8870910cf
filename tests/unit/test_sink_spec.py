"""The --sink spec shared by `sigstream collect` and `sigstream agent` (connectors/sink_spec.py)
and the envelope JSON-lines sink (connectors/sinks.py)."""
from __future__ import annotations

import io
import json

import orjson
import pytest
from click.testing import CliRunner

from sigstream.cli import main
from sigstream.connectors.sink_spec import SinkSpec, parse_sink_spec
from sigstream.connectors.sinks import EnvelopeLineSink
from sigstream.stream.errors import ConfigProblem

SYSMON = "Microsoft-Windows-Sysmon/Operational"
EVENT = {"EventID": 1, "Channel": SYSMON, "Computer": "wks1", "EventRecordID": 7, "Image": "C:\\x.exe"}


@pytest.mark.parametrize("text, expected", [
    (None, SinkSpec("kafka")),
    ("", SinkSpec("kafka")),
    ("kafka", SinkSpec("kafka")),
    ("  kafka  ", SinkSpec("kafka")),
    ("kafka://kafka1:9092", SinkSpec("kafka", bootstrap="kafka1:9092")),
    ("kafka://kafka1:9092/", SinkSpec("kafka", bootstrap="kafka1:9092")),
    ("kafka://a:9092, b:9093", SinkSpec("kafka", bootstrap="a:9092,b:9093")),
    ("kafka://kafka1", SinkSpec("kafka", bootstrap="kafka1")),             # default port
    ("kafka://[::1]:9092", SinkSpec("kafka", bootstrap="[::1]:9092")),
    ("stdout", SinkSpec("stdout")),
    ("file://out/envelopes.jsonl", SinkSpec("file", path="out/envelopes.jsonl")),
    ("file:///var/tmp/e.jsonl", SinkSpec("file", path="/var/tmp/e.jsonl")),
    ("file://C:/logs/e.jsonl", SinkSpec("file", path="C:/logs/e.jsonl")),
])
def test_parse_good_specs(text, expected):
    assert parse_sink_spec(text) == expected
    assert expected.is_kafka == (expected.kind == "kafka")


@pytest.mark.parametrize("text, message", [
    ("kafka://", "--sink kafka://HOST:PORT needs an address"),
    ("kafka:///", "--sink kafka://HOST:PORT needs an address"),
    ("file://", "--sink file://PATH needs a path"),
    ("stdot", "unknown --sink 'stdot': use kafka[://HOST:PORT], stdout or file://PATH"),
    ("kafka:9092", "unknown --sink 'kafka:9092': use kafka[://HOST:PORT], stdout or file://PATH"),
    ("/tmp/out.jsonl", "unknown --sink '/tmp/out.jsonl'"),
    ("kafka://host:port", "--sink kafka://...: 'host:port' is not HOST:PORT"),
    ("kafka://host:99999", "'host:99999' is not HOST:PORT"),
    ("kafka://a:9092,,b:9092", "empty address in the server list"),
    ("kafka://user@host:9092", "'user@host:9092' is not HOST:PORT"),
])
def test_parse_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(ConfigProblem) as exc:
        parse_sink_spec(text)
    assert message in str(exc.value) and str(exc.value).startswith(("--sink", "unknown --sink"))


def test_option_name_in_messages():
    with pytest.raises(ConfigProblem, match=r"^unknown --out 'x'"):
        parse_sink_spec("x", option="--out")


def test_envelope_line_sink():
    buf = io.BytesIO()
    s = EnvelopeLineSink(buf, "c1")
    s.publish(dict(EVENT))
    s.publish(dict(EVENT, EventRecordID=8))
    assert s.flush() is True
    s.close()
    assert not buf.closed                              # not ours to close
    envs = [orjson.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["event"]["EventRecordID"] for e in envs] == [7, 8]
    assert all(e["collector_id"] == "c1" and e["source"] == "sysmon" and e["v"] == 1 for e in envs)
    assert s.stats == {"published": 2, "spooled": 0, "dropped": 0}


def test_open_lines_file_creates_parents_truncates_or_appends(tmp_path):
    target = tmp_path / "a" / "b" / "e.jsonl"
    spec = parse_sink_spec(f"file://{target}")
    for append, expected in ((False, 1), (False, 1), (True, 2)):
        s = spec.open_lines("c1", append=append)
        s.publish(dict(EVENT))
        s.close()
        assert s.out.closed
        assert len(target.read_bytes().splitlines()) == expected


def test_open_lines_unwritable_file_is_a_config_problem(tmp_path):
    (tmp_path / "f").write_text("a file, not a directory")
    with pytest.raises(ConfigProblem, match=r"^--sink file://.*/f/e\.jsonl: cannot open the file: "):
        parse_sink_spec(f"file://{tmp_path}/f/e.jsonl").open_lines("c1")


def test_open_lines_refuses_kafka():
    with pytest.raises(ValueError):
        parse_sink_spec("kafka").open_lines("c1")


# ------------------------------------------------------- sigstream collect --

def collect(*args, input=None):
    return CliRunner().invoke(main, ["collect", "--source", "stdin", "--no-progress", *args], input=input)


@pytest.mark.parametrize("spec, message", [
    ("stdot", "unknown --sink 'stdot': use kafka[://HOST:PORT], stdout or file://PATH"),
    ("file://", "--sink file://PATH needs a path"),
    ("kafka://", "--sink kafka://HOST:PORT needs an address"),
    ("kafka://h:x", "'h:x' is not HOST:PORT"),
])
def test_collect_bad_sink_is_a_usage_error(spec, message):
    res = collect("--sink", spec, input="")
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())


def test_collect_file_sink_writes_envelopes(tmp_path):
    out = tmp_path / "new-dir" / "envelopes.jsonl"
    lines = "".join(json.dumps(dict(EVENT, EventRecordID=i)) + "\n" for i in range(1, 4))
    res = collect("--sink", f"file://{out}", "--collector-id", "col-1", input=lines)
    assert res.exit_code == 0, res.output
    envs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [e["event"]["EventRecordID"] for e in envs] == [1, 2, 3]
    assert all(e["collector_id"] == "col-1" for e in envs)


def test_collect_stdout_sink(tmp_path):
    res = CliRunner().invoke(
        main, ["collect", "--source", "stdin", "--no-progress", "--sink", "stdout", "--collector-id", "c"],
        input=json.dumps(EVENT) + "\n")
    assert res.exit_code == 0, res.output
    (line,) = res.stdout_bytes.splitlines()              # the summary goes to stderr
    assert orjson.loads(line)["event"]["EventRecordID"] == 7
