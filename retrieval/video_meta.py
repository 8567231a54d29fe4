"""Capture time, place and camera from a video container's metadata tags.

Phones and cameras write the same facts under different tags: QuickTime's
``creation_time`` (UTC) and Apple's ``com.apple.quicktime.creationdate``
(local time with its UTC offset), ISO 6709 strings for the place (``location``,
``com.apple.quicktime.location.ISO6709``), and make/model under Apple,
Android or plain keys. FFmpeg hands them over as a flat dict of strings (keys
in any case, sometimes with a ``-eng`` language suffix); this module turns
that dict into typed values and never raises on a malformed tag: a value it
cannot read is simply absent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

if TYPE_CHECKING:
    from .photo_meta import PhotoMeta

__all__ = [
    "ContainerMetadata", "GeoPoint", "capture_meta", "parse_capture_time", "parse_iso6709", "read_container_metadata",
]


@dataclass(frozen=True)
class GeoPoint:
    """A place in WGS 84 degrees; ``altitude`` in metres when the tag has one."""

    latitude: float
    longitude: float
    altitude: float | None = None


@dataclass(frozen=True)
class ContainerMetadata:
    """What a video's tags say about its capture; every field may be unknown."""

    created: datetime | None = None
    location: GeoPoint | None = None
    make: str | None = None
    model: str | None = None
    utc_only: bool = False  # the time is UTC because the tag says nothing else (creation_time), not a local offset


# Most specific first: Apple's date carries the local UTC offset, creation_time is UTC only.
_TIME_KEYS = ("com.apple.quicktime.creationdate", "creation_time", "date", "date_recorded", "creation_date")
_LOCATION_KEYS = ("com.apple.quicktime.location.iso6709", "location", "com.android.location", "xyz")
_MAKE_KEYS = ("com.apple.quicktime.make", "com.android.manufacturer", "make", "manufacturer")
_MODEL_KEYS = ("com.apple.quicktime.model", "com.android.model", "model")

# QuickTime counts from 1904 and some muxers write 0 there; 1970 is Unix's zero: both mean "unset".
_UNSET_YEARS = (1904, 1970)


def read_container_metadata(*tag_dicts: Mapping[str, str]) -> ContainerMetadata:
    """Typed capture facts from one or more tag dicts (container first, then streams).

    Keys are matched case-insensitively and with any ``-xxx`` language suffix
    removed; the first dict that has a readable value wins.
    """
    tags = _normalise(tag_dicts)
    created, utc_only = None, False
    for key in _TIME_KEYS:
        created = parse_capture_time(tags.get(key, ""))
        if created is not None:
            # Apple's creationdate carries the local offset; the others are UTC ('Z') by definition.
            utc_only = key != "com.apple.quicktime.creationdate"
            break
    location = next((g for k in _LOCATION_KEYS if (g := parse_iso6709(tags.get(k, ""))) is not None), None)
    make = next((v for k in _MAKE_KEYS if (v := _clean(tags.get(k))) is not None), None)
    model = next((v for k in _MODEL_KEYS if (v := _clean(tags.get(k))) is not None), None)
    return ContainerMetadata(created=created, location=location, make=make, model=model, utc_only=utc_only)


