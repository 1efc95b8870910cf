"""sigstream.hunting / sigstream.hunt_jobs: `hunt --jobs N` gives `--jobs 1`'s output, byte for byte."""
from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import textwrap
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from sigstream import hunt_jobs, hunt_plan
from sigstream.cli import main
from sigstream.connectors.readers import find_event_files
from sigstream.connectors.sinks import JsonlSink
from sigstream.hunting import hunt_files
from sigstream.stream.correlation_stage import correlation_stages
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.enrich import enrich
from sigstream.stream.rules import load_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "sigma_rules"
SAMPLES = REPO / "samples"
PS = "Microsoft-Windows-PowerShell/Operational"
SYSMON = "Microsoft-Windows-Sysmon/Operational"
CLOCK = functools.partial(float, 1_790_000_000.0)    # a fixed, picklable processing time

ENC_ID = "11111111-1111-4111-8111-111111111111"
AMSI_ID = "22222222-2222-4222-8222-222222222222"
TEST_RULES = textwrap.dedent(f"""
    title: encoded command
    id: {ENC_ID}
    status: test
    level: high
    logsource: {{product: windows, category: process_creation}}
    detection:
      sel: {{CommandLine|contains: '-enc'}}
      condition: sel
    ---
    title: AMSI utils in a script block
    id: {AMSI_ID}
    status: test
    level: critical
    logsource: {{product: windows, category: ps_script}}
    detection:
      sel: {{ScriptBlockText|contains: 'AmsiUtils'}}
      condition: sel
    ---
    title: encoded burst
    id: 33333333-3333-4333-8333-333333333333
    correlation:
      type: event_count
      rules: [{ENC_ID}]
      group-by: [Computer]
      timespan: 5m
      generate: true
      condition: {{gte: 3}}
    ---
    title: encoded then amsi
    id: 44444444-4444-4444-8444-444444444444
    correlation:
      type: temporal_ordered
      rules: [{ENC_ID}, {AMSI_ID}]
      group-by: [Computer]
      timespan: 10m
      generate: true
""")


def detector(rule_paths) -> Detector:
    loaded = load_rules([str(p) for p in rule_paths], use_cache=True)
    return Detector(Engine(loaded.rules, enrich=enrich),
                    stages=correlation_stages(loaded.correlations, loaded.suppressed, lateness_s=math.inf))


def hunt(files, rule_paths, jobs, **kw) -> tuple[bytes, list[dict], object]:
    out, errors = io.BytesIO(), []
    stats = hunt_files(files, detector(rule_paths), JsonlSink(out), clock=CLOCK, jobs=jobs,
                       on_error=lambda e: errors.append(e.to_dict()), **kw)
    return out.getvalue(), errors, stats


def ts(second: int) -> str:
    return f"2026-11-24T10:{second // 60:02d}:{second % 60:02d}.000000Z"


