"""The options every Kafka-using command shares: where the broker is and how long to try.

One resolution everywhere: ``--bootstrap``, then ``$SIGSTREAM_BOOTSTRAP``, then the
command's own fallback (``run``/``demo``: the embedded mode; every other command needs a
broker and says so). ``--connect-timeout`` bounds the connection check of every Kafka
client the command makes (exported as ``$SIGSTREAM_CONNECT_TIMEOUT`` for the command's
duration, which ``KafkaSettings.from_env`` reads wherever the settings are built).
No kafka-python import here: the CLI stays importable without touching the client.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, Callable

import click

BOOTSTRAP_ENV = "SIGSTREAM_BOOTSTRAP"
CONNECT_TIMEOUT_ENV = "SIGSTREAM_CONNECT_TIMEOUT"   # as connectors.kafka.settings
DEFAULT_CONNECT_TIMEOUT_S = 10.0
SECURITY_NOTE = ("Security settings come from SIGSTREAM_SECURITY_PROTOCOL, "
                 "SIGSTREAM_SASL_MECHANISM/USERNAME/PASSWORD, SIGSTREAM_SSL_CAFILE/CERTFILE/KEYFILE.")


def resolve_bootstrap(value: str | None) -> str | None:
    """--bootstrap, else $SIGSTREAM_BOOTSTRAP, else None (the command decides)."""
    return (value or "").strip() or (os.environ.get(BOOTSTRAP_ENV) or "").strip() or None


def need_bootstrap(value: str | None, what: str, alternative: str = "") -> str:
    """The resolved bootstrap, or a usage error saying how to give one."""
    bootstrap = resolve_bootstrap(value)
    if bootstrap is None:
        raise click.UsageError(f"{what} needs a broker: give --bootstrap HOST:PORT or set "
                               f"${BOOTSTRAP_ENV}{alternative}")
    return bootstrap


def _export_connect_timeout(ctx: click.Context, _param: Any, value: float | None) -> float | None:
    # exported (and restored when the command ends) so that every KafkaSettings.from_env of
    # this command, however deep, gets the same bound
    if value is not None:
        before = os.environ.get(CONNECT_TIMEOUT_ENV)
        os.environ[CONNECT_TIMEOUT_ENV] = f"{value:g}"

        def restore() -> None:
            if before is None:
                os.environ.pop(CONNECT_TIMEOUT_ENV, None)
            else:
                os.environ[CONNECT_TIMEOUT_ENV] = before
        ctx.call_on_close(restore)
    return value


def kafka_options(fallback: str) -> Callable[[Callable], Callable]:
    """``--bootstrap`` and ``--connect-timeout``; ``fallback`` ends the --bootstrap help
    (what happens with neither the option nor $SIGSTREAM_BOOTSTRAP)."""
    def deco(f: Callable) -> Callable:
        f = click.option("--connect-timeout", type=click.FloatRange(0, min_open=True),
                         envvar=CONNECT_TIMEOUT_ENV, show_envvar=True, metavar="SECONDS",
                         callback=_export_connect_timeout, expose_value=False, is_eager=True,
                         help=f"Give up connecting to Kafka after this long "
                              f"[default: {DEFAULT_CONNECT_TIMEOUT_S:g}].")(f)
        f = click.option("--bootstrap", metavar="HOST:PORT[,HOST:PORT...]",
                         help=f"Kafka bootstrap server(s). Default: ${BOOTSTRAP_ENV}; unset: "
                              f"{fallback} {SECURITY_NOTE}")(f)
        return f
    return deco


def hidden_alias(name: str, dest: str, *, value: Any = None, **kw: Any) -> Callable[[Callable], Callable]:
    """A hidden, older spelling of the option whose parameter is ``dest`` (e.g. ``--until-idle``
    for ``--timeout``): when given and ``dest`` was not, ``dest`` takes its value (or
    ``value`` for a flag). A separate parameter, so it works with every click 8.x."""
    alias_dest = f"_alias_{dest}"

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = kwargs.pop(alias_dest, None)
            ctx = click.get_current_context()
            explicit = ctx.get_parameter_source(dest) not in (None, click.core.ParameterSource.DEFAULT)
            if given not in (None, False) and not explicit:
                kwargs[dest] = value if value is not None else given
            return f(*args, **kwargs)
        if value is not None:
            kw.setdefault("is_flag", True)
        return click.option(name, alias_dest, hidden=True, **kw)(wrapper)
    return deco


class KafkaTroubleFilter(logging.Filter):
    """On the log handlers: kafka-python's own records. Its warnings are transient,
    self-healing conditions (new topic leaders, coordinator moves): dropped. Its errors
    repeat for as long as a broker is away (every reconnect attempt, several loggers):
    one line per ``every_s`` at most, naming the broker, the rest counted and dropped."""

    def __init__(self, every_s: float = 60.0):
        super().__init__()
        self.every_s = every_s
        self.where: str | None = None
        self.suppressed = 0
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "kafka" and not record.name.startswith("kafka."):
            return True
        if record.levelno < logging.ERROR:
            return False
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.every_s
        where = f" at {self.where}" if self.where else ""
        record.msg = (f"Kafka{where}: {record.getMessage()} (the client keeps retrying; repeats "
                      f"hidden for {self.every_s:g}s, --log-level debug shows all)")
        record.args = ()
        return True


def quiet_kafka_client(bootstrap: str | None = None) -> None:
    """kafka-python logs every retry of a lost broker and every transient condition; the
    commands report what matters themselves (the connection check: one error). Unless
    --log-level debug, its records go through one :class:`KafkaTroubleFilter` on the log
    handlers (``bootstrap`` names the broker in its lines)."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    logging.getLogger("kafka").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        trouble = next((f for f in handler.filters if isinstance(f, KafkaTroubleFilter)), None)
        if trouble is None:
            trouble = KafkaTroubleFilter()
            handler.addFilter(trouble)
        trouble.where = bootstrap or trouble.where


def metrics_options(f: Callable) -> Callable:
    """``--metrics-port`` / ``--metrics-addr`` (as `run`'s) for the other long-running commands."""
    f = click.option("--metrics-addr", default="127.0.0.1", show_default=True, metavar="ADDR",
                     help="Address the metrics endpoint listens on.")(f)
    f = click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
                     help="Serve Prometheus metrics on /metrics and a JSON health document on "
                          "/health at this port (0: any free port).")(f)
    return f


EXIT_METRICS_PORT = 2      # as a usage error: nothing has started


def open_metrics(port: int | None, addr: str) -> Any:
    """The command's sigstream.metrics.Endpoint, bound now (before any work: a port in use
    is one line on stderr and exit 2) and closed when the command ends; None without a port."""
    if port is None:
        return None
    from sigstream.metrics import Endpoint, MetricsPortError
    try:
        endpoint = Endpoint(addr, port)
    except MetricsPortError as e:
        click.echo(f"error: --metrics-port {port}: {e}", err=True)
        sys.exit(EXIT_METRICS_PORT)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(endpoint.stop)
    return endpoint


def serve_counters(endpoint: Any, specs: dict[str, tuple[str, str]],
                   read: Callable[[], dict[str, int]],
                   gauges: dict[str, tuple[str, str]] | None = None) -> Any:
    """Expose a command's running totals (``read()``) on ``endpoint`` (from :func:`open_metrics`):
    counters ``specs`` and gauges ``gauges``, key -> (name, help). None without an endpoint."""
    if endpoint is None:
        return None
    from sigstream.metrics import CountersServer
    return CountersServer(endpoint.addr, endpoint.port, specs, read, gauges=gauges,
                          endpoint=endpoint).start()
