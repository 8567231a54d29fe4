"""When, where, with what, and near-duplicates over HTTP (issue 19): the same answers as the CLI gives.

The photo library of :mod:`tests.test_photo_search` (EXIF dates, GPS of cities
on five continents, cameras) served by ``create_app``: every photo filter
through the query string, the JSON body and the upload form; each hit and
item carrying its capture metadata; ``sort=taken``; bad values as 400s naming
them. The duplicates library of :mod:`tests.test_duplicates_cli` through
``/api/duplicates``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import retrieval
from retrieval.server import create_app

from .conftest import make_image
from .test_duplicates_cli import BEACH_GROUP, BURST_GROUP, ThumbnailEncoder
from .test_duplicates_cli import library as duplicates_library  # noqa: F401 - a fixture
from .test_photo_search import SPAIN, WITH_GPS, library  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def client(library) -> Iterator[TestClient]:  # noqa: F811
    _, root = library
    with retrieval.open_index(root=root) as index, TestClient(create_app(index)) as c:
        yield c


def names(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [Path(h["path"]).name for h in response.json()["hits"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"taken_after": "2023-06-01", "taken_before": "2023-09-01", "place": "Spain"}, {"sevilla.jpg", "madrid.jpg"}),
        ({"place": "España"}, SPAIN),
        ({"near": "Berlin", "within": "40"}, {"berlin.jpg", "potsdam.png"}),
        ({"near": "Berlin"}, {"berlin.jpg"}),
        ({"camera": "iphone 12"}, {"berlin.jpg"}),
        ({"has_gps": "true"}, WITH_GPS),
        ({"has_gps": "false"}, {"scan.jpg"}),
        ({"camera": "canon", "types": "png"}, {"potsdam.png"}),
    ],
)
def test_photo_filters_in_the_query_string_body_and_form(client: TestClient, params, expected) -> None:
    assert set(names(client.get("/api/search", params={"q": "a photo", "k": 50, **params}))) == expected
    as_json = {"within": float, "has_gps": lambda v: v == "true", "types": lambda v: v.split(",")}
    body = {"terms": [{"text": "a photo"}], "k": 50,
            **{key: as_json.get(key, str)(value) for key, value in params.items()}}
    assert set(names(client.post("/api/search", json=body))) == expected
    upload = io.BytesIO()
    make_image(7).save(upload, "PNG")
    form = client.post("/api/search/image", files={"image": ("q.png", upload.getvalue(), "image/png")},
                       data={"k": "50", **params})
    assert set(names(form)) == expected


def test_hits_and_items_carry_capture_time_camera_and_place(client: TestClient) -> None:
    hits = {Path(h["path"]).name: h for h in client.get("/api/search", params={"q": "a photo", "k": 50}).json()["hits"]}
    sevilla = hits["sevilla.jpg"]["photo"]
    assert sevilla["taken_at"] == "2023-07-14T18:30:00+02:00" and sevilla["camera"] == "Apple iPhone 13"
    assert sevilla["place"] == "Sevilla, Andalusia, Spain"
    assert hits["scan.jpg"]["photo"]["time_source"] == "file-mtime" and "place" not in hits["scan.jpg"]["photo"]
    item = client.get(f"/api/items/{hits['tokyo.jpg']['id']}").json()
    assert item["photo"]["place_cc"] == "JP" and item["photo"]["camera_make"] == "Sony"  # makers' names as people write them


def test_sort_taken_orders_newest_capture_first(client: TestClient) -> None:
    response = client.get("/api/search", params={"q": "a photo", "k": 50, "sort": "taken"})
    taken = [h["photo"]["taken_ts"] for h in response.json()["hits"]]
    assert len(taken) == 10 and taken == sorted(taken, reverse=True)
    combined = client.post("/api/search", json={"terms": [{"text": "a photo"}], "k": 50, "sort": "taken"}).json()
    assert [h["id"] for h in combined["hits"]] == [h["id"] for h in response.json()["hits"]]
    hit = response.json()["hits"][0]["id"]
    similar = client.get(f"/api/items/{hit}/similar", params={"k": 50, "sort": "taken"}).json()["hits"]
    assert [h["photo"]["taken_ts"] for h in similar] == sorted((h["photo"]["taken_ts"] for h in similar), reverse=True)


@pytest.mark.parametrize(
    ("params", "status", "word"),
    [
        ({"place": "Atlantis-upon-Nowhere"}, 400, "Atlantis-upon-Nowhere"),
        ({"taken_after": "the 32nd of May"}, 400, "32nd of May"),
        ({"near": "Berlin", "within": "-5"}, 422, "within"),
        ({"sort": "colour"}, 422, "sort"),
    ],
)
def test_bad_photo_filters_are_errors_naming_the_value(client: TestClient, params, status, word) -> None:
    response = client.get("/api/search", params={"q": "a photo", **params})
    assert response.status_code == status, response.text
    assert word in response.text and "Traceback" not in response.text


@pytest.fixture(scope="module")
def duplicates_client(duplicates_library) -> Iterator[TestClient]:  # noqa: F811
    _, root = duplicates_library
    with retrieval.open_index(root=root, encoder=ThumbnailEncoder()) as index, TestClient(create_app(index)) as c:
        yield c


def test_duplicates_endpoint_groups_copies_keep_first(duplicates_client: TestClient) -> None:
    body = duplicates_client.get("/api/duplicates").json()
    assert body["total"] == 2 and body["threshold"] == 0.95
    beach, burst = body["groups"]
    assert [m["name"] for m in beach["members"]][0] == "beach-1.jpg" and beach["keep"] == beach["members"][0]["id"]
    assert {m["name"] for m in beach["members"]} == {Path(p).name for p in BEACH_GROUP}
    assert {m["name"] for m in burst["members"]} == {Path(p).name for p in BURST_GROUP}
    copy = next(m for m in beach["members"] if m["name"] == "beach-1-copy.jpg")
    assert copy["exact_copy_of"] == beach["keep"]
    first = beach["members"][0]
    assert duplicates_client.get(first["thumbnail"]).status_code == 200
    assert duplicates_client.get(first["original"]).status_code == 200
    assert duplicates_client.get("/api/duplicates", params={"limit": 1}).json()["total"] == 2
    assert len(duplicates_client.get("/api/duplicates", params={"limit": 1}).json()["groups"]) == 1
    narrowed = duplicates_client.get("/api/duplicates", params={"glob": "*burst*"}).json()
    assert narrowed["total"] == 1 and narrowed["groups"][0]["members"][0]["name"] == "burst-0.jpg"
    assert duplicates_client.get("/api/duplicates", params={"threshold": 0.2}).status_code == 422