def generated_events(tmp_path: Path) -> Path:
    """Process launches (bursts for the correlation), script blocks split in 2-3 fragments
    lying far apart (so across task boundaries), one block never completed, bad lines."""
    lines: list[bytes] = []
    pending: list[tuple[int, dict]] = []   # (line index to insert at, fragment)
    for i in range(900):
        host = f"WKS-{i % 4}"
        if i % 7 == 0:
            cmd = "powershell -enc SQBFAFgA" if i % 3 else "cmd /c dir"
            lines.append(orjson.dumps({"EventID": 1, "Channel": SYSMON, "Computer": host,
                                       "EventRecordID": i, "TimeCreated": ts(i),
                                       "Image": "C:\\Windows\\powershell.exe", "CommandLine": cmd}))
        elif i % 97 == 5:
            block = f"{{block-{i}}}"
            total = 3 if i % 2 else 2
            parts = ["$a=[Ref].Assembly.GetType('System.Management.Automation.Ams", "iUtils')", "; $a"][:total]
            for n, text in enumerate(parts, 1):
                frag = {"EventID": 4104, "Channel": PS, "Computer": host, "EventRecordID": 10_000 + i * 10 + n,
                        "TimeCreated": ts(i), "MessageNumber": n, "MessageTotal": total,
                        "ScriptBlockId": block, "ScriptBlockText": ("#" * 400 + "\n") * (n == 1) + text}
                pending.append((i + 60 * (n - 1) + (0 if n == 1 else 1), frag))
        elif i == 333:
            lines.append(b'{"EventID": 1, "Channel": broken')
        else:
            lines.append(orjson.dumps({"EventID": 4688, "Channel": "Security", "Computer": host,
                                       "EventRecordID": i, "TimeCreated": ts(i),
                                       "NewProcessName": "C:\\Windows\\notepad.exe", "Padding": "x" * 200}))
    lines.append(orjson.dumps({"EventID": 4104, "Channel": PS, "Computer": "WKS-9", "EventRecordID": 1,
                               "TimeCreated": ts(5), "MessageNumber": 1, "MessageTotal": 2,
                               "ScriptBlockId": "{never-finished}", "ScriptBlockText": "AmsiUtils"}))
    for at, frag in sorted(pending, key=lambda p: p[0], reverse=True):
        lines.insert(min(at, len(lines)), orjson.dumps(frag))
    lines.insert(10, b"")   # a blank line
    path = tmp_path / "generated.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(TEST_RULES)
    return [path]


@pytest.mark.parametrize("jobs", [2, 3])
def test_generated_file_with_split_blocks_and_correlations_same_bytes(tmp_path, rules, jobs):
    events = generated_events(tmp_path)
    one, errors_one, stats_one = hunt([events], rules, 1)
    many, errors_many, stats_many = hunt([events], rules, jobs, chunk_bytes=4096)
    alerts = [json.loads(x) for x in one.splitlines()]
    titles = {a["rule"]["title"] for a in alerts}
    assert {"encoded command", "AMSI utils in a script block", "encoded burst", "encoded then amsi"} <= titles
    assert any(a["event"].get("sigstream_Reassembled") for a in alerts)
    assert any(a["event"].get("sigstream_Incomplete") for a in alerts)       # the end-of-input flush
    assert errors_one and errors_one == errors_many                          # the broken line, same place
    assert many == one
    assert (stats_many.events, stats_many.alerts, stats_many.unreadable) == \
        (stats_one.events, stats_one.alerts, stats_one.unreadable)


def test_plan_covers_the_file_at_line_boundaries(tmp_path):
    events = generated_events(tmp_path)
    data = events.read_bytes()
    tasks = list(hunt_plan.plan([events], 4096))
    assert len(tasks) > 10 and tasks[0].start == 0 and tasks[-1].end == len(data) and tasks[-1].last
    for a, b in zip(tasks, tasks[1:]):
        assert a.end == b.start and data[b.start - 1:b.start] == b"\n"
    assert all(t.ranged for t in tasks) and [t.last for t in tasks].count(True) == 1
    assert math.isclose(sum(t.part for t in tasks), 1.0)


def test_positions_of_later_ranges_are_the_files_line_numbers(tmp_path, rules):
    """Workers number a range's lines from 1; the parent makes them the file's (regression
    guard for that shift: alerts, unreadable lines and fragments alike)."""
    events = generated_events(tmp_path)
    lines = events.read_bytes().split(b"\n")
    many, errors, _ = hunt([events], rules, 2, chunk_bytes=4096)
    alerts = [json.loads(x) for x in many.splitlines()]
    later = [a for a in alerts if a["source"] and a["source"]["position"] > 200]
    assert later
    for a in later:
        line = orjson.loads(lines[a["source"]["position"] - 1])
        assert line["EventRecordID"] == a["event"]["EventRecordID"]
    assert [e["position"] for e in errors if "JSON" in e["reason"] or "line" in e["reason"]] == \
        [lines.index(b'{"EventID": 1, "Channel": broken') + 1]


