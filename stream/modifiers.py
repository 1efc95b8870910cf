"""Sigma value modifiers that pySigma 1.x lacks or gets wrong, registered into pySigma.

- `utf16le` is the Sigma specification's name for `wide`; pySigma only knows `wide`.
- pySigma builds UTF-16 text by decoding the encoded bytes as UTF-8, which fails
  for non-ASCII text and writes the `utf16` byte order mark as EF BB BF instead
  of FF FE. Here the encoded bytes are kept one character per byte (latin-1), so
  a following `base64`/`base64offset` encodes exactly the UTF-16 bytes.
"""
from __future__ import annotations

from sigma import modifiers as _m
from sigma.exceptions import SigmaValueError
from sigma.types import SigmaString


class EncodedString(SigmaString):
    """A Sigma string whose characters stand for bytes (0-255)."""

    def __bytes__(self) -> bytes:
        return "".join(p for p in self.s if isinstance(p, str)).encode("latin-1")


def _encode(val: SigmaString, codec: str, bom: bytes, source) -> SigmaString:
    parts: list = [bom.decode("latin-1")] if bom else []
    for item in val.s:
        if isinstance(item, str):
            try:
                parts.append(item.encode(codec).decode("latin-1"))
            except UnicodeEncodeError as e:
                raise SigmaValueError(f"cannot encode {str(val)!r} as {codec}: {e}", source=source)
        else:
            parts.append(item)
    s = EncodedString()
    s.s = [p for p in parts if p != ""]
    return s


class UTF16LEModifier(_m.SigmaValueModifier[SigmaString, SigmaString]):
    """UTF-16LE without byte order mark (`wide`, `utf16le`)."""

    def modify(self, val: SigmaString) -> SigmaString:
        return _encode(val, "utf-16-le", b"", self.source)


class UTF16BEModifier(_m.SigmaValueModifier[SigmaString, SigmaString]):
    def modify(self, val: SigmaString) -> SigmaString:
        return _encode(val, "utf-16-be", b"", self.source)


class UTF16Modifier(_m.SigmaValueModifier[SigmaString, SigmaString]):
    """UTF-16LE with the byte order mark FF FE in front."""

    def modify(self, val: SigmaString) -> SigmaString:
        return _encode(val, "utf-16-le", b"\xff\xfe", self.source)


def register() -> None:
    """Install the fixed modifiers into pySigma's modifier table (idempotent)."""
    table = {"wide": UTF16LEModifier, "utf16le": UTF16LEModifier,
             "utf16be": UTF16BEModifier, "utf16": UTF16Modifier}
    _m.modifier_mapping.update(table)
    for name, cls in table.items():
        _m.reverse_modifier_mapping[cls.__name__] = "wide" if cls is UTF16LEModifier else name
