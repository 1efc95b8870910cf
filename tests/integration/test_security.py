"""TLS + SASL (SCRAM-SHA-512) against a real broker started with
``KAFKA_SECURITY=sasl_ssl deploy/kafka/broker.sh start``.

The sigstream commands run as subprocesses with nothing but the settings of the
broker's ``client.env`` (no --bootstrap): the SIGSTREAM_* variables must reach
every command. A wrong password, a client without TLS or without SASL, and a
missing CA must each end quickly (< 30 s), with a non-zero exit and one short,
clear error, and the password must never be printed.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "samples"
RULES = REPO_ROOT / "sigma_rules"
FAIL_FAST_S = 30


class Result:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float):
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode(errors="replace")
        self.stderr = proc.stderr.decode(errors="replace")
        self.seconds = seconds

    def __repr__(self) -> str:
        return (f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout ---\n{self.stdout[-3000:]}"
                f"\n--- stderr ---\n{self.stderr[-3000:]}")


@pytest.fixture(scope="module")
def client_env(kafka_sasl_client_env) -> dict:
    env = dict(kafka_sasl_client_env)
    assert env["SIGSTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["SIGSTREAM_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert len(env["SIGSTREAM_SASL_PASSWORD"]) >= 32
    assert Path(env["SIGSTREAM_SSL_CAFILE"]).is_file()
    return env


@pytest.fixture(scope="module")
def secrets(kafka_sasl_broker, client_env) -> list[str]:
    """Every password broker.sh made (client and inter-broker): none may be printed."""
    found = [client_env["SIGSTREAM_SASL_PASSWORD"]]
    for line in (kafka_sasl_broker.data_dir / "scram.secrets").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.endswith("PASSWORD") and value:
            found.append(value)
    return found


def sigstream(client_env: dict, tmp_path: Path, *args: str, timeout: float = 120, **overrides) -> Result:
    """``python -m sigstream ARGS`` with only ``client_env`` (+ overrides; None unsets) as
    sigstream settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGSTREAM_")}
    env.update(client_env)
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")     # default spool dirs stay in the test
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sigstream", *args], env=env, capture_output=True,
                          timeout=timeout, cwd=REPO_ROOT)
    return Result(proc, time.monotonic() - t0)


def assert_no_secret(res: Result, secrets: list[str]) -> None:
    for s in secrets:
        assert s not in res.stdout and s not in res.stderr, "a password was printed"


def test_files_holding_secrets_are_private(kafka_sasl_broker, client_env, secrets):
    data = kafka_sasl_broker.data_dir
    for name in ("client.env", "scram.secrets", "server.properties", "tls/broker.pem"):
        mode = stat.S_IMODE((data / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {oct(mode)}"
    assert client_env["SIGSTREAM_BOOTSTRAP"] == kafka_sasl_broker.bootstrap
    log = (data / "kafka.log").read_text(errors="replace")
    assert not any(s in log for s in secrets), "a password is in the broker log"
    # the certificate names 127.0.0.1 and localhost: clients keep hostname checks on
    cert = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                           str(data / "tls" / "broker.crt")], capture_output=True, text=True)
    assert "IP Address:127.0.0.1" in cert.stdout and "DNS:localhost" in cert.stdout, cert.stdout
    status = kafka_sasl_broker.run("status")
    assert status.returncode == 0 and kafka_sasl_broker.bootstrap in status.stdout, status.stdout


def test_topics_collect_run_tail_over_sasl_ssl(client_env, secrets, tmp_path):
    res = sigstream(client_env, tmp_path, "topics", "create", "--partitions", "2")
    assert res.returncode == 0, res
    assert "sigstream.alerts" in res.stdout and "sigstream.events.sysmon" in res.stdout, res
    assert_no_secret(res, secrets)

    res = sigstream(client_env, tmp_path, "collect", "--sink", "kafka", "--no-progress",
                    "--spool-dir", str(tmp_path / "spool"), str(SAMPLES))
    assert res.returncode == 0, res
    assert "dropped 0" in res.stderr and "awaiting delivery" not in res.stderr, res
    assert not list((tmp_path / "spool").glob("*.seg")), "everything was acknowledged"
    assert_no_secret(res, secrets)

    res = sigstream(client_env, tmp_path, "run", "-r", str(RULES), "--until-idle", "10", timeout=180)
    assert res.returncode == 0, res
    assert client_env["SIGSTREAM_BOOTSTRAP"] in res.stdout + res.stderr, res   # the broker of the env
    assert_no_secret(res, secrets)

    res = sigstream(client_env, tmp_path, "alerts", "tail", "--from-beginning", "--timeout", "10",
                    "-f", "jsonl")
    assert res.returncode == 0, res
    alerts = [orjson.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert alerts, res
    assert all("rule" in a and a.get("alert_id") for a in alerts)
    assert_no_secret(res, secrets)


def assert_one_clear_error(res: Result, *expected: str) -> None:
    assert res.returncode != 0, res
    assert res.seconds < FAIL_FAST_S, res
    assert "Traceback" not in res.stderr, res
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) < 10, res
    for text in expected:
        assert text in res.stderr, res


