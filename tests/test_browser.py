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

from .conftest import SAMPLE_PHOTOS  # noqa: E402
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


def new_page(browser, base_url: str, width: int = 1280, height: int = 860, **options):
    """A page that records console errors and every URL it requests."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": width, "height": height}, **options)
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

        # Click a result: its details; from there, more like this.
        cup = page.locator("#results .card.image", has=page.locator(".name[title*='/cup/']")).first
        cup_name = cup.locator(".name").inner_text()
        cup.locator(".thumb").click()
        sync_api.expect(page.locator("#detail")).to_be_visible()
        sync_api.expect(page.locator("#detail-title")).to_have_text(cup_name)
        page.click("#detail-similar")
        wait_for_results(page, f"more like {cup_name}")
        sync_api.expect(page.locator("#detail")).to_be_hidden()
        sync_api.expect(page.locator("#context")).to_be_visible()
        names = page.locator("#results .card.image .name").evaluate_all("els => els.map(e => e.title)")
        assert all("/cup/" in n or "/rotated/" in n for n in names[:2]) and names[0].split("/")[-1] != cup_name
        page.screenshot(path=str(ARTIFACTS / "5-more-like-this.png"))

        # Keyboard only: arrows move between results, 'm' asks for more like the focused one.
        page.locator("#results .card .thumb").first.focus()
        page.keyboard.press("ArrowRight")
        focused = page.evaluate("document.activeElement.closest('.card').dataset.id")
        page.keyboard.press("m")
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


# -- the page at phone and desktop widths ------------------------------------------------------------

PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 860}
LAYOUT = """() => {
  const q = document.querySelector('#q').getBoundingClientRect();
  const go = document.querySelector('#go').getBoundingClientRect();
  const drop = document.querySelector('#drop').getBoundingClientRect();
  const overflowing = [...document.querySelectorAll('body *')].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && e.offsetParent !== null && (r.right > innerWidth + 0.5 || r.left < -0.5)
      && !e.closest('.skip, dialog:not([open])');
  }).map((e) => e.id || e.className || e.tagName);
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth, q: q.width, goRight: go.right,
          goWidth: go.width, dropWidth: drop.width, overflowing};
}"""


def check_layout(page, width: int) -> dict:
    """No sideways scrolling, nothing outside the viewport, the controls whole; on a phone a wide search box."""
    layout = page.evaluate(LAYOUT)
    assert layout["innerWidth"] == width
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["overflowing"] == [], layout
    assert layout["goRight"] <= width and layout["goWidth"] >= 40 and layout["dropWidth"] >= 40, layout
    if width <= 400:
        assert layout["q"] >= 0.6 * width, layout
    return layout


def search(page, words: str, expect: str, images: int = 6) -> None:
    page.fill("#q", words)
    page.keyboard.press("Enter")
    wait_for_results(page, expect, images)


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone-360", "desktop-1280"])
def test_the_page_fits_phone_and_desktop_widths(browser, shop, size: dict) -> None:
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url, **size, device_scale_factor=2 if size is PHONE else 1)
        page.goto(server.url + "/")
        sync_api.expect(page.locator("#index-info")).to_contain_text("25 images")
        check_layout(page, size["width"])
        search(page, "red shoe", "results for “red shoe”")
        check_layout(page, size["width"])
        name = "phone" if size is PHONE else "desktop"
        page.screenshot(path=str(ARTIFACTS / f"layout-{name}.png"))
        page.click("#options summary")
        check_layout(page, size["width"])
        page.click("#options summary")
        page.locator("#results .card.image .thumb").first.click()
        sync_api.expect(page.locator("#detail-facts")).to_contain_text("Modified")
        check_layout(page, size["width"])
        box = page.locator("#detail-img").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"] + 0.5
        page.screenshot(path=str(ARTIFACTS / f"layout-{name}-detail.png"))
        assert page.errors == []
        page.close()


def test_the_grid_keeps_each_pictures_shape_and_fills_its_rows(browser, shop) -> None:
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        search(page, "yellow cup", "results for “yellow cup”", images=12)
        boxes = page.evaluate("""() => [...document.querySelectorAll('#results .card.image')].map((c) => {
          const t = c.querySelector('.thumb').getBoundingClientRect();
          return {name: c.querySelector('.name').textContent, w: t.width, h: t.height, top: t.top, left: t.left,
                  right: c.getBoundingClientRect().right};
        })""")
        tall = next(b for b in boxes if b["name"] == "tall.jpg")  # 40x80 as shown (EXIF orientation 6)
        wide = next(b for b in boxes if b["name"] != "tall.jpg")  # 64x48 or 65x48
        assert tall["w"] / tall["h"] == pytest.approx(40 / 80, rel=0.03)
        assert wide["w"] / wide["h"] == pytest.approx(64.5 / 48, rel=0.03)
        width = page.evaluate("document.querySelector('#results').getBoundingClientRect().right")
        rows: dict[int, float] = {}
        for b in boxes:
            rows[round(b["top"])] = max(rows.get(round(b["top"]), 0), b["right"])
        full = [right for _, right in sorted(rows.items())][:-1]  # every row but the last reaches the edge
        assert len(full) >= 1 and all(right == pytest.approx(width, abs=1.5) for right in full), (rows, width)
        page.close()


def test_an_upload_error_clears_the_previous_results(browser, shop, tmp_path: Path) -> None:
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("these are notes, not a picture")
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        search(page, "red shoe", "results for “red shoe”")
        page.set_input_files("#file", str(not_a_picture))
        sync_api.expect(page.locator("#status")).to_have_class("status error")
        assert page.locator("#results .card").count() == 0  # nothing left that seems to answer the bad image
        sync_api.expect(page.locator("#status")).to_contain_text("usable")
        page.errors.clear()  # the 415 itself is logged by the browser
        page.close()


def test_results_beyond_the_first_page_and_the_filters(browser, shop) -> None:
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url, width=1280, height=600)
        page.goto(server.url + "/")
        page.click("#options summary")
        page.select_option("#k", "24")
        page.select_option("#target", "all")  # 25 images and 12 texts
        search(page, "cup", "results for “cup” — scroll for more")
        assert page.locator("#results .card").count() == 24
        page.locator("#sentinel").scroll_into_view_if_needed()  # infinite scroll asks for the next page
        sync_api.expect(page.locator("#results .card")).to_have_count(37)
        sync_api.expect(page.locator("#status")).to_have_text("37 results for “cup”.")
        sync_api.expect(page.locator("#more")).to_be_hidden()
        ids = page.locator("#results .card").evaluate_all("els => els.map(e => e.dataset.id)")
        assert len(set(ids)) == 37
        page.select_option("#target", "image")

        # The filters the API has: folder glob, types, dates, lowest score, near-duplicates.
        page.fill("#glob", "*/hat/*")
        page.keyboard.press("Enter")
        wait_for_results(page, "results for “cup”")
        names = page.locator("#results .card.image .name").evaluate_all("els => els.map(e => e.title)")
        assert names and all("/hat/" in n for n in names)
        sync_api.expect(page.locator("#filter-count")).to_have_text("1 on")
        page.fill("#glob", "")
        page.fill("#types", "jpg")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#results .card.image")).to_have_count(1)
        page.fill("#types", "")
        page.fill("#after", "2999-01-01")
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#status")).to_have_text("No results for “cup”.")
        page.click("#reset-filters")
        sync_api.expect(page.locator("#results .card.image")).to_have_count(24)
        page.fill("#min-score", "0.6")  # "cup" is the kind axis alone: cups score ~0.71, everything else ~0
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#results .card.image")).to_have_count(9)  # 4 colours x 2, and tall.jpg
        page.fill("#min-score", "")
        page.check("#dedup")  # the two variants of each picture are near-duplicates (cosine > 0.95)
        sync_api.expect(page.locator("#filter-count")).to_have_text("1 on")
        wait_for_results(page, "results for “cup”")
        names = page.locator("#results .card.image .name").evaluate_all("els => els.map(e => e.title)")
        folders_colours = [(n.split("/")[-2], n.split("/")[-1].split("-")[0]) for n in names]
        assert len(folders_colours) == len(set(folders_colours))
        assert page.errors == []
        page.close()


def test_the_detail_view(browser, shop) -> None:
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        search(page, "blue hat", "results for “blue hat”")
        first = page.locator("#results .card .thumb").first
        first_name = page.locator("#results .card .name").first.inner_text()
        first.focus()
        page.keyboard.press("Enter")  # a focused result opens with Enter too
        detail = page.locator("#detail")
        sync_api.expect(detail).to_be_visible()
        sync_api.expect(page.locator("#detail-title")).to_have_text(first_name)
        path = page.locator("#detail-path").inner_text()
        assert path.endswith(f"/hat/{first_name}")
        facts = page.locator("#detail-facts")
        sync_api.expect(facts).to_contain_text("Modified")
        text = facts.inner_text()
        assert "64 × 48 pixels" in text or "65 × 48 pixels" in text
        assert "File size" in text and "bytes" in text and "cosine" in text
        page.wait_for_function("() => document.querySelector('#detail-img').naturalWidth > 0")
        href = page.locator("#detail-open").get_attribute("href")
        assert href.endswith("/original")
        assert page.request.get(server.url + href).body() == Path(path).read_bytes()

        page.keyboard.press("ArrowRight")  # the next result, in the same view
        sync_api.expect(page.locator("#detail-facts")).to_contain_text("result 2")
        assert page.locator("#detail-title").inner_text() == page.locator("#results .card .name").nth(1).inner_text()
        page.keyboard.press("ArrowLeft")
        sync_api.expect(page.locator("#detail-facts")).to_contain_text("result 1")
        sync_api.expect(page.locator("#detail-prev")).to_be_disabled()
        page.keyboard.press("Escape")
        sync_api.expect(detail).to_be_hidden()
        focused = page.evaluate("document.activeElement.closest('.card')?.dataset.id")
        assert focused == page.locator("#results .card").first.get_attribute("data-id")  # focus goes back

        # Texts open too (image -> text results), and "more like this" works from them.
        page.click("#options summary")
        page.select_option("#target", "text")
        sync_api.expect(page.locator("#results .card.text").first).to_be_visible()
        page.locator("#results .card.text .thumb").first.click()
        sync_api.expect(page.locator("#detail-text")).to_have_text("a blue hat")
        sync_api.expect(page.locator("#detail-open")).to_be_hidden()
        page.click("#detail-similar")
        sync_api.expect(page.locator("#status")).to_contain_text("more like “a blue hat”")
        assert page.errors == []
        page.close()


def test_every_control_has_a_name_and_every_picture_a_text(browser, shop) -> None:
    with RunningServer(create_app(shop)) as server:
        page = new_page(browser, server.url)
        page.goto(server.url + "/")
        search(page, "green", "results for “green”")
        page.click("#options summary")
        unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, [role=button]')]
          .filter((e) => e.type !== 'file' && e.offsetParent !== null)
          .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
          .map((e) => e.id || e.outerHTML.slice(0, 80))""")
        assert unnamed == []
        no_alt = page.evaluate("""() => [...document.querySelectorAll('#results img')]
          .filter((i) => !i.alt).map((i) => i.src)""")
        assert no_alt == []
        # Tab order: the search box, the image button, Search, then the options.
        page.focus("#q")
        order = []
        for _ in range(3):
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        assert order == ["drop", "go", "SUMMARY"]
        page.close()