def test_samples_and_project_rules_same_bytes():
    files = find_event_files([SAMPLES])
    one, _, _ = hunt(files, [RULES], 1)
    many, _, _ = hunt(files, [RULES], 3, chunk_bytes=2048)
    assert one and many == one


def test_spawn_start_method_gives_the_same_bytes(tmp_path, rules):
    events = generated_events(tmp_path)
    one, _, _ = hunt([events], rules, 1)
    spawned, _, _ = hunt([events], rules, 2, chunk_bytes=16384, start_method="spawn")
    assert spawned == one


def _die_on_a_later_task(self, task):
    """A worker process's task runner that dies (as on SIGKILL or the OOM killer) on a later
    range (the parent runs tasks too, through the same method: it does not die)."""
    if task.start > 0 and os.getpid() != _TEST_PID:
        os._exit(9)
    return _real_run(self, task)


_real_run = hunt_jobs._Worker.run
_TEST_PID = os.getpid()


def test_a_worker_that_dies_fails_the_hunt_naming_the_file_and_line(tmp_path, rules, monkeypatch):
    """Regression: multiprocessing.Pool replaced a dead worker and waited forever for its task
    (the hunt hung with a partial output). Forked workers, so the patched runner reaches them."""
    monkeypatch.setattr(hunt_jobs._Worker, "run", _die_on_a_later_task)
    events = generated_events(tmp_path)
    with pytest.raises(hunt_jobs.HuntWorkerDied, match=r"died .*complete up to \S*generated\.jsonl from line [\d,]+ "):
        hunt([events], rules, 2, chunk_bytes=16384, start_method="fork")


def test_fork_is_chosen_only_while_the_process_has_one_thread(monkeypatch):
    # the thread count is faked: other tests of this session may leave daemon threads behind
    monkeypatch.setattr(hunt_jobs.threading, "active_count", lambda: 1)
    assert hunt_jobs.start_method() == "fork"
    monkeypatch.setattr(hunt_jobs.threading, "active_count", lambda: 2)
    assert hunt_jobs.start_method() in ("forkserver", "spawn")
    assert hunt_jobs.start_method("spawn") == "spawn"


def test_small_input_runs_in_one_process(tmp_path, rules, monkeypatch):
    monkeypatch.setattr(hunt_jobs, "hunt_parallel", lambda *a, **k: pytest.fail("went parallel"))
    events = generated_events(tmp_path)
    hunt([events], rules, 4, min_parallel_bytes=10 << 20)


def test_progress_shares_add_up_per_file(tmp_path, rules):
    events = generated_events(tmp_path)
    shares: dict[Path, float] = {}
    done = []
    hunt([events, SAMPLES / "benign-baseline.jsonl"], rules, 2, chunk_bytes=4096,
         on_progress=lambda f, s: shares.__setitem__(f, shares.get(f, 0.0) + s),
         on_file_done=done.append)
    assert done == [events, SAMPLES / "benign-baseline.jsonl"]
    assert all(math.isclose(s, 1.0) for s in shares.values())


def _without_detected_at(out: bytes) -> bytes:
    return re.sub(rb'"detected_at":"[^"]*"', b'"detected_at":""', out)


def test_cli_jobs_1_and_3_same_output(tmp_path, rules, monkeypatch):
    monkeypatch.setattr(hunt_jobs, "CHUNK_BYTES", 4096)
    events = generated_events(tmp_path)
    runs = {}
    for jobs in (1, 3):
        errs = tmp_path / f"errors-{jobs}.jsonl"
        result = CliRunner().invoke(main, ["hunt", "-r", str(rules[0]), str(events), str(SAMPLES),
                                           "-f", "jsonl", "--jobs", str(jobs), "--errors", str(errs)],
                                    catch_exceptions=False)
        assert result.exit_code == 0
        runs[jobs] = (_without_detected_at(result.stdout_bytes), errs.read_bytes())
    assert runs[1][0].count(b"\n") > 50 and runs[1][1]
    assert runs[3] == runs[1]


