"""The search page's photo side in headless Chromium (issue 19): when/where/camera filters, each result's
capture date and place, the detail view's facts, the duplicates view. Skipped like test_browser.py when
Chromium or Playwright is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import retrieval

from .test_browser import ARTIFACTS, new_page, sync_api  # the same browser set-up (and skips)
from .test_browser import browser  # noqa: F401 - a fixture
from .test_duplicates_cli import BEACH_GROUP, BURST_GROUP, ThumbnailEncoder
from .test_duplicates_cli import library as duplicates_library  # noqa: F401 - a fixture
from .test_photo_search import library  # noqa: F401 - a fixture
from .serving_helpers import RunningServer

from retrieval.server import create_app  # noqa: E402


def shown_names(page) -> set[str]:
    return set(page.locator("#results .card .name").all_inner_texts())


def test_photo_filters_dates_and_places_on_the_page(browser, library) -> None:  # noqa: F811
    _, root = library
    with retrieval.open_index(root=root) as index, RunningServer(create_app(index)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        page.click("#options summary")
        page.fill("#q", "a photo")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#status")).to_contain_text("10 results")
        sevilla = page.locator("#results .card", has=page.locator(".name", has_text="sevilla.jpg"))
        sync_api.expect(sevilla.locator(".taken")).to_contain_text("2023")
        sync_api.expect(sevilla.locator(".taken")).to_contain_text("Sevilla, Spain")

        page.fill("#place", "Spain")
        page.fill("#taken-after", "2023-06-01")
        page.fill("#taken-before", "2023-09-01")
        page.keyboard.press("Enter")
        # The first place name loads the gazetteer (seconds on a busy machine): a longer wait, once.
        sync_api.expect(page.locator("#results .card")).to_have_count(2, timeout=60_000)
        assert shown_names(page) == {"sevilla.jpg", "madrid.jpg"}
        sync_api.expect(page.locator("#filter-count")).to_have_text("3 on")
        page.click("#reset-filters")
        page.fill("#near", "Berlin")
        page.fill("#within", "40")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#results .card")).to_have_count(2)
        assert shown_names(page) == {"berlin.jpg", "potsdam.png"}
        page.click("#reset-filters")
        page.fill("#camera", "iphone")
        page.select_option("#has-gps", "true")
        page.select_option("#sort", "taken")  # newest capture first: barcelona (1 Sep) before madrid (31 Aug)
        sync_api.expect(page.locator("#results .card .name")).to_have_text(
            ["barcelona.jpg", "madrid.jpg", "berlin.jpg", "sevilla.jpg"])  # waits past the unsorted answer

        page.locator("#results .card .thumb").first.click()
        facts = page.locator("#detail-facts")
        sync_api.expect(facts).to_contain_text("Taken")
        sync_api.expect(facts).to_contain_text("2023-09-01 00:30:00+02:00")
        sync_api.expect(facts).to_contain_text("Catalonia, Spain")  # the gazetteer names the district
        sync_api.expect(facts).to_contain_text("Apple iPhone 13")
        page.keyboard.press("Escape")

        page.click("#reset-filters")
        page.fill("#place", "Atlantis-upon-Nowhere")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#status")).to_contain_text("Atlantis-upon-Nowhere")
        assert page.locator("#results .card").count() == 0
        assert page.errors == [] or all("400" in e for e in page.errors)  # the refused request, nothing else
        page.close()


def test_the_duplicates_view(browser, duplicates_library) -> None:  # noqa: F811
    _, root = duplicates_library
    with retrieval.open_index(root=root, encoder=ThumbnailEncoder()) as index, \
            RunningServer(create_app(index)) as server:
        page = new_page(browser, server.url, width=1280, height=900)
        page.goto(server.url + "/")
        page.click("#show-duplicates")
        sync_api.expect(page.locator("#status")).to_contain_text("2 groups of near-duplicates")
        groups = page.locator(".dup-group")
        sync_api.expect(groups).to_have_count(2)
        beach = groups.nth(0)
        assert set(beach.locator(".name").all_inner_texts()) == {Path(p).name for p in BEACH_GROUP}
        assert beach.locator(".name").first.inner_text() == "beach-1.jpg"
        assert beach.locator(".badge").first.inner_text() == "keep"
        sync_api.expect(beach.locator(".badge.exact")).to_have_count(1)
        assert set(groups.nth(1).locator(".name").all_inner_texts()) == {Path(p).name for p in BURST_GROUP}
        page.wait_for_function("() => [...document.querySelectorAll('.dup-group img')]"
                               ".every((i) => i.complete && i.naturalWidth > 0)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "duplicates-view.png"))

        page.click("#options summary")
        page.fill("#glob", "*burst*")
        page.click("#show-duplicates")
        sync_api.expect(page.locator(".dup-group")).to_have_count(1)
        sync_api.expect(page.locator("#status")).to_contain_text("1 group of near-duplicates")
        assert page.errors == []
        page.close()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
