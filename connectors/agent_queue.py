"""Between the sources and the sink: the bounded :class:`EventQueue`, the events/s
budget (:class:`TokenBucket`), the memory measure the RSS budget uses (:func:`rss_bytes`)
and the sink the publisher thread writes to (:func:`make_sink`: the spooling Kafka
publisher, or envelope JSON lines on stdout / in a file for testing).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sigstream.connectors.sink_spec import SinkSpec, parse_sink_spec

if TYPE_CHECKING:
    from sigstream.connectors.agent_config import AgentConfig

__all__ = ["EventQueue", "TokenBucket", "rss_bytes", "make_sink"]


def rss_bytes() -> int | None:
    """Resident set size of this process, without psutil."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    if sys.platform == "win32":
        try:
            import ctypes
            from ctypes import wintypes

            class PMC(ctypes.Structure):
                _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                            ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                            ("QuotaNonPagedPoolUsage", ctypes.c_size_t), ("PagefileUsage", ctypes.c_size_t),
                            ("PeakPagefileUsage", ctypes.c_size_t)]
            pmc = PMC()
            pmc.cb = ctypes.sizeof(PMC)
            k32 = ctypes.windll.kernel32
            k32.GetCurrentProcess.restype = wintypes.HANDLE
            if k32.K32GetProcessMemoryInfo(k32.GetCurrentProcess(), ctypes.byref(pmc), pmc.cb):
                return int(pmc.WorkingSetSize)
        except Exception:  # noqa: BLE001
            return None
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024)   # peak, the best available
    except Exception:  # noqa: BLE001
        return None


class TokenBucket:
    """``rate`` tokens/s, at most ``burst`` banked. ``rate`` <= 0: unlimited."""

    def __init__(self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = float(rate)
        self.burst = float(burst or max(1.0, rate))
        self.tokens = self.burst
        self.clock, self.sleep = clock, sleep
        self.last = clock()
        self.waited_s = 0.0

    def acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens, sleeping until they are there; returns the seconds slept."""
        if self.rate <= 0:
            return 0.0
        slept = 0.0
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n - 1e-9:          # tolerance: float rounding must not spin
                self.tokens = max(0.0, self.tokens - n)
                self.waited_s += slept
                return slept
            wait = (n - self.tokens) / self.rate
            self.sleep(wait)
            slept += wait


class EventQueue:
    """FIFO bounded by item count and approximate bytes. ``limit_factor`` < 1 shrinks it."""

    def __init__(self, max_events: int, max_bytes: int):
        self.max_events = max(1, max_events)
        self.max_bytes = max(1, max_bytes)
        self.limit_factor = 1.0
        self._q: deque = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.high_watermark = 0
        self.closed = False

    def _room(self, size: int) -> bool:
        if not self._q:
            return True          # one event always fits, however large
        f = self.limit_factor
        return (len(self._q) < max(1, int(self.max_events * f))
                and self._bytes + size <= max(1, int(self.max_bytes * f)))

    def put(self, item: Any, size: int, timeout: float | None) -> bool:
        """Enqueue; wait at most ``timeout`` s for room (None: until room or close)."""
        with self._cond:
            if not self._room(size):
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._room(size):
                    if self.closed:
                        return False
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(0.5 if left is None else min(left, 0.5))
            self._q.append((item, size))
            self._bytes += size
            if len(self._q) > self.high_watermark:
                self.high_watermark = len(self._q)
            self._cond.notify_all()
            return True

    def get_batch(self, max_items: int, timeout: float) -> list:
        with self._cond:
            if not self._q:
                self._cond.wait(timeout)
            out = []
            while self._q and len(out) < max_items:
                item, size = self._q.popleft()
                self._bytes -= size
                out.append(item)
            if out:
                self._cond.notify_all()
            return out

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._q)

    @property
    def nbytes(self) -> int:
        return self._bytes


def make_sink(spec: SinkSpec | str | None, cfg: "AgentConfig") -> Any:
    """The publisher's sink for a ``--sink`` spec (:mod:`connectors.sink_spec`): Kafka (the
    spooling :class:`KafkaEventPublisher`), stdout, or a file (appended to)."""
    if not isinstance(spec, SinkSpec):
        spec = parse_sink_spec(spec)
    if spec.is_kafka:
        from sigstream.connectors.kafka import KafkaEventPublisher
        Path(cfg.spool_dir).mkdir(parents=True, exist_ok=True)
        return KafkaEventPublisher(cfg.kafka_settings(spec.bootstrap), collector_id=cfg.host_id,
                                   spool_dir=cfg.spool_dir, spool_max_bytes=cfg.spool_max_bytes,
                                   topic_prefix=cfg.topic_prefix)
    return spec.open_lines(cfg.host_id, append=True)
