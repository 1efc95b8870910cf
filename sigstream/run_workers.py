"""`sigstream run --workers N`: N processor processes that are members of ONE consumer group.

Each worker is a whole `sigstream run` (same options, minus --workers) in its own process,
started with spawn (see `start_method`). Kafka spreads the partitions over the group's
members as it does for processes on several machines: there is no scheduler here, and the
partition count bounds the useful N.

The parent only supervises. SIGTERM/SIGINT are forwarded to every worker as SIGTERM
(finish the batch, commit, exit; a second signal aborts them as it would one `run`);
SIGHUP is forwarded (reload the rules). A worker that dies unexpectedly (non-zero exit,
killed) is named, the others are stopped, and the parent exits non-zero. Workers are in
their own process group (a Ctrl-C reaches only the parent, which forwards it once) and
stop by themselves if the parent vanishes.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from typing import Any

log = logging.getLogger("sigstream.run")

WORKER_ENV = "SIGSTREAM_WORKER"     # set in a worker: its number, 1..N
EXIT_WORKER_FAILED = 1


def worker_index() -> int | None:
    """This process's worker number under `run --workers`, else None."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def without_workers(argv: list[str]) -> list[str]:
    """``argv`` minus ``--workers N`` / ``--workers=N`` (a worker runs one processor)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def start_method() -> str:
    """spawn: each worker is a fresh interpreter and a direct child, so its exit status is
    the parent's own waitpid (a forkserver is one more process that a signal to the whole
    process group, e.g. from `timeout` or a service manager, would take down). Never a
    plain fork: it would copy locks held by other threads."""
    return "spawn"


def _watch_parent(parent: int) -> None:
    """Stop this worker (as SIGTERM would) once the process that started it is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(argv: list[str], index: int) -> None:
    os.setpgrp()   # terminal signals go to the parent, which forwards them once
    os.environ[WORKER_ENV] = str(index)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    factory = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = factory(*args, **kwargs)
        rec.worker = index   # in every JSON log line (--log-format json)
        return rec
    logging.setLogRecordFactory(record)
    from sigstream.cli import main
    main.main(args=argv, prog_name="sigstream")   # exits with the command's code


def supervise(workers: int, argv: list[str]) -> int:
    """Start `workers` processes running ``sigstream <argv>``; returns the exit code."""
    ctx = multiprocessing.get_context(start_method())
    procs = [ctx.Process(target=_worker, args=(argv, i), name=f"worker {i}", daemon=False)
             for i in range(1, workers + 1)]
    stopping = threading.Event()

    def stop_all() -> None:
        stopping.set()
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def forward(signum: int, frame: Any) -> None:
        log.warning("%s: stopping %d worker(s)", signal.Signals(signum).name, len(procs))
        stop_all()

    def reload(signum: int, frame: Any) -> None:
        log.warning("SIGHUP: workers reload their rules")
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signal.SIGHUP)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    if hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    failed: list[str] = []
    try:
        for p in procs:
            p.start()
        log.info("started %d workers: %s", workers, ", ".join(f"{p.name} (pid {p.pid})" for p in procs))
        if stopping.is_set():   # signalled while starting them
            stop_all()
        running = {p.sentinel: p for p in procs}
        while running:
            for sentinel in wait(list(running), timeout=1.0):
                p = running.pop(sentinel)
                p.join()
                if p.exitcode != 0:
                    how = (f"was killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0
                           else f"exited with code {p.exitcode}")
                    failed.append(f"{p.name} (pid {p.pid}) {how}")
                    if not stopping.is_set():
                        log.error("%s (pid %s) %s; stopping the other workers", p.name, p.pid, how)
                        stop_all()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        print(f"run --workers: {'; '.join(failed)}", file=sys.stderr)
        return EXIT_WORKER_FAILED
    return 0
