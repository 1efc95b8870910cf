"""A throw-away Kafka broker for benchmarks: deploy/kafka/broker.sh on free ports, own data dir."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BROKER_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "broker.sh"


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Broker:
    """`with Broker() as b:` starts a broker (b.bootstrap) and stops it, data removed, on exit."""

    def __init__(self) -> None:
        port, cport = free_ports(2)
        self.dir = tempfile.mkdtemp(prefix="sigstream-bench-kafka-")
        self.env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(cport),
                        KAFKA_DATA_DIR=self.dir, KAFKA_PROBE_PYTHON=sys.executable)
        self.bootstrap = f"127.0.0.1:{port}"

    def __enter__(self) -> "Broker":
        print(f"starting broker on {self.bootstrap} ...", file=sys.stderr)
        r = subprocess.run(["bash", str(BROKER_SH), "start"], env=self.env, capture_output=True,
                           text=True, timeout=900)
        if r.returncode != 0:
            sys.exit(f"broker.sh start failed:\n{r.stdout}\n{r.stderr}")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["bash", str(BROKER_SH), "stop"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)
