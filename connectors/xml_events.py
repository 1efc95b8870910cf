"""Windows event XML -> the ``evtx`` package's JSON record shape, and streamed XML files.

Rendered event XML comes from ``EvtRender(h, EvtRenderEventXml)`` (the live event-log
source), ``wevtutil qe <log> /f:xml`` (a stream of ``<Event>`` elements, no root),
Event Viewer "Save as XML" / ``Get-WinEvent | % ToXml`` (an ``<Events>`` root) and the
``evtx`` package's own XML output. :func:`event_record` turns one ``<Event>`` element into
``{"Event": {"System": .., "EventData" | "UserData": ..}}``, the shape the ``evtx`` package
gives for EVTX input, so that :func:`connectors.normalize.normalize` applies the same
conventions to both paths (see that module's doc for the conventions themselves).

What this module decides for XML text (the EVTX binary XML carries value types; rendered
XML only text):

* **typing** (schema-free, measured on evtx-attack-samples): a value whose whole text is a
  decimal integer without leading zeros (``0``, ``4624``, ``-1``) in the Int64/UInt64 range
  becomes an int, ``true``/``false`` a bool; everything else (hex ``0x..``, floats,
  ``%%1833``, SIDs, GUIDs ...) stays a string. Applies to System values and attributes,
  named EventData ``Data`` values and UserData leaves; unnamed ``Data`` (classic
  insertion strings, always strings in EVTX) and ``Binary`` (hex dump) are never typed.
  Fields that a provider's manifest declares as strings but that hold decimal or
  ``true``/``false`` text (Security ``IpPort``/``PreAuthType``, Sysmon 7 ``Signed``,
  Defender ``Threat ID`` ...) stay strings, as in EVTX: :data:`STRING_FIELDS` lists them per
  provider (every such field of evtx-attack-samples; each is a string in every EVTX record
  of the corpus). A provider or field not listed is typed by the rule above.
* **empty elements**: a System element with neither attributes nor non-blank text
  (``<Correlation/>``, ``<Security/>``, pretty-printing whitespace) is null (the
  normaliser drops it); an empty ``<Data Name='X'/>`` is ``""`` (a present, empty field).
  Whitespace between child elements (indentation) is not content.
* **line endings**: kept as in the event (``\\r\\n`` stays ``\\r\\n``): an XML parser would
  turn them into ``\\n``, so literal CRs (and CR/LF/TAB in attribute values) are passed to
  the parser as character references.
* **characters XML 1.0 does not allow** (control characters other than TAB/LF/CR,
  U+FFFE/U+FFFF, unpaired surrogates; literal or as ``&#..;`` references), which EvtRender
  emits as they are in event data: parsed through private-use placeholders and put back,
  so the value holds the very characters the EVTX path gives (nothing is stripped).
* ``RenderingInfo`` (the rendered message, added by Event Viewer / ``/rd:true``) is not
  event content and is dropped: the EVTX path has no such element.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Iterator

from sigstream.connectors.normalize import NormalizeError

__all__ = ["XmlEventError", "RAW_KEEP", "STRING_FIELDS", "event_record", "split_events", "typed_text"]

# characters of the raw element text kept with an unreadable record
RAW_KEEP = 4096
# an <Event> element larger than this (characters) is reported, not buffered further
MAX_EVENT_CHARS = 16 * 1024 * 1024


class XmlEventError(NormalizeError):
    """The text is not a readable ``<Event>`` element."""


# ------------------------------------------------------------------ typing --

# EventData fields declared as strings by their provider's manifest whose text can look like a
# number or a boolean: never typed (EVTX, which carries the manifest's types, has them as strings).
# Provider -> field names; None: every EventData field of the provider (Defender declares all
# its event data as strings).
STRING_FIELDS: dict[str, frozenset[str] | None] = {
    "Microsoft-Windows-Security-Auditing": frozenset((
        "IpPort", "SourcePort", "DestPort", "PreAuthType", "PrimaryGroupId", "AttributeValue")),
    "Microsoft-Windows-Sysmon": frozenset(("Signed", "Archived", "QueryStatus")),
    "Microsoft-Windows-Windows Defender": None,
    "Microsoft-Windows-RPC": frozenset(("Endpoint",)),
    "Microsoft-Windows-PowerShell": frozenset(("param1", "param2", "param3")),
    "Microsoft-Windows-ProcessExitMonitor": frozenset(("param1", "param2", "param3")),
}

_DEC = re.compile(r"-?(?:0|[1-9][0-9]{0,19})\Z")
_I64_MIN = -(1 << 63)
_U64_MAX = (1 << 64) - 1


def typed_text(s: str) -> Any:
    """XML text -> int / bool / str by the schema-free rule in the module doc."""
    if s and len(s) <= 21:
        c = s[0]
        if (c.isdigit() or c == "-") and _DEC.match(s):
            n = int(s)
            if _I64_MIN <= n <= _U64_MAX:
                return n
        elif s == "true":
            return True
        elif s == "false":
            return False
    return s


# --------------------------------------------------------------- sanitise --

# a tag (quoted attribute values may contain '>')
_TAG = re.compile(r"""<(?:[^>"']|"[^"]*"|'[^']*')*>""")
_QUOTED = re.compile(r"""("[^"]*"|'[^']*')""")
_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_REF = re.compile(r"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")
_ATTR_WS = {"\r": "&#13;", "\n": "&#10;", "\t": "&#9;"}


def _allowed(cp: int) -> bool:
    return (cp in (9, 10, 13) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD
            or 0x10000 <= cp <= 0x10FFFF)


def _placeholder_index(cp: int) -> int:
    if cp < 0x20:
        return cp
    if cp in (0xFFFE, 0xFFFF):
        return 0x20 + cp - 0xFFFE
    if 0xD800 <= cp <= 0xDFFF:
        return 0x100 + cp - 0xD800
    return -1   # beyond Unicode (&#x110000;): not representable


def _quote_attr_ws(m: re.Match) -> str:
    return re.sub("[\r\n\t]", lambda c: _ATTR_WS[c.group()], m.group())


def _keep_line_ends(xml: str) -> str:
    """Literal CRs in text, and CR/LF/TAB in attribute values, as character references."""
    out = []
    pos = 0
    for m in _TAG.finditer(xml):
        text = xml[pos:m.start()]
        out.append(text.replace("\r", "&#13;") if "\r" in text else text)
        tag = m.group()
        if "\r" in tag or "\n" in tag or "\t" in tag:
            tag = _QUOTED.sub(_quote_attr_ws, tag)
        out.append(tag)
        pos = m.end()
    rest = xml[pos:]
    out.append(rest.replace("\r", "&#13;"))
    return "".join(out)


def _protect_bad_chars(xml: str) -> tuple[str, dict[int, str] | None]:
    """Replace characters XML 1.0 forbids by private-use placeholders; (xml, restore table)."""
    bad_ref = False
    if "&#" in xml:
        for m in _REF.finditer(xml):
            hx, dec = m.groups()
            if not _allowed(int(hx, 16) if hx else int(dec)):
                bad_ref = True
                break
    if not bad_ref and not _BAD.search(xml):
        return xml, None
    used = {ord(c) for c in xml if ord(c) >= 0xF0000}
    for base in (0xF0000, 0xF4000, 0xF8000, 0x100000, 0x104000, 0x108000):
        if not any(base <= u < base + 0x900 for u in used):
            break
    else:  # pragma: no cover - a text using all those private-use ranges
        raise XmlEventError("cannot protect invalid XML characters (private-use ranges in use)")
    restore: dict[int, str] = {}

    def sub_char(m: re.Match) -> str:
        c = m.group()
        ph = base + _placeholder_index(ord(c))
        restore[ph] = c
        return chr(ph)

    def sub_ref(m: re.Match) -> str:
        hx, dec = m.groups()
        cp = int(hx, 16) if hx else int(dec)
        if _allowed(cp):
            return m.group()
        i = _placeholder_index(cp)
        if i < 0:
            return m.group()    # left for the parser to reject
        restore[base + i] = chr(cp)
        return chr(base + i)

    xml = _BAD.sub(sub_char, xml)
    if bad_ref:
        xml = _REF.sub(sub_ref, xml)
    return xml, restore


def _restore(v: Any, table: dict[int, str]) -> Any:
    t = type(v)
    if t is str:
        return v.translate(table)
    if t is dict:
        return {k.translate(table): _restore(x, table) for k, x in v.items()}
    if t is list:
        return [_restore(x, table) for x in v]
    return v


# ---------------------------------------------------------------- convert --

def _local(tag: str) -> str:
    return tag[tag.index("}") + 1:] if tag[:1] == "{" else tag


_INDENT = re.compile(r"\n *\Z")


def _text(t: str | None) -> str | None:
    """Element text; pretty-printing indentation alone (LF + spaces) is empty."""
    if t is not None and t[:1] == "\n" and _INDENT.match(t):
        return ""
    return t


def _attrs(e: ET.Element) -> dict[str, Any]:
    return {_local(k): typed_text(v) for k, v in e.attrib.items()}


def _elem(e: ET.Element, system: bool = False) -> Any:
    """Element -> evtx-JSON value: text, ``{"#attributes", "#text"}`` or nested dict."""
    children = list(e)
    attrs = _attrs(e) if e.attrib else None
    if not children:
        text = _text(e.text)
        if system and text is not None and not text.strip():
            text = None
        if text is not None and _local(e.tag) != "Binary":
            text = typed_text(text)
        if attrs:
            d: dict[str, Any] = {"#attributes": attrs}
            if text is not None and (type(text) is not str or text.strip()):
                d["#text"] = text
            return d
        return text
    d = {}
    if attrs:
        d["#attributes"] = attrs
    for c in children:
        name = _local(c.tag)
        v = _elem(c, system)
        if name in d:
            prev = d[name]
            if type(prev) is list:
                prev.append(v)
            else:
                d[name] = [prev, v]
        else:
            d[name] = v
    return d


def _event_data(e: ET.Element, typed: bool, strings: frozenset[str]) -> Any:
    """EventData -> evtx-JSON; named values typed (if ``typed``) unless named in ``strings``."""
    data: list = []
    out: dict[str, Any] = {}
    if e.attrib:
        out["#attributes"] = _attrs(e)
    for d in e:
        name = _local(d.tag)
        if name == "Data" and not len(d):
            item: dict[str, Any] = {}
            text = _text(d.text)
            if "Name" in d.attrib:
                name = d.attrib["Name"]
                item["#attributes"] = {"Name": name}
                if text is None:
                    text = ""
                elif typed and name not in strings:
                    text = typed_text(text)
                item["#text"] = text
            else:   # classic insertion strings: always text (as the EVTX path gives them)
                item["#text"] = text
            data.append(item)
        else:
            v = _elem(d)
            if name in out:
                prev = out[name]
                out[name] = prev + [v] if type(prev) is list else [prev, v]
            else:
                out[name] = v
    if data:
        out["Data"] = data
    return out or None


_NONE: frozenset[str] = frozenset()


def _typing_of(sysd: dict | None) -> tuple[bool, frozenset[str]]:
    """(type EventData values at all, names kept as strings) for the event's provider."""
    prov = sysd.get("Provider") if sysd else None
    a = prov.get("#attributes") if type(prov) is dict else None
    name = a.get("Name") if type(a) is dict else None
    if name not in STRING_FIELDS:
        return True, _NONE
    fields = STRING_FIELDS[name]
    return (False, _NONE) if fields is None else (True, fields)


def event_record(xml: str) -> dict:
    """One ``<Event>`` element (text) -> ``{"Event": {...}}`` in the evtx package's JSON shape.

    Raises :class:`XmlEventError` when the text is not a readable ``<Event>`` element.
    """
    if type(xml) is not str:
        if isinstance(xml, (bytes, bytearray)):
            xml = bytes(xml).decode("utf-8", errors="replace")
        else:
            raise XmlEventError(f"event XML is a {type(xml).__name__}, not text")
    if xml[:1] == "\ufeff":
        xml = xml[1:]
    src, table = _protect_bad_chars(xml)
    if "\r" in src or "\t" in src or "\n" in src:
        src = _keep_line_ends(src)
    try:
        root = ET.fromstring(src)
    except ET.ParseError as e:
        raise XmlEventError(f"event XML does not parse: {e}") from None
    if _local(root.tag) != "Event":
        raise XmlEventError(f"event XML root is <{_local(root.tag)}>, not <Event>")
    ev: dict[str, Any] = {}
    if root.attrib:
        ev["#attributes"] = {_local(k): v for k, v in root.attrib.items()}
    for c in root:
        name = _local(c.tag)
        if name == "System":
            sysd: dict[str, Any] = {}
            for s in c:
                sysd[_local(s.tag)] = _elem(s, system=True)
            ev["System"] = sysd
        elif name == "EventData":
            ev["EventData"] = _event_data(c, *_typing_of(ev.get("System")))
        elif name == "RenderingInfo":
            continue
        else:
            ev[name] = _elem(c)
    if "System" not in ev:
        raise XmlEventError("event XML has no <System>")
    rec = {"Event": ev}
    return _restore(rec, table) if table else rec


# ----------------------------------------------------------------- stream --

_START = re.compile(r"<Event(?=[\s>/])")
_CLOSE = re.compile(r"</Event\s*>")


def split_events(chunks: Iterable[str]) -> Iterator[tuple[int, str, str | None]]:
    """Cut a stream of text into ``<Event>`` elements without parsing the whole.

    Yields ``(ordinal, element text, problem)``: ``problem`` is None for a complete
    element, else why the element is cut (the next ``<Event>`` starts before its end, the
    input ends inside it, it is larger than :data:`MAX_EVENT_CHARS`). Anything between
    elements (``<?xml ..?>``, ``<Events>``, comments, whitespace) is skipped. Works for
    ``wevtutil qe /f:xml`` output (no root) and an ``<Events>`` root alike.
    """
    buf = ""
    n = 0
    start = -1       # start of the element being read in buf, -1: between elements
    eof = False
    it = iter(chunks)
    while True:
        if start < 0:
            m = _START.search(buf)
            if m is not None:
                start = m.start()
                continue
            if eof:
                return
            buf = buf[-6:]   # a possible partial "<Event"
        else:
            tm = _TAG.match(buf, start)
            if tm is not None:
                if tm.group().endswith("/>"):
                    n += 1
                    yield n, tm.group(), None
                    buf, start = buf[tm.end():], -1
                    continue
                em = _CLOSE.search(buf, tm.end())
                sm = _START.search(buf, tm.end())
                if sm is not None and (em is None or sm.start() < em.start()):
                    n += 1
                    yield n, buf[start:sm.start()], "element not closed before the next <Event>"
                    buf, start = buf[sm.start():], 0
                    continue
                if em is not None:
                    n += 1
                    yield n, buf[start:em.end()], None
                    buf, start = buf[em.end():], -1
                    continue
            if eof:
                n += 1
                yield n, buf[start:], "input ends inside the element"
                return
            if len(buf) - start > MAX_EVENT_CHARS:
                n += 1
                yield n, buf[start:start + RAW_KEEP], \
                    f"element larger than {MAX_EVENT_CHARS} characters"
                buf, start = buf[start + 6:], -1
                continue
            buf, start = buf[start:], 0
        try:
            buf += next(it)
        except StopIteration:
            eof = True
