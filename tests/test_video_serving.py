"""Videos over HTTP: hits at their moment, thumbnails of moments, and originals served with byte ranges.

A browser plays a video from a moment by asking for ``/api/items/ID/original``
with ``Range`` headers; the file is served only while it is still the file
that was indexed (the same rule as photos), range or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import retrieval
from retrieval.server_ranges import parse_range

from .test_video_index import ColourEncoder, flat_photo
from .video_factory import BLACK, BLUE, GREEN, RED, Scene, mean_colour, write_video

pytest.importorskip("httpx", reason="FastAPI's TestClient needs the 'httpx' package")
from fastapi.testclient import TestClient  # noqa: E402

from retrieval.server import create_app  # noqa: E402
from retrieval.server_guard import ApiError  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    base = tmp_path_factory.mktemp("video-server")
    folder = base / "media"
    folder.mkdir()
    write_video(folder / "party.mp4", [Scene(BLACK, 1, "flat"), Scene(RED, 3), Scene(GREEN, 3), Scene(BLUE, 3)])
    flat_photo(GREEN, folder / "green.png")
    index = retrieval.create_index("v", encoder=ColourEncoder(), root=base / "root")
    index.add_folder(folder)
    with TestClient(create_app(index)) as client:
        yield client, folder
    index.close()


def test_a_video_hit_names_its_moment_and_how_to_play_it(served) -> None:
    client, folder = served
    body = client.get("/api/search", params={"q": "green", "k": 5}).json()
    video = next(h for h in body["hits"] if h["kind"] == "video")
    assert video["name"] == "party.mp4" and 4.0 <= video["time"] < 7.0
    assert video["thumbnail"] == f"/api/items/{video['frame']}/thumbnail"
    seconds = f"{video['time']:.3f}".rstrip("0").rstrip(".")
    assert video["play"] == f"/api/items/{video['id']}/original#t={seconds}"
    assert video["moments"][0]["frame"] == video["frame"] and all("thumbnail" in m for m in video["moments"])
    assert (video["width"], video["height"]) == (160, 90)
    # Videos only, as the page's "videos only" asks.
    only = client.get("/api/search", params={"q": "green", "types": "video"}).json()["hits"]
    assert [h["kind"] for h in only] == ["video"]
    # The moment's thumbnail shows it (green), the video's own its first picture worth showing (red).
    moment = Image.open(__import__("io").BytesIO(client.get(video["thumbnail"], params={"size": 128}).content))
    colour = mean_colour(moment.convert("RGB"))
    assert colour[1] > colour[0] and colour[1] > colour[2]
    poster = client.get(f"/api/items/{video['id']}/thumbnail")
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
    # A frame item says which video and when.
    item = client.get(f"/api/items/{video['frame']}").json()
    assert (item["kind"], item["parent_id"], item["time"]) == ("frame", video["id"], video["time"])
    # More like this moment: the green photo, never the video itself.
    similar = client.get(f"/api/items/{video['frame']}/similar", params={"k": 3}).json()["hits"]
    assert [h["name"] for h in similar] == ["green.png"]


def test_the_original_is_served_whole_or_by_ranges(served) -> None:
    client, folder = served
    data = (folder / "party.mp4").read_bytes()
    video_id = next(h["id"] for h in client.get("/api/search", params={"q": "red"}).json()["hits"]
                    if h["kind"] == "video")
    whole = client.get(f"/api/items/{video_id}/original")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"
    part = client.get(f"/api/items/{video_id}/original", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert part.headers["content-length"] == "1000" and part.headers["content-type"] == "video/mp4"
    tail = client.get(f"/api/items/{video_id}/original", headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]
    open_end = client.get(f"/api/items/{video_id}/original", headers={"Range": f"bytes={len(data) - 10}-"})
    assert open_end.content == data[-10:]
    past = client.get(f"/api/items/{video_id}/original", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    # A frame's original is its video (what a moment's "open" link plays).
    frame = next(h["frame"] for h in client.get("/api/search", params={"q": "red"}).json()["hits"]
                 if h["kind"] == "video")
    assert client.get(f"/api/items/{frame}/original", headers={"Range": "bytes=0-9"}).content == data[:10]


def test_a_replaced_video_is_not_served_by_any_range(served, tmp_path: Path) -> None:
    client, folder = served
    video = folder / "party.mp4"
    video_id = next(h["id"] for h in client.get("/api/search", params={"q": "red"}).json()["hits"]
                    if h["kind"] == "video")
    saved = tmp_path / "saved.mp4"
    os.rename(video, saved)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s" * saved.stat().st_size)
    os.symlink(secret, video)
    try:
        for headers in ({}, {"Range": "bytes=0-99"}):
            assert client.get(f"/api/items/{video_id}/original", headers=headers).status_code == 404
    finally:
        video.unlink()
        os.rename(saved, video)
    assert client.get(f"/api/items/{video_id}/original", headers={"Range": "bytes=0-99"}).status_code == 206


@pytest.mark.parametrize("header, expected", [
    (None, None), ("", None), ("bytes=0-9", (0, 9)), ("bytes=5-", (5, 99)), ("bytes=-10", (90, 99)),
    ("bytes=-1000", (0, 99)), ("bytes=90-5000", (90, 99)), ("BYTES = 1 - 2", (1, 2)), ("bytes=9-3", None),
    ("bytes=0-1,5-9", None), ("items=0-9", None), ("bytes=abc", None), ("bytes=-", None),
])
def test_range_headers(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=500-600", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_range(header, 100)
    assert info.value.status == 416 and info.value.headers["Content-Range"] == "bytes */100"
