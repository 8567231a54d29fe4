"""Place names for GPS positions, and positions for place names, offline.

``place_of``/``places_of`` name where a photo was taken (the nearest town of
1,000+ people, its region and country, the country also in its own
language); ``resolve_place`` turns ``--place NAME`` into a test on stored
place columns; ``locate`` turns ``--near NAME`` into a point. The data and
why it was chosen are described in :mod:`retrieval.gazetteer`; no network,
ever.

GeoNames' own place name is usually the local one ("Köln", "Sevilla",
"Kraków") and for some large cities the English one ("Munich"); its alternate
names carry no language tag, so a city's name is shown as GeoNames writes it,
and every alternate name is accepted when searching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import InvalidQueryError
from .gazetteer import (
    EARTH_RADIUS_KM,
    Gazetteer,
    NameMatch,
    distance_km,
    fold_name,
    gazetteer,
)

__all__ = [
    "CITY_MAX_KM",
    "EARTH_RADIUS_KM",
    "REGION_MAX_KM",
    "Place",
    "PlaceQuery",
    "distance_km",
    "fold_name",
    "locate",
    "place_of",
    "places_of",
    "resolve_place",
]

# Beyond this a town is no longer a fair name for where a photo was taken (the
# gazetteer holds places of 1,000+ people: remote areas can be far from any).
CITY_MAX_KM = 50.0
# Beyond this (open sea) even the region and country are guesses. Deserts reach
# 300-400 km from any town of 1,000 people (central Australia): still the right country.
REGION_MAX_KM = 500.0


@dataclass(frozen=True)
class Place:
    """Where a position is: the nearest gazetteer town and its region and country.

    ``city`` is ``None`` when the nearest town is more than ``CITY_MAX_KM``
    away; ``distance_km`` is the distance to that town either way.
    ``country_local`` is the country's name in its own language when it differs
    from ``country`` ("España" for Spain).
    """

    city: str | None
    region: str | None
    country: str | None
    country_code: str
    country_local: str | None
    distance_km: float

    @property
    def label(self) -> str:
        """``"Sevilla, Andalusia, Spain"`` (parts that are unknown or repeated left out)."""
        parts: list[str] = []
        for part in (self.city, self.region, self.country):
            if part and (not parts or fold_name(part) != fold_name(parts[-1])):
                parts.append(part)
        return ", ".join(parts) or self.country_code

    def as_dict(self) -> dict[str, Any]:
        """All fields plus ``label``, for JSON."""
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class PlaceQuery:
    """What ``--place NAME`` matches: cities, regions and countries of that name.

    Names are kept folded (see :func:`fold_name`) and paired with their
    country code, so that an alias only matches in its own country. A city
    also matches photos within its ``areas`` radius of its centre: the
    gazetteer names districts and suburbs of large cities on their own
    ("Yoyogi" in Tokyo), and a photo taken there is still "in Tokyo".
    """

    text: str
    cities: frozenset[tuple[str, str]]  # (country code, folded city name as the gazetteer writes it)
    regions: frozenset[tuple[str, str]]  # (country code, folded region name)
    countries: frozenset[str]  # country codes
    areas: tuple[tuple[float, float, float], ...] = ()  # (lat, lon, radius km) of each matched city

    def matches(self, place: Place | None, lat: float | None = None, lon: float | None = None) -> bool:
        """Whether a photo at ``place`` (and, if given, at ``lat``/``lon``) is in a place this query names."""
        if place is None:
            return False
        return self.matches_fields(place.city, place.region, place.country_code, lat, lon)

    def matches_fields(
        self,
        city: str | None,
        region: str | None,
        country_code: str | None,
        lat: float | None = None,
        lon: float | None = None,
    ) -> bool:
        """The same test on stored columns (city, region, country code, GPS position)."""
        if country_code:
            if country_code in self.countries:
                return True
            if region and (country_code, fold_name(region)) in self.regions:
                return True
            if city and (country_code, fold_name(city)) in self.cities:
                return True
        if lat is None or lon is None:
            return False
        return any(distance_km(lat, lon, a_lat, a_lon) <= radius for a_lat, a_lon, radius in self.areas)

    def describe(self) -> str:
        """A short account of what matched, for messages (``"Spain (country)"``)."""
        gaz = gazetteer()
        kinds = [f"{gaz.country_name(cc)} (country)" for cc in sorted(self.countries)]
        kinds += [f"{_title(r)}, {gaz.country_name(cc)} (region)" for cc, r in sorted(self.regions)]
        if self.cities:
            count = len(self.cities)
            kinds.append(f"{count} cit{'y' if count == 1 else 'ies'}")
        return "; ".join(kinds)


def place_of(lat: float, lon: float) -> Place | None:
    """The place of one position; ``None`` when it is far from any (open sea) or invalid."""
    return places_of([lat], [lon])[0]


def places_of(lats: Sequence[float] | np.ndarray, lons: Sequence[float] | np.ndarray) -> list[Place | None]:
    """Places of many positions at once (one k-d tree query; ~100k positions a second)."""
    lat = np.asarray(lats, dtype=np.float64).reshape(-1)
    lon = np.asarray(lons, dtype=np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise ValueError(f"{lat.size} latitudes but {lon.size} longitudes")
    valid = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    out: list[Place | None] = [None] * lat.size
    if not valid.any():
        return out
    gaz = gazetteer()
    index, dist = gaz.nearest(lat[valid], lon[valid])
    for pos, i, d in zip(np.flatnonzero(valid), index, dist):
        if d <= REGION_MAX_KM:
            out[pos] = _place(gaz, int(i), float(d))
    return out


def resolve_place(name: str) -> PlaceQuery:
    """``--place NAME``: every city, region and country called ``name`` (any case, accents optional).

    City names include GeoNames' alternate names of places with 15,000+ people
    ("München", "Wien"); countries their English and local names ("España") and,
    typed in capitals, their ISO codes ("US", "USA", "GB"). ``"NAME, WHERE"``
    keeps only the places of that name in the country or region ``WHERE``
    ("Paris, Texas"). An unknown name raises ``InvalidQueryError`` naming it.
    """
    text = name.strip() if isinstance(name, str) else ""
    if not text:
        raise InvalidQueryError(f"empty place name {name!r}")
    gaz = gazetteer()
    head, _, where = text.rpartition(",") if "," in text else (text, "", "")
    query = gaz.lookup(head.strip(), raw=head.strip())
    if where.strip():
        scope = gaz.lookup(where.strip(), raw=where.strip())
        if scope is None:
            raise InvalidQueryError(f"unknown place {where.strip()!r} in {text!r}: no region or country of that name")
        query = _within(query, scope) if query is not None else None
    if query is None:
        raise InvalidQueryError(f"unknown place {text!r}: no city, region or country of that name")
    return PlaceQuery(text, query.cities, query.regions, query.countries, gaz.areas(query.cities))


def locate(name: str) -> tuple[float, float, str]:
    """``--near NAME``: (lat, lon, label) of the most populous city called ``name``.

    Also accepts a position typed as ``"LAT,LON"``. A name that is only a region
    or a country has no single point: that raises ``InvalidQueryError`` pointing
    to ``--place``, as does an unknown name.
    """
    text = name.strip() if isinstance(name, str) else ""
    coords = re.fullmatch(r"\s*([+-]?\d+(?:\.\d+)?)\s*[, ]\s*([+-]?\d+(?:\.\d+)?)\s*", text)
    if coords:
        lat, lon = float(coords.group(1)), float(coords.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise InvalidQueryError(f"position {name!r} is off the map: latitude -90..90, longitude -180..180")
        return lat, lon, f"{lat:.5f},{lon:.5f}"
    query = resolve_place(text)
    gaz = gazetteer()
    best = gaz.most_populous_city(query.cities)
    if best is None:
        raise InvalidQueryError(
            f"{text!r} is {query.describe()}, not a city: use --place {text!r} to search all of it, "
            "or --near a city in it"
        )
    lat, lon = gaz.position(best)
    return lat, lon, _place(gaz, best, 0.0).label


# ---------------------------------------------------------------- helpers


def _within(query: NameMatch, scope: NameMatch) -> NameMatch | None:
    """The parts of ``query`` that lie in one of the countries/regions of ``scope``."""
    gaz = gazetteer()
    cities = frozenset(
        (cc, city) for cc, city in query.cities
        if cc in scope.countries or any((cc, r) in scope.regions for r in gaz.regions_of_city(cc, city))
    )
    regions = frozenset((cc, r) for cc, r in query.regions if cc in scope.countries)
    if not cities and not regions:
        return None
    return NameMatch(cities, regions, frozenset())


def _title(folded: str) -> str:
    return " ".join(w.capitalize() for w in folded.split())


def _place(gaz: Gazetteer, i: int, dist: float) -> Place:
    cc = gaz.cc[i]
    country = gaz.country_name(cc)
    local = gaz.local_country_name(cc)
    return Place(
        city=gaz.city[i] if dist <= CITY_MAX_KM else None,
        region=gaz.region[i],
        country=country,
        country_code=cc,
        country_local=local if local and fold_name(local) != fold_name(country) else None,
        distance_km=round(dist, 3),
    )
