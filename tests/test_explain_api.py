"""Why did this match, through the door: Index.explain, `mmsearch explain`, and heatmaps beside a results page."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app
from retrieval.cli.explaining import METHOD_HELP
from retrieval.errors import ImageDecodeError, InvalidQueryError, ItemNotFoundError
from retrieval.explain_report import heatmap_uris
from retrieval.explanation import DEFAULT_METHOD, METHODS
from retrieval.html_report import write_results_page
from retrieval.query import QueryTerm

from .conftest import TINY_MODEL, make_image, one_line_error

runner = CliRunner()

ROTATED_STORED = (90, 40)  # stored landscape; EXIF orientation 6 shows it 40 x 90


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        make_image(i).save(folder / f"img{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(7, ROTATED_STORED).save(folder / "rotated.jpg", quality=95, exif=exif)
    make_image(8, (200, 30)).save(folder / "wide.png")  # mostly outside a centre crop
    return folder


@pytest.fixture
def index(tmp_path: Path, tiny_encoder) -> retrieval.Index:
    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(_photos(tmp_path / "photos"))
    idx.add_texts(_text_file(tmp_path))
    return idx


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a note about red shoes\n")
    return path


def _hit(index: retrieval.Index, name: str):
    return next(h for h in index.search_text("red shoes", k=20, filters=retrieval.Filters(target="all"))
                if h.path is not None and Path(h.path).name == name)


# -- the API ------------------------------------------------------------------------------------


def test_explain_a_hit_by_id_or_path_gives_the_score_search_ranked_it_by(index: retrieval.Index) -> None:
    hit = _hit(index, "img2.png")
    by_id = index.explain("red shoes", hit.id)
    by_path = index.explain("red shoes", hit.path)
    assert by_id.method == DEFAULT_METHOD
    assert by_id.score == pytest.approx(hit.score, abs=1e-5)
    np.testing.assert_array_equal(by_id.grid, by_path.grid)
    assert [t.label for t in by_id.terms] == ["red shoes"]


def test_a_picture_outside_the_index_is_explained_too(index: retrieval.Index, tmp_path: Path) -> None:
    loose = tmp_path / "loose.png"
    make_image(30).save(loose)
    why = index.explain("red shoes", loose, method="occlusion")
    assert why.grid.shape == (7, 7) and why.geometry.photo_size == (96, 72)
    pil = index.explain("red shoes", Image.open(loose), method="occlusion")
    np.testing.assert_array_equal(pil.grid, why.grid)


def test_combined_and_negative_queries(index: retrieval.Index, tmp_path: Path) -> None:
    hit = _hit(index, "img1.png")
    query = tmp_path / "photos" / "img3.png"
    terms = [QueryTerm.text("red", 2.0), QueryTerm.text("leather", -1.0), QueryTerm.image(query)]
    why = index.explain(terms, hit.id, method="intgrad")
    assert [t.label for t in why.terms] == ["red", "leather", "image img3.png"]
    assert [t.weight for t in why.terms] == [2.0, -1.0, 1.0]
    np.testing.assert_allclose(why.grid, sum(t.grid for t in why.terms), rtol=1e-5, atol=1e-7)
    ranked = {h.id: h.score for h in index.search(terms, k=20)}
    assert why.score == pytest.approx(ranked[hit.id], abs=1e-5)
    # The negative term's share is its own map scaled by its (negative) coefficient: it pushes.
    alone = index.explain("leather", hit.id, method="intgrad")
    ratio = why.terms[1].grid / alone.grid
    assert np.all(ratio < 0) and np.allclose(ratio, ratio.flat[0], rtol=1e-3)
    # An indexed item as a query term, by its stored vector.
    by_item = index.explain([QueryTerm.item(_hit(index, "img3.png").id)], hit.id)
    assert by_item.terms[0].label.startswith("item ")


def test_explain_errors_are_typed(index: retrieval.Index, tmp_path: Path) -> None:
    text_item = next(h for h in index.search_text("red shoes", k=20, filters=retrieval.Filters(target="text")))
    with pytest.raises(InvalidQueryError, match="is a text"):
        index.explain("red shoes", text_item.id)
    with pytest.raises(ImageDecodeError, match="no such file"):
        index.explain("red shoes", tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="folder"):
        index.explain("red shoes", tmp_path)
    with pytest.raises(ItemNotFoundError, match="no item with id 999"):
        index.explain("red shoes", 999)
    with pytest.raises(InvalidQueryError, match="empty query"):
        index.explain([], 1)
    with pytest.raises(InvalidQueryError, match="empty query"):
        index.explain("   ", 1)
    with pytest.raises(InvalidQueryError, match="positive weight"):
        index.explain([QueryTerm.text("red", -1.0)], 1)
    with pytest.raises(InvalidQueryError, match="not float"):
        index.explain(1.5, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="item id, a file path or a PIL image"):
        index.explain("red", 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="unknown explain method"):
        index.explain("red", 1, method="magic")


def test_overlay_is_the_oriented_full_photo(index: retrieval.Index, tmp_path: Path) -> None:
    rotated = tmp_path / "photos" / "rotated.jpg"
    drawn = index.explain_overlay("red shoes", rotated, max_side=None)
    assert drawn.media_type == "image/png" and drawn.error is None
    assert Image.open(io.BytesIO(drawn.image)).size == (ROTATED_STORED[1], ROTATED_STORED[0])
    small = index.explain_overlay("red shoes", tmp_path / "photos" / "wide.png", max_side=50, format="jpeg")
    assert small.media_type == "image/jpeg" and Image.open(io.BytesIO(small.image)).size == (50, 8)
    assert "outside what the model saw" in small.explanation.outside_note


def test_overlays_of_many_pictures_report_the_ones_that_cannot_be_read(index: retrieval.Index,
                                                                         tmp_path: Path) -> None:
    hit = _hit(index, "img0.png")
    gone = _hit(index, "img1.png")
    Path(gone.path).unlink()
    results = list(index.explain_overlays("red shoes", [hit.id, gone.id]))
    assert [r.item for r in results] == [hit.id, gone.id]
    assert results[0].error is None and results[0].image[:3] == b"\xff\xd8\xff"  # JPEG
    assert results[1].explanation is None and "img1.png" in results[1].error


# -- the command line -------------------------------------------------------------------------------


# Scores are compared with the search's: fp32 throughout, since "auto" is bf16 on CPUs that have it.
FP32 = ["--precision", "fp32"]


def _indexed(folder: Path) -> None:
    result = runner.invoke(app, ["index", str(_photos(folder)), "--model", TINY_MODEL, "-q", *FP32])
    assert result.exit_code == 0, result.output


def test_cli_explain_writes_the_photo_with_its_heatmap(tmp_path: Path) -> None:
    _indexed(tmp_path / "photos")
    out = tmp_path / "why.png"
    result = runner.invoke(app, ["explain", "red shoes", str(tmp_path / "photos" / "rotated.jpg"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (ROTATED_STORED[1], ROTATED_STORED[0])  # as the user sees it
    assert "score" in result.stdout and f"wrote {out}" in result.stderr
    assert "outside what the model saw" in result.stdout


def test_cli_explain_json_and_an_image_query(tmp_path: Path) -> None:
    _indexed(tmp_path / "photos")
    photo, query = tmp_path / "photos" / "img1.png", tmp_path / "photos" / "img2.png"
    result = runner.invoke(app, ["explain", "--image", str(query), str(photo), "--json", *FP32])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == DEFAULT_METHOD and data["terms"][0]["label"] == "image img2.png"
    assert data["out"] is None and np.asarray(data["grid"]).shape == tuple(data["grid_shape"])
    ranked = json.loads(runner.invoke(app, ["query", "--image", str(query), "--json", "-k", "10", *FP32]).stdout)
    assert data["score"] == pytest.approx(next(h["score"] for h in ranked if h["path"] == str(photo.resolve())),
                                          abs=1e-5)
    out = tmp_path / "why.jpg"
    other = runner.invoke(app, ["explain", "--image", str(query), str(photo), "--json", "--method", "occlusion",
                                "--out", str(out)])
    assert other.exit_code == 0, other.output
    data = json.loads(other.stdout)
    assert data["method"] == "occlusion" and data["grid_shape"] == [7, 7] and data["out"] == str(out)
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (96, 72)


def test_cli_explain_combined_query_by_item_id(tmp_path: Path) -> None:
    _indexed(tmp_path / "photos")
    hits = json.loads(runner.invoke(app, ["query", "red", "--not-text", "0.5:shoes", "--json", "-k", "1", *FP32]).stdout)
    result = runner.invoke(app, ["explain", "red", "--not-text", "0.5:shoes", str(hits[0]["id"]), "--json", *FP32])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(t["label"], t["weight"]) for t in data["terms"]] == [("red", 1.0), ("shoes", -0.5)]
    assert data["score"] == pytest.approx(hits[0]["score"], abs=1e-5)
    assert data["terms"][1]["pull"] >= 0 >= data["terms"][1]["push"]
    table = runner.invoke(app, ["explain", "red", "--not-text", "0.5:shoes", str(hits[0]["id"])])
    assert "shoes (-0.5): pulls" in table.stdout


def test_cli_query_html_explain_puts_a_heatmap_beside_each_picture(tmp_path: Path) -> None:
    _indexed(tmp_path / "photos")
    page = tmp_path / "results.html"
    result = runner.invoke(app, ["query", "red shoes", "--not-text", "0.5:leather", "-k", "3", "--html", str(page),
                                 "--explain", *FP32])
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    assert html.count('class="explained"') == 3 and html.count("data:image/jpeg;base64,") >= 3
    plain = tmp_path / "plain.html"
    assert runner.invoke(app, ["query", "red shoes", "-k", "3", "--html", str(plain), *FP32]).exit_code == 0
    assert 'class="explained"' not in plain.read_text(encoding="utf-8")
    other = runner.invoke(app, ["query", "red shoes", "-k", "2", "--html", str(page), "--explain-method", "occlusion",
                                *FP32])
    assert other.exit_code == 0 and page.read_text(encoding="utf-8").count('class="explained"') == 2
    for bad, words in ((["--explain"], "add --html"), (["--html", str(page), "--explain-method", "magic"],
                                                       "unknown explain method")):
        failed = runner.invoke(app, ["query", "red shoes", *bad, *FP32])
        assert failed.exit_code == 1 and words in failed.output and "Traceback" not in failed.output
        assert len(failed.output.strip().splitlines()) == 1, failed.output


@pytest.mark.parametrize("args,words", [
    (["red"], ["give the words"]),
    ([], ["[TEXT] PHOTO"]),
    (["red", "a", "b"], ["after the query's words"]),
    (["red", "{missing}"], ["no such file"]),
    (["red", "{photo}", "--out", "{tmp}/nowhere/why.png"], ["does not exist"]),
    (["red", "{photo}", "--out", "{tmp}"], ["is a folder"]),
    (["red", "{photo}", "--out", "{tmp}/why.gif"], [".png, .jpg or .webp"]),
    (["red", "{photo}", "--method", "magic"], ["unknown explain method"]),
    (["red", "{photo}", "--term", "2"], ["the query has 1 term"]),
    (["red", "4242"], ["no item with id 4242"]),
    (["", "{photo}"], ["empty"]),
])
def test_cli_explain_bad_input_is_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    _indexed(tmp_path / "photos")
    fill = {"missing": str(tmp_path / "missing.jpg"), "photo": str(tmp_path / "photos" / "img0.png"),
            "tmp": str(tmp_path)}
    result = runner.invoke(app, ["explain", *[a.format(**fill) for a in args]])
    one_line_error(result, *words)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_cli_help_names_every_method_and_the_default() -> None:
    assert set(re.findall(r"\b(" + "|".join(METHODS) + r")\b", METHOD_HELP)) == set(METHODS)
    assert f"{DEFAULT_METHOD} (default" in METHOD_HELP


# -- heatmaps beside the hits of a results page --------------------------------------------------------


def test_results_page_shows_each_image_hits_heatmap(index: retrieval.Index, tmp_path: Path) -> None:
    hits = index.search_text("red shoes", k=20, filters=retrieval.Filters(target="all"))
    images = [h for h in hits if h.path is not None]
    assert len(images) < len(hits)  # the text hit has no picture: no heatmap
    gone = images[-1]
    Path(gone.path).unlink()
    skipped: list[tuple[str, str]] = []
    uris = heatmap_uris(index, "red shoes", hits, on_skip=lambda path, why: skipped.append((path, why)))
    assert set(uris) == {h.id for h in images[:-1]} and skipped[0][0] == gone.path
    for uri in uris.values():
        head, data = uri.split(",", 1)
        assert head == "data:image/jpeg;base64"
        assert max(Image.open(io.BytesIO(base64.b64decode(data))).size) <= 256
    page = write_results_page(hits, tmp_path / "results.html", "red shoes", heatmaps=uris).read_text()
    assert page.count('class="explained"') == len(uris) and "Red pulls it towards the query" in page
    plain = write_results_page(hits, tmp_path / "plain.html", "red shoes").read_text()
    assert "explained" not in plain.split("</style>")[1] and "Red pulls" not in plain
