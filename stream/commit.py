"""THE commit order of every consumer in sigstream: output first, then input.

    1. flush each output in order (alerts, dead letters, state): each flush blocks
       until what was added is durable, and raises if it cannot be made durable
    2. if something is still held only in memory (`held()`), stop here: committing
       past it would lose it in a crash
    3. commit the source's positions

So a committed offset never runs ahead of the output. A flush that raises
propagates (nothing is committed; the records are re-delivered after a restart).
A commit that raises (typically: the group rebalanced and the partitions moved)
only means re-delivery of output that is already durable, with the same ids, so
it is reported and not raised. `stream.processor`, `sigstream respond` and the
action executor all commit through `commit_outputs`.
"""
from __future__ import annotations

import enum
import logging
from typing import Any, Callable, Iterable, Protocol

log = logging.getLogger(__name__)


class Flushable(Protocol):
    def flush(self) -> Any: ...


class Committable(Protocol):
    def commit(self) -> Any: ...


class CommitOutcome(enum.Enum):
    COMMITTED = "committed"
    HELD = "held"          # outputs flushed; input not committed (state held in memory)
    FAILED = "failed"      # outputs flushed; the commit itself failed (re-delivery, same ids)


def commit_outputs(source: Committable, outputs: Iterable[Flushable | None],
                   held: Callable[[], bool] | None = None) -> CommitOutcome:
    """Flush `outputs` in order, then commit `source` unless `held()` (see module doc)."""
    for output in outputs:
        if output is not None:
            output.flush()
    if held is not None and held():
        return CommitOutcome.HELD
    try:
        source.commit()
    except Exception as e:  # noqa: BLE001 - see module doc: output is durable already
        log.warning("offset commit failed, the records will be re-delivered: %s", e,
                    extra={"fields": {"event": "commit_failed", "reason": str(e)}})
        return CommitOutcome.FAILED
    return CommitOutcome.COMMITTED


def owns_partitions(source: Any) -> bool:
    """Does a consumer-group source own partitions now? A member still joining its group
    (e.g. waiting out a crashed member's session) owns none. Sources without
    `assignment()` always own their input."""
    assignment = getattr(source, "assignment", None)
    if not callable(assignment):
        return True
    try:
        return bool(assignment())
    except Exception:  # noqa: BLE001 - best effort
        return True
