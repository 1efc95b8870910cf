"""`run --workers N` (sigstream.run_workers): argv for the workers, the embedded-mode usage
error, and supervision of real spawned workers (a failing one is named, exit non-zero)."""
from __future__ import annotations

import subprocess
import sys

from sigstream.run_workers import supervise, without_workers


def test_workers_option_is_removed_from_the_workers_command_line():
    assert without_workers(["--log-level", "info", "run", "--workers", "3", "-r", "x", "--workers=2"]) == \
        ["--log-level", "info", "run", "-r", "x"]


def test_workers_without_a_broker_is_a_usage_error(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "SIGSTREAM_BOOTSTRAP"}
    r = subprocess.run([sys.executable, "-m", "sigstream", "run", "--workers", "2"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert "--workers needs a broker" in r.stderr


def test_supervisor_names_the_worker_that_failed(capfd):
    # a worker whose command fails (unknown option: click exits 2) is reported by name
    assert supervise(2, ["run", "--no-such-option"]) == 1
    err = capfd.readouterr().err
    assert "worker 1 (pid" in err and "worker 2 (pid" in err and "exited with code 2" in err


def test_supervisor_exits_zero_when_every_worker_does(capfd):
    assert supervise(2, ["--version"]) == 0
    assert capfd.readouterr().out.count("version") == 2


def _run_cli(*args: str):
    from click.testing import CliRunner

    from sigstream.cli import main
    return CliRunner().invoke(main, ["run", *args], env={"SIGSTREAM_BOOTSTRAP": ""})


def test_missing_confluent_kafka_is_a_usage_error_naming_the_extra(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "confluent_kafka" else real(name, *a))
    r = _run_cli("--bootstrap", "127.0.0.1:1", "--kafka-client", "confluent")
    assert r.exit_code == 2, r.output
    assert "pip install sigstream[confluent]" in r.output


def test_kafka_client_choice_needs_a_broker():
    r = _run_cli("--kafka-client", "confluent")
    assert r.exit_code == 2 and "needs a broker" in r.output, r.output