def test_time_window_same_bytes_and_counts_in_parallel(tmp_path, rules):
    from sigstream.time_window import TimeWindow
    events = generated_events(tmp_path)          # event times 10:00:00 .. 10:14:59
    window = TimeWindow.parse("2026-11-24T10:03:00Z", "2026-11-24T10:09:59Z", now=0)
    whole, _, stats_whole = hunt([events], rules, 1)
    one, errors_one, stats_one = hunt([events], rules, 1, window=window)
    many, errors_many, stats_many = hunt([events], rules, 3, chunk_bytes=4096, window=window)
    assert many == one and errors_many == errors_one
    assert stats_one.events == stats_whole.events                 # skipped events still count as read
    assert 0 < stats_one.outside < stats_one.events and stats_one.untimed == 0
    assert (stats_many.events, stats_many.outside, stats_many.untimed, stats_many.alerts) == \
        (stats_one.events, stats_one.outside, stats_one.untimed, stats_one.alerts)
    assert 0 < stats_one.alerts < stats_whole.alerts
    times = [a["event"]["TimeCreated"] for a in map(json.loads, one.splitlines()) if "correlation" not in a]
    assert times and all("10:03:00" <= t[11:19] <= "10:09:59" for t in times)


def test_stdin_among_files_runs_in_one_process(tmp_path, rules, monkeypatch):
    from sigstream.hunting import STDIN
    monkeypatch.setattr(hunt_jobs, "hunt_parallel", lambda *a, **k: pytest.fail("went parallel"))
    events = generated_events(tmp_path)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(events.read_bytes())))
    from_stdin, _, stats = hunt([STDIN, SAMPLES / "benign-baseline.jsonl"], rules, 3)
    from_file, _, _ = hunt([events, SAMPLES / "benign-baseline.jsonl"], rules, 1)
    assert from_stdin.replace(b'"path":"<stdin>"', b'"path":"%s"' % str(events).encode()) == from_file
    assert stats.events > 900


def test_the_hunt_progress_bar_starts_no_thread(monkeypatch):
    """A refresh thread would make `hunt --jobs` start its workers by forkserver (rebuilding
    the engine, ~2.5 s) instead of fork: the bar is redrawn on each step instead."""
    import threading
    from rich.console import Console

    import sigstream.cli as cli
    monkeypatch.setattr(cli, "err_console", Console(file=io.StringIO(), force_terminal=True))
    before = threading.active_count()
    bar = cli._progress(True, 2)
    advance = bar.__enter__()
    try:
        advance(Path("a.evtx"))
        assert threading.active_count() == before
    finally:
        bar.__exit__(None, None, None)


