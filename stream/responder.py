"""The responder: alert -> policy -> action requests (signed and sent, or held for approval).

Transport-free: `send(value, key)` puts a signed request on the actions topic (key = host),
`approvals` holds requests that need a person (connectors.approvals.ApprovalStore) and
`notifier` is an AlertSink for `notify` actions (e.g. connectors.webhook.WebhookSink).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from sigstream.stream.actions import ActionRequest, Keyring, encode, sign
from sigstream.stream.policy import Policy

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    what: str                       # sent | pending | duplicate | notified | skipped
    type: str
    request: ActionRequest | None = None
    detail: str = ""


class Responder:
    def __init__(self, policy: Policy, keyring: Keyring, approvals: Any,
                 send: Callable[[bytes, bytes], None], notifier: Any | None = None):
        self.policy, self.keyring, self.approvals = policy, keyring, approvals
        self.send, self.notifier = send, notifier

    def handle(self, alert: dict, now: float) -> list[Outcome]:
        if (alert.get("dedup") or {}).get("final"):
            return []                   # a de-duplication update of an alert already handled
        planned = self.policy.plan(alert, now)
        out = [Outcome("skipped", t, None, why) for t, why in planned.skipped]
        for req in planned.requests:
            if req.type == "notify":
                if self.notifier is not None:
                    self.notifier.add(alert)
                    out.append(Outcome("notified", req.type, req))
                else:
                    out.append(Outcome("skipped", req.type, req, "no `notify` target in the policy"))
            elif req.approval == "pending":
                added = self.approvals.add_pending(req)
                out.append(Outcome("pending" if added else "duplicate", req.type, req))
            else:
                self.send(encode(sign(req, self.keyring)), req.host.encode("utf-8", "surrogatepass"))
                out.append(Outcome("sent", req.type, req))
        for o in out:
            log.info("alert %s: %s %s %s", alert.get("alert_id"), o.what, o.type, o.detail)
        return out

    def issue(self, req: ActionRequest) -> None:
        """Sign and send an (approved) request."""
        self.send(encode(sign(req, self.keyring)), req.host.encode("utf-8", "surrogatepass"))
