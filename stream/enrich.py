"""Enrichment before matching: derived fields that make hidden content visible to rules.

`enrich(event)` adds fields, all named `sigstream_*`, to a normalised event in place. It
never overwrites a field the event already has, and it is cheap when nothing applies:
each step first checks the event id and a substring before any regular expression runs.

- Process creation (Sysmon 1, Security 4688): PowerShell `-EncodedCommand` in any
  spelling PowerShell accepts (`-e`, `-ec`, `-en`, `-enc`, ... `-EncodedCommand`, with `-`,
  `/` or en/em dash, quoted or not) is decoded from UTF-16LE base64, and literal nested
  layers (`FromBase64String('...')` with optional gzip/deflate, `[char[]](72,101,..)`,
  `[char]72+[char]101`) are decoded too, bounded in size and depth:
  `sigstream_CommandLineDecoded`, `sigstream_ParentCommandLineDecoded`.
- PowerShell script blocks (4104): obfuscation indicators as numbers and flags
  (`sigstream_Script*`), and literal nested layers in `sigstream_ScriptDecoded`.
- Sysmon 13 registry values: payload indicators on `Details` (`sigstream_Details*`).

The table of fields is in README.md ("Enrichment fields").
"""
from __future__ import annotations

import base64
import binascii
import math
import re
import zlib
from collections import Counter
from typing import Any

PREFIX = "sigstream_"

MAX_INPUT = 64 * 1024        # characters of a field looked at for decoding
MAX_DECODED = 16 * 1024      # characters kept per decoded field
MAX_DEPTH = 3                # nested layers decoded below the first
MAX_LAYERS = 16              # nested blobs decoded per field in total
MAX_INFLATE = 256 * 1024     # bytes a gzip/deflate layer may inflate to
SCRIPT_STATS_MAX = 256 * 1024  # characters of a script block used for the statistics
DETAILS_PREVIEW = 1024       # characters of a decoded registry payload kept

_PROCESS_EVENTS = frozenset({1, 4688})
_SCRIPT_EVENTS = frozenset({4104})
_REGISTRY_SET_EVENTS = frozenset({13})

# -EncodedCommand: any prefix PowerShell resolves to it (e, en, enc, ..., encodedcommand) and `ec`.
_ENC_ARG = re.compile(
    r"""(?:^|[\s"'])[-/\u2013\u2014\u2015](e(?:c|n[a-z]*)?)(?:\s+|:)["']?([A-Za-z0-9+/=]{8,})""",
    re.IGNORECASE)
_B64_LITERAL = re.compile(
    r"""frombase64string\s*\(\s*\(?\s*["']([A-Za-z0-9+/=\s]{8,})["']""", re.IGNORECASE)
_CHAR_ARRAY = re.compile(r"\[char\[\]\]\s*\(\s*((?:0x[0-9a-f]+|\d+)(?:\s*,\s*(?:0x[0-9a-f]+|\d+)){3,})\s*\)",
                         re.IGNORECASE)
_CHAR_CASTS = re.compile(r"(?:\[char\]\s*(?:0x[0-9a-f]+|\d+)\s*\+?\s*){4,}", re.IGNORECASE)
_CHAR_CAST_NUM = re.compile(r"\[char\]\s*(0x[0-9a-f]+|\d+)", re.IGNORECASE)
_CONCAT = re.compile(r"""["']\s*\+\s*["']""")
_IEX_COMPUTED = re.compile(
    r"""(?:\b(?:iex|invoke-expression)\s*[(\$\[{]"""            # IEX (expr) / IEX $var / IEX [..]
    r"""|\|\s*&?\s*\(?\s*(?:iex|invoke-expression)\b"""           # ... | IEX
    r"""|\b(?:iex|invoke-expression)\s+(?:-command\s+)?(?:\(|\$|\[)"""
    r"""|[.&]\s*\(\s*\$(?:env:comspec|pshome|shellid|verbosepreference)"""  # Invoke-Obfuscation IEX
    r"""|[.&]\s*\(\s*\(?\s*\[string\]\s*\$verbosepreference"""
    r"""|[.&]\s*\(?\s*["'](?:iex|invoke-expression)["']"""       # &('I'+'EX') after concat undone
    r"""|\$(?:pshome|shellid)\[\d+\]\s*\+)""",
    re.IGNORECASE)
