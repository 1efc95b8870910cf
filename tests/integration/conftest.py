"""Integration tests run against a real single-node Kafka broker.

The session fixture ``kafka_broker`` starts its own broker with
``deploy/kafka/broker.sh`` (which fetches the Kafka jars from Maven Central on
first use) on free ports and a fresh data dir, and stops it at session end.
If the broker cannot be started the tests FAIL with the broker's log tail:
there is no skip and no mock.

Every test collected below this directory is marked ``integration``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
BROKER_SH = REPO_ROOT / "deploy" / "kafka" / "broker.sh"

# First run includes the Maven fetch of the Kafka jars; broker.sh itself bounds
# the wait for the broker with KAFKA_START_TIMEOUT.
START_TIMEOUT_S = int(os.environ.get("KAFKA_START_TIMEOUT", "90"))
FETCH_ALLOWANCE_S = 600


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@dataclasses.dataclass(frozen=True)
class KafkaBroker:
    bootstrap: str
    port: int
    controller_port: int
    data_dir: Path
    env: dict

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``broker.sh COMMAND`` against this broker."""
        return subprocess.run(
            ["bash", str(BROKER_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log_tail(self, lines: int = 80) -> str:
        log = self.data_dir / "kafka.log"
        if not log.exists():
            return f"(no broker log at {log})"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _free_ports(n: int) -> list[int]:
    """n distinct ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> KafkaBroker:
    port, controller_port = _free_ports(2)
    data_dir = tmp_path_factory.mktemp("kafka-data")
    env = dict(os.environ)
    env.update(
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(controller_port),
        KAFKA_DATA_DIR=str(data_dir),
        KAFKA_START_TIMEOUT=str(START_TIMEOUT_S),
        KAFKA_PROBE_PYTHON=sys.executable,
    )
    broker = KafkaBroker(
        bootstrap=f"127.0.0.1:{port}",
        port=port,
        controller_port=controller_port,
        data_dir=data_dir,
        env=env,
    )
    try:
        try:
            res = broker.run("start", timeout=START_TIMEOUT_S + FETCH_ALLOWANCE_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"broker.sh start timed out after {exc.timeout}s\n"
                f"--- broker log tail ---\n{broker.log_tail()}",
                pytrace=False,
            )
        if res.returncode != 0:
            pytest.fail(
                f"broker.sh start failed (exit {res.returncode})\n"
                f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}\n"
                f"--- broker log tail ---\n{broker.log_tail()}",
                pytrace=False,
            )
        yield broker
    finally:
        res = broker.run("stop", timeout=120)
        if res.returncode != 0:  # pragma: no cover - reported, not raised
            sys.stderr.write(f"broker.sh stop failed:\n{res.stdout}{res.stderr}\n")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``"127.0.0.1:PORT"`` of the session's real Kafka broker."""
    return kafka_broker.bootstrap


# ------------------------------------------------------------------ SASL_SSL ---


def read_client_env(path: Path) -> dict:
    """The variables of a ``client.env`` written by broker.sh (``export NAME=VALUE`` lines)."""
    import shlex

    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture(scope="session")
def kafka_sasl_broker(tmp_path_factory) -> KafkaBroker:
    """A second broker whose client listener is SASL_SSL (SCRAM-SHA-512), started by
    ``KAFKA_SECURITY=sasl_ssl broker.sh start`` on free ports with a fresh data dir; its
    client settings are in ``data_dir / "client.env"`` (see :func:`read_client_env`)."""
    port, controller_port = _free_ports(2)
    data_dir = tmp_path_factory.mktemp("kafka-sasl-data")
    env = dict(os.environ)
    for name in [n for n in env if n.startswith("SIGSTREAM_")]:
        del env[name]
    env.update(
        KAFKA_SECURITY="sasl_ssl",
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(controller_port),
        KAFKA_DATA_DIR=str(data_dir),
        KAFKA_START_TIMEOUT=str(START_TIMEOUT_S),
        KAFKA_PROBE_PYTHON=sys.executable,
    )
    broker = KafkaBroker(
        bootstrap=f"127.0.0.1:{port}",
        port=port,
        controller_port=controller_port,
        data_dir=data_dir,
        env=env,
    )
    try:
        try:
            res = broker.run("start", timeout=START_TIMEOUT_S + FETCH_ALLOWANCE_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"broker.sh start (sasl_ssl) timed out after {exc.timeout}s\n"
                f"--- broker log tail ---\n{broker.log_tail()}",
                pytrace=False,
            )
        if res.returncode != 0:
            pytest.fail(
                f"broker.sh start (sasl_ssl) failed (exit {res.returncode})\n"
                f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}\n"
                f"--- broker log tail ---\n{broker.log_tail()}",
                pytrace=False,
            )
        yield broker
    finally:
        res = broker.run("stop", timeout=120)
        if res.returncode != 0:  # pragma: no cover - reported, not raised
            sys.stderr.write(f"broker.sh stop (sasl_ssl) failed:\n{res.stdout}{res.stderr}\n")


@pytest.fixture(scope="session")
def kafka_sasl_client_env(kafka_sasl_broker: KafkaBroker) -> dict:
    """The SIGSTREAM_* settings broker.sh wrote to the SASL_SSL broker's client.env."""
    return read_client_env(kafka_sasl_broker.data_dir / "client.env")
