"""HTTP webhook alert sink (stdlib urllib): JSON POST, optional Slack/Teams text payload,
HMAC signature header, retries with exponential backoff, dead-letter file.

    sink = WebhookSink("https://siem.example/hook", secret=b"...", dead_letter="webhook-dlq.jsonl")
    sink.add(alert); sink.flush()      # add() queues, flush() delivers (AlertSink contract)

Payload (`payload="json"`): the alert in `alert_format` (native | ecs | ocsf). With
`payload="slack"` or `"teams"`: {"text": "<one line summary>"} which both Slack incoming
webhooks and Teams connectors accept.

Signature: with a secret, each request carries
    X-Sigstream-Timestamp: <unix seconds>
    X-Sigstream-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">
so a receiver can check origin and reject replays of old deliveries.

Delivery: 2xx is success. 408, 425, 429, 5xx and network errors are retried up to `retries`
times with exponential backoff (`backoff_s` * 2^n, capped at `max_backoff_s`, Retry-After
honoured up to that cap); other statuses are permanent. Permanently failed alerts are
appended to `dead_letter` (JSONL: time, url, reason, attempts, payload) and counted; they are
never silently lost. Without a dead-letter file they are logged as errors.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import orjson

from sigstream.stream.alert_formats import render

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
SIGNATURE_HEADER = "X-Sigstream-Signature"
TIMESTAMP_HEADER = "X-Sigstream-Timestamp"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def summary_text(alert: dict[str, Any]) -> str:
    rule = alert.get("rule") or {}
    ev = alert.get("event") or {}
    what = ev.get("CommandLine") or ev.get("TargetObject") or ev.get("ScriptBlockText") or ev.get("Image") or ""
    what = str(what).replace("\n", " ")
    count = (alert.get("dedup") or {}).get("count", 1)
    techniques = ", ".join((alert.get("attack") or {}).get("techniques") or [])
    return (f"[{str(rule.get('level') or '?').upper()}] {rule.get('title')} on {alert.get('host') or '?'}"
            f"{f' (x{count})' if count > 1 else ''}{f' [{techniques}]' if techniques else ''}"
            f"{': ' + what[:200] if what else ''} (alert {alert.get('alert_id')})")


class WebhookSink:
    def __init__(self, url: str, *, payload: str = "json", alert_format: str = "native",
                 secret: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout_s: float = 10.0, retries: int = 4, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, dead_letter: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        if payload not in ("json", "slack", "teams"):
            raise ValueError(f"unknown webhook payload {payload!r} (json, slack, teams)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s): {url!r}")
        self.url, self.payload, self.alert_format = url, payload, alert_format
        self.secret, self.headers = secret, dict(headers or {})
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.dead_letter = Path(dead_letter) if dead_letter else None
        self.sleep, self.clock = sleep, clock
        self._queue: list[dict[str, Any]] = []
        self.stats = {"delivered": 0, "retries": 0, "dead_lettered": 0}

    def body_of(self, alert: dict[str, Any]) -> bytes:
        if self.payload == "json":
            return orjson.dumps(render(alert, self.alert_format), default=str)
        return orjson.dumps({"text": summary_text(alert)})

    def add(self, alert: dict[str, Any]) -> None:
        self._queue.append(alert)

    def flush(self) -> None:
        queue, self._queue = self._queue, []
        for alert in queue:
            self.deliver(alert)

    def close(self) -> None:
        self.flush()

    def deliver(self, alert: dict[str, Any]) -> bool:
        """POST one alert with retries; True if delivered, False if dead-lettered."""
        body = self.body_of(alert)
        attempts, reason = 0, ""
        while True:
            attempts += 1
            status, reason, retry_after = self._post(body)
            if status is not None and 200 <= status < 300:
                self.stats["delivered"] += 1
                return True
            retriable = status is None or status in RETRY_STATUSES
            if not retriable or attempts > self.retries:
                break
            self.stats["retries"] += 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
            if retry_after is not None:
                delay = min(self.max_backoff_s, max(delay, retry_after))
            log.warning("webhook %s: %s; retry %d/%d in %.1fs", self.url, reason, attempts, self.retries, delay)
            self.sleep(delay)
        self._dead_letter(body, reason, attempts, alert)
        return False

    def _post(self, body: bytes) -> tuple[int | None, str, float | None]:
        headers = {"Content-Type": "application/json", "User-Agent": "sigstream-webhook", **self.headers}
        if self.secret:
            ts = str(int(self.clock()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = signature(self.secret, ts, body)
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
                return resp.status, f"HTTP {resp.status}", None
        except urllib.error.HTTPError as e:
            retry_after = e.headers.get("Retry-After") if e.headers else None
            try:
                ra = float(retry_after) if retry_after is not None else None
            except ValueError:
                ra = None
            return e.code, f"HTTP {e.code} {e.reason}", ra
        except (urllib.error.URLError, OSError) as e:
            return None, f"{type(e).__name__}: {getattr(e, 'reason', e)}", None

    def _dead_letter(self, body: bytes, reason: str, attempts: int, alert: dict[str, Any]) -> None:
        self.stats["dead_lettered"] += 1
        if self.dead_letter is None:
            log.error("webhook %s: alert %s NOT delivered after %d attempt(s): %s (no dead-letter file)",
                      self.url, alert.get("alert_id"), attempts, reason)
            return
        record = {"time": self.clock(), "url": self.url, "reason": reason, "attempts": attempts,
                  "alert_id": alert.get("alert_id"), "payload": orjson.loads(body)}
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letter, "ab") as f:
            f.write(orjson.dumps(record, default=str) + b"\n")
        log.error("webhook %s: alert %s dead-lettered to %s after %d attempt(s): %s",
                  self.url, alert.get("alert_id"), self.dead_letter, attempts, reason)
