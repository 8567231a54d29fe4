"""Offline place names: positions to places, names to places, distances; bad names are typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import InvalidQueryError
from retrieval.places import (
    CITY_MAX_KM,
    Place,
    distance_km,
    locate,
    place_of,
    places_of,
    resolve_place,
)

from .test_photo_meta import CITIES, encode, make_exif, read_photo_metadata, sample_root

# Where the test cities are, as GeoNames names them (city, region, country code).
EXPECTED = {
    "Sydney": ("Sydney", "New South Wales", "AU"),
    "Rio de Janeiro": ("Rio de Janeiro", "Rio de Janeiro", "BR"),
    "San Francisco": ("San Francisco", "California", "US"),
    "Munich": ("Munich", "Bavaria", "DE"),
    "Nairobi": ("Nairobi", "Nairobi County", "KE"),
    "Tokyo": (None, "Tokyo", "JP"),  # central Tokyo's nearest GeoNames place is a ward; the region is Tokyo
    "Ushuaia": ("Ushuaia", "Tierra del Fuego", "AR"),
}


@pytest.mark.parametrize(("name", "lat", "lon"), CITIES, ids=[c[0] for c in CITIES])
def test_places_of_cities_on_every_continent(name, lat, lon):
    place = place_of(lat, lon)
    city, region, cc = EXPECTED[name]
    assert place is not None and place.country_code == cc and place.region == region
    if city is not None:
        assert place.city == city
    assert place.city is not None and 0 <= place.distance_km < 5


def test_local_country_names_where_cldr_has_them():
    munich = place_of(48.1374, 11.5755)
    assert (munich.country, munich.country_local) == ("Germany", "Deutschland")
    assert place_of(37.3891, -5.9845).country_local == "España"
    assert place_of(37.7749, -122.4194).country_local is None  # the same name: not repeated
    assert munich.label == "Munich, Bavaria, Germany"


def test_nearest_is_nearest_on_the_earth_not_in_degrees():
    # At 64°N a degree of longitude is 49 km: a lookup in raw degrees (reverse_geocode's own) answers
    # Kópavogur, 4.1 km away, for this point in Reykjavík, 2.6 km from the city's point.
    place = place_of(64.1466, -21.9426)
    assert place.city == "Reykjavík" and place.distance_km == pytest.approx(2.6, abs=0.1)


def test_never_farther_than_the_gazetteers_own_answer():
    import reverse_geocode

    rng = np.random.default_rng(7)
    lat, lon = rng.uniform(-56, 72, 300), rng.uniform(-180, 180, 300)
    theirs = reverse_geocode.search(list(zip(lat, lon)))
    for a, b, place, other in zip(lat, lon, places_of(lat, lon), theirs):
        their_km = distance_km(a, b, other["latitude"], other["longitude"])
        if place is not None:
            assert place.distance_km <= their_km + 1e-3


def test_open_sea_and_invalid_positions_have_no_place():
    assert place_of(0.0, -150.0) is None  # the middle of the Pacific
    assert places_of([float("nan"), 91.0, 10.0], [0.0, 0.0, 200.0]) == [None, None, None]
    remote = place_of(-24.5, 127.5)  # the Gibson Desert: a region and a country, no fair town name
    assert remote is not None and remote.country_code == "AU"
    assert remote.city is None and remote.distance_km > CITY_MAX_KM


def test_batch_equals_one_by_one():
    lats, lons = [c[1] for c in CITIES], [c[2] for c in CITIES]
    assert places_of(np.array(lats), np.array(lons)) == [place_of(a, b) for a, b in zip(lats, lons)]
    with pytest.raises(ValueError):
        places_of([1.0, 2.0], [1.0])


def test_haversine_distance():
    assert distance_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)  # Paris-London
    assert distance_km(0, 179.9, 0, -179.9) == pytest.approx(22.2, abs=0.1)  # across the date line
    assert distance_km(10, 10, 10, 10) == 0


@pytest.mark.parametrize("name", ["Spain", "spain", "España", "ESPAÑA", "ES"])
def test_countries_by_english_local_name_or_code(name):
    assert "ES" in resolve_place(name).countries


@pytest.mark.parametrize("name", ["Munich", "München", "muenchen", "Monaco di Baviera", "ミュンヘン"])
def test_cities_by_any_of_their_names(name):
    query = resolve_place(name)
    assert ("DE", "munich") in query.cities
    assert query.matches(place_of(48.1374, 11.5755))
    assert not query.matches(place_of(52.52, 13.405))  # Berlin


def test_regions_and_place_matching_on_stored_columns():
    bavaria = resolve_place("bavaria")
    assert bavaria.matches_fields("Augsburg", "Bavaria", "DE")
    assert not bavaria.matches_fields("Stuttgart", "Baden-Wurttemberg", "DE")
    assert not bavaria.matches_fields(None, None, None)
    georgia = resolve_place("Georgia")  # a country and a US state
    assert "GE" in georgia.countries and georgia.matches_fields("Atlanta", "Georgia", "US")


def test_a_city_also_covers_its_districts():
    tokyo = resolve_place("Tokyo")
    shinjuku = (35.6938, 139.7034)
    assert tokyo.matches(place_of(*shinjuku), *shinjuku)
    paris = resolve_place("Paris, France")
    versailles = (48.8049, 2.1204)  # 17 km out: its own town, not Paris
    assert not paris.matches(place_of(*versailles), *versailles)


def test_qualified_names_pick_one_of_many():
    assert {cc for cc, _ in resolve_place("Paris").cities} >= {"FR", "US"}
    assert {cc for cc, _ in resolve_place("Paris, Texas").cities} == {"US"}
    assert {cc for cc, _ in resolve_place("Paris, France").cities} == {"FR"}


@pytest.mark.parametrize("bad", ["Qwxzzyland", "   ", "Paris, Qwxzzyland"])
def test_unknown_places_are_typed_errors_naming_the_value(bad):
    with pytest.raises(InvalidQueryError, match="Qwxzzyland" if "Q" in bad else "empty"):
        resolve_place(bad)


def test_locate_takes_the_most_populous_city():
    lat, lon, label = locate("Paris")
    assert label == "Paris, Île-de-France, France" and distance_km(lat, lon, 48.8566, 2.3522) < 2
    assert locate("Paris, Texas")[2] == "Paris, Texas, United States"
    assert locate("München")[2] == "Munich, Bavaria, Germany"
    assert locate("-33.87, 151.21") == (-33.87, 151.21, "-33.87000,151.21000")


@pytest.mark.parametrize(("bad", "words"), [("Spain", "not a city"), ("Qwxzzyland", "Qwxzzyland"),
                                            ("95, 10", "off the map")])
def test_locate_errors(bad, words):
    with pytest.raises(InvalidQueryError, match=words):
        locate(bad)


def test_photo_to_place_end_to_end():
    meta = read_photo_metadata(encode("JPEG", make_exif(gps=(-22.9519, -43.2105))))  # Christ the Redeemer
    place = place_of(meta.gps_lat, meta.gps_lon)
    assert place.country_code == "BR" and resolve_place("Rio de Janeiro").matches(place, meta.gps_lat, meta.gps_lon)
    assert isinstance(place, Place) and place.as_dict()["label"] == place.label


def test_sample_photos_places():
    root = sample_root()
    expected = {
        "formats/heic/IMG_2682.heic": ("Nebraska", "US"),  # Omaha's suburbs
        "metadata/dates/gps-datetime.jpg": ("California", "US"),
        "metadata/gps-position/thompson-springs.jpg": ("Colorado", "US"),  # its GPS says Colorado, its caption Utah
    }
    if not all((root / rel).is_file() for rel in expected):
        pytest.skip("sample photos not present")
    for rel, (region, cc) in expected.items():
        meta = read_photo_metadata(root / rel)
        place = place_of(meta.gps_lat, meta.gps_lon)
        assert (place.region, place.country_code) == (region, cc), rel
    sf = read_photo_metadata(root / "metadata/dates/gps-datetime.jpg")
    assert place_of(sf.gps_lat, sf.gps_lon).city == "San Francisco"
