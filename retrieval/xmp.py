"""Read simple properties out of an XMP packet, safely.

XMP is RDF/XML that cameras, phones and editors embed in JPEG, PNG (iTXt),
WebP, TIFF, HEIF and AVIF files. A photo library reads it from files it did
not write, so the parser must be safe against hostile XML: this one uses
expat directly and refuses any document type declaration (which is where
entity definitions live, so no entity is ever expanded: no "billion laughs",
no external entity fetch), caps the packet size, and never raises.

Only what photo metadata needs is extracted: simple properties, written
either as attributes of ``rdf:Description`` or as its child elements (for an
``rdf:Alt``/``rdf:Seq``/``rdf:Bag`` value, the first ``rdf:li``).
"""

from __future__ import annotations

from xml.parsers import expat

__all__ = ["MAX_XMP_BYTES", "NS", "XmpProperties", "parse_xmp"]

# Some editors embed whole thumbnails or history in XMP; real capture data sits
# in the first few KB. Anything larger than this is skipped rather than parsed.
MAX_XMP_BYTES = 4 << 20

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
# Namespace URIs of the properties photo metadata reads, by their usual prefix.
NS = {
    "exif": "http://ns.adobe.com/exif/1.0/",
    "exifEX": "http://cipa.jp/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
}

# (namespace URI, local name) -> value; the first occurrence wins.
XmpProperties = dict[tuple[str, str], str]

_SEP = " "  # expat's namespace separator: "uri local"
_MAX_VALUE_CHARS = 4096  # a single property value longer than this is junk for our purposes


class _Refused(Exception):
    """Raised inside expat callbacks to stop a document we will not parse."""


def parse_xmp(packet: bytes | str | None) -> XmpProperties:
    """Simple properties of an XMP packet; an empty dict for anything unreadable.

    Never raises: malformed, truncated, oversized or hostile XML (a DOCTYPE,
    entity declarations) gives whatever was read before the problem, or nothing.
    """
    if not packet:
        return {}
    if isinstance(packet, str):
        data = packet.encode("utf-8", "replace")
    elif isinstance(packet, (bytes, bytearray, memoryview)):
        data = bytes(packet)
    else:
        return {}
    if len(data) > MAX_XMP_BYTES:
        return {}
    data = _trim_packet(data)
    if not data or b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return {}
    reader = _Reader()
    parser = expat.ParserCreate(namespace_separator=_SEP)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    # Belt and braces on top of the DOCTYPE check above: any declaration stops the parse.
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    try:
        parser.Parse(data, True)
    except (_Refused, expat.ExpatError, ValueError, RecursionError, MemoryError):
        pass  # keep what was read before the problem (truncated packets are common)
    return reader.props


def _refuse(*_args: object) -> None:
    raise _Refused()


def _trim_packet(data: bytes) -> bytes:
    """The XML between the packet wrapper: drop leading junk and trailing padding/NULs."""
    # Some writers prepend bytes (a length, a namespace string) before the XML.
    start = data.find(b"<")
    if start < 0:
        return b""
    utf16 = data[start + 1:start + 2] == b"\x00"  # a UTF-16 packet: let expat read its BOM
    if utf16 and start > 0 and data[start - 1:start] == b"\xfe":
        start -= 2  # keep the BOM
    data = data[start:]
    if not utf16:
        end = data.rfind(b">")
        data = data[: end + 1] if end >= 0 else b""
    return data


class _Reader:
    """Collects rdf:Description attributes and simple child-element values."""

    def __init__(self) -> None:
        self.props: XmpProperties = {}
        self._stack: list[str] = []
        self._prop: tuple[str, str] | None = None  # the property element being read
        self._prop_depth = 0
        self._text: list[str] = []
        self._li_text: list[str] | None = None  # text of the first rdf:li, when the value is a container
        self._in_li = False

    def _store(self, key: tuple[str, str], value: str) -> None:
        value = value.strip()
        if value and key not in self.props and len(value) <= _MAX_VALUE_CHARS:
            self.props[key] = value

    def start(self, name: str, attrs: dict[str, str]) -> None:
        parent = self._stack[-1] if self._stack else ""
        self._stack.append(name)
        if name == RDF + _SEP + "Description":
            for attr, value in attrs.items():
                key = _split(attr)
                if key is not None and key[0] != RDF:
                    self._store(key, value)
            return
        if self._prop is None:
            if parent == RDF + _SEP + "Description":
                key = _split(name)
                if key is not None:
                    self._prop, self._prop_depth = key, len(self._stack)
                    self._text, self._li_text, self._in_li = [], None, False
            return
        if name == RDF + _SEP + "li" and self._li_text is None:
            self._li_text, self._in_li = [], True

    def end(self, name: str) -> None:
        depth = len(self._stack)
        self._stack.pop()
        if self._prop is None:
            return
        if self._in_li and name == RDF + _SEP + "li":
            self._in_li = False
        if depth == self._prop_depth:
            value = "".join(self._li_text) if self._li_text is not None else "".join(self._text)
            self._store(self._prop, value)
            self._prop = None

    def text(self, data: str) -> None:
        if self._prop is None:
            return
        if self._in_li and self._li_text is not None:
            if sum(map(len, self._li_text)) < _MAX_VALUE_CHARS:
                self._li_text.append(data)
        elif len(self._stack) == self._prop_depth and sum(map(len, self._text)) < _MAX_VALUE_CHARS:
            self._text.append(data)


def _split(name: str) -> tuple[str, str] | None:
    """"uri local" -> (uri, local); names without a namespace are not XMP properties."""
    uri, sep, local = name.rpartition(_SEP)
    return (uri, local) if sep and uri else None
