"""clip-retrieval's back-end protocol: its real client, its front's request shapes, its front in a browser.

The client and the front come from the ``clip-retrieval`` 2.45 wheel, installed
without its dependencies (``pip install --no-deps clip-retrieval==2.45.0``: its
package ``__init__`` imports torch-era modules we don't have, so
``clip_client.py`` is loaded by file path). A real uvicorn server on a free
loopback port serves two indexes: ``photos`` (the tiny open_clip model) and
``shop`` (the constructed-embedding fake encoder, whose right answers are known).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="these tests run a real server: pip install uvicorn")
requests = pytest.importorskip("requests", reason="clip-retrieval's client needs 'requests'")

from PIL import Image  # noqa: E402

from retrieval.api import create_index, open_index  # noqa: E402
from retrieval.query import Filters  # noqa: E402
from retrieval.server import _IndexThread, create_app  # noqa: E402
from retrieval.server_clip_retrieval import DEDUP_THRESHOLD, clip_retrieval_router  # noqa: E402
from retrieval.server_guard import token_checker  # noqa: E402

from .conftest import make_image  # noqa: E402
from .serving_helpers import RunningServer, free_port  # noqa: E402
from .test_queries import FakeEncoder, draw  # noqa: E402
from .test_server import build_shop  # noqa: E402

_SPEC = importlib.util.find_spec("clip_retrieval")  # finds the package without running its __init__
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip("clip-retrieval is not installed: pip install --no-deps clip-retrieval==2.45.0",
                allow_module_level=True)
PACKAGE_DIR = Path(list(_SPEC.submodule_search_locations)[0])
FRONT_DIR = PACKAGE_DIR.parent / "front" / "build"  # the wheel installs its front beside the package


def load_clip_client():
    """clip_retrieval/clip_client.py, loaded by path (the package __init__ would import faiss, torch, flask ...)."""
    spec = importlib.util.spec_from_file_location("clip_retrieval_client_real", PACKAGE_DIR / "clip_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


clip_client = load_clip_client()
ARTIFACTS = Path(os.environ.get("MMSEARCH_ARTIFACTS") or Path(__file__).parent / "artifacts")
TOKEN = "clip-token-5678"
FRONT_ORIGIN_HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_encoder):
    """Two indexes on disk: 'photos' (tiny model: 12 pictures, a byte-identical copy, captions) and 'shop'."""
    base = tmp_path_factory.mktemp("clip-retrieval")
    root = base / "root"
    folder = base / "photos"
    folder.mkdir()
    for i in range(12):
        make_image(i).save(folder / f"img{i:02d}.png")
    make_image(3, (300, 220)).save(folder / "big03.jpg", quality=92)  # a JPEG big enough for a reduced decode
    shutil.copyfile(folder / "img05.png", folder / "copy-of-img05.png")
    captions = base / "captions.csv"
    captions.write_text("id,text,url\nc1,a photo of a cat,https://example.org/cat.jpg\nc2,a bowl of soup,\n")
    with create_index("photos", encoder=tiny_encoder, root=root) as photos:
        photos.add_folder(folder)
        photos.add_texts(captions, id_field="id")
    shop = build_shop(base / "shop")  # its own root: base/shop/root
    shop.close()
    return {"root": root, "shop_root": base / "shop" / "root", "folder": folder}


def opened(world, tiny_encoder):
    """A fresh index thread with both indexes opened on it, as create_app opens its own."""
    thread = _IndexThread()
    indexes = {
        "photos": thread.run(open_index, "photos", root=world["root"], encoder=tiny_encoder),
        "shop": thread.run(open_index, "shop", root=world["shop_root"], encoder=FakeEncoder()),
    }
    return thread, indexes


def build_app(world, tiny_encoder, *, token: str | None = None, origins=(), max_k: int = 500, checker=None,
              **router_options):
    """create_app over 'photos' + the clip-retrieval router over both indexes (what serve --clip-retrieval does)."""
    primary = open_index("photos", root=world["root"], encoder=tiny_encoder)
    app = create_app(primary, token=token, allowed_hosts=["127.0.0.1", "localhost", "::1"], allow_origins=origins)
    thread, indexes = opened(world, tiny_encoder)
    require = (checker or token_checker)(token)
    app.include_router(clip_retrieval_router(indexes, run=thread, require_token=require, max_k=max_k,
                                             **router_options))

    def close() -> None:
        for index in indexes.values():
            thread.run(index.close)
        thread.shutdown()
        primary.close()

    return app, indexes, thread, close


@pytest.fixture(scope="module")
def served(world, tiny_encoder) -> Iterator[dict]:
    front_port = free_port()
    front_origin = f"http://{FRONT_ORIGIN_HOST}:{front_port}"
    app, indexes, thread, close = build_app(world, tiny_encoder, origins=[front_origin], max_k=12)
    with RunningServer(app) as server:
        yield {"url": server.url, "indexes": indexes, "thread": thread, "front_port": front_port,
               "front_origin": front_origin, "shop_root": world["shop_root"]}
    close()


def expected(served, name: str, vector: np.ndarray, k: int, target: str = "image", dedup=None):
    """What the Python API answers for the same query vector (run on the index thread)."""
    index = served["indexes"][name]
    return served["thread"].run(index.search_vector, vector, k, filters=Filters(target=target), dedup=dedup)


def item_id(served, path: Path) -> int:
    index = served["indexes"]["photos"]
    return served["thread"].run(index.find_item, str(path))


# -- the real ClipClient ---------------------------------------------------------------------


def test_clip_client_text_query_matches_the_python_api(served) -> None:
    client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="photos", num_images=6,
                                    deduplicate=False)
    results = client.query(text="a red square on a blue background")
    index = served["indexes"]["photos"]
    want = expected(served, "photos", served["thread"].run(index.embed_text, "a red square on a blue background"), 6)
    assert [r["id"] for r in results] == [h.id for h in want]
    assert [r["similarity"] for r in results] == pytest.approx([h.score for h in want], abs=1e-6)
    for result, hit in zip(results, want, strict=True):
        assert result["image_path"] == hit.path
        assert result["url"] == f"{served['url']}/clip-retrieval/images/photos/{hit.id}.jpg"
    thumb = requests.get(results[0]["url"], timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(thumb.content))
    assert picture.format == "JPEG" and max(picture.size) <= 512


def test_clip_client_image_file_query_finds_the_file_itself(served, world) -> None:
    client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="photos", num_images=5,
                                    deduplicate=False)
    for name in ("img07.png", "big03.jpg"):  # big03.jpg is decoded at reduced size, as mmsearch's own query does
        path = world["folder"] / name
        results = client.query(image=str(path))
        index = served["indexes"]["photos"]
        want = expected(served, "photos", served["thread"].run(index.embed_image, str(path)), 5)
        assert [r["id"] for r in results] == [h.id for h in want]
        assert results[0]["id"] == item_id(served, path)
        assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_clip_client_embedding_and_image_url_queries(served, world) -> None:
    client = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="photos", num_images=4,
                                    deduplicate=False)
    index = served["indexes"]["photos"]
    vector = served["thread"].run(index.embed_text, "green circles")
    results = client.query(embedding_input=vector.tolist())
    assert [r["id"] for r in results] == [h.id for h in expected(served, "photos", vector, 4)]

    # An http URL is sent as image_url; this server's own link is answered from the stored vector.
    target = item_id(served, world["folder"] / "img02.png")
    own = client.query(image=f"{served['url']}/clip-retrieval/images/photos/{target}.jpg")
    assert own[0]["id"] == target and own[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    stored = served["thread"].run(index.store.vector, target)
    assert [r["id"] for r in own] == [h.id for h in expected(served, "photos", stored, 4)]
    # The web page's links name items of the default index; 'localhost' is this loopback server too.
    page_link = f"http://localhost:{served['url'].rsplit(':', 1)[1]}/api/items/{target}/thumbnail"
    assert client.query(image=page_link)[0]["id"] == target
    # An image of another index (another model): its file is embedded with the asked index's model.
    cross = requests.post(served["url"] + "/knn-service", timeout=10, data=json.dumps(
        {"image_url": f"{served['url']}/clip-retrieval/images/photos/{target}.jpg", "indice_name": "shop",
         "modality": "image", "num_images": 3}))
    shop = served["indexes"]["shop"]
    in_shop = served["thread"].run(shop.embed_image, str(world["folder"] / "img02.png"))
    assert [r["id"] for r in cross.json()] == [h.id for h in expected(served, "shop", in_shop, 3)]
    # Another server's image is refused: this server does not fetch URLs unless told to.
    refused = client.query(image="http://192.0.2.1/cat.jpg")
    assert refused["status"] == 403 and "does not fetch" in refused["message"]


def test_clip_client_text_modality_and_deduplication(served, world) -> None:
    texts = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="photos", num_images=2,
                                   modality=clip_client.Modality.TEXT)
    results = texts.query(text="a photo of a cat")
    assert [r["caption"] for r in results] == ["a photo of a cat", "a bowl of soup"]
    assert results[0]["url"] == "https://example.org/cat.jpg"  # a caption file's url column, as LAION's
    assert "url" not in results[1] and "image_path" not in results[0]

    # The client deduplicates by default: the byte-identical copy of img05 is dropped.
    copy_id = item_id(served, world["folder"] / "copy-of-img05.png")
    original_id = item_id(served, world["folder"] / "img05.png")
    deduped = clip_client.ClipClient(url=served["url"] + "/knn-service", indice_name="photos", num_images=12)
    ids = [r["id"] for r in deduped.query(image=str(world["folder"] / "img05.png"))]
    assert len({copy_id, original_id} & set(ids)) == 1
    index = served["indexes"]["photos"]
    want = expected(served, "photos", served["thread"].run(index.embed_image, str(world["folder"] / "img05.png")),
                    12, dedup=DEDUP_THRESHOLD)
    assert ids == [h.id for h in want]


def test_clip_client_needs_the_token_when_the_server_has_one(world, tiny_encoder) -> None:
    app, _, _, close = build_app(world, tiny_encoder, token=TOKEN)
    try:
        with RunningServer(app) as server:
            anonymous = clip_client.ClipClient(url=server.url + "/knn-service", indice_name="photos")
            assert anonymous.query(text="red")["status"] == 401
            # requests turns the URL's user part into Basic auth; the password is the token.
            host = server.url.removeprefix("http://")
            wrong = clip_client.ClipClient(url=f"http://mmsearch:nope@{host}/knn-service", indice_name="photos")
            assert wrong.query(text="red")["status"] == 401
            authed = clip_client.ClipClient(url=f"http://mmsearch:{TOKEN}@{host}/knn-service", indice_name="photos",
                                            num_images=3)
            assert len(authed.query(text="red")) == 3
            bearer = requests.get(server.url + "/indices-list", headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=10)
            assert bearer.json() == ["photos", "shop"]
            assert requests.get(server.url + "/config.json", timeout=10).status_code == 401
    finally:
        close()


def test_foreign_image_urls_are_fetched_only_when_allowed(world, tiny_encoder) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    elsewhere = Starlette(routes=[Mount("/", StaticFiles(directory=world["folder"]))])
    app, indexes, thread, close = build_app(world, tiny_encoder, fetch_urls=True, max_image_bytes=2_000)
    try:
        with RunningServer(elsewhere) as other, RunningServer(app) as server:
            client = clip_client.ClipClient(url=server.url + "/knn-service", indice_name="photos", num_images=4,
                                            deduplicate=False)
            results = client.query(image=other.url + "/img09.png")
            photos = indexes["photos"]
            vector = thread.run(photos.embed_image, str(world["folder"] / "img09.png"))
            want = thread.run(photos.search_vector, vector, 4)
            assert [r["id"] for r in results] == [h.id for h in want]
            too_big = client.query(image=other.url + "/big03.jpg")  # larger than max_image_bytes
            assert too_big["status"] == 413
            gone = client.query(image=other.url + "/no-such.png")
            assert gone["status"] == 422 and "could not fetch" in gone["message"]
    finally:
        close()


# -- the front's request shapes (clip-service.js), replayed ------------------------------------------


def shop_paths(served, ids: list[int]) -> list[str]:
    rows = served["thread"].run(served["indexes"]["shop"].items, ids)
    return [rows[i].path for i in ids]


def front_body(**fields) -> str:
    """The body clip-service.js sends: every field, the aesthetic ones as strings, sent as text/plain."""
    body = {"text": None, "image": None, "image_url": None, "embedding_input": None, "modality": "image",
            "num_images": 40, "indice_name": "shop", "num_result_ids": 3000, "use_mclip": False, "deduplicate": True,
            "use_safety_model": True, "use_violence_detector": True, "aesthetic_score": "", "aesthetic_weight": "0.5"}
    body.update(fields)
    return json.dumps(body)


def post(url: str, body: str, origin: str | None = None) -> requests.Response:
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    if origin:
        headers["Origin"] = origin
    return requests.post(url, data=body.encode(), headers=headers, timeout=10)


def test_front_request_shapes_are_answered(served) -> None:
    url = served["url"]
    reply = post(url + "/knn-service", front_body(text="red shoe", num_images=4))
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    results = reply.json()
    assert len(results) == 12  # 3000 ids asked for: capped at this server's max_k (12 here)
    assert all("url" in r for r in results[:4]) and not any("url" in r for r in results[4:])
    assert all(set(r) >= {"id", "similarity"} for r in results)
    paths = shop_paths(served, [r["id"] for r in results])
    # The front asks for deduplication: of the two near-identical red shoes only the better one is left.
    assert "/shoe/red-" in paths[0] and sum("/shoe/red-" in p for p in paths) == 1
    both = post(url + "/knn-service", front_body(text="red shoe", num_images=4, deduplicate=False)).json()
    assert all("/shoe/red-" in p for p in shop_paths(served, [r["id"] for r in both[:2]]))

    # Aesthetic scoring on ("9" / weight as a string), M-CLIP asked for: accepted, and the same answer.
    same = post(url + "/knn-service", front_body(text="red shoe", num_images=4, aesthetic_score="9",
                                                 aesthetic_weight="0.5", use_mclip=True)).json()
    assert [r["id"] for r in same] == [r["id"] for r in results]
    numeric = post(url + "/knn-service", front_body(text="red shoe", num_images=4, aesthetic_score=9,
                                                    aesthetic_weight=0.5)).json()
    assert [r["id"] for r in numeric] == [r["id"] for r in results]

    # The front's infinite scroll: metadata for the next ids, in order; {} for an id that is not there.
    more = post(url + "/metadata", json.dumps({"ids": [results[5]["id"], 99999], "indice_name": "shop"})).json()
    assert more[0]["id"] == results[5]["id"] and more[0]["metadata"]["url"].endswith(f"/{results[5]['id']}.jpg")
    assert more[1] == {"id": 99999, "metadata": {}}

    # An uploaded picture: base64 of the file, as FileReader.readAsDataURL(...).split(',')[1] gives it.
    buf = io.BytesIO()
    draw("green", "hat", 90).save(buf, format="PNG")
    uploaded = base64.b64encode(buf.getvalue()).decode()
    by_image = post(url + "/knn-service", front_body(image=uploaded, num_images=2)).json()
    assert "/hat/green-" in shop_paths(served, [by_image[0]["id"]])[0]

    # A backend URL typed with a trailing slash: the front asks for //indices-list and //knn-service.
    assert requests.get(url + "//indices-list", timeout=10).json() == ["photos", "shop"]
    doubled = post(url + "//knn-service", front_body(text="red shoe", num_images=4)).json()
    assert [r["id"] for r in doubled] == [r["id"] for r in results]


def test_config_json_and_errors(served) -> None:
    url = served["url"]
    config = requests.get(url + "/config.json", timeout=10).json()
    assert config == {"defaultBackend": url, "defaultIndex": "photos", "urlColumn": "url"}
    # indice_name null (the client's default index) and "" (the front before its index list arrives).
    for name in (None, ""):
        results = post(url + "/knn-service", json.dumps({"text": "red", "modality": "image", "num_images": 3,
                                                         "indice_name": name})).json()
        assert len(results) == 3 and all("/photos/" in r["url"] for r in results)
    cases = [
        ("not json", 400, "not JSON"),
        (json.dumps([1, 2]), 400, "JSON object"),
        (json.dumps({"modality": "image", "num_images": 3, "indice_name": None}), 400, "give one of"),
        (front_body(text="red", indice_name="laion5B"), 404, "laion5B"),
        (front_body(text="red", modality="video"), 400, "modality"),
        (front_body(text="red", num_images="many"), 400, "num_images"),
        (front_body(image="%%%not base64%%%"), 400, "base64"),
        (front_body(image=base64.b64encode(b"not a picture").decode()), 422, "not usable"),
        (front_body(embedding_input=[0.1, 0.2]), 400, "dimensions"),
        (front_body(embedding_input=["a"]), 400, "numbers"),
        (front_body(image_url="ftp://example.org/x.jpg"), 400, "http"),
        (front_body(image_url=url + "/static/app.js"), 400, "not at an indexed image"),
    ]
    for body, status, words in cases:
        reply = post(url + "/knn-service", body)
        assert reply.status_code == status, (body, reply.text)
        error = reply.json()
        assert error["status"] == status and words in error["message"], (body, error)
    for item in ("99999", str(2**70)):  # not there; not even a 64-bit id
        missing = requests.get(url + f"/clip-retrieval/images/photos/{item}.jpg", timeout=10)
        assert missing.status_code == 404 and item in missing.json()["message"]
    huge = post(url + "/metadata", json.dumps({"ids": [2**70], "indice_name": None}))
    assert huge.status_code == 400 and "ids" in huge.json()["message"]


def test_cors_is_the_servers_one_origin_policy(served) -> None:
    url, origin = served["url"], served["front_origin"]
    allowed = post(url + "/knn-service", front_body(text="red"), origin=origin)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin
    # A page of another origin may not make the server work (its POST is refused), and reads nothing.
    other = post(url + "/knn-service", front_body(text="red"), origin="http://evil.example")
    assert other.status_code == 403 and other.json()["error"] == "cross_origin"
    assert "access-control-allow-origin" not in other.headers
    preflight = requests.options(url + "/knn-service", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == origin
    # The same rule for the JSON API: an allowed origin may read it, others may not.
    api = requests.get(url + "/api/info", headers={"Origin": origin}, timeout=10)
    assert api.status_code == 200 and api.headers["access-control-allow-origin"] == origin
    assert api.headers["cross-origin-resource-policy"] == "same-origin"
    foreign = requests.get(url + "/api/info", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in foreign.headers
    image = requests.get(allowed.json()[0]["url"], timeout=10)
    assert image.headers["cross-origin-resource-policy"] == "cross-origin"  # else the front's <img> is blocked


def test_allow_origin_refuses_what_is_not_an_origin(world, tiny_encoder) -> None:
    from retrieval.errors import MMSearchError
    from retrieval.server_guard import parse_origins

    assert parse_origins(["http://127.0.0.1:1235/", "HTTPS://Photos.Example:443", "*"]) == {
        "http://127.0.0.1:1235", "https://photos.example", "*"}
    for bad in ("127.0.0.1:1235", "http://127.0.0.1:1235/front", "file:///tmp", "http://user:pw@host"):
        with pytest.raises(MMSearchError, match="not an origin"):
            parse_origins([bad])
    with open_index("photos", root=world["root"], encoder=tiny_encoder) as photos:
        with pytest.raises(MMSearchError, match="not an origin"):
            create_app(photos, allow_origins=["photos.example"])


def test_create_app_wires_the_protocol_over_several_indexes(world, tiny_encoder) -> None:
    from fastapi.testclient import TestClient

    photos = open_index("photos", root=world["root"], encoder=tiny_encoder)
    shop = open_index("shop", root=world["shop_root"], encoder=FakeEncoder())
    try:
        plain = create_app(photos)
        with TestClient(plain) as c:
            assert c.get("/indices-list").status_code == 404  # off unless asked for
        app = create_app(photos, clip_retrieval=True, more_indexes=[shop], public_url="https://photos.example/")
        with TestClient(app) as c:
            assert c.get("/indices-list").json() == ["photos", "shop"]
            config = c.get("/config.json").json()
            assert config == {"defaultBackend": "https://photos.example", "defaultIndex": "photos", "urlColumn": "url"}
            hits = c.post("/knn-service", content=json.dumps({"text": "red shoe", "indice_name": "shop",
                                                               "num_images": 2, "num_result_ids": 2}))
            assert hits.status_code == 200 and len(hits.json()) == 2
            assert hits.json()[0]["url"].startswith("https://photos.example/clip-retrieval/images/shop/")
            schema = c.get("/openapi.json").json()["paths"]
            assert "/knn-service" in schema and "//knn-service" not in schema
    finally:
        photos.close()
        shop.close()


# -- the front from the wheel, in a real browser -----------------------------------------------------


def id_of(url: str) -> int:
    return int(url.rsplit("/", 1)[1].removesuffix(".jpg"))


def test_front_from_the_wheel_searches_this_server_in_chromium(served) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the 'playwright' package")
    chromium = os.environ.get("MMSEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no Chromium found (apt-get install chromium, or set MMSEARCH_CHROMIUM)")
    if not (FRONT_DIR / "index.html").is_file():
        pytest.skip(f"the clip-retrieval wheel's front is not at {FRONT_DIR}")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    backend = served["url"]
    # What 'clip-retrieval front --default_backend URL' does: the wheel's files, with this server's config.json.
    config = requests.get(backend + "/config.json", timeout=10).json()
    front = Starlette(routes=[
        Route("/config.json", lambda _: JSONResponse(config)),
        Mount("/", StaticFiles(directory=FRONT_DIR, html=True)),
    ])
    front_server = RunningServer(front, port=served["front_port"])
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
    loaded = """() => {
      const root = document.querySelector('clip-front')?.shadowRoot;
      const pics = root ? [...root.querySelectorAll('img.pic')] : [];
      return pics.length >= 6 && pics.slice(0, 6).every((i) => i.complete && i.naturalWidth > 0);
    }"""
    with front_server, sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium, args=args, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - an unusable browser is an environment problem: say which
            pytest.skip(f"{chromium} does not start under Playwright: {exc}".splitlines()[0])
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.set_default_timeout(15_000)
        calls: list[str] = []
        failed: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if r.url.startswith(backend) else None)
        # A request cut short by the navigation below (net::ERR_ABORTED) is the browser's doing, not a failure.
        page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}")
                if r.url.startswith(backend) and "ERR_ABORTED" not in (r.failure or "") else None)
        page.on("response", lambda r: failed.append(f"{r.url}: {r.status}")
                if r.url.startswith(backend) and r.status >= 400 else None)
        page.goto(front_server.url + "/?index=shop")
        page.locator("#searchBar").fill("red shoe")
        page.locator("#searchBar").press("Enter")
        page.wait_for_function(loaded)
        sources = page.locator("img.pic").evaluate_all("els => els.map(e => e.src)")
        shop = served["indexes"]["shop"]
        assert "/shoe/red-" in shop_paths(served, [id_of(sources[0])])[0]
        assert backend + "/indices-list" in calls and backend + "/knn-service" in calls
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "clip-retrieval-front.png"))

        # "Search by this image" on the second result: the front sends its url back as image_url,
        # and that picture itself comes first.
        second = page.locator("figure").nth(1)
        second.hover()
        second.locator("img.subImageSearch").click()
        page.wait_for_function("(src) => document.querySelector('clip-front').shadowRoot"
                               ".querySelector('img.pic').src === src", arg=sources[1])
        page.wait_for_function(loaded)

        # Upload a picture with the front's file picker: image -> image; a green hat comes first.
        upload = ARTIFACTS / "green-hat.png"
        draw("green", "hat", 90).save(upload)
        catalogue = served["shop_root"].parent / "catalogue" / "hat"
        hats = [f"{backend}/clip-retrieval/images/shop/{served['thread'].run(shop.find_item, str(p))}.jpg"
                for p in (catalogue / "green-0.png", catalogue / "green-1.png")]
        page.locator("#filechooser").set_input_files(str(upload))
        page.wait_for_function("(urls) => urls.includes(document.querySelector('clip-front').shadowRoot"
                               ".querySelector('img.pic').src)", arg=hats)
        page.wait_for_function(loaded)

        # The backend typed with a trailing slash: //indices-list and //knn-service still answer.
        page.goto(front_server.url + f"/?back={backend}/&index=shop&query=blue%20cup")
        page.wait_for_function(loaded)
        assert backend + "//knn-service" in calls
        first = page.locator("img.pic").first.get_attribute("src")
        assert "/cup/blue-" in shop_paths(served, [id_of(first)])[0]
        assert failed == []
        browser.close()


def test_serve_clip_retrieval_over_several_indexes(tiny_encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from retrieval.cli import app as cli_app

    root = tmp_path / "indexes"
    for name, seeds in (("photos", range(4)), ("more", range(4, 7))):
        folder = tmp_path / name
        folder.mkdir()
        for seed in seeds:
            make_image(seed).save(folder / f"img{seed}.png")
        with create_index(name, encoder=tiny_encoder, root=root) as index:
            index.add_folder(folder)
    seen: list[dict] = []

    def fake_run(app, **kwargs) -> None:  # instead of listening: drive the app it was given
        with TestClient(app, base_url=f"http://127.0.0.1:{kwargs['port']}") as c:
            kwargs["indices"] = c.get("/indices-list").json()
            kwargs["page"] = c.get("/api/info").json()["name"]
            reply = c.post("/knn-service", content=json.dumps({"text": "a photo", "indice_name": "more",
                                                               "num_images": 5}))
            kwargs["results"] = reply.json()
            kwargs["cors"] = c.get("/indices-list", headers={"Origin": "http://127.0.0.1:1235"}).headers.get(
                "access-control-allow-origin")
        seen.append(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    result = CliRunner().invoke(cli_app, ["serve", "--index", "photos", "--index", "more", "--index-dir", str(root),
                                          "--clip-retrieval", "--allow-origin", "http://127.0.0.1:1235"])
    assert result.exit_code == 0, result.output
    assert seen[0]["indices"] == ["photos", "more"] and seen[0]["page"] == "photos"
    assert len(seen[0]["results"]) == 3 and all("/clip-retrieval/images/more/" in r["url"] for r in seen[0]["results"])
    assert seen[0]["cors"] == "http://127.0.0.1:1235"
    assert "knn-service (photos, more)" in result.stderr
