"""Raw metadata of an opened image: its EXIF IFDs, XMP properties and IPTC datasets.

Everything here reads what Pillow's plugins already hold after ``Image.open``
(or, for a PNG eXIf chunk after the image data, walks chunk headers of the
open stream), so no pixel is decoded and the file is not read again. Damaged
metadata reads as absent; nothing raises. :mod:`retrieval.photo_meta` decides
what the values mean.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable
from typing import Any

from PIL import Image

from .photo_time import clean_text
from .xmp import NS, XmpProperties, parse_xmp

__all__ = ["TagReader", "exif_coord", "is_below_sea_level", "jxl_metadata_image", "number", "xmp_coord"]

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_IPTC_RESOURCE = 0x0404  # Photoshop image resource holding IPTC IIM data
_TIFF_IPTC = 33723
_TIFF_XMP = 700
_MAX_EXIF_BYTES = 1 << 20  # a PNG eXIf chunk larger than this is not metadata we want
_XMP_COORD = re.compile(r"^(\d{1,3}(?:\.\d+)?)(?:,(\d{1,2}(?:\.\d+)?))?(?:,(\d{1,2}(?:\.\d+)?))?([NSEW])$", re.IGNORECASE)


class TagReader:
    """The image's EXIF IFDs, read eagerly (cheap), and its XMP and IPTC, parsed on first use."""

    def __init__(self, img: Image.Image) -> None:
        self.img = img
        self.ifd0: _LazyTags | dict[int, Any] = {}
        self.exif_ifd: dict[int, Any] = {}
        self.gps_ifd: dict[int, Any] = {}
        exif = _exif_of(img)
        if exif is not None:
            self.ifd0 = _LazyTags(exif)  # IFD0 can hold dozens of tags; decode only the few we read
            self.exif_ifd = _safe_dict(lambda: dict(exif.get_ifd(_EXIF_IFD)))
            self.gps_ifd = _safe_dict(lambda: dict(exif.get_ifd(_GPS_IFD)))
        self._xmp: XmpProperties | None = None
        self._iptc: dict[tuple[int, int], bytes] | None = None

    def exif_tag(self, tag: int) -> Any:
        """An Exif-IFD tag, or the same tag misplaced in IFD0 (some writers do that)."""
        value = self.exif_ifd.get(tag)
        return value if value is not None else self.ifd0.get(tag)

    @property
    def xmp(self) -> XmpProperties:
        if self._xmp is None:
            self._xmp = parse_xmp(_xmp_packet(self.img))
        return self._xmp

    def xmp_value(self, prefix: str, name: str) -> str | None:
        return self.xmp.get((NS[prefix], name))

    @property
    def iptc(self) -> dict[tuple[int, int], bytes]:
        if self._iptc is None:
            self._iptc = _iptc_records(_iptc_bytes(self.img))
        return self._iptc


class _LazyTags:
    """``get`` on a Pillow Exif that decodes one tag at a time and reads a damaged tag as absent."""

    def __init__(self, exif: Image.Exif) -> None:
        self._exif = exif

    def get(self, tag: int, default: Any = None) -> Any:
        try:
            return self._exif.get(tag, default)
        except Exception:  # noqa: BLE001 - a tag pointing outside the data, an unknown type
            return default


def _safe_dict(read: Callable[[], dict[int, Any]]) -> dict[int, Any]:
    try:
        return read()
    except Exception:  # noqa: BLE001 - a damaged IFD (bad offsets, loops) reads as empty
        return {}


def _exif_of(img: Image.Image) -> Image.Exif | None:
    """The image's EXIF without decoding pixels (Pillow's PNG getexif() would decode the image)."""
    try:
        info = img.info
        if img.format == "PNG" and "exif" not in info and "Raw profile type exif" not in info:
            raw = _png_late_exif(img)
            if not raw:
                return None
            exif = Image.Exif()
            exif.load(raw)
            return exif
        return img.getexif()
    except Exception:  # noqa: BLE001 - malformed EXIF is the same as none
        return None


def _png_late_exif(img: Image.Image) -> bytes | None:
    """An eXIf chunk after the image data (allowed by the PNG spec; Pillow reads it only while decoding).

    Walks the chunk headers of the already-open stream, skipping data, and
    puts the stream back where it was.
    """
    fp = getattr(img, "fp", None)
    if fp is None or not hasattr(fp, "seek"):
        return None
    start = fp.tell()
    try:
        fp.seek(8)  # after the PNG signature
        for _ in range(1_000_000):
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return fp.read(length) if length <= _MAX_EXIF_BYTES else None
            if kind == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
        return None
    except (OSError, ValueError, struct.error):
        return None
    finally:
        try:
            fp.seek(start)
        except (OSError, ValueError):
            pass


def _xmp_packet(img: Image.Image) -> bytes | str | None:
    info = img.info
    packet = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if packet is None and hasattr(img, "tag_v2"):
        packet = img.tag_v2.get(_TIFF_XMP)  # TIFF's XMP tag, when the plugin did not copy it into info
    if isinstance(packet, tuple) and packet:
        packet = packet[0]
    return packet if isinstance(packet, (bytes, str)) else None


_JXL_SIGNATURE_BOX = 12  # the container's first box: size 12, type "JXL ", 4 bytes of signature


