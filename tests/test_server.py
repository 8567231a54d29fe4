"""The HTTP API through FastAPI's test client: every endpoint, the errors, the security rules.

The index is built with the constructed-embedding ``FakeEncoder`` of
test_queries, so what each query must return is known exactly.
"""

from __future__ import annotations

import io
import json
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
    assert calls[0]["http"].__name__.startswith("Json")  # uvicorn's own 400s in the JSON error shape
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


# -- files are served only while they are the files that were indexed ---------------------------


@pytest.fixture
def swappable(tmp_path: Path):
    """A small index of its own (its files are replaced by the tests), a client, and a secret file beside it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, colour in enumerate(("red", "green", "blue")):
        draw(colour, "cup", 64 + n).save(folder / f"{colour}.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    draw("yellow", "hat").save(elsewhere / "linked-target.png")
    os.symlink(elsewhere / "linked-target.png", folder / "linked.png")  # a legitimate link, there at index time
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    index = retrieval.create_index("swap", encoder=FakeEncoder(), root=tmp_path / "root")
    index.add_folder(folder)
    ids = {Path(r.path).name: r.id for r in index.items(range(1, 10)).values()}
    with TestClient(create_app(index), raise_server_exceptions=False) as c:
        yield {"client": c, "index": index, "folder": folder, "secret": secret, "ids": ids}
    index.close()


def assert_refused(response, *words: str) -> None:
    body = assert_error(response, 404, *words)
    assert "root:" not in response.text and "SQLite" not in response.text, body


def test_a_file_replaced_by_a_symlink_is_not_served(swappable) -> None:
    c, folder, ids = swappable["client"], swappable["folder"], swappable["ids"]
    red = folder / "red.png"
    assert c.get(f"/api/items/{ids['red.png']}/original").content == red.read_bytes()
    for target in (swappable["secret"], swappable["index"].path / "items.sqlite"):
        red.unlink()
        os.symlink(target, red)
        assert_refused(c.get(f"/api/items/{ids['red.png']}/original"), f"item {ids['red.png']}")
        assert_refused(c.get(f"/api/items/{ids['red.png']}/thumbnail", params={"size": 512}))
    assert not list((swappable["index"].path / "thumbs").rglob("*.jpg"))  # nothing was made from the secret


def test_a_forged_size_and_time_or_a_hard_link_is_not_served(swappable) -> None:
    c, folder, secret, ids = swappable["client"], swappable["folder"], swappable["secret"], swappable["ids"]
    green = folder / "green.png"
    # The secret made to look like the indexed picture: same size, same modification time.
    stat = green.stat()
    secret.write_bytes(b"root:x:0:0:" + b"s" * (stat.st_size - 11))
    os.utime(secret, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    green.unlink()
    os.symlink(secret, green)
    swapped = c.get(f"/api/items/{ids['green.png']}/original")
    assert_refused(swapped)  # the store recorded its inode: "a symbolic link now"; an older store: by content
    assert "symbolic link" in swapped.json()["message"] or "not the file that was indexed" in swapped.json()["message"]
    green.unlink()
    os.link(secret, green)  # a hard link: no symlink to notice, the content tells
    assert_refused(c.get(f"/api/items/{ids['green.png']}/original"), "not the file that was indexed")
    assert_refused(c.get(f"/api/items/{ids['green.png']}/thumbnail"))


def test_a_fifo_or_an_edited_file_is_refused_without_hanging(swappable) -> None:
    c, folder, ids = swappable["client"], swappable["folder"], swappable["ids"]
    blue = folder / "blue.png"
    blue.unlink()
    os.mkfifo(blue)
    replies: list = []
    worker = threading.Thread(target=lambda: replies.append(c.get(f"/api/items/{ids['blue.png']}/original")))
    worker.start()
    worker.join(timeout=15)
    assert not worker.is_alive(), "opening a FIFO blocked the request"
    assert_refused(replies[0], "not a regular file")
    blue.unlink()
    draw("blue", "cup", 99).save(blue)  # edited after indexing: another size, another time
    assert_refused(c.get(f"/api/items/{ids['blue.png']}/original"), "changed since it was indexed")
    blue.unlink()
    assert_refused(c.get(f"/api/items/{ids['blue.png']}/original"), "is gone")


def test_a_symlink_that_was_indexed_is_still_served(swappable) -> None:
    c, folder, ids = swappable["client"], swappable["folder"], swappable["ids"]
    linked = c.get(f"/api/items/{ids['linked.png']}/original")
    assert linked.status_code == 200 and linked.content == (folder / "linked.png").read_bytes()
    assert linked.headers["content-type"] == "image/png" and linked.headers["content-length"] == str(len(linked.content))
    assert 'filename="linked.png"' in linked.headers["content-disposition"]
    assert c.get(f"/api/items/{ids['linked.png']}/thumbnail").headers["content-type"] == "image/jpeg"
    # Pointed elsewhere after indexing: what is served is still the file that was indexed (opened at the
    # real path the store recorded), never what the link points at now.
    target = (folder / "linked.png").resolve().read_bytes()
    (folder / "linked.png").unlink()
    os.symlink(swappable["secret"], folder / "linked.png")
    again = c.get(f"/api/items/{ids['linked.png']}/original")
    assert again.status_code == 200 and again.content == target and b"root:" not in again.content
    (swappable["folder"].parent / "elsewhere" / "linked-target.png").unlink()
    assert_refused(c.get(f"/api/items/{ids['linked.png']}/original"), "is gone")


# -- uploads: bounded decoding, the Origin rule, form limits --------------------------------------


def forged_jpeg(width: int = 6000, height: int = 6000) -> bytes:
    """A few-KB JPEG whose frame header claims ``width`` x ``height`` pixels (its data is for 64x64)."""
    buf = io.BytesIO()
    make_image(5, (64, 64)).save(buf, format="JPEG", quality=80)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_uploads_are_decoded_at_the_models_size(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.server_files as server_files

    calls: list[tuple[dict, tuple[int, int], tuple[int, int]]] = []
    real = server_files.load_image

    def spy(data, **kwargs):
        loaded = real(data, **kwargs)
        calls.append((kwargs, loaded.image.size, (loaded.width, loaded.height)))
        return loaded

    monkeypatch.setattr(server_files, "load_image", spy)
    forged = forged_jpeg()
    assert len(forged) < 8_000
    # libjpeg pads the missing data: the upload is a (grey) picture, decoded at the model's input side
    # (FakeEncoder: 16 px), so the 6000x6000 claim costs a 1/8 decode (750x750), not 108 MB of pixels.
    answer = client.post("/api/search/image", files={"image": ("q.jpg", forged, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    assert calls == [({"min_side": 16, "max_pixels": 40_000_000}, (750, 750), (6000, 6000))]
    loaded = real(_real_jpeg(1600, 1200), min_side=16, max_pixels=40_000_000)
    assert loaded.image is not None and loaded.image.size == (200, 150) and (loaded.width, loaded.height) == (1600, 1200)


def _real_jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    make_image(7, (width, height)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_a_full_decode_pool_answers_503_with_retry_after(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.server_files as server_files

    started, release = threading.Event(), threading.Event()
    real = server_files.load_image

    def slow(data, **kwargs):
        started.set()
        release.wait(timeout=20)
        return real(data, **kwargs)

    monkeypatch.setattr(server_files, "load_image", slow)
    query = png_bytes(draw("red", "cup"))
    with TestClient(create_app(shop, decode_workers=1, decode_queue=0)) as c:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(
            c.post("/api/search/image", files={"image": ("q.png", query, "image/png")})))
        worker.start()
        assert started.wait(timeout=20)
        busy = c.post("/api/search/image", files={"image": ("q.png", query, "image/png")})
        assert_error(busy, 503, "try again")
        assert busy.headers["retry-after"] == "2"
        assert c.get("/api/search", params={"q": "red cup", "k": 1}).status_code == 200  # others are not held up
        release.set()
        worker.join(timeout=20)
        assert first[0].status_code == 200
        assert c.post("/api/search/image", files={"image": ("q.png", query, "image/png")}).status_code == 200
    paths = create_app(shop).openapi()["paths"]["/api/search/image"]["post"]["responses"]
    assert {"413", "415", "503"} <= set(paths), sorted(paths)


def test_a_refused_upload_is_answered_before_its_body_is_read(shop) -> None:
    """In a burst, uploads beyond the pool cost the server no body reading and no form parsing."""
    import asyncio

    app = create_app(shop, decode_workers=1, decode_queue=0)
    pool = app.state.decoder
    held = pool.admit()  # another upload holds the only slot
    reads: list[str] = []
    sent: list[dict] = []

    async def receive() -> dict:
        reads.append("body")
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search/image", "raw_path": b"/api/search/image", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"multipart/form-data; boundary=b"),
                         (b"content-length", b"100")], "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"2", start
    assert json.loads(sent[1]["body"])["error"] == "busy"
    assert reads == []  # the body was never read
    held.drop()
    assert pool.busy == 0


def test_upload_slots_are_given_back_however_the_request_ends(shop) -> None:
    """Admitted before the body is read, the slot is freed after a success, a refused form and a bad image."""
    query = png_bytes(draw("red", "cup"))
    with TestClient(create_app(shop, decode_workers=1, decode_queue=0)) as c:
        pool = c.app.state.decoder  # type: ignore[attr-defined]
        assert c.post("/api/search/image", files={"image": ("q.png", query, "image/png")}).status_code == 200
        assert_error(c.post("/api/search/image", files={"image": ("q.png", query, "image/png")},
                            data={"text": ["-1000:red"]}), 422)
        assert_error(c.post("/api/search/image", files={"image": ("q.png", b"not a picture", "image/png")}), 415)
        assert_error(c.post("/api/search/image", data={"k": "3"}), 422)  # no image at all
        assert pool.busy == 0
        # one slot, so each of these would have been a 503 had a slot leaked
        assert c.post("/api/search/image", files={"image": ("q.png", query, "image/png")}).status_code == 200


def test_uploads_are_decoded_below_the_servers_other_threads(client: TestClient, monkeypatch) -> None:
    import retrieval.server_files as server_files

    if not hasattr(os, "getpriority"):
        pytest.skip("thread priorities are a POSIX feature")
    seen: list[int] = []
    real = server_files.load_image

    def spy(data, **kwargs):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(data, **kwargs)

    monkeypatch.setattr(server_files, "load_image", spy)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    answer = client.post("/api/search/image", files={"image": ("q.png", png_bytes(draw("red", "cup")), "image/png")})
    assert answer.status_code == 200, answer.text
    assert seen and seen[0] >= min(19, mine + server_files.DECODE_NICE), (seen, mine)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # only the decode threads


def test_text_searches_make_no_trip_through_the_thread_pool(client: TestClient, monkeypatch) -> None:
    """Plain-def dependencies would each run on AnyIO's thread pool, queued behind a burst's work."""
    import fastapi.dependencies.utils as dependency_utils
    import fastapi.routing as routing

    trips: list[str] = []

    def counting(real):
        async def run(func, *args, **kwargs):
            trips.append(getattr(func, "__name__", repr(func)))
            return await real(func, *args, **kwargs)
        return run

    monkeypatch.setattr(dependency_utils, "run_in_threadpool", counting(dependency_utils.run_in_threadpool))
    monkeypatch.setattr(routing, "run_in_threadpool", counting(routing.run_in_threadpool))
    assert client.get("/api/search", params={"q": "red cup", "k": 2, "camera": "x"}).status_code == 200
    assert client.post("/api/search", json={"terms": [{"text": "red"}], "k": 2}).status_code == 200
    assert client.get("/api/health").status_code == 200
    assert trips == []


def test_searches_waiting_on_the_index_thread_go_before_uploads_rankings() -> None:
    from retrieval.server import _IndexThread

    thread = _IndexThread()
    try:
        gate, order = threading.Event(), []
        blocker = thread.submit(gate.wait, 20)
        later = [thread.submit(order.append, f"upload {i}", background=True) for i in range(3)]
        first = thread.submit(order.append, "search")
        gate.set()
        for future in (blocker, *later, first):
            future.result(timeout=20)
        assert order == ["search", "upload 0", "upload 1", "upload 2"]
        failing = thread.submit(int, "not a number")
        with pytest.raises(ValueError):
            failing.result(timeout=20)
        assert thread.run(sum, [1, 2]) == 3  # an error does not stop the thread
    finally:
        thread.shutdown()
    with pytest.raises(RuntimeError, match="stopped"):  # not a future that would wait forever
        thread.submit(sum, [1, 2])


def test_pages_of_other_origins_may_not_post(shop) -> None:
    query = png_bytes(draw("red", "cup"))
    body = {"terms": [{"text": "red"}], "k": 1}
    with TestClient(create_app(shop)) as c:
        for origin in ("http://evil.example", "null", "http://testserver.evil.example", "https://testserver:8443"):
            refused = c.post("/api/search/image", files={"image": ("q.png", query, "image/png")},
                             headers={"Origin": origin})
            assert_error(refused, 403, "--allow-origin")
            assert_error(c.post("/api/search", json=body, headers={"Origin": origin}), 403)
        # The page itself (same origin), and clients that send no Origin (curl, scripts), are served.
        assert c.post("/api/search", json=body, headers={"Origin": "http://testserver"}).status_code == 200
        assert c.post("/api/search", json=body).status_code == 200
        # Reading is not work done for the other page: allowed, but without CORS it cannot read the answer.
        looked = c.get("/api/search", params={"q": "red"}, headers={"Origin": "http://evil.example"})
        assert looked.status_code == 200 and "access-control-allow-origin" not in looked.headers
    with TestClient(create_app(shop, allow_origins=["http://evil.example"])) as c:
        allowed = c.post("/api/search", json=body, headers={"Origin": "http://evil.example"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://evil.example"
        assert_error(c.post("/api/search", json=body, headers={"Origin": "http://other.example"}), 403)


def test_form_terms_have_the_json_endpoints_limits(client: TestClient) -> None:
    query = png_bytes(draw("green", "hat"))

    def upload(**data):
        return client.post("/api/search/image", files={"image": ("q.png", query, "image/png")}, data=data)

    assert_error(upload(text=[f"word{i}" for i in range(990)]), 422, "text")
    assert_error(upload(text=["x" * 200_000]), 422)
    assert_error(upload(text=["-1000:red"]), 422, "out of range")
    assert_error(upload(not_text=["11:red"]), 422, "out of range")
    assert_error(upload(image_weight="-11"), 422)
    ok = upload(text=["10:yellow"], not_text=[f"{i}" for i in range(1, 20)], k="2")
    assert ok.status_code == 200, ok.text


def test_item_ids_beyond_64_bits_are_404_or_422_not_500(shop) -> None:
    big = 2**63
    with TestClient(create_app(shop), raise_server_exceptions=False) as c:
        for url in (f"/api/items/{big}", f"/api/items/{big}/original", f"/api/items/{big}/similar",
                    f"/api/items/{big}/thumbnail", f"/api/items/{2**70}/original", "/api/items/-1/original"):
            response = c.get(url)
            assert response.status_code in (404, 422), (url, response.status_code)
            assert_error(response, response.status_code)
        assert_error(c.post("/api/search", json={"terms": [{"item": big}]}), 422, "item")
        assert_error(c.post("/api/search", json={"terms": [{"item": 2**63 - 1}]}), 404)


def test_tokens_no_client_could_send_are_refused(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad, words in (("        ", "blank"), ("  secret-token  ", "whitespace"), ("sécret-token", "ASCII"),
                       ("tab\there-token", "ASCII"), ("short", "too short")):
        with pytest.raises(retrieval.MMSearchError, match=words):
            create_app(shop, token=bad)
        monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
        result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--token", bad])
        assert result.exit_code == 1 and words in result.stderr and "Traceback" not in result.output
    import base64

    with TestClient(create_app(shop, token=TOKEN)) as locked:
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert locked.get("/api/info", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(b"anyone:wrong-token").decode()
        assert_error(locked.get("/api/info", headers={"Authorization": f"Basic {wrong}"}), 401)


def test_bomb_messages_quote_the_servers_limit(client: TestClient) -> None:
    from .test_loading import png_header_only

    for width, height in ((7000, 7000), (20000, 10000)):  # above our 40 MP; above Pillow's own 179 MP
        refused = client.post("/api/search/image",
                              files={"image": ("bomb.png", png_header_only(width, height), "image/png")})
        body = assert_error(refused, 415, "40000000-pixel limit")
        assert "178956970" not in body["message"]


def test_malformed_http_gets_the_json_error_shape(shop) -> None:
    import socket as sockets

    from retrieval.server_http import json_http_protocol

    from .serving_helpers import RunningServer

    with RunningServer(create_app(shop), http=json_http_protocol()) as server:
        for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            with sockets.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
                conn.sendall(garbage)
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower(), reply
            error = json.loads(body)
            assert error["status"] == 400 and error["error"] == "bad_request" and error["message"]


def test_serve_flags_that_belong_to_other_modes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
    for args, words in (
        (["serve", "--index", "a", "--index", "b"], "--clip-retrieval"),
        (["serve", "--fetch-urls"], "--clip-retrieval"),
        (["serve", "--model", "ViT-B-32:openai"], "--immich-ml"),
        (["serve", "--immich-ml", "--clip-retrieval"], "cannot be combined"),
        (["serve", "--immich-ml", "--token", TOKEN], "no token"),
        (["serve", "--allow-origin", "photos.example"], "not an origin"),
    ):
        result = runner.invoke(cli_app, args)
        assert result.exit_code == 1 and words in result.stderr and "Traceback" not in result.output, (args, result.output)


def test_an_upload_being_embedded_does_not_hold_up_other_searches(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(shop)
    served = app.state.index
    started, release = threading.Event(), threading.Event()
    real = served.embed_image

    def slow(image):
        started.set()
        release.wait(timeout=20)
        return real(image)

    monkeypatch.setattr(served, "embed_image", slow)
    with TestClient(app) as c:
        upload: list = []
        worker = threading.Thread(target=lambda: upload.append(c.post(
            "/api/search/image", files={"image": ("q.png", png_bytes(draw("blue", "hat")), "image/png")})))
        worker.start()
        assert started.wait(timeout=20)
        # The image tower runs on the decode pool, not on the index thread: text searches and
        # item lookups are answered meanwhile.
        assert c.get("/api/search", params={"q": "red cup", "k": 2}).status_code == 200
        assert c.get("/api/items/1").status_code == 200
        release.set()
        worker.join(timeout=20)
        assert upload[0].status_code == 200 and attrs(upload[0].json()["hits"][0]) == ("blue", "hat")
