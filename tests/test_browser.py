"""A real browser against a running server: headless Chromium drives the search page.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs
it) and the ``playwright`` Python package (the ``test`` extra); we never run
``playwright install``: Playwright drives the system Chromium. Screenshots go
to ``$MMSEARCH_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser test needs the 'playwright' package (pip install -e '.[test]')"
)
pytest.importorskip("uvicorn", reason="browser test needs 'uvicorn' to run the server")

CHROMIUM = os.environ.get("MMSEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip(
        "browser test skipped: no Chromium found (install Debian's package: apt-get install chromium, "
        "or set MMSEARCH_CHROMIUM to its path)",
        allow_module_level=True,
    )

from retrieval.server import create_app  # noqa: E402

from .serving_helpers import RunningServer  # noqa: E402
from .test_queries import draw  # noqa: E402
from .test_server import TOKEN, build_shop  # noqa: E402

ARTIFACTS = Path(os.environ.get("MMSEARCH_ARTIFACTS") or Path(__file__).parent / "artifacts")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
IMAGES_LOADED = """(n) => {
  const imgs = [...document.querySelectorAll('#results .card img')].slice(0, n);
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    index = build_shop(tmp_path_factory.mktemp("browser-shop"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - an unusable browser is an environment problem: say which
            pytest.skip(f"browser test skipped: {CHROMIUM} does not start under Playwright: {exc}".splitlines()[0])
        yield chromium
        chromium.close()


def new_page(browser, base_url: str):
    """A page that records console errors and every URL it requests."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(15_000)
    page.errors, page.urls = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.urls.append(r.url))
    return page


def wait_for_results(page, words: str, images: int = 6) -> None:
    sync_api.expect(page.locator("#status")).to_contain_text(words)
    page.wait_for_function(IMAGES_LOADED, arg=images)


def card_names(page, n: int) -> list[str]:
    return page.locator("#results .card.image .name").all_inner_texts()[:n]


def test_search_upload_and_more_like_this_in_a_browser(browser, shop, tmp_path: Path) -> None:
    query_image = tmp_path / "green-hat.png"
    draw("green", "hat", 90).save(query_image)
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        sync_api.expect(page.locator("#index-info")).to_contain_text("25 images")

        # Type a query (keyboard: '/' focuses the box, Enter searches) and see the thumbnails load.
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("/")
        page.keyboard.type("red shoe")
        page.keyboard.press("Enter")
        wait_for_results(page, "results for “red shoe”")
        first = page.locator("#results .card.image").first
        name = first.locator(".name")
        assert name.inner_text().startswith("red-") and "/shoe/" in name.get_attribute("title")
        page.screenshot(path=str(ARTIFACTS / "1-text-search.png"))

        # Upload an image with the file picker: image -> image.
        page.fill("#q", "")
        page.set_input_files("#file", str(query_image))
        wait_for_results(page, "for your image")
        assert set(card_names(page, 2)) == {"green-0.png", "green-1.png"}
        assert "/hat/" in page.locator("#results .card.image .name").first.get_attribute("title")
        page.screenshot(path=str(ARTIFACTS / "2-image-upload.png"))

        # The image and words together: "like this, but yellow".
        page.fill("#q", "yellow")
        page.keyboard.press("Enter")
        wait_for_results(page, "your image + “yellow”")
        assert page.locator("#results .card.image .name").first.inner_text().startswith("yellow-")
        page.screenshot(path=str(ARTIFACTS / "3-image-plus-text.png"))

        # Image -> text: the captions that describe the uploaded picture.
        page.click("#options summary")
        page.select_option("#target", "text")
        sync_api.expect(page.locator("#results .card.text blockquote").first).to_have_text("a yellow hat")
        page.screenshot(path=str(ARTIFACTS / "4-image-to-text.png"))
        page.select_option("#target", "image")
        page.keyboard.press("Escape")  # drops the image; the words stay and are searched again
        wait_for_results(page, "results for “yellow”")

        # Click a result: more like this.
        cup = page.locator("#results .card.image", has=page.locator(".name[title*='/cup/']")).first
        cup_name = cup.locator(".name").inner_text()
        cup.locator(".thumb").click()
        wait_for_results(page, f"more like {cup_name}")
        sync_api.expect(page.locator("#context")).to_be_visible()
        names = page.locator("#results .card.image .name").evaluate_all("els => els.map(e => e.title)")
        assert all("/cup/" in n or "/rotated/" in n for n in names[:2]) and names[0].split("/")[-1] != cup_name
        page.screenshot(path=str(ARTIFACTS / "5-more-like-this.png"))

        # Keyboard only: arrows move between results, Enter asks for more like the focused one.
        page.locator("#results .card .thumb").first.focus()
        page.keyboard.press("ArrowRight")
        focused = page.evaluate("document.activeElement.closest('.card').dataset.id")
        page.keyboard.press("Enter")
        wait_for_results(page, "more like")
        assert page.locator("#results .card").first.get_attribute("data-id") != focused

        # Paste and drag-and-drop deliver an image too.
        for event in ("paste", "drop"):
            page.keyboard.press("Escape")
            page.evaluate(
                """async (kind) => {
                  const blob = await (await fetch(document.querySelector('#results img').src)).blob();
                  const data = new DataTransfer();
                  data.items.add(new File([blob], kind + '.jpg', {type: 'image/jpeg'}));
                  const e = kind === 'paste'
                    ? new ClipboardEvent('paste', {clipboardData: data, bubbles: true})
                    : new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true});
                  (kind === 'paste' ? document : window).dispatchEvent(e);
                }""",
                event,
            )
            wait_for_results(page, "for your image")
            sync_api.expect(page.locator("#drop-preview")).to_be_visible()

        # Nothing was fetched from anywhere but this server, and the page logged no errors.
        foreign = [u for u in page.urls if not u.startswith((server.url, "data:", "blob:"))]
        assert foreign == [] and page.errors == []
        page.close()


def test_page_asks_for_the_token_and_then_works(browser, shop) -> None:
    with RunningServer(create_app(shop, token=TOKEN)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        sync_api.expect(page.locator("#token-form")).to_be_visible()
        sync_api.expect(page.locator("#status")).to_contain_text("access token")
        page.screenshot(path=str(ARTIFACTS / "6-token-prompt.png"))
        page.fill("#token", "not-the-token")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#status")).to_contain_text("not accepted")
        page.fill("#token", TOKEN)
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#index-info")).to_contain_text("25 images")
        page.fill("#q", "blue cup")
        page.keyboard.press("Enter")
        wait_for_results(page, "results for “blue cup”")  # thumbnails load with the cookie the page set
        page.close()
