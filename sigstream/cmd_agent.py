"""`sigstream agent --config agent.yaml`: the Windows endpoint collector.

Runs the configured sources (ETW PowerShell/AMSI/WMI providers via pywintrace,
event-log channels such as Sysmon via pywin32) into Kafka through the
spooling publisher; see ``connectors/agent.py`` and ``deploy/windows/``.
"""
from __future__ import annotations

import logging
import signal
import sys

import click

from sigstream.cli import EXIT_USAGE, main


@main.command("agent")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Agent configuration (see deploy/windows/agent.example.yaml).")
@click.option("--sink", "sink", default=None, metavar="kafka[://HOST:PORT]|stdout|file://PATH",
              help="Where events go (default: Kafka as configured; kafka://HOST:PORT replaces the configured "
                   "bootstrap servers). stdout / file://PATH (appended to) write envelopes as JSON lines, "
                   "for testing.")
@click.option("--check", "check_only", is_flag=True, help="Validate the configuration and exit.")
@click.option("--max-runtime", type=float, default=None, metavar="SECONDS",
              help="Stop after this long (testing).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve /metrics (Prometheus) and /health (JSON) on this port of the loopback "
                   "address of health.listen, instead of its port (0: any free port).")
def agent_cmd(config_path: str, sink: str | None, check_only: bool, max_runtime: float | None,
              metrics_port: int | None) -> None:
    """Run the endpoint agent: ETW + event-log sources -> Kafka, with a local health endpoint.

    \b
    health.listen (default 127.0.0.1:8765) serves /health (JSON: status, sources, queue,
    spool, counters; 503 when degraded) and /metrics (the same counters, Prometheus text).

    \b
    Stops cleanly on Ctrl+C / SIGTERM / Ctrl+Break (the Windows service wrapper sends Ctrl+C):
    the ETW session is stopped, queued events are published or spooled, bookmarks are saved.
    """
    from sigstream.connectors.agent import Agent, load_config, setup_logging
    from sigstream.connectors.sink_spec import parse_sink_spec
    from sigstream.metrics import MetricsPortError
    from sigstream.stream.errors import ConfigProblem

    try:
        spec = parse_sink_spec(sink)
        cfg = load_config(config_path)
    except ConfigProblem as e:          # ConfigError (the file) or a bad --sink
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if metrics_port is not None:      # as --metrics-port of run/collect/respond; loopback only
        cfg.health_listen = f"{cfg.health_listen.rpartition(':')[0]}:{metrics_port}"
        cfg.health_enabled = True
    if check_only:
        click.echo(f"{config_path}: OK (host_id {cfg.host_id}; ETW "
                   f"{'on: ' + ', '.join(p.name for p in cfg.etw_providers) if cfg.etw_enabled else 'off'}; "
                   f"event log {'on: ' + ', '.join(c.channel for c in cfg.eventlog_channels) if cfg.eventlog_enabled else 'off'})")
        return
    setup_logging(cfg.log_level, cfg.log_file)
    agent = Agent(cfg, sink_spec=spec)

    def _stop(signum, _frame):
        logging.getLogger("sigstream.agent").info("signal %s: stopping", signum)
        agent.stop()

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _stop)
    try:
        code = agent.run(max_runtime)
    except ConfigProblem as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    except MetricsPortError as e:       # health.listen in use: nothing has started
        click.echo(f"error: health.listen {cfg.health_listen}: {e}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 - EtwUnavailable, EventLogUnavailable, ...
        logging.getLogger("sigstream.agent").exception("agent failed: %s", e)
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    sys.exit(code)
