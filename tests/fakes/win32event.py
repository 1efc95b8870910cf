"""A fake pywin32 ``win32event`` (the few calls the event-log source uses)."""
from __future__ import annotations

import threading

WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 258
INFINITE = 0xFFFFFFFF


class _Event:
    def __init__(self, manual_reset: bool):
        self._ev = threading.Event()
        self.manual_reset = manual_reset
        self.closed = False

    def Close(self):  # noqa: N802 - pywin32 PyHANDLE method
        self.closed = True


def CreateEvent(sa, bManualReset, bInitialState, name):  # noqa: N802,N803
    e = _Event(bool(bManualReset))
    if bInitialState:
        e._ev.set()
    return e


def SetEvent(h):  # noqa: N802
    h._ev.set()


def ResetEvent(h):  # noqa: N802
    h._ev.clear()


def WaitForSingleObject(h, milliseconds):  # noqa: N802
    timeout = None if milliseconds == INFINITE else milliseconds / 1000.0
    if h._ev.wait(timeout):
        if not h.manual_reset:
            h._ev.clear()
        return WAIT_OBJECT_0
    return WAIT_TIMEOUT


def CloseHandle(h):  # noqa: N802
    h.Close()
