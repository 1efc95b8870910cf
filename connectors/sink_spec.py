"""The ``--sink`` option of ``sigstream collect`` and ``sigstream agent``: parsing and opening.

Grammar (surrounding white space is ignored)::

    kafka                          Kafka, bootstrap servers as configured
    kafka://HOST[:PORT][,HOST[:PORT]...][/]
                                   Kafka at these bootstrap servers
    stdout                         envelope JSON lines on standard output
    file://PATH                    envelope JSON lines in the file PATH

An empty or missing spec means ``kafka``. A bad spec raises
:class:`sigstream.stream.errors.ConfigProblem`, whose message starts with the option
name. Building the Kafka publisher stays with each command (their settings differ);
:meth:`SinkSpec.open_lines` opens the stdout / file sinks for both.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sigstream.connectors.sinks import EnvelopeLineSink
from sigstream.stream.errors import ConfigProblem

__all__ = ["SinkSpec", "parse_sink_spec", "SINK_SPEC_HELP"]

SINK_SPEC_HELP = "kafka[://HOST:PORT], stdout or file://PATH"


@dataclass(frozen=True)
class SinkSpec:
    """A parsed ``--sink``: ``kind`` is ``kafka``, ``stdout`` or ``file``."""

    kind: str
    bootstrap: str | None = None        # kafka://...: the servers; plain kafka: None (configured)
    path: str | None = None             # file://PATH

    @property
    def is_kafka(self) -> bool:
        return self.kind == "kafka"

    def open_lines(self, collector_id: str, *, append: bool = False,
                   option: str = "--sink") -> EnvelopeLineSink:
        """The envelope JSON-lines sink of a ``stdout`` / ``file`` spec. A file's parent
        directories are created; ``append`` keeps what an earlier run wrote."""
        if self.kind == "stdout":
            return EnvelopeLineSink(sys.stdout.buffer, collector_id)
        if self.kind != "file" or not self.path:
            raise ValueError(f"{self.kind} is not a line sink")
        p = Path(self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            out = open(p, "ab" if append else "wb")
        except OSError as e:
            raise ConfigProblem(f"{option} file://{self.path}: cannot open the file: "
                                f"{e.strerror or e}") from None
        return EnvelopeLineSink(out, collector_id, close_stream=True)


def _check_server(server: str, option: str) -> None:
    if server.startswith("["):                              # [v6]:port
        host, _, port = server[1:].partition("]")
        port = port[1:] if port.startswith(":") else port
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:
        host, port = server, ""                             # bare host (default port) or v6
    if not host or any(c.isspace() or c in "/@?#" for c in host) or \
            port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigProblem(f"{option} kafka://...: {server!r} is not HOST:PORT "
                            "(e.g. kafka://kafka1:9092,kafka2:9092)")


def parse_sink_spec(text: str | None, *, option: str = "--sink") -> SinkSpec:
    """Parse a sink spec (grammar in the module docstring); ``option`` names it in errors."""
    spec = (text or "").strip()
    if spec in ("", "kafka"):
        return SinkSpec("kafka")
    if spec == "stdout":
        return SinkSpec("stdout")
    if spec.startswith("kafka://"):
        servers = spec[len("kafka://"):].rstrip("/")
        if not servers:
            raise ConfigProblem(f"{option} kafka://HOST:PORT needs an address")
        parts = [s.strip() for s in servers.split(",")]
        for server in parts:
            if not server:
                raise ConfigProblem(f"{option} {spec!r}: empty address in the server list")
            _check_server(server, option)
        return SinkSpec("kafka", bootstrap=",".join(parts))
    if spec.startswith("file://"):
        path = spec[len("file://"):]
        if not path:
            raise ConfigProblem(f"{option} file://PATH needs a path")
        return SinkSpec("file", path=path)
    raise ConfigProblem(f"unknown {option} {spec!r}: use {SINK_SPEC_HELP}")