SAMPLES = Path(os.environ.get("MMSEARCH_SAMPLE_PHOTOS") or SAMPLE_PHOTOS)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared/datasets/sample-photos is not next to this checkout")
def test_screenshots_of_real_photos_at_both_widths(browser, tiny_encoder, tmp_path: Path) -> None:
    """The pictures in docs/serving.md: the sample photos (random-weight test model: the ranking means nothing)."""
    import retrieval

    with retrieval.create_index("photos", encoder=tiny_encoder, root=tmp_path / "root") as index:
        index.add_folder(SAMPLES)
        with RunningServer(create_app(index)) as server:
            for size, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
                page = new_page(browser, server.url, **size, device_scale_factor=2 if size is PHONE else 1)
                page.goto(server.url + "/")
                page.click("#options summary")
                page.fill("#glob", "*/albums/*")  # the albums: real photos (the other folders test file formats)
                page.click("#options summary")
                search(page, "rocks and flowers", "results for “rocks and flowers”", images=8)
                check_layout(page, size["width"])
                page.screenshot(path=str(ARTIFACTS / f"serve-{name}.png"))
                page.locator("#results .card.image .thumb").nth(1).click()
                sync_api.expect(page.locator("#detail-facts")).to_contain_text("Modified")
                page.wait_for_function("() => document.querySelector('#detail-img').naturalWidth > 0")
                check_layout(page, size["width"])
                page.screenshot(path=str(ARTIFACTS / f"serve-{name}-detail.png"))
                if size is DESKTOP:
                    page.click("#detail-similar")  # more like this one
                    wait_for_results(page, "more like", images=8)
                    page.screenshot(path=str(ARTIFACTS / "serve-more-like-this.png"))
                    page.keyboard.press("Escape")
                    page.set_input_files("#file", str(SAMPLES / "albums" / "nature" / "wood_anemones.jpg"))
                    wait_for_results(page, "for your image", images=8)
                    search(page, "sunset", "your image + “sunset”", images=8)  # the picture and words together
                    check_layout(page, size["width"])
                    page.screenshot(path=str(ARTIFACTS / "serve-search.png"))
                assert page.errors == []
                page.close()
