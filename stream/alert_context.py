"""Facts about the alert's subject, read from the normalised event: severity, process, registry.

Shared by the alert renderings (ECS, OCSF) and the responder (action targets). Every
function returns None / leaves a key out when the event does not say; nothing is invented.
"""
from __future__ import annotations

from typing import Any

# Sigma level -> (OCSF severity_id, caption, ECS-style risk score 0-100)
SEVERITY = {
    "informational": (1, "Informational", 1.0),
    "low": (2, "Low", 21.0),
    "medium": (3, "Medium", 47.0),
    "high": (4, "High", 73.0),
    "critical": (5, "Critical", 99.0),
}
UNKNOWN_SEVERITY = (0, "Unknown", 0.0)

_PROCESS_FIELDS = {  # our key -> normalised event field (Sysmon names)
    "image": "Image", "pid": "ProcessId", "guid": "ProcessGuid", "command_line": "CommandLine",
    "user": "User", "current_directory": "CurrentDirectory", "integrity_level": "IntegrityLevel",
}
_PARENT_FIELDS = {"image": "ParentImage", "pid": "ParentProcessId", "guid": "ParentProcessGuid",
                  "command_line": "ParentCommandLine", "user": "ParentUser"}
# Security 4688 names the same facts differently
_SECURITY_PROCESS = {"image": "NewProcessName", "pid": "NewProcessId", "command_line": "CommandLine",
                     "user": "SubjectUserName"}
_SECURITY_PARENT = {"image": "ParentProcessName", "pid": "ProcessId"}
_HIVES = {"HKEY_LOCAL_MACHINE": "HKLM", "HKEY_USERS": "HKU", "HKEY_CURRENT_USER": "HKCU",
          "HKEY_CLASSES_ROOT": "HKCR", "HKEY_CURRENT_CONFIG": "HKCC"}
_VALUE_EVENT_TYPES = {"setvalue", "deletevalue"}


def severity(level: str | None) -> tuple[int, str, float]:
    return SEVERITY.get((level or "").lower(), UNKNOWN_SEVERITY)


def as_pid(value: Any) -> int | None:
    """4104 -> 4104, "4104" -> 4104, "0x1008" (Security log) -> 4104; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        v = value.strip()
        try:
            return int(v, 16) if v.lower().startswith("0x") else int(v)
        except ValueError:
            return None
    return None


def basename(path: str | None) -> str | None:
    if not isinstance(path, str) or not path:
        return None
    return path.replace("/", "\\").rsplit("\\", 1)[-1]


def _pick(event: dict, fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name in fields.items():
        value = event.get(name)
        if value in (None, "", "-"):
            continue
        out[key] = as_pid(value) if key == "pid" else value
        if out[key] is None:
            del out[key]
    if "image" in out:
        out["name"] = basename(out["image"])
    return out


def process_of(event: dict) -> dict[str, Any] | None:
    """The acting process: image, pid, guid, command_line, user, name, parent{...}."""
    security = event.get("EventID") in (4688, "4688") and "NewProcessName" in event
    proc = _pick(event, _SECURITY_PROCESS if security else _PROCESS_FIELDS)
    if not proc and "Execution_ProcessID" in event:   # e.g. PowerShell 4104: the host process
        pid = as_pid(event.get("Execution_ProcessID"))
        if pid is not None:
            proc = {"pid": pid}
    parent = _pick(event, _SECURITY_PARENT if security else _PARENT_FIELDS)
    if parent:
        proc["parent"] = parent
    return proc or None


def split_registry_path(path: str) -> tuple[str | None, str]:
    """'HKLM\\SOFTWARE\\X' -> ('HKLM', 'SOFTWARE\\X'); unknown roots -> (None, path)."""
    head, _, rest = path.partition("\\")
    hive = _HIVES.get(head.upper(), head.upper() if head.upper().startswith("HK") else None)
    return (hive, rest) if hive else (None, path)


def registry_of(event: dict) -> dict[str, Any] | None:
    """Registry facts of Sysmon 12/13/14: path, hive, key, value (value events), data, event_type."""
    target = event.get("TargetObject")
    if not isinstance(target, str) or not target:
        return None
    event_type = str(event.get("EventType") or "")
    reg: dict[str, Any] = {"path": target}
    hive, rel = split_registry_path(target)
    is_value = event_type.lower() in _VALUE_EVENT_TYPES or (
        not event_type and event.get("EventID") in (13, "13"))
    if is_value and "\\" in rel:
        rel, _, value = rel.rpartition("\\")
        reg["value"] = value
    if hive:
        reg["hive"] = hive
    reg["key"] = rel
    if event_type:
        reg["event_type"] = event_type
    if event.get("Details") not in (None, ""):
        reg["data"] = event["Details"]
    if event.get("NewName"):
        reg["new_name"] = event["NewName"]
    return reg
