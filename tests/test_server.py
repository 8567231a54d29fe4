"""The HTTP API through FastAPI's test client: every endpoint, the errors, the security rules.

The index is built with the constructed-embedding ``FakeEncoder`` of
test_queries, so what each query must return is known exactly.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'fastapi' package (pip install -e '.[test]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs the 'httpx' package")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import retrieval  # noqa: E402
from retrieval.cli import app as cli_app  # noqa: E402
from retrieval.server import create_app  # noqa: E402

from .conftest import make_image  # noqa: E402
from .test_queries import COLOURS, KINDS, FakeEncoder, draw  # noqa: E402

TOKEN = "test-token-1234"


def build_shop(base: Path) -> "retrieval.Index":
    """24 pictures (colour x kind x 2), a rotated JPEG, and one caption per colour+kind."""
    folder = base / "catalogue"
    for kind in KINDS:
        (folder / kind).mkdir(parents=True)
        for colour in COLOURS:
            for variant in range(2):
                draw(colour, kind, 64 + variant).save(folder / kind / f"{colour}-{variant}.png")
    # Stored 80x40 with EXIF orientation 6 (rotate 90): shown upright it is 40 wide, 80 high.
    rotated = draw("yellow", "cup", 80).resize((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "rotated").mkdir()
    rotated.save(folder / "rotated" / "tall.jpg", exif=exif, quality=95)
    index = retrieval.create_index("shop", encoder=FakeEncoder(), root=base / "root")
    index.add_folder(folder)
    captions = base / "captions.csv"
    rows = ["sku,text"] + [f"{c}-{k},a {c} {k}" for c in COLOURS for k in KINDS]
    captions.write_text("\n".join(rows) + "\n")
    index.add_texts(captions, id_field="sku")
    return index


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator["retrieval.Index"]:
    index = build_shop(tmp_path_factory.mktemp("shop"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def client(shop) -> Iterator[TestClient]:
    with TestClient(create_app(shop)) as c:
        yield c


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def attrs(hit: dict) -> tuple[str, str]:
    p = Path(hit["path"])
    return p.stem.split("-")[0], p.parent.name


def assert_error(response, status: int, *words: str) -> dict:
    """A JSON error body with the status, a message, and no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["message"], body
    assert "Traceback" not in response.text and 'File "' not in response.text
    for word in words:
        assert word in body["message"], body
    return body


def item_id(client: TestClient, colour: str, kind: str) -> int:
    hits = client.get("/api/search", params={"q": f"{colour} {kind}", "k": 1}).json()["hits"]
    return hits[0]["id"]


# -- the endpoints ------------------------------------------------------------------------


def test_health_info_and_openapi(client: TestClient) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert (info["name"], info["images"], info["texts"], info["model"]) == ("shop", 25, 12, "fake-attributes")
    assert info["limits"]["max_upload_bytes"] > 0 and info["auth"] is False
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/health", "/api/info", "/api/search", "/api/search/image", "/api/items/{item_id}",
                 "/api/items/{item_id}/similar", "/api/items/{item_id}/thumbnail", "/api/items/{item_id}/original"):
        assert path in paths, path
    assert set(paths["/api/search"]) == {"get", "post"}


def test_text_search_k_and_hit_fields(client: TestClient) -> None:
    body = client.get("/api/search", params={"q": "red shoes", "k": 2}).json()
    assert body["k"] == 2 and [attrs(h) for h in body["hits"]] == [("red", "shoe"), ("red", "shoe")]
    hit = body["hits"][0]
    assert hit["rank"] == 1 and hit["kind"] == "image" and 0.9 < hit["score"] <= 1.0001
    assert hit["thumbnail"] == f"/api/items/{hit['id']}/thumbnail" and hit["original"].endswith("/original")
    assert hit["name"] == Path(hit["path"]).name
    assert len(client.get("/api/search", params={"q": "hat", "k": 7}).json()["hits"]) == 7