ORPHAN_SCRIPT = """
import sys, time
from pathlib import Path
from sigstream import hunt_jobs, hunt_plan
from sigstream.hunting import hunt_files
from sigstream.stream.detector import Detector
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rules

real_run = hunt_jobs._Worker.run
def slow_run(self, task):
    time.sleep(0.2)
    return real_run(self, task)
hunt_jobs._Worker.run = slow_run
engine = Engine(load_rules([sys.argv[1]], use_cache=False).rules)
print("hunting", flush=True)
if __name__ == "__main__":
    hunt_files([Path(sys.argv[2])], Detector(engine), type("S", (), {"add": lambda s, a: None})(),
               on_error=lambda e: None, jobs=3, chunk_bytes=2048, start_method=sys.argv[3])
"""


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _running(pids: set[int]) -> set[int]:
    """Those of `pids` that exist and are not zombies."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_end_when_the_hunt_is_killed(tmp_path, rules, method):
    """Regression: after kill -9 of the hunt, its workers waited for tasks forever."""
    import signal
    import subprocess
    import sys
    import time
    events = generated_events(tmp_path)
    script = tmp_path / "hunt_then_killed.py"     # a file: spawned workers import __main__
    script.write_text(ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(rules[0]), str(events), method],
                            stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert proc.stdout.readline().strip() == "hunting"
        deadline = time.monotonic() + 20
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _running(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(workers), f"workers {_running(workers)} outlived the killed hunt"
    finally:
        if proc.poll() is None:
            proc.kill()
        import shutil   # the killed hunt's result directory (a later hunt would remove it)
        for leftover in Path(hunt_jobs._SHM).glob(f"sigstream-hunt-{proc.pid}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def test_a_full_dev_shm_sends_results_through_the_pipe(tmp_path, rules, monkeypatch):
    """/dev/shm is often 64 MB in a container: a result that does not fit goes the old way."""
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(hunt_jobs.pickle, "dump", full)   # forked workers inherit it
    events = generated_events(tmp_path)
    one, _, _ = hunt([events], rules, 1)
    many, _, _ = hunt([events], rules, 2, chunk_bytes=8192, start_method="fork")
    assert many == one


def test_result_dirs_of_killed_hunts_are_removed(tmp_path, monkeypatch):
    """A hunt killed with SIGKILL leaves its /dev/shm result directory; the next one removes it
    (and keeps those of hunts still running)."""
    import subprocess
    import sys
    import time
    monkeypatch.setattr(hunt_jobs, "_SHM", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"sigstream-hunt-{dead.pid}-abc").mkdir()
    (tmp_path / f"sigstream-hunt-{dead.pid}-abc" / "result").write_bytes(b"x")
    (tmp_path / f"sigstream-hunt-{os.getpid()}-def").mkdir()
    (tmp_path / "something-else").mkdir()
    (tmp_path / f"sigstream-hunt-{dead.pid}-recent").mkdir()    # perhaps another namespace's
    old = time.time() - hunt_jobs.ORPHAN_AGE_S - 60
    os.utime(tmp_path / f"sigstream-hunt-{dead.pid}-abc", (old, old))
    made = hunt_jobs._results_dir_for_workers()
    assert made and Path(made).parent == tmp_path
    left = sorted(p.name for p in tmp_path.iterdir())
    assert f"sigstream-hunt-{dead.pid}-abc" not in left and f"sigstream-hunt-{dead.pid}-recent" in left
    assert f"sigstream-hunt-{os.getpid()}-def" in left and "something-else" in left


def test_unreadable_xml_events_keep_their_raw_text_in_parallel(tmp_path):
    """Regression: --jobs N dropped ReadError.raw (the --errors file lost "raw")."""
    event = ('<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>'
             '<EventID>{}</EventID><Channel>Microsoft-Windows-Sysmon/Operational</Channel>'
             '<Computer>h</Computer></System></Event>')
    files = []
    for name in ("x.xml", "y.xml"):
        path = tmp_path / name
        path.write_text(f"<Events>\n{event.format(1)}\n{event.format('1<')}\n</Events>\n")
        files.append(path)
    rule = tmp_path / "r.yml"
    rule.write_text(TEST_RULES)
    one, errors_one, _ = hunt(files, [rule], 1)
    many, errors_many, _ = hunt(files, [rule], 2, min_parallel_bytes=0)
    assert len(errors_one) == 2 and all(e.get("raw") for e in errors_one)
    assert errors_many == errors_one and many == one


def test_a_failed_detection_is_reported_at_the_same_place_in_parallel(tmp_path, rules, monkeypatch):
    """Detection failures of later ranges: the same error, at the file's line number."""
    from sigstream.stream.detector import Detector as RealDetector
    real_match = RealDetector._match

    def failing(self, event, source, now):
        if event.get("EventRecordID") in (600, 602):
            raise RuntimeError("boom")
        return real_match(self, event, source, now)
    monkeypatch.setattr(RealDetector, "_match", failing)   # forked workers inherit it
    events = generated_events(tmp_path)
    one, errors_one, stats_one = hunt([events], rules, 1)
    many, errors_many, stats_many = hunt([events], rules, 2, chunk_bytes=4096, start_method="fork")
    failed = [e for e in errors_one if e["reason"] == "detection failed: RuntimeError: boom"]
    assert len(failed) == 2 and all(e["position"] > 200 for e in failed)
    assert errors_many == errors_one and many == one and stats_many.failed == stats_one.failed == 2
