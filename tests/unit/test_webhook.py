"""Webhook sink against a local HTTP server on 127.0.0.1: retries, signature, dead-letter."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sigstream.connectors.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, signature

ALERT = {"alert_id": "a" * 32, "host": "WKS-1", "event_time": "2026-11-24T09:11:45.412000Z",
         "rule": {"id": "r1", "title": "Encoded PowerShell", "level": "high", "tags": ["attack.t1059.001"]},
         "attack": {"techniques": ["T1059.001"], "tactics": ["TA0002"]},
         "event": {"EventID": 1, "CommandLine": "powershell -enc AAAA", "Computer": "WKS-1"},
         "matched": [], "source": None}
SECRET = b"webhook-secret-0123456789"


class Server:
    """Answers with the queued statuses (then 200); records every request."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def sink(url, tmp_path, **kw):
    sleeps = []
    s = WebhookSink(url, secret=SECRET, dead_letter=tmp_path / "dlq.jsonl", backoff_s=0.5,
                    sleep=sleeps.append, clock=lambda: 1_800_000_000.0, **kw)
    return s, sleeps


def test_delivers_json_with_a_verifiable_signature(tmp_path):
    with Server() as srv:
        s, sleeps = sink(srv.url, tmp_path)
        s.add(ALERT)
        s.flush()
    [(headers, body)] = srv.requests
    assert json.loads(body)["alert_id"] == ALERT["alert_id"]
    assert headers["Content-Type"] == "application/json"
    ts = headers[TIMESTAMP_HEADER]
    assert ts == "1800000000"
    expected = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    assert headers[SIGNATURE_HEADER] != signature(b"wrong", ts, body)
    assert s.stats == {"delivered": 1, "retries": 0, "dead_lettered": 0} and sleeps == []


def test_retries_with_backoff_then_succeeds(tmp_path):
    with Server([503, 500, 429]) as srv:
        s, sleeps = sink(srv.url, tmp_path)
        assert s.deliver(ALERT)
    assert len(srv.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]        # exponential; Retry-After 0 does not shorten it
    assert s.stats["retries"] == 3 and not (tmp_path / "dlq.jsonl").exists()


def test_retries_exhausted_go_to_the_dead_letter_file(tmp_path):
    with Server([503] * 10) as srv:
        s, sleeps = sink(srv.url, tmp_path, retries=2)
        assert not s.deliver(ALERT)
    assert len(srv.requests) == 3
    [line] = (tmp_path / "dlq.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["reason"].startswith("HTTP 503") and rec["attempts"] == 3
    assert rec["alert_id"] == ALERT["alert_id"] and rec["payload"]["alert_id"] == ALERT["alert_id"]


def test_permanent_failure_is_not_retried(tmp_path):
    with Server([400]) as srv:
        s, sleeps = sink(srv.url, tmp_path)
        assert not s.deliver(ALERT)
    assert len(srv.requests) == 1 and sleeps == []
    assert json.loads((tmp_path / "dlq.jsonl").read_text())["reason"].startswith("HTTP 400")


def test_connection_refused_is_retried_then_dead_lettered(tmp_path):
    with Server() as srv:
        url = srv.url
    s, sleeps = sink(url, tmp_path, retries=1, timeout_s=2)
    assert not s.deliver(ALERT)
    assert len(sleeps) == 1 and s.stats["dead_lettered"] == 1


@pytest.mark.parametrize("payload", ["slack", "teams"])
def test_text_payload_for_chat(tmp_path, payload):
    with Server() as srv:
        s, _ = sink(srv.url, tmp_path, payload=payload)
        s.add(dict(ALERT, dedup={"count": 5}))
        s.close()
    body = json.loads(srv.requests[0][1])
    assert list(body) == ["text"]
    assert body["text"].startswith("[HIGH] Encoded PowerShell on WKS-1 (x5) [T1059.001]")


def test_alert_format_option(tmp_path):
    with Server() as srv:
        s, _ = sink(srv.url, tmp_path, alert_format="ocsf")
        s.deliver(ALERT)
    assert json.loads(srv.requests[0][1])["class_uid"] == 2004


def test_bad_configuration():
    with pytest.raises(ValueError):
        WebhookSink("ftp://x")
    with pytest.raises(ValueError):
        WebhookSink("http://x", payload="xml")
