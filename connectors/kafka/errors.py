"""The Kafka package's errors: :class:`KafkaError` and its kinds, and how an exception is
described in one line.

:class:`KafkaError` is a :class:`sigstream.stream.errors.TransportProblem` (so also a
``RuntimeError``): commands catch sigstream's root error class and print it.
:class:`KafkaConnectError` (unusable settings or an unreachable broker) is also a
``click.ClickException``; :class:`DeliveryError` lists records the broker did not
acknowledge.
"""
from __future__ import annotations

from sigstream.stream.errors import TransportProblem


class KafkaError(TransportProblem):
    """A Kafka problem with a user-facing message."""


try:  # a CLI command that does not catch KafkaConnectError still shows one line, no traceback
    from click import ClickException as _OneLineError
except ImportError:  # pragma: no cover - click is a dependency of the package
    _OneLineError = Exception  # type: ignore[assignment,misc]


class KafkaConnectError(KafkaError, _OneLineError):
    """Kafka cannot be used with these settings: unreachable, or it refused us.

    ``config`` is True when the cause is the client's own security settings
    (authentication, TLS trust or hostname, a protocol that does not match the listener):
    retrying with the same settings cannot help. Also a ``click.ClickException``, so that
    a command that does not handle it exits 1 with its message instead of a traceback.
    """

    def __init__(self, message: str, *, config: bool = False):
        _OneLineError.__init__(self, message)
        self.message = message
        self.location = None     # as every SigstreamError (the message names the broker)
        self.config = config

    def __str__(self) -> str:
        return self.message


class DeliveryError(KafkaError):
    """Records the broker did not acknowledge: ``failures`` lists (topic, reason)."""

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures     # (topic, reason)
        shown = "; ".join(f"{t}: {r}" for t, r in failures[:5])
        more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} record(s) not delivered: {shown}{more}")


def _describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    # kafka-python's errors already start with their class name
    return text if text.startswith(name) else f"{name}: {text}" if text else name