_B64_VALUE = re.compile(r"[A-Za-z0-9+/\r\n]+={0,2}")
_HEX_VALUE = re.compile(r"(?:0x)?(?:[0-9a-fA-F]{2}[\s,:-]?)+")
# script constructs (not bare program names: a Run value pointing at pwsh.exe is no script)
_SCRIPT_MARKERS = (
    "invoke-expression", "iex(", "iex (", "iex $", "|iex", "| iex", "frombase64string", "new-object ",
    "[convert]::", "[system.", "[reflection.", "[char]", "-join", "downloadstring", "downloaddata",
    "invoke-webrequest", "start-process", "set-itemproperty", "get-itemproperty", "add-type",
    "function ", "$env:", "wscript.", "createobject(", "getobject(", "<script", "javascript:",
    "vbscript:", "eval(", "execute(", "activexobject",
)


def enrich(event: dict) -> None:
    """Add `sigstream_*` fields to a normalised event, in place (see the module docstring)."""
    eid = event.get("EventID")
    if type(eid) is not int:
        try:
            eid = int(eid)  # "4104", 4104.0
        except (TypeError, ValueError):
            return
    if eid in _PROCESS_EVENTS:
        _enrich_process(event)
    elif eid in _SCRIPT_EVENTS:
        _enrich_script(event)
    elif eid in _REGISTRY_SET_EVENTS:
        _enrich_registry(event)


def _put(event: dict, name: str, value: Any) -> None:
    key = PREFIX + name
    if key not in event:  # never overwrite: an original field (or an earlier pass) wins
        event[key] = value


# --- process creation ----------------------------------------------------------------------

def _enrich_process(event: dict) -> None:
    for field in ("CommandLine", "ParentCommandLine"):
        cl = event.get(field)
        if type(cl) is not str or len(cl) < 12:
            continue
        decoded = decode_command_line(cl)
        if decoded:
            _put(event, field + "Decoded", decoded)


def decode_command_line(cl: str) -> str | None:
    """Decoded text hidden in a command line (encoded command and nested layers), or None."""
    cl = cl[:MAX_INPUT]
    low = cl.lower()
    parts: list[str] = []
    budget = [MAX_LAYERS]
    if "-e" in low or "/e" in low or "\u2013e" in low or "\u2014e" in low or "\u2015e" in low:
        for m in _ENC_ARG.finditer(cl):
            flag = m.group(1).lower()
            if flag != "ec" and not "encodedcommand".startswith(flag):
                continue
            text = decode_utf16_base64(m.group(2))
            if text is None:
                continue
            parts.append(text)
            parts.extend(_nested(text, 1, budget))
    if not parts and _might_nest(low):
        parts.extend(_nested(cl, 1, budget))
    if not parts:
        return None
    return "\n".join(parts)[:MAX_DECODED]


def decode_utf16_base64(blob: str) -> str | None:
    """UTF-16LE text of a base64 string (what -EncodedCommand takes), or None if it is not."""
    raw = _b64(blob)
    if raw is None or len(raw) < 2:
        return None
    if len(raw) % 2:
        raw = raw[:-1]
    try:
        text = raw.decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    if not _is_text(text):
        return None
    return text[:MAX_DECODED]


