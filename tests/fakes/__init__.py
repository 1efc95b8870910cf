"""Stand-ins for the Windows-only modules the endpoint sources use (pywintrace ``etw``,
pywin32 ``win32evtlog`` / ``win32event``), replaying recorded events on Linux.

``install(monkeypatch)`` puts them in ``sys.modules`` under the real names.
"""
from __future__ import annotations

import sys
import time


def install(monkeypatch) -> tuple:
    from fakes import etw, win32event, win32evtlog

    etw.reset()
    win32evtlog.reset()
    monkeypatch.setitem(sys.modules, "etw", etw)
    monkeypatch.setitem(sys.modules, "etw.etw", etw.etw)
    monkeypatch.setitem(sys.modules, "etw.evntrace", etw.evntrace)
    monkeypatch.setitem(sys.modules, "win32evtlog", win32evtlog)
    monkeypatch.setitem(sys.modules, "win32event", win32event)
    return etw, win32evtlog, win32event


def wait_until(pred, timeout: float = 5.0) -> bool:
    """Poll `pred` until it holds (True) or `timeout` seconds pass (False): sources run threads."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False
