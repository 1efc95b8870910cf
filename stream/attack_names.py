"""A small bundled table of MITRE ATT&CK names for the ids sigstream's rules use.

Only the techniques tagged by the bundled rules (sigma_rules/) and the most common ones in
the SigmaHQ Windows rules are listed; an id not here renders without a name (never guessed).
"""
from __future__ import annotations

ATTACK_URL = "https://attack.mitre.org"

TACTIC_NAMES = {
    "TA0043": "Reconnaissance", "TA0042": "Resource Development", "TA0001": "Initial Access",
    "TA0002": "Execution", "TA0003": "Persistence", "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion", "TA0006": "Credential Access", "TA0007": "Discovery",
    "TA0008": "Lateral Movement", "TA0009": "Collection", "TA0011": "Command and Control",
    "TA0010": "Exfiltration", "TA0040": "Impact",
}

TECHNIQUE_NAMES = {
    # used by sigma_rules/
    "T1027": "Obfuscated Files or Information",
    "T1027.010": "Command Obfuscation",
    "T1027.011": "Fileless Storage",
    "T1047": "Windows Management Instrumentation",
    "T1059": "Command and Scripting Interpreter",
    "T1059.001": "PowerShell",
    "T1105": "Ingress Tool Transfer",
    "T1112": "Modify Registry",
    "T1218": "System Binary Proxy Execution",
    "T1218.005": "Mshta",
    "T1546": "Event Triggered Execution",
    "T1546.003": "Windows Management Instrumentation Event Subscription",
    "T1547": "Boot or Logon Autostart Execution",
    "T1547.001": "Registry Run Keys / Startup Folder",
    "T1562": "Impair Defenses",
    "T1562.001": "Disable or Modify Tools",
    "T1562.002": "Disable Windows Event Logging",
    "T1620": "Reflective Code Loading",
    # frequent in SigmaHQ's Windows rules
    "T1003": "OS Credential Dumping",
    "T1003.001": "LSASS Memory",
    "T1036": "Masquerading",
    "T1053": "Scheduled Task/Job",
    "T1053.005": "Scheduled Task",
    "T1055": "Process Injection",
    "T1059.003": "Windows Command Shell",
    "T1059.005": "Visual Basic",
    "T1059.007": "JavaScript",
    "T1140": "Deobfuscate/Decode Files or Information",
    "T1202": "Indirect Command Execution",
    "T1218.010": "Regsvr32",
    "T1218.011": "Rundll32",
    "T1543": "Create or Modify System Process",
    "T1543.003": "Windows Service",
    "T1546.015": "Component Object Model Hijacking",
    "T1548": "Abuse Elevation Control Mechanism",
    "T1548.002": "Bypass User Account Control",
    "T1569": "System Services",
    "T1569.002": "Service Execution",
}


def technique_name(tid: str) -> str | None:
    return TECHNIQUE_NAMES.get(tid.upper())


def tactic_name(tid: str) -> str | None:
    return TACTIC_NAMES.get(tid.upper())


def technique_url(tid: str) -> str:
    return f"{ATTACK_URL}/techniques/{tid.upper().replace('.', '/')}/"


def tactic_url(tid: str) -> str:
    return f"{ATTACK_URL}/tactics/{tid.upper()}/"