def _b64(blob: str, limit: int = MAX_INPUT) -> bytes | None:
    blob = "".join(blob[:limit].split())
    blob = blob.rstrip("=")
    if len(blob) < 4 or len(blob) % 4 == 1:
        return None
    try:
        return base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_text(text: str) -> bool:
    """Mostly printable (a wrong guess at UTF-16 yields CJK / control characters)."""
    if not text:
        return False
    sample = text[:512]
    n = len(sample)
    bad = len(_CTRL.findall(sample))
    if not sample.isascii():
        non_ascii = n - len(sample.encode("ascii", "ignore"))
        if non_ascii * 2 > n:
            return False
        bad += sum(1 for c in sample if c >= "\x80" and not c.isalpha())
    return bad * 10 <= n


def _might_nest(low: str) -> bool:
    return "frombase64string" in low or "[char" in low


def _nested(text: str, depth: int, budget: list[int]) -> list[str]:
    """Decoded literal layers inside decoded text, depth-first, bounded."""
    if depth > MAX_DEPTH or budget[0] <= 0:
        return []
    low = text.lower()
    if not _might_nest(low):
        return []
    out: list[str] = []
    if "frombase64string" in low:
        for m in _B64_LITERAL.finditer(text):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            inner = decode_blob(m.group(1))
            if inner:
                out.append(inner)
                out.extend(_nested(inner, depth + 1, budget))
    if "[char" in low:
        for m in _CHAR_ARRAY.finditer(text):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            inner = _chars(re.split(r"\s*,\s*", m.group(1)))
            if inner:
                out.append(inner)
                out.extend(_nested(inner, depth + 1, budget))
        for m in _CHAR_CASTS.finditer(text):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            inner = _chars(_CHAR_CAST_NUM.findall(m.group(0)))
            if inner:
                out.append(inner)
                out.extend(_nested(inner, depth + 1, budget))
    return out


def _chars(nums: list[str]) -> str | None:
    try:
        codes = [int(n, 16) if n.lower().startswith("0x") else int(n) for n in nums[:MAX_DECODED]]
        text = "".join(map(chr, codes))
    except (ValueError, OverflowError):
        return None
    return text if _is_text(text) else None


def decode_blob(blob: str) -> str | None:
    """Text of a base64 literal: UTF-16LE, UTF-8, or gzip/deflate of those; None if binary."""
    raw = _b64(blob)
    if raw is None:
        return None
    raw = _inflate(raw)
    return bytes_to_text(raw)


