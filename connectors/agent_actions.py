"""The agent's response side: signed action requests from Kafka -> the endpoint executor.

Started by the agent when its config has `actions: {enabled: true}`. It consumes
the actions topic (its own consumer group per host), lets `EndpointExecutor`
verify each request (signature, host, approval, expiry, replay) and run it, and
produces the result to the action-results topic. Real executors run only on
Windows and only when `dry_run: false`; everywhere else the dry-run executor
records what would have been done.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ActionsConfig:
    enabled: bool = False
    keys: str | None = None          # key file (Ed25519 public keys); None: SIGSTREAM_ACTION_KEYS env
    dry_run: bool = True             # real changes need an explicit `dry_run: false` (and Windows)
    keep_open: list[str] = field(default_factory=list)   # host:port kept reachable when isolated
    rollback_after_s: float = 900.0  # isolation is undone if Kafka stays unreachable this long
    allow_hmac: bool = False         # HMAC keys are refused unless this (or SIGSTREAM_ACTION_ALLOW_HMAC=1)
    allowed_types: list[str] | None = None   # this endpoint's own list of action types; None: all
    approver_keys: str | None = None  # key file of the approvers' public keys (approval signatures)
    max_action_bytes: int = 64 * 1024
    max_lifetime_s: float = 3600.0   # requests valid longer than this are refused
    future_skew_s: float = 60.0      # requests created further in the future are refused


def _approvers(cfg: ActionsConfig) -> dict[str, Any]:
    if not cfg.approver_keys:
        return {}
    from sigstream.stream.actions import load_keyring
    return {"approvers": load_keyring(cfg.approver_keys, allow_hmac=False)}


class ActionRunner:
    """A thread running connectors.executor.run_loop until stop()."""

    def __init__(self, cfg: ActionsConfig, host: str, settings: Any, topic_prefix: str,
                 state_dir: Path):
        from sigstream.connectors.executor import DryRunExecutor, EndpointExecutor, SeenStore
        from sigstream.connectors.kafka import KafkaRecordProducer, KafkaSource, action_results_topic, actions_topic
        from sigstream.stream.actions import load_keyring

        state_dir.mkdir(parents=True, exist_ok=True)
        self.watchdog = None
        if cfg.dry_run or sys.platform != "win32":
            executor: Any = DryRunExecutor()
        else:  # pragma: no cover - Windows only
            from sigstream.connectors.executor_windows import Isolation, IsolationWatchdog, WindowsExecutor
            allowed = [*settings.bootstrap.split(","), *cfg.keep_open]
            isolation = Isolation(state_dir, allowed=allowed)
            executor = WindowsExecutor(state_dir / "registry-backups", isolation)
            self.watchdog = IsolationWatchdog(isolation, rollback_after_s=cfg.rollback_after_s).start()
        self.endpoint = EndpointExecutor(
            host, load_keyring(cfg.keys, allow_hmac=cfg.allow_hmac or None), executor,
            SeenStore(str(state_dir / "seen-actions.sqlite"), keep_after_expiry_s=cfg.future_skew_s),
            max_bytes=cfg.max_action_bytes, max_lifetime_s=cfg.max_lifetime_s, future_skew_s=cfg.future_skew_s,
            allowed_types=cfg.allowed_types, **_approvers(cfg))
        self.source = KafkaSource(settings, [actions_topic(topic_prefix)],
                                  group_id=f"{topic_prefix}-executor-{host.lower()}", from_beginning=True)
        self.results = KafkaRecordProducer(settings, action_results_topic(topic_prefix))
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="actions", daemon=True)

    def start(self) -> "ActionRunner":
        self.thread.start()
        return self

    def _run(self) -> None:
        from sigstream.connectors.executor import run_loop

        on_poll = self.watchdog.heartbeat if self.watchdog is not None else None
        while not self.stop_event.is_set():
            try:
                run_loop(self.source, self.results, self.endpoint, self.stop_event, time.time,
                         on_poll=on_poll)
            except Exception:  # keep serving: a broker hiccup must not end the response side
                log.exception("action loop failed; retrying in 5s")
                self.stop_event.wait(5.0)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10.0)
        for close in (self.source.close, self.results.close, self.endpoint.seen.close):
            try:
                close()
            except Exception:  # noqa: BLE001
                log.exception("closing the action runner")
        if self.watchdog is not None:  # pragma: no cover - Windows only
            self.watchdog.stop()
