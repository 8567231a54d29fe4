"""Conditions on what photos say about themselves: when, where, with what; and what a result shows of it.

The photo half of :class:`retrieval.search.Filters`: capture-date bounds
(compared with ``local_ts``, the wall clock of the photo's own time zone read
as UTC, so "June" means June where the photo was taken), a place name, a
distance from a point, a camera, having a position or not. Each value is
parsed once, when the filters are made (place names and points through
:mod:`retrieval.places`, which loads the gazetteer only then), and a bad one
raises ``InvalidQueryError`` naming it. :func:`photo_info` is what a search
hit carries of an item's capture metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import InvalidQueryError

if TYPE_CHECKING:
    from .places import PlaceQuery
    from .store import ItemRow

__all__ = ["NEAR_DEFAULT_KM", "PhotoConditions", "parse_flag", "parse_km", "photo_info"]

NEAR_DEFAULT_KM = 25.0  # --near without --within: a city and its surroundings
_MAX_KM = 20_038.0  # half the Earth's circumference: every point is within this of every other


@dataclass(frozen=True)
class PhotoConditions:
    """Parsed photo conditions; build with :meth:`parse` (None when there are none)."""

    taken_after: float | None = None  # wall-clock seconds, inclusive (compared with ItemRow.local_ts)
    taken_before: float | None = None  # exclusive
    place: "PlaceQuery | None" = None
    near: tuple[float, float, float] | None = None  # (lat, lon, km)
    camera: str | None = None
    has_gps: bool | None = None

    @classmethod
    def parse(
        cls,
        *,
        taken_after: str | datetime | None = None,
        taken_before: str | datetime | None = None,
        place: str | None = None,
        near: str | None = None,
        within_km: float | None = None,
        camera: str | None = None,
        has_gps: bool | None = None,
    ) -> "PhotoConditions | None":
        """The conditions these values name, or None when they name none; ``InvalidQueryError`` names a bad value."""
        from .photo_time import parse_time_bound

        after = parse_time_bound(taken_after, name="capture date (taken after)")
        before = parse_time_bound(taken_before, name="capture date (taken before)")
        if after is not None and before is not None and after >= before:
            raise InvalidQueryError(
                f"taken after {taken_after!s} and before {taken_before!s} is an empty range: "
                "the first date must come before the second"
            )
        query = None
        if place is not None:
            from .places import resolve_place

            query = resolve_place(place)
        if within_km is not None:
            if isinstance(within_km, bool) or not isinstance(within_km, (int, float)) or not 0 < within_km <= _MAX_KM:
                raise InvalidQueryError(f"bad distance {within_km!r}: give kilometres above 0 (e.g. --within 25)")
            if near is None:
                raise InvalidQueryError("--within needs --near: a place to measure the distance from")
        point = None
        if near is not None:
            from .places import locate

            lat, lon, _ = locate(near)
            point = (lat, lon, float(within_km or NEAR_DEFAULT_KM))
        if camera is not None and not str(camera).strip():
            raise InvalidQueryError("empty camera name: give a make or model, e.g. --camera iphone")
        if has_gps is not None and not isinstance(has_gps, bool):
            raise InvalidQueryError(f"has_gps must be True, False or None (got {has_gps!r})")
        if after is None and before is None and query is None and point is None and camera is None and has_gps is None:
            return None
        return cls(after, before, query, point, camera, has_gps)

    def accepts(self, row: "ItemRow") -> bool:
        """Whether an item meets every condition (texts never do: they have no capture metadata; videos do)."""
        if row.kind not in ("image", "video"):
            return False
        if self.taken_after is not None or self.taken_before is not None:
            if row.local_ts is None:
                return False
            if self.taken_after is not None and row.local_ts < self.taken_after:
                return False
            if self.taken_before is not None and row.local_ts >= self.taken_before:
                return False
        has_position = row.gps_lat is not None and row.gps_lon is not None
        if self.has_gps is not None and has_position != self.has_gps:
            return False
        if self.near is not None:
            from .places import distance_km

            lat, lon, km = self.near
            if not has_position or distance_km(row.gps_lat, row.gps_lon, lat, lon) > km:  # type: ignore[arg-type]
                return False
        if self.place is not None and not self.place.matches_fields(
            row.place_city, row.place_region, row.place_cc, row.gps_lat, row.gps_lon
        ):
            return False
        if self.camera is not None:
            from .photo_meta import camera_matches

            if not camera_matches(self.camera, row.camera_make, row.camera_model):
                return False
        return True


def photo_info(row: "ItemRow") -> dict[str, Any] | None:
    """What a result shows of a photo's (or video's) capture metadata (only what is known); None for texts and unread items.

    ``taken_at`` is ISO 8601 as recorded (with its UTC offset when known),
    ``time_source`` says where it came from (``file-mtime``: no date in the
    file), ``place`` is "City, Region, Country" (parts unknown or repeated left out).
    """
    if row.kind not in ("image", "video") or row.meta_version is None:
        return None
    camera = " ".join(p for p in (row.camera_make, row.camera_model) if p) or None
    parts: list[str] = []
    for part in (row.place_city, row.place_region, row.place_country):
        if part and (not parts or part.casefold() != parts[-1].casefold()):
            parts.append(part)
    info = {
        "taken_at": row.taken_at, "taken_ts": row.taken_ts, "time_source": row.time_source,
        "utc_offset_min": row.utc_offset_min, "camera": camera, "camera_make": row.camera_make,
        "camera_model": row.camera_model, "lens": row.lens, "gps_lat": row.gps_lat, "gps_lon": row.gps_lon,
        "gps_alt": row.gps_alt, "place": ", ".join(parts) or None, "place_city": row.place_city,
        "place_region": row.place_region, "place_country": row.place_country, "place_cc": row.place_cc,
    }
    return {k: v for k, v in info.items() if v is not None}


def parse_flag(value: bool | str | None, name: str) -> bool | None:
    """A yes/no condition from a command line, a query string or a form ("true", "0", "no", ...; "" or "any": None)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "any"):
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidQueryError(f"bad {name} {value!r}: use true or false")


def parse_km(value: float | str | None) -> float | None:
    """A distance in kilometres from a number or a string ("25", "25km"; "" is None); checked by PhotoConditions."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return float(value.strip().lower().removesuffix("km").strip())
        except ValueError:
            pass
    raise InvalidQueryError(f"bad distance {value!r}: give kilometres, e.g. 25")