def jxl_metadata_image(stream: Any) -> Image.Image | None:
    """A 1x1 stand-in image carrying the EXIF and XMP of a JPEG XL container, for :class:`TagReader`.

    pillow-jxl-plugin decodes the whole picture inside ``Image.open``, so its
    metadata is read here from the container's ``Exif`` and ``xml `` boxes
    instead, walking box headers and skipping the codestream (no pixel is
    decoded). Brotli-compressed boxes (``brob``) are skipped: reading them
    would need another package. None when the stream holds neither box. The
    stream is put back where it was.
    """
    start = stream.tell()
    found: dict[bytes, bytes] = {}
    try:
        pos = start
        for _ in range(100_000):
            stream.seek(pos)
            head = stream.read(8)
            if len(head) < 8:
                break
            size, kind = struct.unpack(">I4s", head)
            header = 8
            if size == 1:  # a 64-bit size follows
                extended = stream.read(8)
                if len(extended) < 8:
                    break
                size, header = struct.unpack(">Q", extended)[0], 16
            body = (size - header) if size else None  # 0: the box runs to the end of the file
            if kind in (b"Exif", b"xml ") and kind not in found:
                limit = _MAX_EXIF_BYTES if kind == b"Exif" else 4 << 20
                if body is not None and body > limit:
                    pass  # too large to be the metadata we want
                else:
                    found[kind] = stream.read(limit if body is None else body)
            if size == 0 or size < header or len(found) == 2:
                break
            pos += size
    except (OSError, ValueError, struct.error, OverflowError):
        pass
    finally:
        try:
            stream.seek(start)
        except (OSError, ValueError):
            pass
    if not found:
        return None
    img = Image.new("L", (1, 1))
    exif = found.get(b"Exif")
    if exif is not None:
        if exif.startswith(b"Exif\x00\x00"):
            exif = exif[6:]
        elif not exif.startswith((b"MM\x00*", b"II*\x00")) and len(exif) >= 4:
            # The standard box: a 4-byte offset to the TIFF header first (some writers leave it out).
            exif = exif[4 + int.from_bytes(exif[:4], "big"):]
        if exif.startswith((b"MM\x00*", b"II*\x00")):
            img.info["exif"] = b"Exif\x00\x00" + exif
    if found.get(b"xml "):
        img.info["xmp"] = found[b"xml "]
    return img


def _iptc_bytes(img: Image.Image) -> bytes:
    try:
        resources = img.info.get("photoshop")
        if isinstance(resources, dict) and isinstance(resources.get(_IPTC_RESOURCE), bytes):
            return resources[_IPTC_RESOURCE]
        tags = getattr(img, "tag_v2", None)
        value = tags.get(_TIFF_IPTC) if tags is not None else None
        if isinstance(value, bytes):
            return value
        if isinstance(value, tuple):
            if all(isinstance(v, int) for v in value):
                return bytes(v & 0xFF for v in value)
            return b"".join(v for v in value if isinstance(v, bytes))
    except Exception:  # noqa: BLE001 - unreadable IPTC is no IPTC
        pass
    return b""


def _iptc_records(data: bytes) -> dict[tuple[int, int], bytes]:
    """IPTC IIM datasets (record, dataset) -> the first value; stops at the first malformed one."""
    out: dict[tuple[int, int], bytes] = {}
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x1C:
        record, dataset = data[pos + 1], data[pos + 2]
        size = int.from_bytes(data[pos + 3:pos + 5], "big")
        pos += 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes hold the length
            count = size & 0x7FFF
            if count > 4 or pos + count > len(data):
                break
            size = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        if pos + size > len(data):
            break
        out.setdefault((record, dataset), data[pos:pos + size])
        pos += size
    return out


def is_below_sea_level(ref: object) -> bool:
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref[:1]) == b"\x01"
    if isinstance(ref, int):
        return ref == 1
    return clean_text(ref) == "1"


def number(value: object) -> float | None:
    """A finite float from an IFDRational, int, float or "n/d" text; None for 0/0 and junk."""
    try:
        if isinstance(value, str):
            num, sep, den = value.strip().partition("/")
            number = float(num) / float(den) if sep else float(num)
        elif isinstance(value, (int, float)) or hasattr(value, "__float__"):
            number = float(value)  # type: ignore[arg-type]
        else:
            return None
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def exif_coord(value: object, ref: object, refs: str) -> float | None:
    """Degrees from EXIF's (deg, min, sec) rationals (or fewer parts) and an N/S or E/W ref."""
    parts = value if isinstance(value, tuple) else (value,) if value is not None else ()
    if not 1 <= len(parts) <= 3:
        return None
    numbers = [number(p) for p in parts]
    if any(n is None or n < 0 for n in numbers[1:]) or numbers[0] is None:
        return None
    degrees = numbers[0] + sum(n / 60 ** i for i, n in enumerate(numbers[1:], start=1))  # type: ignore[operator]
    ref_text = (clean_text(ref) or "").upper()[:1]
    if ref_text and ref_text not in refs:
        return None  # a ref of "\x00" or junk: the position cannot be trusted
    if not ref_text:
        return None if ref is not None else degrees  # no ref tag at all: take the value's own sign
    return -abs(degrees) if ref_text == refs[1] else abs(degrees)


def xmp_coord(value: str | None, refs: str) -> float | None:
    """XMP's "DDD,MM,SSk" or "DDD,MM.mmk" (k = N/S/E/W), or a plain signed decimal."""
    if not value:
        return None
    text = value.replace(" ", "")
    match = _XMP_COORD.match(text)
    if match is None:
        return number(text) if re.match(r"^[+-]?\d{1,3}(\.\d+)?$", text) else None
    deg, minutes, seconds, ref = match.groups()
    if ref.upper() not in refs:
        return None
    degrees = float(deg) + float(minutes or 0) / 60 + float(seconds or 0) / 3600
    return -degrees if ref.upper() == refs[1] else degrees
