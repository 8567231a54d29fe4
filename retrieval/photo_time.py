"""Capture times as photos write them, and date bounds as users type them.

Cameras write local wall-clock times ("2021:07:04 18:30:05"), often without
the UTC offset, sometimes with it in a separate tag; editors write ISO 8601
in XMP; IPTC splits date and time; GPS receivers write UTC. Broken values are
everywhere: blanks, "0000:00:00 00:00:00", NULs, month 0. Everything here
returns ``None`` for what it cannot read, never raises on data.

One convention makes times without a known offset usable: such a wall-clock
time is stored as if it were UTC (``Stamp.ts``), so it sorts and filters by
the date the camera showed, independent of the machine that indexed it, and
``Stamp.offset_min`` is ``None`` to say the real offset is unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .errors import InvalidQueryError

__all__ = [
    "MAX_YEAR",
    "MIN_YEAR",
    "Stamp",
    "offset_from_gps",
    "parse_datetime_text",
    "parse_iptc_datetime",
    "parse_offset",
    "parse_subsec",
    "parse_time_bound",
]

# The first photographs are from the 1820s; anything earlier is a broken clock or junk.
MIN_YEAR = 1800
MAX_YEAR = 2200
_MAX_OFFSET_MIN = 18 * 60  # what datetime accepts; real offsets are within -12h..+14h

_DATETIME = re.compile(
    r"^(\d{4})(?:[:\-/.](\d{1,2})(?:[:\-/.](\d{1,2})"
    r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?)?"
    r"\s*(Z|[+-]\d{1,2}(?::?\d{2})?)?$"
)
_OFFSET = re.compile(r"^(?:(Z)|([+-])(\d{1,2})(?::?(\d{2}))?)$")
_IPTC_TIME = re.compile(r"^(\d{2})(\d{2})(\d{2})?(?:([+-])(\d{2})(\d{2}))?$")


@dataclass(frozen=True)
class Stamp:
    """A capture time: the wall clock the camera showed, and its UTC offset when known."""

    wall: datetime  # naive local wall-clock time
    offset_min: int | None  # minutes east of UTC, None when unknown

    @property
    def ts(self) -> float:
        """POSIX seconds; the wall clock read as UTC when the offset is unknown."""
        utc = self.wall - timedelta(minutes=self.offset_min or 0)
        return utc.replace(tzinfo=timezone.utc).timestamp()

    @property
    def local_ts(self) -> float:
        """The wall clock read as UTC: what date filters compare (the date on the photo's own clock)."""
        return self.wall.replace(tzinfo=timezone.utc).timestamp()

    def iso(self) -> str:
        """ISO 8601, with the offset when it is known (``2021-07-04T18:30:05+02:00``)."""
        if self.offset_min is None:
            return self.wall.isoformat()
        return self.wall.replace(tzinfo=timezone(timedelta(minutes=self.offset_min))).isoformat()

    def with_offset(self, offset_min: int | None) -> Stamp:
        return Stamp(self.wall, offset_min)


def clean_text(value: object) -> str | None:
    """A tag value as stripped text: bytes decoded, cut at the first NUL; None when empty or not text."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value).split(b"\x00", 1)[0]
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.split("\x00", 1)[0]
    text = "".join(ch for ch in text if ch.isprintable() or ch == " ").strip()
    return text or None


def parse_offset(value: object) -> int | None:
    """``"+02:00"``, ``"-0800"``, ``"Z"`` -> minutes east of UTC; None for blanks and junk."""
    text = clean_text(value)
    if text is None:
        return None
    match = _OFFSET.match(text.replace(" ", ""))
    if not match:
        return None
    if match.group(1):
        return 0
    minutes = int(match.group(3)) * 60 + int(match.group(4) or 0)
    if int(match.group(4) or 0) >= 60 or minutes > _MAX_OFFSET_MIN:
        return None
    return -minutes if match.group(2) == "-" else minutes


def parse_subsec(value: object) -> float:
    """EXIF SubSecTime* ("018" -> 0.018); 0.0 for anything else."""
    text = clean_text(value)
    if text is None:
        return 0.0
    digits = text.strip()
    if not digits.isdigit() or len(digits) > 9:
        return 0.0
    return int(digits) / 10 ** len(digits)


def parse_datetime_text(
    value: object, *, offset: object = None, subsec: object = None, partial_ok: bool = False
) -> Stamp | None:
    """Parse an EXIF/XMP/ISO date-time; ``None`` for blanks, zeros and impossible dates.

    Accepts ``YYYY:MM:DD HH:MM:SS`` (EXIF), ISO 8601 (``T``, fractions, ``Z`` or
    ``±HH:MM``), ``-``/``/``/``.`` separators and a missing seconds field.
    ``partial_ok`` (XMP, IPTC) also accepts ``YYYY``, ``YYYY-MM`` and a bare date,
    read as the start of that period. An offset inside the text wins over
    ``offset`` (EXIF's separate OffsetTime* tag).
    """
    text = clean_text(value)
    if text is None:
        return None
    match = _DATETIME.match(text)
    if not match:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, frac_s, tz_s = match.groups()
    if hour_s is None and not partial_ok and day_s is None:
        return None  # EXIF needs at least a full date
    try:
        year, month, day = int(year_s), int(month_s or 1), int(day_s or 1)
        hour, minute = int(hour_s or 0), int(minute_s or 0)
        second = min(int(second_s or 0), 59)  # a leap second (":60") is the end of that minute
        if not MIN_YEAR <= year <= MAX_YEAR:
            return None
        if month_s is not None and month == 0 or day_s is not None and day == 0:
            return None  # "2005:00:00": the camera did not know
        wall = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None  # month 13, February 30, hour 25
    fraction = 0.0
    if frac_s:
        fraction = int(frac_s) / 10 ** len(frac_s)
    elif subsec is not None:
        fraction = parse_subsec(subsec)
    if fraction:
        wall += timedelta(microseconds=min(round(fraction * 1e6), 999_999))
    offset_min = parse_offset(tz_s) if tz_s else parse_offset(offset)
    return Stamp(wall, offset_min)


def parse_iptc_datetime(date: object, time: object) -> Stamp | None:
    """IPTC IIM DateCreated (``CCYYMMDD``) with TimeCreated (``HHMMSS±HHMM``); the date alone is accepted."""
    date_text = clean_text(date)
    if date_text is None or not (len(date_text) == 8 and date_text.isdigit()):
        return None
    stamp = parse_datetime_text(f"{date_text[:4]}-{date_text[4:6]}-{date_text[6:]}", partial_ok=True)
    if stamp is None:
        return None
    time_text = clean_text(time)
    match = _IPTC_TIME.match(time_text.replace(":", "")) if time_text else None
    if match is None:
        return stamp
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if hour > 23 or minute > 59 or second > 60:
        return stamp
    wall = stamp.wall.replace(hour=hour, minute=minute, second=min(second, 59))
    offset = None
    if match.group(4):
        offset = parse_offset(f"{match.group(4)}{match.group(5)}:{match.group(6)}")
    return Stamp(wall, offset)


# A camera clock set by hand drifts; a GPS fix seconds before the shot is normal.
_GPS_TOLERANCE_S = 120


def offset_from_gps(wall: datetime, gps_utc: datetime) -> int | None:
    """The UTC offset that makes ``wall`` agree with the GPS time, if they agree at all.

    Offsets are whole quarter hours; a difference more than two minutes off
    one (a stale GPS fix, a wrong camera clock) gives ``None``.
    """
    delta = (wall - gps_utc).total_seconds()
    quarters = round(delta / 900)
    if abs(delta - quarters * 900) > _GPS_TOLERANCE_S or not -12 * 4 <= quarters <= 14 * 4:
        return None
    return quarters * 15


def parse_time_bound(value: str | datetime | None, *, name: str = "date") -> float | None:
    """A ``--taken-after``/``--taken-before`` value as wall-clock seconds (compare with ``local_ts``).

    ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or ``YYYY-MM-DD[T ]HH:MM[:SS]``: the
    start of that period, so ``after`` is inclusive and ``before`` exclusive
    (``--taken-after 2023-06-01 --taken-before 2023-09-01`` is June to August).
    Bounds name the date on the photos' own clocks, whatever their time zone;
    an offset in the value is refused rather than silently ignored.
    Raises ``InvalidQueryError`` naming the value.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.replace(tzinfo=None)
        return value.replace(tzinfo=timezone.utc).timestamp()
    text = value.strip() if isinstance(value, str) else ""
    stamp = parse_datetime_text(text, partial_ok=True) if text else None
    if stamp is None or not re.match(r"^\d{4}(-\d{2}(-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?)?)?$", text):
        raise InvalidQueryError(
            f"bad {name} {value!r}: use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM (the photos' local time)"
        )
    return stamp.local_ts
