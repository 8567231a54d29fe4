"""Why did this match, over HTTP: ``POST /api/items/{id}/explain`` through FastAPI's TestClient, and the page's toggle."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs the 'fastapi' package (pip install -e '.[test]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs the 'httpx' package")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import retrieval  # noqa: E402
from retrieval.query import QueryTerm  # noqa: E402
from retrieval.server import WEB_DIR, create_app  # noqa: E402

from .conftest import make_image  # noqa: E402

ROTATED_STORED = (90, 40)  # stored landscape; EXIF orientation 6 shows it 40 x 90


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_encoder) -> Iterator[tuple[retrieval.Index, TestClient]]:
    base = tmp_path_factory.mktemp("explain-server")
    photos = base / "photos"
    photos.mkdir()
    for i in range(3):
        make_image(i).save(photos / f"img{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(7, ROTATED_STORED).save(photos / "rotated.jpg", quality=95, exif=exif)
    notes = base / "notes.txt"
    notes.write_text("a note about red shoes\n")
    index = retrieval.create_index("why", encoder=tiny_encoder, root=base / "root")
    index.add_folder(photos)
    index.add_texts(notes)
    with TestClient(create_app(index)) as client:
        yield index, client
    index.close()


def _id_of(index: retrieval.Index, name: str) -> int:
    hits = index.search_text("red shoes", k=20, filters=retrieval.Filters(target="all"))
    return next(h.id for h in hits if h.path is not None and Path(h.path).name == name)


def _overlay(body: dict) -> Image.Image:
    head, _, data = body["overlay"].partition(",")
    assert head == "data:image/png;base64" and body["media_type"] == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_explain_endpoint_gives_the_grid_and_the_overlay_of_the_api(served) -> None:
    index, client = served
    item = _id_of(index, "img1.png")
    response = client.post(f"/api/items/{item}/explain", json={"terms": [{"text": "red shoes"}], "max_side": 1024})
    assert response.status_code == 200, response.text
    body = response.json()
    direct = index.explain("red shoes", item)
    assert body["item"] == item
    assert body["explanation"]["score"] == pytest.approx(direct.score, abs=1e-6)
    np.testing.assert_allclose(body["explanation"]["grid"], direct.grid, atol=1e-4)
    assert body["explanation"]["method"] == direct.method
    assert _overlay(body).size == (96, 72)  # the photo's own size (max_side above it)


def test_combined_and_negative_terms_each_get_their_share(served) -> None:
    index, client = served
    item, other = _id_of(index, "img0.png"), _id_of(index, "img2.png")
    terms = [{"text": "red shoes", "weight": 2}, {"text": "leather", "weight": -1}, {"item": other}]
    body = client.post(f"/api/items/{item}/explain", json={"terms": terms, "method": "occlusion"}).json()
    direct = index.explain([QueryTerm.text("red shoes", 2), QueryTerm.text("leather", -1), QueryTerm.item(other)],
                           item, method="occlusion")
    explained = body["explanation"]
    assert [t["weight"] for t in explained["terms"]] == [2, -1, 1]
    assert [t["label"] for t in explained["terms"]] == [t.label for t in direct.terms]
    np.testing.assert_allclose(np.sum([t["grid"] for t in explained["terms"]], axis=0), explained["grid"], atol=1e-3)
    for sent, term in zip(explained["terms"], direct.terms):
        assert sent["pull"] == pytest.approx(float(term.grid[term.grid > 0].sum()), abs=1e-5)
        assert sent["push"] == pytest.approx(float(term.grid[term.grid < 0].sum()), abs=1e-5)
    one = client.post(f"/api/items/{item}/explain", json={"terms": terms, "method": "occlusion", "term": 1})
    assert one.status_code == 200 and one.json()["overlay"] != body["overlay"]  # the push of 'leather' alone


def test_the_overlay_is_the_photo_as_shown_upright_and_scaled(served) -> None:
    index, client = served
    item = _id_of(index, "rotated.jpg")
    body = client.post(f"/api/items/{item}/explain", json={"terms": [{"text": "red shoes"}], "max_side": 45}).json()
    assert _overlay(body).size == (20, 45)  # shown 40 x 90 (EXIF orientation 6), longest side 45
    assert body["explanation"]["geometry"]["photo_size"] == [40, 90]


def test_bad_requests_are_one_json_error_each(served) -> None:
    index, client = served
    item = _id_of(index, "img1.png")
    text_item = next(h.id for h in index.search_text("red shoes", k=20, filters=retrieval.Filters(target="text")))
    cases = [
        (f"/api/items/{item}/explain", {"terms": [{"text": "red"}], "method": "nonsense"}, 400, "nonsense"),
        (f"/api/items/{item}/explain", {"terms": [{"text": "red"}], "term": 3}, 400, "no term 3"),
        (f"/api/items/{item}/explain", {"terms": []}, 422, None),
        (f"/api/items/{text_item}/explain", {"terms": [{"text": "red"}]}, 422, "text"),
        ("/api/items/999999/explain", {"terms": [{"text": "red"}]}, 404, "999999"),
        (f"/api/items/{item}/explain", {"terms": [{"item": 999999}]}, 404, "999999"),
    ]
    for path, payload, status, word in cases:
        response = client.post(path, json=payload)
        assert response.status_code == status, (payload, response.text)
        body = response.json()
        assert body["status"] == status and body["message"] and "Traceback" not in response.text
        if word is not None:
            assert word in body["message"], body


def test_the_page_has_a_why_toggle_that_asks_the_endpoint() -> None:
    script = (WEB_DIR / "app.js").read_text(encoding="utf-8")
    assert "/explain`" in script and "why?" in script
    assert "explainTerms" in script  # the terms of the query the hits answered, not what is typed now


def test_why_in_a_real_browser_swaps_the_thumbnail_for_the_heatmap_and_back(served) -> None:
    """Headless Chromium (skipped without it): search, press why?, see the overlay; press again, the thumbnail."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser check needs the 'playwright' package")
    pytest.importorskip("uvicorn", reason="the browser check needs 'uvicorn' to run the server")
    from .test_browser import CHROMIUM_ARGS, new_page, search
    from .serving_helpers import RunningServer
    from .test_browser import CHROMIUM

    index, _ = served
    with sync_api.sync_playwright() as p, RunningServer(create_app(index)) as server:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - an unusable browser is the environment's problem
            pytest.skip(f"{CHROMIUM} does not start under Playwright: {exc}".splitlines()[0])
        try:
            page = new_page(chromium, server.url)
            page.goto(server.url + "/")
            search(page, "red shoes", "red shoes", images=4)
            card = page.locator("#results .card.image").first
            img = card.locator(".thumb img")
            thumbnail = img.get_attribute("src")
            card.locator("button.why").click()
            sync_api.expect(card.locator("button.why")).to_have_attribute("aria-pressed", "true")
            assert img.get_attribute("src").startswith("data:image/png;base64,")
            assert "score" in card.locator("button.why").get_attribute("title")
            card.locator("button.why").click()
            sync_api.expect(card.locator("button.why")).to_have_attribute("aria-pressed", "false")
            assert img.get_attribute("src") == thumbnail
            assert not page.errors, page.errors
        finally:
            chromium.close()
