"""Multimodal queries through the Python API and the CLI, with constructed embeddings.

A fake encoder reads a picture's colour and kind from its pixels and a text's
colour and kind from its words, and maps both onto the same axes. So what a
query *should* return is known exactly, and the tests check the query
machinery (combination, negation, image->text, similar, filters, classify,
HTML) rather than a model's quality.
"""

from __future__ import annotations

import html.parser
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app
from retrieval.query import Filters, QueryTerm, parse_weighted
from retrieval.errors import InvalidQueryError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
KINDS = {"shoe": 40, "hat": 120, "cup": 200}  # grey level of the kind marker in the corner
AXES = list(COLOURS) + list(KINDS)


class FakeEncoder:
    """Constructed embeddings: one axis per colour and per kind (plus a tiny per-image offset)."""

    spec = "fake-attributes"
    fingerprint = "fake0001"
    image_size = 16
    logit_scale = 100.0
    dim = len(AXES) + 1

    def __init__(self) -> None:
        self.image_calls = 0
        self.text_calls = 0

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        rgb = img.convert("RGB")
        centre = rgb.getpixel((rgb.width // 2, rgb.height // 2))
        marker = rgb.getpixel((1, 1))[0]
        return torch.tensor([*centre, marker, (rgb.width % 7) / 7.0], dtype=torch.float32)

    def pixels_from_prepared(self, prepared) -> torch.Tensor:
        return torch.stack(list(prepared))

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        self.image_calls += 1
        out = []
        for r, g, b, marker, jitter in pixels.tolist():
            v = np.zeros(self.dim, dtype=np.float32)
            colour = min(COLOURS, key=lambda c: sum((x - y) ** 2 for x, y in zip(COLOURS[c], (r, g, b))))
            kind = min(KINDS, key=lambda k: abs(KINDS[k] - marker))
            v[AXES.index(colour)] = 1.0
            v[AXES.index(kind)] = 1.0
            v[-1] = 0.05 * jitter  # distinct items stay distinct
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    def encode_images(self, images):
        return self.encode_pixels(torch.stack([self.preprocess(i) for i in images]))

    def encode_texts(self, texts) -> np.ndarray:
        self.text_calls += 1
        out = []
        for text in texts:
            v = np.zeros(self.dim, dtype=np.float32)
            for word in text.lower().replace(".", " ").split():
                word = word.rstrip("s") if word.rstrip("s") in KINDS else word
                if word in AXES:
                    v[AXES.index(word)] = 1.0
            v[-1] = 0.01
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def draw(colour: str, kind: str, width: int = 64) -> Image.Image:
    img = Image.new("RGB", (width, 48), COLOURS[colour])
    img.paste((KINDS[kind],) * 3, (0, 0, 6, 6))
    return img


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    folder = tmp_path / "catalogue"
    for kind in KINDS:
        (folder / kind).mkdir(parents=True)
        for colour in COLOURS:
            for variant in range(2):
                draw(colour, kind, 64 + variant).save(folder / kind / f"{colour}-{variant}.png")
    return folder


@pytest.fixture
def index(catalogue: Path, tmp_path: Path):
    encoder = FakeEncoder()
    idx = retrieval.create_index("shop", encoder=encoder, root=tmp_path / "root")
    idx.add_folder(catalogue)
    captions = tmp_path / "captions.csv"
    rows = ["sku,text,price"] + [f"{c}-{k},a {c} {k},{i}" for i, (c, k) in enumerate((c, k) for c in COLOURS for k in KINDS)]
    captions.write_text("\n".join(rows) + "\n")
    idx.add_texts(captions, id_field="sku")
    return idx


def attrs(hit) -> tuple[str, str]:
    p = Path(hit.path)
    return p.stem.split("-")[0], p.parent.name


def test_text_query_finds_the_named_colour_and_kind(index) -> None:
    hits = index.search_text("red shoes", k=2)
    assert [attrs(h) for h in hits] == [("red", "shoe"), ("red", "shoe")]


def test_image_to_text_returns_the_matching_caption_first(index, tmp_path: Path) -> None:
    query = tmp_path / "q.png"
    draw("blue", "hat").save(query)
    hits = index.search([QueryTerm.image(query)], k=3, filters=Filters(target="text"))
    assert hits[0].kind == "text" and hits[0].text == "a blue hat"
    assert hits[0].meta["sku"] == "blue-hat" if "sku" in hits[0].meta else hits[0].meta["id"] == "blue-hat"
    assert all(h.kind == "text" for h in hits)
    mixed = index.search([QueryTerm.image(query)], k=30, filters=Filters(target="all"))
    assert {h.kind for h in mixed} == {"image", "text"}


def test_adding_a_text_term_moves_results_towards_it(index, tmp_path: Path) -> None:
    query = tmp_path / "red-shoe.png"
    draw("red", "shoe").save(query)
    plain = index.search([QueryTerm.image(query)], k=2)
    assert {attrs(h) for h in plain} == {("red", "shoe")}
    # "like this, but blue": kind stays, colour changes.
    moved = index.search([QueryTerm.image(query), QueryTerm.text("blue", 2.0), QueryTerm.text("red", -1.0)], k=2)
    assert {attrs(h) for h in moved} == {("blue", "shoe")}
    # A negative term alone pushes away: no red item among the top results.
    away = index.search([QueryTerm.text("shoe"), QueryTerm.text("red", -1.0)], k=6)
    assert all(attrs(h)[0] != "red" for h in away) and all(attrs(h)[1] == "shoe" for h in away)


def test_similar_uses_the_stored_vector(index, catalogue: Path) -> None:
    encoder = index.encoder
    before = encoder.image_calls, encoder.text_calls
    item = catalogue / "cup" / "green-0.png"
    hits = index.similar(item, k=3)
    assert (encoder.image_calls, encoder.text_calls) == before  # nothing re-encoded
    assert hits[0].path == str((catalogue / "cup" / "green-1.png").resolve())  # its twin, itself excluded
    assert all(h.path != str(item.resolve()) for h in hits)
    assert index.similar(hits[0].id, k=1)[0].path == str(item.resolve())  # by id too
    deduped = index.similar(item, k=3, dedup=0.98)
    assert len({attrs(h) for h in deduped}) == len(deduped)  # near-identical twins collapsed


def test_filters_return_exactly_k_after_filtering(index, catalogue: Path) -> None:
    by_type = index.search_text("red shoes", k=5, filters=Filters(path_glob="*/hat/*"))
    assert len(by_type) == 5 and all(attrs(h)[1] == "hat" for h in by_type)
    under = index.search_text("red shoes", k=4, filters=Filters(path_prefix=str(catalogue / "cup")))
    assert len(under) == 4 and all(attrs(h)[1] == "cup" for h in under)
    assert index.search_text("red", k=3, filters=Filters(file_types=("jpg",))) == []
    high = index.search_text("red shoes", k=50, filters=Filters(min_score=0.9))
    assert high and all(h.score >= 0.9 for h in high) and {attrs(h) for h in high} == {("red", "shoe")}
    old = catalogue / "cup" / "red-0.png"
    os.utime(old, (time.time() - 86400 * 400, time.time() - 86400 * 400))
    index.add_folder(catalogue)  # the mtime changed: re-read, same content
    recent = index.search_text("red cup", k=30, filters=Filters(modified_before="2000-01-01"))
    assert recent == []
    last_year = index.search_text(
        "red cup", k=30, filters=Filters(modified_before=time.strftime("%Y-%m-%d", time.localtime(time.time() - 86400 * 300)))
    )
    assert [Path(h.path).name for h in last_year] == ["red-0.png"]


def test_weight_prefixes_and_bad_queries() -> None:
    assert parse_weighted("2:red") == (2.0, "red")
    assert parse_weighted("-0.5:leather") == (-0.5, "leather")
    assert parse_weighted("leather", negate=True) == (-1.0, "leather")
    assert parse_weighted("a photo: sunset") == (1.0, "a photo: sunset")
    with pytest.raises(InvalidQueryError):
        parse_weighted("2:")
    with pytest.raises(InvalidQueryError):
        Filters(modified_after="last tuesday")


def test_only_negative_terms_is_an_error(index) -> None:
    with pytest.raises(InvalidQueryError, match="positive"):
        index.search([QueryTerm.text("red", -1.0)])


def test_classify_picks_the_clear_label(tmp_path: Path) -> None:
    from retrieval.zeroshot import classify

    paths = []
    for colour, kind in [("red", "cup"), ("yellow", "hat")]:
        path = tmp_path / f"{colour}-{kind}.png"
        draw(colour, kind).save(path)
        paths.append(path)
    preds = classify(FakeEncoder(), paths, ["cup", "hat", "shoe"])
    assert [p.best for p in preds] == ["cup", "hat"]
    assert all(abs(sum(prob for _, prob in p.labels) - 1) < 1e-5 and p.labels[0][1] > 0.9 for p in preds)


class _PageParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs_):
        attrs_ = dict(attrs_)
        if tag == "img":
            self.images.append(attrs_["src"])
        elif tag == "a":
            self.links.append(attrs_["href"])
        if tag not in ("img", "meta", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()


def test_html_page_is_valid_and_has_thumbnails(index, tmp_path: Path) -> None:
    import base64
    import io
    from urllib.parse import unquote, urlparse

    from retrieval.html_report import write_results_page

    hits = index.search_text("green hat", k=4, filters=Filters(target="all"))
    page = write_results_page(hits, tmp_path / "results.html", "green hat")
    parser = _PageParser()
    parser.feed(page.read_text())
    assert parser.stack == []
    image_hits = [h for h in hits if h.kind == "image"]
    assert len(parser.images) == len(image_hits) >= 1
    for src, hit in zip(parser.images, image_hits):
        assert src.startswith("data:image/jpeg;base64,")
        thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert max(thumb.size) <= 256
    linked = [unquote(urlparse(href).path) for href in parser.links]
    assert linked == [h.path for h in image_hits] and all(Path(p).is_file() for p in linked)


def test_cli_combined_query_similar_and_html(index, catalogue: Path, tmp_path: Path, monkeypatch) -> None:
    import retrieval.api as api

    encoder = index.encoder
    monkeypatch.setattr(api, "load_query_model", lambda *args, **kwargs: encoder)  # the CLI opens its own Index
    root = str(index.store.directory.parent)
    query_img = tmp_path / "q.png"
    draw("red", "shoe").save(query_img)
    runner = CliRunner()
    out = runner.invoke(
        app,
        ["query", "--image", str(query_img), "--text", "2:blue", "--not-text", "red", "-k", "2", "--json",
         "--index", "shop", "--index-dir", root, "--html", str(tmp_path / "r.html")],
    )
    assert out.exit_code == 0, out.output
    assert {attrs(type("H", (), {"path": h["path"]})) for h in json.loads(out.stdout)} == {("blue", "shoe")}
    assert (tmp_path / "r.html").is_file()
    texts = runner.invoke(
        app, ["query", "--image", str(query_img), "--target", "text", "-k", "1", "--paths", "--index", "shop", "--index-dir", root]
    )
    assert texts.stdout.strip() == "a red shoe"
    sim = runner.invoke(
        app, ["similar", str(catalogue / "hat" / "yellow-0.png"), "-k", "1", "--paths", "--index", "shop", "--index-dir", root]
    )
    assert sim.exit_code == 0 and sim.stdout.strip().endswith("hat/yellow-1.png")
    bad = runner.invoke(app, ["similar", str(tmp_path / "nope.png"), "--index", "shop", "--index-dir", root])
    assert bad.exit_code == 1 and "not in index" in bad.stderr


def test_texts_reindex_is_incremental(index, tmp_path: Path) -> None:
    captions = tmp_path / "captions.csv"
    again = index.add_texts(captions, id_field="sku")
    assert (again.added, again.unchanged, again.encoded) == (0, 12, 0)
    lines = captions.read_text().splitlines()
    captions.write_text("\n".join(lines[:-1]) + "\n")  # one caption removed
    third = index.add_texts(captions, id_field="sku")
    assert third.removed == 1 and len(index) == 24 + 11
