"""When, where and with what a photo was taken, from the metadata in its file.

Reads EXIF (the main IFD, the Exif IFD and the GPS IFD), XMP and IPTC from an
image that Pillow has opened but not decoded: indexing already holds every
file open from bytes in memory, so the metadata costs a parse of a few KB of
headers, never a pixel decode and never a second read of the file. Works for
every format whose Pillow plugin exposes EXIF/XMP: JPEG/MPO, HEIC/HEIF
(pillow-heif), AVIF, JPEG XL (pillow-jxl-plugin), PNG (eXIf chunk, also after
the image data; XMP in iTXt), WebP and TIFF.

Capture time, best source first (``PhotoMeta.time_source``):

1. ``exif-original``  EXIF DateTimeOriginal (+ OffsetTimeOriginal, SubSecTimeOriginal)
2. ``xmp``            exif:DateTimeOriginal, photoshop:DateCreated
3. ``iptc``           IPTC DateCreated + TimeCreated
4. ``exif-digitized`` EXIF DateTimeDigitized (+ OffsetTimeDigitized)
5. ``xmp``            xmp:CreateDate, exif:DateTimeDigitized
6. ``gps``            the GPS receiver's UTC date and time
7. ``exif-datetime``  EXIF DateTime (+ OffsetTime)
8. ``file-mtime``     the file's modification time

Capture dates (2, 3) rank above the digitized date because a scanned print
carries the scan date as "digitized" and the photo's date as "created";
EXIF DateTime ranks low because the EXIF standard makes it the time the file
was last changed (editors rewrite it: the sample photos show Photoshop's
2023 save time beside a 2007 capture). When the chosen time has no offset, the
offset is taken from another tag showing the same wall-clock time with one
(Lightroom's XMP, IPTC), else from the GPS time when the two agree to a
quarter hour (``PhotoMeta.offset_source`` says which). A time whose offset stays
unknown is stored as if it were UTC, so that it sorts and filters by the date
the camera showed (see :mod:`retrieval.photo_time`).

Nothing here raises on a bad file: damaged tags are skipped and the rest is
returned.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Literal

from PIL import Image

from .photo_tags import TagReader, exif_coord, is_below_sea_level, jxl_metadata_image, number, xmp_coord
from .photo_time import (
    Stamp,
    clean_text,
    offset_from_gps,
    parse_datetime_text,
    parse_iptc_datetime,
)

__all__ = [
    "META_VERSION",
    "TIME_SOURCES",
    "PhotoMeta",
    "TimeSource",
    "camera_matches",
    "file_time_meta",
    "metadata_from_image",
    "normalise_camera",
    "read_photo_metadata",
]

# Which reader filled an item's metadata columns (items.sqlite ``meta_version``). Raise it when
# this module learns to read more (a new tag, a fixed parse): the next 'mmsearch index' then
# reads every item with an older version again, from its file, without re-encoding it.
META_VERSION = 1

TimeSource = Literal["exif-original", "xmp", "iptc", "exif-digitized", "gps", "exif-datetime", "file-mtime"]
TIME_SOURCES: tuple[str, ...] = (
    "exif-original", "xmp", "iptc", "exif-digitized", "gps", "exif-datetime", "file-mtime",
)

# EXIF tag numbers (CIPA DC-008).
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_DT_ORIGINAL, _DT_DIGITIZED = 0x9003, 0x9004
_OFFSET, _OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 0x9010, 0x9011, 0x9012
_SUBSEC, _SUBSEC_ORIGINAL, _SUBSEC_DIGITIZED = 0x9290, 0x9291, 0x9292
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_GPS_ALT_REF, _GPS_ALT, _GPS_TIME, _GPS_DATE = 5, 6, 7, 29
_IPTC_DATE, _IPTC_TIME = (2, 55), (2, 60)


@dataclass(frozen=True)
class PhotoMeta:
    """What a photo's file says about when, where and with what it was taken.

    ``taken_at`` is ISO 8601 with the UTC offset when one is known
    (``utc_offset_min``; ``offset_source`` says where it came from: ``exif``,
    ``xmp``, ``iptc``, ``gps`` or ``local-clock`` for a file time). ``taken_ts``
    is POSIX seconds; when the offset is unknown it reads the wall-clock time
    as UTC (wrong by at most the unknown offset, and the same on every machine).
    ``local_ts`` is always the wall clock read as UTC: what date filters compare.
    Every field is ``None`` when the file does not say.
    """

    taken_at: str | None = None
    taken_ts: float | None = None
    time_source: str | None = None
    utc_offset_min: int | None = None
    offset_source: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None

    @property
    def has_gps(self) -> bool:
        """Whether the photo carries a usable position."""
        return self.gps_lat is not None and self.gps_lon is not None

    @property
    def camera(self) -> str | None:
        """``"Apple iPhone 12 Pro"``: make and model for display, or whichever is known."""
        parts = [p for p in (self.camera_make, self.camera_model) if p]
        return " ".join(parts) or None

    @property
    def local_ts(self) -> float | None:
        """The capture time's wall clock read as UTC (equal to ``taken_ts`` when the offset is unknown)."""
        if self.taken_ts is None:
            return None
        return self.taken_ts + 60 * (self.utc_offset_min or 0)

    def as_dict(self) -> dict[str, Any]:
        """All fields, ``None`` included, for JSON and for the items table."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PhotoMeta:
        """The inverse of :meth:`as_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


# ---------------------------------------------------------------- public API


def metadata_from_image(img: Image.Image, *, mtime_ns: int | None = None) -> PhotoMeta:
    """Metadata of an opened (not necessarily decoded) image; never decodes pixels, never raises.

    ``mtime_ns`` is the file's modification time, used (and marked
    ``file-mtime``) only when the file carries no capture time.
    """
    reader = TagReader(img)
    try:
        make, model = normalise_camera(reader.ifd0.get(_MAKE), reader.ifd0.get(_MODEL))
        if make is None and model is None:
            make, model = normalise_camera(reader.xmp_value("tiff", "Make"), reader.xmp_value("tiff", "Model"))
        lens = _lens(reader)
        lat, lon, alt = _position(reader)
        stamp, source, offset_source = _capture_time(reader)
    except Exception:  # noqa: BLE001 - one odd tag must not cost the rest (or the indexing run)
        return _from_mtime(PhotoMeta(), mtime_ns)
    meta = PhotoMeta(
        camera_make=make, camera_model=model, lens=lens, gps_lat=lat, gps_lon=lon, gps_alt=alt,
    )
    if stamp is None:
        return _from_mtime(meta, mtime_ns)
    return _with_stamp(meta, stamp, source, offset_source)


def read_photo_metadata(
    source: str | os.PathLike[str] | bytes | BinaryIO, *, mtime_ns: int | None = None
) -> PhotoMeta:
    """Metadata of an image file (path, bytes or binary file object); never raises for a bad file.

    For a path, ``mtime_ns`` defaults to the file's own. Reads headers only,
    never pixels: JPEG XL, whose plugin decodes the whole picture on open, is
    read from its container's metadata boxes instead.
    """
    from .loading import register_format_plugins

    register_format_plugins()
    try:
        if isinstance(source, (str, os.PathLike)):
            if mtime_ns is None:
                mtime_ns = os.stat(source).st_mtime_ns
            with open(source, "rb") as fh:  # Pillow reads only the headers it needs
                return _read_stream(fh, mtime_ns)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _read_stream(io.BytesIO(bytes(source)), mtime_ns)
        seekable = getattr(source, "seekable", None)
        stream = source if seekable is not None and seekable() else io.BytesIO(source.read())
        return _read_stream(stream, mtime_ns)
    except (OSError, ValueError):
        return _from_mtime(PhotoMeta(), mtime_ns)


def _read_stream(stream: BinaryIO, mtime_ns: int | None) -> PhotoMeta:
    from .jxl import CODESTREAM_SIGNATURE, CONTAINER_SIGNATURE

    try:
        start = stream.tell()
        head = stream.read(1 << 16)
        stream.seek(start)
        if head.startswith(CODESTREAM_SIGNATURE):
            return _from_mtime(PhotoMeta(), mtime_ns)  # a bare codestream has no room for EXIF or XMP
        if head.startswith(CONTAINER_SIGNATURE):
            # The JPEG XL plugin decodes the picture in Image.open: read the metadata boxes instead.
            stand_in = jxl_metadata_image(stream)
            if stand_in is None:
                return _from_mtime(PhotoMeta(), mtime_ns)
            return metadata_from_image(stand_in, mtime_ns=mtime_ns)
        with Image.open(stream) as img:
            return metadata_from_image(img, mtime_ns=mtime_ns)
    except Exception:  # noqa: BLE001 - not an image, truncated, a decompression bomb: no metadata
        return _from_mtime(PhotoMeta(), mtime_ns)


def file_time_meta(meta: PhotoMeta, mtime_ns: int | None) -> PhotoMeta:
    """``meta`` with its capture time replaced by the file time ``mtime_ns`` (marked ``file-mtime``).

    For a copy that takes its metadata from a content twin: when the twin's
    time was its own file time, the copy's is its own file time, not the twin's.
    """
    cleared = replace(meta, taken_at=None, taken_ts=None, time_source=None, utc_offset_min=None, offset_source=None)
    return _from_mtime(cleared, mtime_ns)


def camera_matches(query: str, make: str | None, model: str | None) -> bool:
    """``--camera`` matching: every word of ``query`` occurs in "make model", case-insensitively."""
    haystack = f"{make or ''} {model or ''}".casefold()
    words = query.casefold().split()
    return bool(words) and bool(haystack.strip()) and all(w in haystack for w in words)


# ---------------------------------------------------------------- camera names

# Makes as cameras write them -> as people say them. Unknown makes keep their
# spelling, minus corporate suffixes, with ALL-CAPS words title-cased.
_MAKES = {
    "apple": "Apple", "canon": "Canon", "casio computer co.,ltd.": "Casio", "dji": "DJI",
    "eastman kodak company": "Kodak", "fuji photo film co., ltd.": "Fujifilm", "fujifilm": "Fujifilm",
    "google": "Google", "gopro": "GoPro", "hmd global": "HMD Global", "htc": "HTC", "huawei": "Huawei",
    "konica minolta camera, inc.": "Konica Minolta", "leica camera ag": "Leica", "lge": "LG",
    "lg electronics": "LG", "minolta co., ltd.": "Minolta", "motorola": "Motorola",
    "nikon corporation": "Nikon", "olympus corporation": "Olympus", "olympus imaging corp.": "Olympus",
    "olympus optical co.,ltd": "Olympus", "om digital solutions": "OM System", "oneplus": "OnePlus",
    "oppo": "OPPO", "panasonic": "Panasonic", "pentax corporation": "Pentax", "asahi optical co.,ltd": "Pentax",
    "ricoh imaging company, ltd.": "Ricoh", "samsung": "Samsung", "samsung techwin": "Samsung",
    "sony": "Sony", "sony ericsson": "Sony Ericsson", "xiaomi": "Xiaomi", "zte": "ZTE",
}
_CORPORATE = re.compile(
    r"[\s,]+(corporation|corp\.?|co\.?,?\s*ltd\.?|company|imaging|inc\.?|ltd\.?|gmbh|ag|s\.?a\.?)$", re.IGNORECASE
)


def normalise_camera(make: object, model: object) -> tuple[str | None, str | None]:
    """Clean make/model tags: trimmed, NULs and padding gone, the make not repeated in the model.

    ``("NIKON CORPORATION", "NIKON D750")`` -> ``("Nikon", "D750")``;
    ``("Apple", "iPhone 12 Pro")`` stays as it is.
    """
    raw_make = _squash(clean_text(make))
    raw_model = _squash(clean_text(model))
    nice_make = _nice_make(raw_make) if raw_make else None
    if raw_model and (raw_make or nice_make):
        # The model often repeats the make ("Canon EOS R5", "NIKON D750", "PENTAX K10D").
        prefixes = {p for p in (raw_make, nice_make, (raw_make or "").split(" ")[0]) if p}
        for prefix in sorted(prefixes, key=len, reverse=True):
            rest = raw_model[len(prefix):]
            if raw_model[: len(prefix)].casefold() == prefix.casefold() and (not rest or rest[0] in " -_"):
                stripped = rest.lstrip(" -_")
                if stripped:
                    raw_model = stripped
                break
    return nice_make, raw_model


def _squash(text: str | None) -> str | None:
    return " ".join(text.split()) if text else None


def _nice_make(make: str) -> str:
    known = _MAKES.get(make.casefold())
    if known:
        return known
    short = make
    while True:  # "FOO OPTICAL CO., LTD." -> "FOO OPTICAL"
        trimmed = _CORPORATE.sub("", short)
        if trimmed == short or not trimmed:
            break
        short = trimmed
    known = _MAKES.get(short.casefold())
    if known:
        return known
    return " ".join(w.capitalize() if w.isupper() and len(w) >= 5 else w for w in short.split())


def _lens(reader: TagReader) -> str | None:
    for value in (
        reader.exif_ifd.get(_LENS_MODEL),
        reader.xmp_value("exifEX", "LensModel"),
        reader.xmp_value("aux", "Lens"),
    ):
        text = _squash(clean_text(value))
        if text and text.strip("-0 ").casefold() not in ("", "unknown", "n/a"):
            return text
    return None


# ---------------------------------------------------------------- capture time


def _capture_time(reader: TagReader) -> tuple[Stamp | None, str | None, str | None]:
    """(stamp, time source, offset source) by the precedence in the module docstring."""
    exif = reader.exif_tag
    candidates: list[tuple[str, Callable[[], Stamp | None]]] = [
        ("exif-original", lambda: parse_datetime_text(
            exif(_DT_ORIGINAL), offset=exif(_OFFSET_ORIGINAL), subsec=exif(_SUBSEC_ORIGINAL))),
        ("xmp", lambda: _xmp_time(reader, ("exif", "DateTimeOriginal"), ("photoshop", "DateCreated"))),
        ("iptc", lambda: parse_iptc_datetime(reader.iptc.get(_IPTC_DATE), reader.iptc.get(_IPTC_TIME))),
        ("exif-digitized", lambda: parse_datetime_text(
            exif(_DT_DIGITIZED), offset=exif(_OFFSET_DIGITIZED), subsec=exif(_SUBSEC_DIGITIZED))),
        ("xmp", lambda: _xmp_time(reader, ("xmp", "CreateDate"), ("exif", "DateTimeDigitized"))),
        ("gps", lambda: _gps_time(reader)),
        ("exif-datetime", lambda: parse_datetime_text(
            reader.ifd0.get(_DATETIME), offset=exif(_OFFSET), subsec=exif(_SUBSEC))),
    ]
    for source, read in candidates:
        stamp = read()
        if stamp is None:
            continue
        if source == "gps":
            return stamp, source, "gps"
        if source == "iptc" and stamp.offset_min == 0:
            stamp = stamp.with_offset(None)  # Photoshop writes "+0000" when it does not know the zone
        if stamp.offset_min is not None:
            return stamp, source, "exif" if source.startswith("exif") else source
        offset, offset_source = _infer_offset(reader, stamp)
        return stamp.with_offset(offset), source, offset_source
    return None, None, None


def _xmp_time(reader: TagReader, *keys: tuple[str, str]) -> Stamp | None:
    for prefix, name in keys:
        stamp = parse_datetime_text(reader.xmp_value(prefix, name), partial_ok=True)
        if stamp is not None:
            return stamp
    return None


def _infer_offset(reader: TagReader, stamp: Stamp) -> tuple[int | None, str | None]:
    """An offset for a time that has none.

    First from the GPS time (UTC measured by the receiver) when the two agree
    to a whole quarter hour, then from another tag showing the same wall-clock
    second with an offset (Lightroom's XMP, then IPTC, whose "+0000" means
    "unknown" often enough to be ignored).
    """
    gps = _gps_time(reader)
    if gps is not None:
        offset = offset_from_gps(stamp.wall, gps.wall)
        if offset is not None:
            return offset, "gps"
    second = stamp.wall.replace(microsecond=0)
    others: list[tuple[str, Stamp | None]] = [
        ("xmp", _xmp_time(reader, ("exif", "DateTimeOriginal"))),
        ("xmp", _xmp_time(reader, ("photoshop", "DateCreated"))),
        ("xmp", _xmp_time(reader, ("xmp", "CreateDate"))),
        ("iptc", parse_iptc_datetime(reader.iptc.get(_IPTC_DATE), reader.iptc.get(_IPTC_TIME))),
    ]
    for source, other in others:
        if other is None or other.offset_min is None or other.wall.replace(microsecond=0) != second:
            continue
        if source == "iptc" and other.offset_min == 0:
            continue
        return other.offset_min, source
    return None, None


def _gps_time(reader: TagReader) -> Stamp | None:
    """The GPS fix time (UTC) from the GPS IFD, else from XMP's exif:GPSTimeStamp."""
    date = clean_text(reader.gps_ifd.get(_GPS_DATE))
    hms = reader.gps_ifd.get(_GPS_TIME)
    if date and isinstance(hms, tuple) and len(hms) == 3:
        parts = [number(v) for v in hms]
        if all(p is not None and p >= 0 for p in parts):
            h, m, s = parts  # type: ignore[misc]
            if h < 24 and m < 60 and s < 61:
                whole = int(s)
                stamp = parse_datetime_text(f"{date} {int(h):02d}:{int(m):02d}:{min(whole, 59):02d}")
                if stamp is not None:
                    return Stamp(stamp.wall, 0)
    text = reader.xmp_value("exif", "GPSTimeStamp")
    stamp = parse_datetime_text(text)
    if stamp is None or not re.search(r"\d[T ]\d{1,2}:\d{2}", text or ""):
        return None  # a bare date is not a fix time
    # XMP's GPSTimeStamp is a full date-time in UTC ("Z"); a local offset, if written, is converted.
    return Stamp(stamp.wall - timedelta(minutes=stamp.offset_min or 0), 0)


def _with_stamp(meta: PhotoMeta, stamp: Stamp, source: str | None, offset_source: str | None) -> PhotoMeta:
    return replace(
        meta, taken_at=stamp.iso(), taken_ts=stamp.ts, time_source=source, utc_offset_min=stamp.offset_min,
        offset_source=offset_source if stamp.offset_min is not None else None,
    )


def _from_mtime(meta: PhotoMeta, mtime_ns: int | None) -> PhotoMeta:
    """The file time as a last resort, in this machine's time zone (which is what the user's file manager shows)."""
    if mtime_ns is None:
        return meta
    try:
        local = datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).astimezone()
        offset = local.utcoffset()
    except (OverflowError, OSError, ValueError):
        return meta
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    stamp = Stamp(local.replace(tzinfo=None), minutes)
    return _with_stamp(meta, stamp, "file-mtime", "local-clock")


# ---------------------------------------------------------------- position


def _position(reader: TagReader) -> tuple[float | None, float | None, float | None]:
    """(lat, lon, altitude in metres) from the GPS IFD, else from XMP; invalid positions are dropped."""
    gps = reader.gps_ifd
    lat = exif_coord(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "NS")
    lon = exif_coord(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "EW")
    alt = number(gps.get(_GPS_ALT))
    alt_ref = gps.get(_GPS_ALT_REF)
    if lat is None or lon is None:
        lat = xmp_coord(reader.xmp_value("exif", "GPSLatitude"), "NS")
        lon = xmp_coord(reader.xmp_value("exif", "GPSLongitude"), "EW")
        alt = number(reader.xmp_value("exif", "GPSAltitude"))
        alt_ref = reader.xmp_value("exif", "GPSAltitudeRef")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None, None
    if lat == 0 and lon == 0:
        return None, None, None  # "null island": what receivers without a fix write
    if alt is not None:
        if is_below_sea_level(alt_ref):
            alt = -alt
        if not -2_000 <= alt <= 100_000:
            alt = None
    return round(lat, 7), round(lon, 7), (round(alt, 2) if alt is not None else None)


