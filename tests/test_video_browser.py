"""The search page with videos, in a real browser: the moment's picture, playing from that moment.

Needs Chromium and Playwright like ``tests/test_browser.py`` (skipped without
them). The video is played through the server's range requests; the test
checks where the player stands once it has loaded, so it needs a Chromium
that decodes H.264 (Debian's does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_browser import ARTIFACTS, browser, new_page, search, sync_api  # noqa: F401 - browser is a fixture
from .test_video_index import ColourEncoder, flat_photo
from .video_factory import BLACK, BLUE, GREEN, RED, Scene, write_video

import retrieval  # noqa: E402
from retrieval.server import create_app  # noqa: E402

from .serving_helpers import RunningServer  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("video-page")
    folder = base / "media"
    folder.mkdir()
    write_video(folder / "party.mp4", [Scene(BLACK, 1, "flat"), Scene(RED, 3), Scene(GREEN, 3), Scene(BLUE, 3)],
                size=(320, 180), faststart=True)
    flat_photo(GREEN, folder / "green.png")
    flat_photo(RED, folder / "red.png")
    index = retrieval.create_index("v", encoder=ColourEncoder(), root=base / "root")
    index.add_folder(folder)
    yield index
    index.close()


def test_a_video_plays_from_its_moment_and_more_like_it_starts_there(browser, library) -> None:  # noqa: F811
    with RunningServer(create_app(library)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        search(page, "green", "results for “green”", images=2)
        card = page.locator("#results .card.video").first
        sync_api.expect(card.locator(".clock")).to_have_text("▶ 00:04")  # the moment the video turns green
        assert page.locator("#results .card.video").count() == 1  # one card per video
        card.locator(".thumb").click()
        video = page.locator("#detail-video")
        sync_api.expect(video).to_be_visible()
        assert video.get_attribute("src").endswith("/original#t=4")
        sync_api.expect(page.locator("#detail-facts")).to_contain_text("Best moment")
        # The player loads the file by ranges and stands at the moment.
        page.wait_for_function("() => document.querySelector('#detail-video').readyState >= 1", timeout=20_000)
        position = page.evaluate("document.querySelector('#detail-video').currentTime")
        assert 3.9 <= position <= 4.2, position
        moments = page.locator("#detail-moment-list button")
        assert moments.count() >= 2
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "video-detail.png"))
        # "More like this" starts from the moment: the green photo, not the video itself.
        page.click("#detail-similar")
        sync_api.expect(page.locator("#status")).to_contain_text("more like party.mp4 at 00:04")
        page.wait_for_function("() => document.querySelectorAll('#results .card').length > 0")
        assert page.locator("#results .card .name").first.inner_text() == "green.png"
        assert page.locator("#results .card.video").count() == 0
        # "Videos only".
        page.click("#clear-similar")
        page.click("#options summary")
        page.select_option("#target", "video")
        search(page, "red", "1 result for “red”", images=1)
        assert page.locator("#results .card").count() == page.locator("#results .card.video").count() == 1
        assert page.errors == []
        page.close()
