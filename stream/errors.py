"""sigstream's errors: one root class, one subclass per kind of problem.

Every error a user can act on derives from `SigstreamError` and says where the
problem is (`location`: file and line, record position, or topic/partition/offset)
and what is wrong, so commands catch the root class and print `str(error)`.
The kinds also derive from ValueError/RuntimeError, as the errors they replace did.
"""
from __future__ import annotations


class SigstreamError(Exception):
    """Root of sigstream's errors. `location` is where the problem is, when known."""

    def __init__(self, message: str, *, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class RuleProblem(SigstreamError, ValueError):
    """A rule (or pipeline, placeholder, IOC list) that cannot be loaded or compiled."""


class EventProblem(SigstreamError, ValueError):
    """An event or message that cannot be decoded or normalised."""


class TransportProblem(SigstreamError, RuntimeError):
    """The broker (or another transport) cannot be reached or refused the data."""


class ConfigProblem(SigstreamError, ValueError):
    """A configuration file, option or environment variable that is wrong."""


class ActionProblem(SigstreamError, ValueError):
    """A response action request that is refused (bad signature, expired, unapproved ...)."""