def capture_meta(meta: ContainerMetadata, mtime_ns: int | None = None) -> PhotoMeta:
    """A video's capture facts in the form photos store them (the same item columns and filters).

    A time with its offset (Apple's tag) keeps its wall clock and offset; a UTC
    time (QuickTime's ``creation_time``) is shown on this machine's clock, as
    file times are (the camera's own zone is not recorded); a time with no zone
    is a wall clock with an unknown offset. No time at all: the file's
    modification time (``time_source`` ``file-mtime``), as for photos.
    """
    from .photo_meta import PhotoMeta, file_time_meta, normalise_camera
    from .photo_time import Stamp

    make, model = normalise_camera(meta.make, meta.model)
    out = PhotoMeta(camera_make=make, camera_model=model)
    if meta.location is not None:
        out = replace(out, gps_lat=meta.location.latitude, gps_lon=meta.location.longitude,
                      gps_alt=meta.location.altitude)
    created = meta.created
    if created is None:
        return file_time_meta(out, mtime_ns)
    offset_source: str | None = "container"
    try:
        if created.tzinfo is None:
            stamp, offset_source = Stamp(created, None), None
        elif created.utcoffset() == timedelta(0) and meta.utc_only:
            local = created.astimezone()  # this machine's zone, as for file times
            minutes = int((local.utcoffset() or timedelta(0)).total_seconds() // 60)
            stamp, offset_source = Stamp(local.replace(tzinfo=None), minutes), "local-clock"
        else:
            minutes = int((created.utcoffset() or timedelta(0)).total_seconds() // 60)
            stamp = Stamp(created.replace(tzinfo=None), minutes)
        return replace(out, taken_at=stamp.iso(), taken_ts=stamp.ts, time_source="video-container",
                       utc_offset_min=stamp.offset_min, offset_source=offset_source)
    except (OverflowError, OSError, ValueError):  # a year the platform cannot place in time
        return file_time_meta(out, mtime_ns)


def _normalise(tag_dicts: tuple[Mapping[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tags in tag_dicts:
        for key, value in tags.items():
            if not isinstance(value, str):
                continue
            name = key.strip().lower()
            # "location-eng": QuickTime user-data tags carry a language code.
            name = re.sub(r"-[a-z]{3}$", "", name)
            out.setdefault(name, value)
    return out


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = " ".join(value.replace("\x00", " ").split())
    return text or None


_ISO_TIME = re.compile(
    r"^\s*(\d{4})[-:](\d{2})[-:](\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|UTC|[+-]\d{2}:?\d{2})?\s*$",
    re.IGNORECASE,
)


def parse_capture_time(text: str) -> datetime | None:
    """A tag's date as a ``datetime``; timezone-aware when the tag says its offset (``Z`` is UTC).

    Accepts ISO 8601 (``2023-05-01T12:34:56.000000Z``, ``2023-05-01T14:34:56+0200``)
    and EXIF-style colons (``2023:05:01 12:34:56``). The zero dates muxers write
    for "unknown" (1904-01-01, 1970-01-01) and anything unreadable give ``None``.
    """
    match = _ISO_TIME.match(text or "")
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    tz: timezone | None = None
    if zone is not None:
        if zone.upper() in ("Z", "UTC"):
            tz = timezone.utc
        else:
            digits = zone.replace(":", "")
            sign = -1 if digits[0] == "-" else 1
            offset = timedelta(hours=int(digits[1:3]), minutes=int(digits[3:5]))
            if offset > timedelta(hours=18):
                return None
            tz = timezone(sign * offset)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                         micro, tzinfo=tz)
    except ValueError:
        return None
    if value.year in _UNSET_YEARS and value.month == 1 and value.day == 1:
        return None
    return value


# ISO 6709: latitude ±DD[MM[SS]][.fraction], longitude ±DDD[MM[SS]][.fraction],
# optional altitude ±A[.a], optional "CRSxxx", usually a trailing "/".
_ISO6709 = re.compile(
    r"^\s*([+-])(\d{2}|\d{4}|\d{6})(\.\d+)?([+-])(\d{3}|\d{5}|\d{7})(\.\d+)?"
    r"(?:([+-])(\d+(?:\.\d+)?))?(?:CRS[A-Za-z0-9_:]*)?/?\s*$"
)


def parse_iso6709(text: str) -> GeoPoint | None:
    """A point from an ISO 6709 string such as ``+48.8584+002.2945+035.000/``.

    Degrees, degrees-minutes and degrees-minutes-seconds forms are read;
    ``None`` for anything else, for out-of-range values, and for ``+00.0000+000.0000``
    (what some phones write when they had no fix).
    """
    match = _ISO6709.match(text or "")
    if match is None:
        return None
    lat_sign, lat_int, lat_frac, lon_sign, lon_int, lon_frac, alt_sign, alt = match.groups()
    latitude = _sexagesimal(lat_int, lat_frac or "", degree_digits=2)
    longitude = _sexagesimal(lon_int, lon_frac or "", degree_digits=3)
    if latitude is None or longitude is None:
        return None
    latitude = -latitude if lat_sign == "-" else latitude
    longitude = -longitude if lon_sign == "-" else longitude
    if not (-90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0):
        return None
    if latitude == 0.0 and longitude == 0.0:
        return None
    altitude = None
    if alt is not None:
        altitude = float(alt) * (-1.0 if alt_sign == "-" else 1.0)
        if not math.isfinite(altitude):
            altitude = None
    return GeoPoint(latitude, longitude, altitude)


def _sexagesimal(integer: str, fraction: str, degree_digits: int) -> float | None:
    """Decimal degrees from D, DM or DMS digits; the fraction belongs to the last unit."""
    extra = len(integer) - degree_digits
    degrees = float(integer[:degree_digits])
    if extra == 0:
        return degrees + float("0" + fraction) if fraction else degrees
    minutes = float(integer[degree_digits:degree_digits + 2])
    if extra == 2:
        minutes += float("0" + fraction) if fraction else 0.0
        seconds = 0.0
    else:
        seconds = float(integer[degree_digits + 2:]) + (float("0" + fraction) if fraction else 0.0)
    if minutes >= 60 or seconds >= 60:
        return None
    return degrees + minutes / 60 + seconds / 3600