def test_filters_and_target(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": "blue", "k": 30, "glob": "*/hat/*"}).json()["hits"]
    assert hits and all(attrs(h)[1] == "hat" for h in hits)
    jpegs = client.get("/api/search", params={"q": "cup", "types": "jpg"}).json()["hits"]
    assert jpegs and all(h["path"].endswith(".jpg") for h in jpegs)
    texts = client.get("/api/search", params={"q": "green cup", "k": 3, "target": "text"}).json()["hits"]
    assert texts[0]["kind"] == "text" and texts[0]["text"] == "a green cup" and "thumbnail" not in texts[0]
    assert_error(client.get("/api/search", params={"q": "cup", "after": "last tuesday"}), 400, "date")
    assert_error(client.get("/api/search", params={"q": "cup", "target": "video"}), 422, "target")


def test_combined_query_with_items_weights_and_negatives(client: TestClient) -> None:
    red_shoe = item_id(client, "red", "shoe")
    body = {"terms": [{"item": red_shoe}, {"text": "blue", "weight": 2}, {"text": "red", "weight": -1}], "k": 2}
    hits = client.post("/api/search", json=body).json()["hits"]
    assert {attrs(h) for h in hits} == {("blue", "shoe")}
    away = client.post("/api/search", json={"terms": [{"text": "shoe"}, {"text": "red", "weight": -1}], "k": 6})
    assert all(attrs(h) != ("red", "shoe") and attrs(h)[1] == "shoe" for h in away.json()["hits"])
    assert_error(client.post("/api/search", json={"terms": [{"text": "red", "weight": -1}]}), 400, "positive")
    assert_error(client.post("/api/search", json={"terms": []}), 422)
    assert_error(client.post("/api/search", json={"terms": [{"text": "red", "item": 1}]}), 422, "either")
    assert_error(client.post("/api/search", json={"terms": [{"item": 999999}]}), 404, "999999")
    assert_error(client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}), 422)


def test_image_upload_alone_with_text_and_to_text(client: TestClient) -> None:
    query = png_bytes(draw("green", "hat"))
    hits = client.post("/api/search/image", files={"image": ("q.png", query, "image/png")}, data={"k": "2"})
    hits = hits.json()["hits"]
    assert {attrs(h) for h in hits} == {("green", "hat")}
    moved = client.post(
        "/api/search/image", files={"image": ("q.png", query, "image/png")},
        data={"k": "2", "text": ["2:yellow"], "not_text": ["green"]},
    ).json()["hits"]
    assert {attrs(h) for h in moved} == {("yellow", "hat")}
    texts = client.post(
        "/api/search/image", files={"image": ("q.png", query, "image/png")}, data={"k": "3", "target": "text"}
    ).json()["hits"]
    assert texts[0]["kind"] == "text" and texts[0]["text"] == "a green hat"  # image -> text


def test_similar_and_item(client: TestClient) -> None:
    cup = item_id(client, "green", "cup")
    hits = client.get(f"/api/items/{cup}/similar", params={"k": 3}).json()["hits"]
    assert cup not in [h["id"] for h in hits] and attrs(hits[0]) == ("green", "cup")
    texts = client.get(f"/api/items/{cup}/similar", params={"k": 1, "target": "text"}).json()["hits"]
    assert texts[0]["text"] == "a green cup"
    item = client.get(f"/api/items/{cup}").json()
    assert item["id"] == cup and item["kind"] == "image" and item["status"] == "ok" and item["width"] == 64
    assert_error(client.get("/api/items/424242/similar"), 404, "424242")
    assert_error(client.get("/api/items/424242"), 404)


def test_thumbnail_is_made_once_cached_and_upright(client: TestClient, shop) -> None:
    cup = item_id(client, "blue", "cup")
    first = client.get(f"/api/items/{cup}/thumbnail")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    cached = list((shop.path / "thumbs").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == first.content
    stamp = cached[0].stat().st_mtime_ns
    again = client.get(f"/api/items/{cup}/thumbnail")
    assert again.content == first.content and cached[0].stat().st_mtime_ns == stamp  # not made again
    assert client.get(f"/api/items/{cup}/thumbnail", params={"size": 128}).status_code == 200
    assert_error(client.get(f"/api/items/{cup}/thumbnail", params={"size": 77}), 422, "128")
    yellow_cups = client.get("/api/search", params={"q": "yellow cup", "k": 30}).json()["hits"]
    tall = next(h for h in yellow_cups if h["name"] == "tall.jpg")
    thumb = Image.open(io.BytesIO(client.get(tall["thumbnail"]).content))
    assert thumb.height > thumb.width  # EXIF orientation applied
    text_id = client.get("/api/search", params={"q": "red hat", "k": 1, "target": "text"}).json()["hits"][0]["id"]
    assert_error(client.get(f"/api/items/{text_id}/thumbnail"), 404, "text")


def test_original_is_the_indexed_file(client: TestClient) -> None:
    hit = client.get("/api/search", params={"q": "red cup", "k": 1}).json()["hits"][0]
    response = client.get(hit["original"])
    assert response.status_code == 200 and response.content == Path(hit["path"]).read_bytes()
    assert response.headers["content-type"] == "image/png" and response.headers["x-content-type-options"] == "nosniff"
    text_id = client.get("/api/search", params={"q": "red hat", "k": 1, "target": "text"}).json()["hits"][0]["id"]
    assert_error(client.get(f"/api/items/{text_id}/original"), 404)


def test_page_and_static_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css", "/static/api.html", "/static/api.js"):
        response = client.get(asset)
        assert response.status_code == 200 and response.content, asset
        assert "http://" not in response.text and "https://" not in response.text, f"{asset} loads from elsewhere"


# -- errors and security ------------------------------------------------------------------------


def test_path_traversal_never_serves_a_file(client: TestClient) -> None:
    for url in (
        "/api/items/..%2F..%2F..%2Fetc%2Fpasswd/original",
        "/api/items/%2e%2e/%2e%2e/etc/passwd",
        "/api/items/1%2F..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/api/items/-1/original",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2F..%2Fserver.py",
        "/static/%2e%2e/server.py",
        "/api/items/1/original?path=/etc/passwd",
    ):
        response = client.get(url)
        assert "root:" not in response.text and "import " not in response.text, url
        if not url.endswith("path=/etc/passwd"):
            assert response.status_code in (404, 422), (url, response.status_code)


def test_oversized_upload_is_refused(shop) -> None:
    with TestClient(create_app(shop, max_upload_bytes=50_000)) as small:
        big = png_bytes(make_image(1, (400, 400)).resize((400, 400))) + os.urandom(60_000)
        assert_error(small.post("/api/search/image", files={"image": ("big.png", big, "image/png")}), 413, "larger")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap counts the bytes as they come
            for _ in range(8):
                yield b"x" * 10_000

        chunked = small.post("/api/search/image", content=chunks(),
                             headers={"content-type": "multipart/form-data; boundary=zz"})
        assert_error(chunked, 413)
        ok = small.post("/api/search/image", files={"image": ("q.png", png_bytes(draw("red", "cup")), "image/png")})
        assert ok.status_code == 200


def test_non_image_and_huge_image_uploads_are_refused(client: TestClient, shop) -> None:
    for name, data in (("notes.png", b"just some text, not a picture"), ("empty.jpg", b""),
                       ("page.png", b"<html><script>alert(1)</script></html>")):
        assert_error(client.post("/api/search/image", files={"image": (name, data, "image/png")}), 415)
    assert_error(client.post("/api/search/image", data={"k": "3"}), 422, "image")
    with TestClient(create_app(shop, max_upload_pixels=10_000)) as strict:
        large = png_bytes(draw("red", "cup", 300))  # 300x48 pixels > 10,000
        body = assert_error(strict.post("/api/search/image", files={"image": ("q.png", large, "image/png")}), 415)
        assert "too large" in body["message"]


def test_token_is_required_when_set(shop) -> None:
    with TestClient(create_app(shop, token=TOKEN)) as locked:
        assert locked.get("/api/health").status_code == 200  # liveness stays open
        assert locked.get("/").status_code == 200  # the page loads, then asks for the token
        for method, url in (
            ("GET", "/api/info"), ("GET", "/api/search?q=red"), ("GET", "/api/items/1/original"),
            ("GET", "/api/items/1/thumbnail"), ("GET", "/api/items/1/similar"), ("POST", "/api/search"),
        ):
            missing = locked.request(method, url)
            assert_error(missing, 401, "token")
            assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(locked.get("/api/info", headers={"Authorization": "Bearer wrong-token"}), 401)
        assert locked.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        locked.cookies.set("mmsearch_token", TOKEN)
        assert locked.get("/api/search", params={"q": "red"}).status_code == 200


def test_host_header_must_name_this_machine(shop) -> None:
    app = create_app(shop, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as local:
        assert local.get("/api/health").status_code == 200
        assert local.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
        assert local.get("/api/health", headers={"host": "[::1]:8000"}).status_code == 200
        assert_error(local.get("/api/info", headers={"host": "evil.example:8000"}), 400, "evil.example")


def test_loopback_names() -> None:
    from retrieval.server import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.com", ""))


def test_errors_map_to_statuses_without_tracebacks(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.errors import IndexNotFoundError, ModelLoadError

    app = create_app(shop)
    served = app.state.index
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_error(c.get("/api/search", params={"q": "   "}), 400, "empty")
        assert_error(c.get("/api/search", params={"q": "red", "k": 0}), 422, "k")
        assert_error(c.get("/no/such/page"), 404)
        assert_error(c.delete("/api/info"), 405)
        for exc, status in ((ModelLoadError("no weights for model X"), 503), (IndexNotFoundError("no index 'x'"), 404),
                            (retrieval.MMSearchError("the index is damaged"), 500)):
            monkeypatch.setattr(served, "search", lambda *a, exc=exc, **k: (_ for _ in ()).throw(exc))
            assert_error(c.get("/api/search", params={"q": "red"}), status, str(exc))

        def boom(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals at /home/me/.ssh")

        monkeypatch.setattr(served, "search", boom)
        body = assert_error(c.get("/api/search", params={"q": "red"}), 500)
        assert "secret" not in body["message"] and body["error"] == "internal_error"


def test_concurrent_requests_share_the_index_safely(client: TestClient) -> None:
    errors: list[str] = []
    query = png_bytes(draw("blue", "cup"))

    def worker(n: int) -> None:
        for i in range(6):
            if (n + i) % 3 == 0:
                r = client.post("/api/search/image", files={"image": ("q.png", query, "image/png")})
            elif (n + i) % 3 == 1:
                r = client.get("/api/search", params={"q": "red hat", "k": 3})
            else:
                r = client.get("/api/items/1/similar")
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- the command ------------------------------------------------------------------------------


runner = CliRunner()


def test_serve_refuses_the_network_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
    result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "token" in result.stderr and "Traceback" not in result.output
    short = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--token", "abc"])
    assert short.exit_code == 1 and "too short" in short.stderr


def test_serve_wires_index_token_and_hosts(tiny_encoder, image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    with retrieval.create_index("default", encoder=tiny_encoder) as index:
        index.add_folder(image_folder)
    calls: list[dict] = []

    def fake_run(app, **kwargs) -> None:  # instead of listening: drive the app it was given
        with TestClient(app, base_url=f"http://{kwargs['host']}:{kwargs['port']}") as c:
            kwargs["info"] = c.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            kwargs["anonymous"] = c.get("/api/info").status_code
        calls.append(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("MMSEARCH_TOKEN", TOKEN)
    result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 8123
    assert calls[0]["info"]["images"] == 12 and calls[0]["anonymous"] == 401
    monkeypatch.delenv("MMSEARCH_TOKEN")
    assert runner.invoke(cli_app, ["serve"]).exit_code == 0  # localhost needs no token
    assert calls[1]["host"] == "127.0.0.1" and calls[1]["anonymous"] == 200


def test_cli_does_not_import_the_web_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from retrieval.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['serve', '--help']); assert r.exit_code == 0, r.output; "
        "print([m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