def _inflate(raw: bytes) -> bytes:
    """gzip / zlib / raw deflate, bounded; the input unchanged if it is none of them."""
    if raw[:2] == b"\x1f\x8b":
        wbits = 16 + zlib.MAX_WBITS
    elif len(raw) > 2 and raw[0] == 0x78 and (raw[0] * 256 + raw[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS
    else:
        wbits = -zlib.MAX_WBITS  # raw deflate ([IO.Compression.DeflateStream]): try, keep if text
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(raw, MAX_INFLATE)
    except zlib.error:
        return raw
    if wbits < 0 and not (d.eof and out and bytes_to_text(out[:256])):
        return raw
    return out


def bytes_to_text(raw: bytes) -> str | None:
    if len(raw) >= 4 and raw[1] == 0 and raw[3] == 0:
        try:
            text = raw[: len(raw) - len(raw) % 2].decode("utf-16-le")
        except UnicodeDecodeError:
            text = ""
        if _is_text(text):
            return text[:MAX_DECODED]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[:MAX_DECODED] if _is_text(text) else None


# --- script blocks -----------------------------------------------------------------------

def entropy(counts: Counter, total: int) -> float:
    if total <= 0:
        return 0.0
    h = 0.0
    for n in counts.values():
        p = n / total
        h -= p * math.log2(p)
    return round(h, 3)


def _enrich_script(event: dict) -> None:
    text = event.get("ScriptBlockText")
    if type(text) is not str:
        return
    _put(event, "ScriptLength", len(text))
    sample = text[:SCRIPT_STATS_MAX]
    counts = Counter(sample)
    total = len(sample)
    special = sum(n for c, n in counts.items() if not (c.isalnum() or c.isspace()))
    _put(event, "ScriptEntropy", entropy(counts, total))
    _put(event, "ScriptSpecialCharRatio", round(special / total, 3) if total else 0.0)
    _put(event, "ScriptBacktickCount", counts.get("`", 0))
    _put(event, "ScriptConcatCount", len(_CONCAT.findall(sample)) if "+" in counts else 0)
    low = sample.lower()
    probe = low
    if "`" in counts or "+" in counts:  # I`E`X, ('IE'+'X'): undo ticks and literal concatenation
        probe = _CONCAT.sub("", low.replace("`", ""))
    computed = False
    if "iex" in probe or "invoke-expression" in probe or "$pshome" in probe or "$shellid" in probe \
            or "comspec" in probe or "verbosepreference" in probe:
        computed = _IEX_COMPUTED.search(probe) is not None
    _put(event, "ScriptIexComputed", computed)
    if _might_nest(low):
        layers = _nested(sample, 1, [MAX_LAYERS])
        if layers:
            _put(event, "ScriptDecoded", "\n".join(layers)[:MAX_DECODED])


# --- registry values (Sysmon 13) ------------------------------------------------------------

def _looks_base64(d: str) -> bool:
    """A long base64 string, not an identifier that happens to use base64's alphabet."""
    if not _B64_VALUE.fullmatch(d):
        return False
    has_digit_or_sym = any(c.isdigit() or c in "+/" for c in d[:256]) or d.endswith("=")
    return has_digit_or_sym and not d.isdigit() and d.lower() != d and d.upper() != d


def _hex_bytes(d: str) -> bytes | None:
    if not _HEX_VALUE.fullmatch(d):
        return None
    digits = re.sub(r"[\s,:-]", "", d[2:] if d[:2] in ("0x", "0X") else d)
    if len(digits) < 32 or len(digits) % 2:
        return None
    try:
        return bytes.fromhex(digits)
    except ValueError:
        return None


def _enrich_registry(event: dict) -> None:
    details = event.get("Details")
    if type(details) is not str:
        return
    _put(event, "DetailsLength", len(details))
    is_b64 = is_hex = is_pe = False
    decoded: bytes | None = None
    text: str | None = None
    d = details.strip()[:MAX_INPUT]
    if len(d) >= 32:
        first = d[0]
        if first.isalnum() or first in "+/":  # cheap gate: paths, DWORDs, GUIDs, quotes fail here
            decoded = _hex_bytes(d)
            if decoded is not None:
                is_hex = True
            elif " " not in d[:64] and _looks_base64(d):
                decoded = _b64(d)
                is_b64 = decoded is not None
    if decoded is not None:
        decoded = _inflate(decoded)
        is_pe = decoded[:2] == b"MZ"
        text = None if is_pe else bytes_to_text(decoded)
        _put(event, "DetailsDecodedEntropy",
             entropy(Counter(decoded[:SCRIPT_STATS_MAX]), min(len(decoded), SCRIPT_STATS_MAX)))
    elif len(d) >= 12:
        text = decode_command_line(d)  # e.g. a Run value holding powershell -enc ...
    probe = (text if text is not None else d).lower()
    is_script = len(probe) >= 8 and any(m in probe for m in _SCRIPT_MARKERS)
    _put(event, "DetailsIsBase64", is_b64)
    _put(event, "DetailsIsHex", is_hex)
    _put(event, "DetailsIsPE", is_pe)
    _put(event, "DetailsIsScript", is_script)
    if is_pe and decoded is not None:
        _put(event, "DetailsDecoded",
             "".join(chr(b) if 32 <= b < 127 else "." for b in decoded[:DETAILS_PREVIEW]))
    elif text is not None:
        _put(event, "DetailsDecoded", text[:DETAILS_PREVIEW])
