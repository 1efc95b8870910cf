"""Approval state of action requests: a small local SQLite file (default
~/.local/state/sigstream/approvals.sqlite, or $SIGSTREAM_STATE_DIR/approvals.sqlite).

Why a file and not a compacted topic: approvals are made by people on the responder's
machine (`sigstream actions approve ID`), must be atomic (one approve wins, a denied request
stays denied) and work while Kafka is down; SQLite gives transactions across the `respond`
process and the `actions` commands for free. Only approved requests ever reach the actions
topic, re-signed with approval "approved" and a fresh validity window.

States: pending -> approved | denied | expired. A pending request whose `expires_at` has
passed is expired (decided lazily, on every read and write, with the time passed in).
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sigstream.stream.errors import ActionProblem
from sigstream.stream.actions import ActionRequest


def default_path() -> Path:
    base = os.environ.get("SIGSTREAM_STATE_DIR") or Path.home() / ".local" / "state" / "sigstream"
    return Path(base) / "approvals.sqlite"


class ApprovalError(ActionProblem):
    pass


@dataclass
class Row:
    request: ActionRequest
    state: str
    decided_by: str | None
    decided_at: float | None


class ApprovalStore:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("""CREATE TABLE IF NOT EXISTS requests (
            action_id TEXT PRIMARY KEY, host TEXT, type TEXT, state TEXT, created_at REAL,
            expires_at REAL, request TEXT, decided_by TEXT, decided_at REAL)""")

    def add_pending(self, req: ActionRequest) -> bool:
        """False if this action id is already known (a redelivered alert)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, 'pending', ?, ?, ?, NULL, NULL)",
            (req.action_id, req.host, req.type, req.created_at, req.expires_at, json.dumps(req.to_dict())))
        return cur.rowcount == 1

    def expire(self, now: float) -> int:
        return self._db.execute("UPDATE requests SET state = 'expired', decided_at = ? "
                                "WHERE state = 'pending' AND expires_at <= ?", (now, now)).rowcount

    def list(self, now: float, states: tuple[str, ...] | None = ("pending",)) -> list[Row]:
        self.expire(now)
        sql = "SELECT request, state, decided_by, decided_at FROM requests"
        args: tuple = ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        rows = self._db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [Row(ActionRequest.from_dict(json.loads(r[0])), r[1], r[2], r[3]) for r in rows]

    def get(self, action_id: str, now: float) -> Row:
        self.expire(now)
        r = self._db.execute("SELECT request, state, decided_by, decided_at FROM requests WHERE action_id = ?",
                             (action_id,)).fetchone()
        if r is None:
            matches = self._db.execute("SELECT action_id FROM requests WHERE action_id LIKE ?",
                                       (action_id + "%",)).fetchall()
            if len(matches) == 1 and len(action_id) >= 6:
                return self.get(matches[0][0], now)
            raise ApprovalError(f"no action request {action_id!r}" +
                                (" (prefix is ambiguous)" if len(matches) > 1 else ""))
        return Row(ActionRequest.from_dict(json.loads(r[0])), r[1], r[2], r[3])

    def decide(self, action_id: str, approve: bool, by: str, now: float,
               execute_ttl_s: float) -> ActionRequest:
        """Approve or deny a pending request; the approved request (fresh window) to sign and send."""
        row = self.get(action_id, now)
        if row.state != "pending":
            raise ApprovalError(f"{row.request.action_id} is {row.state}, not pending")
        state = "approved" if approve else "denied"
        req = row.request
        req.approval, req.approved_by = state, by
        if approve:
            req.created_at, req.expires_at = now, now + execute_ttl_s
        cur = self._db.execute(
            "UPDATE requests SET state = ?, decided_by = ?, decided_at = ?, request = ? "
            "WHERE action_id = ? AND state = 'pending'",
            (state, by, now, json.dumps(req.to_dict()), req.action_id))
        if cur.rowcount != 1:
            raise ApprovalError(f"{req.action_id} was decided meanwhile")
        return req

    def close(self) -> None:
        self._db.close()
