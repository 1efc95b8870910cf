"""Kafka connection and security settings (:class:`KafkaSettings`, from the SIGSTREAM_*
environment variables) and the kafka-python keyword arguments made from them.

Also keeps secrets out of logs: kafka-python logs its clients' whole configuration at
DEBUG; a filter on its loggers (installed on import) replaces passwords with ``***``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from sigstream.connectors.kafka.errors import KafkaConnectError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_ENV = "SIGSTREAM_CONNECT_TIMEOUT"   # what --connect-timeout sets


def _env_seconds(name: str, default: float) -> float:
    value = (os.environ.get(name) or "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise KafkaConnectError(f"{name} must be a positive number of seconds, got {value!r}",
                                config=True)
    return seconds


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise KafkaConnectError(f"{name} must be true or false, got {value!r}", config=True)


@dataclass
class KafkaSettings:
    """Connection and security settings of every Kafka client sigstream makes.

    Commands get theirs from :meth:`from_env` (the SIGSTREAM_* variables). The password
    is not part of the repr; nothing in this package logs :meth:`client_kwargs`.
    """
    bootstrap: str = field(default_factory=lambda: os.environ.get("SIGSTREAM_BOOTSTRAP", DEFAULT_BOOTSTRAP))
    client_id: str = "sigstream"
    security_protocol: str = "PLAINTEXT"      # SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None         # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True           # the broker certificate must name the host we dial
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S   # bound of the connection check

    @classmethod
    def from_env(cls, bootstrap: str | None = None, **overrides: Any) -> "KafkaSettings":
        """Settings from SIGSTREAM_* environment variables, overridden by arguments.

        SIGSTREAM_BOOTSTRAP, SIGSTREAM_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT,
        SASL_SSL), SIGSTREAM_SASL_MECHANISM / _USERNAME / _PASSWORD,
        SIGSTREAM_SSL_CAFILE / _CERTFILE / _KEYFILE, SIGSTREAM_SSL_CHECK_HOSTNAME (true),
        SIGSTREAM_CONNECT_TIMEOUT (seconds, 10; the commands' --connect-timeout).
        """
        env = os.environ.get
        s = cls(
            bootstrap=bootstrap or env("SIGSTREAM_BOOTSTRAP") or DEFAULT_BOOTSTRAP,
            security_protocol=env("SIGSTREAM_SECURITY_PROTOCOL") or "PLAINTEXT",
            sasl_mechanism=env("SIGSTREAM_SASL_MECHANISM") or None,
            sasl_username=env("SIGSTREAM_SASL_USERNAME"),
            sasl_password=env("SIGSTREAM_SASL_PASSWORD"),
            ssl_cafile=env("SIGSTREAM_SSL_CAFILE") or None,
            ssl_certfile=env("SIGSTREAM_SSL_CERTFILE") or None,
            ssl_keyfile=env("SIGSTREAM_SSL_KEYFILE") or None,
            ssl_check_hostname=_env_bool("SIGSTREAM_SSL_CHECK_HOSTNAME", True),
            connect_timeout_s=_env_seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S),
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    def client_kwargs(self) -> dict[str, Any]:
        proto = self.security_protocol.upper()
        if proto not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise KafkaConnectError(f"unknown security protocol {self.security_protocol!r} "
                                    "(SIGSTREAM_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or "
                                    "SASL_SSL)", config=True)
        kw: dict[str, Any] = {"bootstrap_servers": [b.strip() for b in self.bootstrap.split(",") if b.strip()],
                              "client_id": self.client_id, "security_protocol": proto}
        if proto.startswith("SASL"):
            if not self.sasl_mechanism:
                raise KafkaConnectError(f"{proto} needs a SASL mechanism (SIGSTREAM_SASL_MECHANISM, "
                                        "e.g. PLAIN, SCRAM-SHA-512)", config=True)
            kw["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                kw["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kw["sasl_plain_password"] = self.sasl_password
        if proto in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    kw[name] = getattr(self, name)
            kw["ssl_check_hostname"] = bool(self.ssl_check_hostname)
        return kw

    def _cache_key(self) -> tuple:
        return (self.bootstrap, self.security_protocol.upper(), self.sasl_mechanism, self.sasl_username,
                self.sasl_password, self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile,
                self.ssl_check_hostname)



class _RedactSecrets(logging.Filter):
    """kafka-python's admin client logs its whole configuration at DEBUG: no passwords."""

    SECRET_KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")

    def _clean(self, value: Any) -> Any:
        if isinstance(value, dict) and any(k in value for k in self.SECRET_KEYS):
            return {k: ("***" if k in self.SECRET_KEYS and v is not None else v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = self._clean(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        return True


for _name in ("kafka.admin.client", "kafka.admin", "kafka.producer.kafka", "kafka.consumer.group",
              "kafka.net.manager", "kafka.net.compat"):
    logging.getLogger(_name).addFilter(_RedactSecrets())