AUTH = "authentication failed (SASL SCRAM-SHA-512 user"


@pytest.mark.parametrize("command", [
    ("topics", "create"),
    ("alerts", "tail", "--from-beginning", "--timeout", "5", "-f", "jsonl"),
    ("run", "-r", str(RULES), "--until-idle", "5"),
])
def test_wrong_password_fails_fast_with_one_clear_error(client_env, secrets, tmp_path, command):
    wrong = "not-the-password-" + client_env["SIGSTREAM_SASL_PASSWORD"][:4]
    res = sigstream(client_env, tmp_path, *command, SIGSTREAM_SASL_PASSWORD=wrong)
    assert_one_clear_error(res, f"Kafka at {client_env['SIGSTREAM_BOOTSTRAP']}", AUTH,
                           "'sigstream'", "SIGSTREAM_SASL_USERNAME/PASSWORD")
    assert_no_secret(res, secrets + [wrong])


def test_wrong_user_fails_fast(client_env, secrets, tmp_path):
    res = sigstream(client_env, tmp_path, "topics", "create", SIGSTREAM_SASL_USERNAME="mallory")
    assert_one_clear_error(res, AUTH, "'mallory'")
    assert_no_secret(res, secrets)


@pytest.mark.parametrize("command", [
    ("topics", "create"),
    ("alerts", "tail", "--from-beginning", "--timeout", "5", "-f", "jsonl"),
    ("run", "-r", str(RULES), "--until-idle", "5"),
])
def test_plaintext_client_on_sasl_ssl_port_fails_fast(client_env, secrets, tmp_path, command):
    """SIGSTREAM_SECURITY_PROTOCOL unset (PLAINTEXT) against the SASL_SSL listener."""
    res = sigstream(client_env, tmp_path, *command, SIGSTREAM_SECURITY_PROTOCOL=None)
    assert_one_clear_error(res, f"Kafka at {client_env['SIGSTREAM_BOOTSTRAP']}",
                           "the listener probably expects TLS", "SIGSTREAM_SECURITY_PROTOCOL is PLAINTEXT")
    assert_no_secret(res, secrets)


def test_tls_without_sasl_fails_fast(client_env, secrets, tmp_path):
    res = sigstream(client_env, tmp_path, "topics", "create", SIGSTREAM_SECURITY_PROTOCOL="SSL")
    assert_one_clear_error(res, "requires SASL authentication", "try SASL_SSL")
    assert_no_secret(res, secrets)


def test_untrusted_certificate_fails_fast(client_env, secrets, tmp_path):
    """Without SIGSTREAM_SSL_CAFILE the system CAs do not know the broker's CA."""
    res = sigstream(client_env, tmp_path, "topics", "create", SIGSTREAM_SSL_CAFILE=None)
    assert_one_clear_error(res, "TLS: the broker certificate is not trusted", "SIGSTREAM_SSL_CAFILE")
    assert_no_secret(res, secrets)


def test_hostname_localhost_is_in_the_certificate(client_env, secrets, tmp_path):
    """The same broker through the name localhost: hostname checks stay on and pass."""
    port = client_env["SIGSTREAM_BOOTSTRAP"].rsplit(":", 1)[1]
    res = sigstream(client_env, tmp_path, "topics", "create", SIGSTREAM_BOOTSTRAP=f"localhost:{port}")
    assert res.returncode == 0, res
    assert_no_secret(res, secrets)


def test_collect_with_wrong_password_spools_and_exits_quickly(client_env, secrets, tmp_path):
    """The collector keeps its no-loss contract (events go to the spool, exit 3) but does not
    wait out --flush-timeout for a broker that refused its credentials."""
    spool = tmp_path / "spool"
    res = sigstream(client_env, tmp_path, "collect", "--no-progress", "--spool-dir", str(spool),
                    str(SAMPLES), SIGSTREAM_SASL_PASSWORD="wrong-password")
    assert res.returncode == 3, res
    assert res.seconds < FAIL_FAST_S, res
    assert AUTH in res.stderr and "awaiting delivery in the spool" in res.stderr, res
    assert list(spool.glob("*.seg")), "the events are kept in the spool"
    assert_no_secret(res, secrets + ["wrong-password"])
