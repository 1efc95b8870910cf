"""Real endpoint actions on Windows (ctypes, winreg, netsh). Importable anywhere, runnable
only on Windows: every entry point checks `sys.platform` and fails with a reason elsewhere.
The dry-run executor (connectors.executor.DryRunExecutor) is used on other systems and in tests.

* kill_process / suspend_process: open the pid, and act only if it is still the same process:
  its image path equals the request's image (case-insensitive) AND its creation time equals
  the start time encoded in the Sysmon ProcessGuid ({machine-TTTT-tttt-...}: groups 2 and 3
  are the low and high 16 bits of the process start time in Unix seconds) within 2 seconds.
  A reused pid, a different image or an undecodable guid -> failed, nothing done.
* quarantine_registry_value: read the value, write it (key, name, type, data) as JSON to the
  backup directory, fsync, then delete it. The backup is restorable with `restore_registry_value`.
* isolate_host: export the current firewall policy (`netsh advfirewall export`), block all
  inbound/outbound traffic, and allow only the Kafka brokers and the management addresses
  given at construction (resolved to IPs at isolation time). `IsolationWatchdog` rolls the
  isolation back (re-imports the export) when the agent has not reached Kafka for
  `rollback_after_s`, so a host is never stranded. unisolate_host does the same on request.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from sigstream.connectors.executor import Outcome

log = logging.getLogger(__name__)
RULE_PREFIX = "sigstream-isolation"
_HIVE_NAMES = {"HKLM": "HKEY_LOCAL_MACHINE", "HKU": "HKEY_USERS", "HKCU": "HKEY_CURRENT_USER",
               "HKCR": "HKEY_CLASSES_ROOT", "HKCC": "HKEY_CURRENT_CONFIG"}


def guid_start_time(guid: str) -> int | None:
    """Unix start time encoded in a Sysmon ProcessGuid, or None if it does not look like one."""
    parts = guid.strip("{}").split("-")
    if len(parts) != 5 or len(parts[1]) != 4 or len(parts[2]) != 4:
        return None
    try:
        return int(parts[2] + parts[1], 16)
    except ValueError:
        return None


def _require_windows() -> None:
    if sys.platform != "win32":
        raise Outcome(f"not on Windows ({sys.platform}): use the dry-run executor")


class _Process:
    """The few kernel32/ntdll calls needed, via ctypes (no pywin32 needed)."""
    QUERY = 0x1000          # PROCESS_QUERY_LIMITED_INFORMATION
    TERMINATE = 0x0001
    SUSPEND_RESUME = 0x0800

    def __init__(self, pid: int, access: int):
        import ctypes
        from ctypes import wintypes
        self.ctypes, self.wintypes = ctypes, wintypes
        self.k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self.handle = self.k32.OpenProcess(access | self.QUERY, False, pid)
        if not self.handle:
            raise Outcome(f"cannot open pid {pid} (gone or access denied, error {ctypes.get_last_error()})")

    def image(self) -> str:
        buf = self.ctypes.create_unicode_buffer(32768)
        size = self.wintypes.DWORD(len(buf))
        if not self.k32.QueryFullProcessImageNameW(self.handle, 0, buf, self.ctypes.byref(size)):
            raise Outcome("cannot read the process image path")
        return buf.value

    def created(self) -> float:
        ft = [self.wintypes.FILETIME() for _ in range(4)]
        if not self.k32.GetProcessTimes(self.handle, *[self.ctypes.byref(f) for f in ft]):
            raise Outcome("cannot read the process creation time")
        ticks = (ft[0].dwHighDateTime << 32) | ft[0].dwLowDateTime
        return ticks / 10_000_000 - 11644473600

    def terminate(self) -> None:
        if not self.k32.TerminateProcess(self.handle, 1):
            raise Outcome(f"TerminateProcess failed (error {self.ctypes.get_last_error()})")

    def suspend(self) -> None:
        status = self.ctypes.WinDLL("ntdll").NtSuspendProcess(self.handle)
        if status != 0:
            raise Outcome(f"NtSuspendProcess failed (NTSTATUS {status:#x})")

    def close(self) -> None:
        self.k32.CloseHandle(self.handle)


def _same_process(p: _Process, target: dict) -> None:
    image, guid = str(target.get("image") or ""), str(target.get("guid") or "")
    started = guid_start_time(guid)
    if not image or started is None:
        raise Outcome("request lacks an image or a decodable ProcessGuid: refusing")
    actual = p.image()
    if actual.lower() != image.lower():
        raise Outcome(f"pid {target.get('pid')} is now {actual!r}, not {image!r}: refusing")
    if abs(p.created() - started) > 2:
        raise Outcome(f"pid {target.get('pid')} was reused (start time differs from {guid}): refusing")


class WindowsExecutor:
    name = "windows"

    def __init__(self, backup_dir: str | os.PathLike, isolation: "Isolation | None" = None):
        self.backup_dir = Path(backup_dir)
        self.isolation = isolation

    def _process_action(self, target: dict, access: int, act: Callable[[_Process], None], verb: str) -> str:
        _require_windows()
        pid = target.get("pid")
        if not isinstance(pid, int):
            raise Outcome("request has no pid")
        p = _Process(pid, access)
        try:
            _same_process(p, target)
            act(p)
        finally:
            p.close()
        return f"{verb} pid {pid} ({target.get('image')})"

    def kill_process(self, target: dict) -> str:
        return self._process_action(target, _Process.TERMINATE, _Process.terminate, "terminated")

    def suspend_process(self, target: dict) -> str:
        return self._process_action(target, _Process.SUSPEND_RESUME, _Process.suspend, "suspended")

    def quarantine_registry_value(self, target: dict) -> str:
        _require_windows()
        import winreg
        key, name = str(target.get("key") or ""), target.get("value")
        hive_name, _, sub = key.partition("\\")
        hive = getattr(winreg, _HIVE_NAMES.get(hive_name.upper(), hive_name.upper()), None)
        if hive is None or name is None:
            raise Outcome(f"unusable registry target {key!r} / {name!r}")
        try:
            with winreg.OpenKey(hive, sub, 0, winreg.KEY_QUERY_VALUE | winreg.KEY_SET_VALUE) as h:
                data, kind = winreg.QueryValueEx(h, name)
                self.backup_dir.mkdir(parents=True, exist_ok=True)
                backup = self.backup_dir / f"{int(time.time())}-{abs(hash((key, name))):x}.json"
                raw = data if isinstance(data, bytes) else json.dumps(data).encode()
                with open(backup, "w", encoding="utf-8") as f:
                    json.dump({"key": key, "value": name, "type": kind, "is_bytes": isinstance(data, bytes),
                               "data": base64.b64encode(raw).decode()}, f)
                    f.flush()
                    os.fsync(f.fileno())
                winreg.DeleteValue(h, name)
        except FileNotFoundError:
            raise Outcome(f"{key}\\{name} does not exist (already removed?)") from None
        except PermissionError as e:
            raise Outcome(f"access denied to {key}: {e}") from None
        return f"backed up to {backup} and deleted {key}\\{name}"

    def isolate_host(self, target: dict) -> str:
        if self.isolation is None:
            raise Outcome("isolation is not configured on this agent")
        return self.isolation.isolate()

    def unisolate_host(self, target: dict) -> str:
        if self.isolation is None:
            raise Outcome("isolation is not configured on this agent")
        return self.isolation.rollback("requested")

    def notify(self, target: dict) -> str:
        return "notified (logged)"


def restore_registry_value(backup_file: str | os.PathLike) -> None:
    _require_windows()
    import winreg
    doc = json.loads(Path(backup_file).read_text(encoding="utf-8"))
    hive_name, _, sub = doc["key"].partition("\\")
    raw = base64.b64decode(doc["data"])
    data = raw if doc["is_bytes"] else json.loads(raw)
    with winreg.CreateKeyEx(getattr(winreg, _HIVE_NAMES[hive_name.upper()]), sub, 0, winreg.KEY_SET_VALUE) as h:
        winreg.SetValueEx(h, doc["value"], 0, doc["type"], data)


class Isolation:
    """Firewall isolation that keeps the Kafka / management path open and can roll back."""

    def __init__(self, state_dir: str | os.PathLike, allowed: Iterable[str],
                 run: Callable[[list[str]], None] | None = None):
        self.state_dir = Path(state_dir)
        self.allowed = list(allowed)            # "host:port" (Kafka brokers, management server)
        self.run = run or self._netsh
        self.export = self.state_dir / "firewall-before-isolation.wfw"

    @staticmethod
    def _netsh(args: list[str]) -> None:
        _require_windows()
        res = subprocess.run(["netsh", "advfirewall", *args], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise Outcome(f"netsh advfirewall {' '.join(args[:3])} failed: {res.stdout.strip()} {res.stderr.strip()}")

    @property
    def isolated(self) -> bool:
        return self.export.exists()

    def isolate(self) -> str:
        if self.isolated:
            return "already isolated"
        endpoints = []
        for hp in self.allowed:
            host, _, port = hp.rpartition(":")
            for info in socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP):
                endpoints.append((info[4][0], port))
        if not endpoints:
            raise Outcome("no management/Kafka address to keep open: refusing to isolate")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.run(["export", str(self.export)])
        try:
            for i, (ip, port) in enumerate(sorted(set(endpoints))):
                self.run(["firewall", "add", "rule", f"name={RULE_PREFIX}-{i}", "dir=out", "action=allow",
                          "protocol=TCP", f"remoteip={ip}", f"remoteport={port}"])
            self.run(["set", "allprofiles", "firewallpolicy", "blockinbound,blockoutbound"])
            self.run(["set", "allprofiles", "state", "on"])
        except Outcome:
            self.rollback("isolation failed half-way")
            raise
        return f"isolated; open: {', '.join(f'{ip}:{p}' for ip, p in sorted(set(endpoints)))}"

    def rollback(self, why: str) -> str:
        if not self.isolated:
            return "not isolated"
        self.run(["import", str(self.export)])     # restores policy and rules as they were
        self.export.unlink()
        log.warning("host isolation rolled back: %s", why)
        return f"isolation removed ({why})"


class IsolationWatchdog:
    """Rolls isolation back if no heartbeat (a successful Kafka poll) for `rollback_after_s`."""

    def __init__(self, isolation: Isolation, rollback_after_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.isolation, self.after, self.clock = isolation, rollback_after_s, clock
        self._last = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="isolation-watchdog", daemon=True)

    def heartbeat(self, _now: float | None = None) -> None:
        self._last = self.clock()

    def check(self) -> bool:
        if self.isolation.isolated and self.clock() - self._last > self.after:
            self.isolation.rollback(f"no contact with Kafka for {self.after:.0f}s")
            return True
        return False

    def start(self) -> "IsolationWatchdog":
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(min(30.0, self.after / 4)):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001
                log.error("isolation watchdog: %s", e)

    def stop(self) -> None:
        self._stop.set()
