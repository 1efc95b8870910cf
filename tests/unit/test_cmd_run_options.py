"""`sigstream run` output options in embedded mode: alert formats, de-duplication, webhook."""
from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

from click.testing import CliRunner

from sigstream.cli import main

ROOT = Path(__file__).resolve().parents[2]
RULES = str(ROOT / "sigma_rules")


def run(*args: str):
    result = CliRunner().invoke(main, ["run", "-r", RULES, "--no-cache", "-f", "jsonl", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]


def test_alert_formats_on_stdout():
    native = run()
    ecs = run("--alert-format", "ecs")
    ocsf = run("--alert-format", "ocsf")
    assert native and len(native) == len(ecs) == len(ocsf)
    assert all("@timestamp" in a and "rule" in a for a in ecs)
    assert all(a["class_uid"] == 2004 for a in ocsf)


def test_alert_format_needs_jsonl():
    result = CliRunner().invoke(main, ["run", "-r", RULES, "-f", "table", "--alert-format", "ocsf"])
    assert result.exit_code == 2 and "needs -f jsonl" in result.output


def test_dedup_folds_repeats_of_one_rule_and_host(tmp_path):
    plain = run()
    policy = tmp_path / "dedup.yml"
    policy.write_text("default: {window: 86400, key: []}\n")
    folded = run("--dedup", str(policy))
    groups = {(a["rule"]["id"], a["host"]) for a in plain}
    first = [a for a in folded if not (a.get("dedup") or {}).get("final")]
    assert len(first) == len(groups) < len(plain)
    updates = [a for a in folded if (a.get("dedup") or {}).get("final")]
    assert sum(u["dedup"]["count"] for u in updates) + (len(groups) - len(updates)) == len(plain)


def test_webhook_receives_every_alert(tmp_path):
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        alerts = run("--webhook", f"http://127.0.0.1:{server.server_port}/hook")
    finally:
        server.shutdown()
    assert sorted(a["alert_id"] for a in received) == sorted(a["alert_id"] for a in alerts)


def test_run_without_any_rule_names_the_folder_and_exits_2(tmp_path):
    """As hunt: an empty rule folder is a usage error naming it (it said 'no usable rules')."""
    result = CliRunner().invoke(main, ["run", "-r", str(tmp_path), "--input",
                                       str(ROOT / "samples" / "fileless-intrusion.jsonl")])
    assert result.exit_code == 2
    assert f"no Sigma rule found in {tmp_path}" in result.output
