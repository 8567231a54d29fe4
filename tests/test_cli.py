"""The CLI end to end (in-process through Typer's runner): index, query, info, list, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import TINY_MODEL, make_image

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_clean_error(result, *words: str) -> None:
    """Exit 1, a one-line message naming the problem on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert message.startswith("error:"), message
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, message


def test_index_then_query_round_trip(image_folder: Path) -> None:
    result = run("index", str(image_folder), "--model", TINY_MODEL, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == 12 and report["failed"] == 0 and report["items"] == 12

    result = run("query", "a red square", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0001 <= s <= 1.0001 for s in scores)
    indexed = {str(p.resolve()) for p in image_folder.rglob("*") if p.is_file()}
    assert {h["path"] for h in hits} <= indexed
    assert len({h["path"] for h in hits}) == 5

    paths = run("query", "a red square", "-k", "3", "--paths")
    assert paths.stdout.split() == [h["path"] for h in hits[:3]]
    table = run("query", "a red square", "-k", "3")
    assert table.exit_code == 0 and hits[0]["path"] in table.stdout and "rank" in table.stdout


def test_query_uses_the_index_model_and_image_query(image_folder: Path) -> None:
    assert run("index", str(image_folder), "--model", TINY_MODEL, "-q").exit_code == 0
    target = image_folder / "trip" / "img05.webp"
    result = run("query", "--image", str(target), "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    (hit,) = json.loads(result.stdout)
    assert hit["path"] == str(target.resolve())
    assert hit["score"] == pytest.approx(1.0, abs=1e-4)


def test_reindex_is_incremental(image_folder: Path) -> None:
    run("index", str(image_folder), "--model", TINY_MODEL, "-q")
    again = json.loads(run("index", str(image_folder), "--json", "-q").stdout)
    assert (again["added"], again["unchanged"], again["encoded"]) == (0, 12, 0)
    (image_folder / "img00.jpg").rename(image_folder / "renamed.jpg")
    (image_folder / "img01.png").unlink()
    make_image(99).save(image_folder / "new.png")
    third = json.loads(run("index", str(image_folder), "--json", "-q").stdout)
    assert third["added"] == 2 and third["reused"] == 1 and third["encoded"] == 1
    assert third["removed"] == 2 and third["items"] == 12


def test_bad_files_are_skipped_and_reported(image_folder: Path) -> None:
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "notes.png").write_text("this is not a picture")
    good = image_folder / "img00.jpg"
    (image_folder / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    result = run("index", str(image_folder), "--model", TINY_MODEL)
    assert result.exit_code == 0, result.output
    assert "12 added" in result.stdout and "3 failed" in result.stdout
    for name in ("empty.jpg", "notes.png", "truncated.jpg"):
        line = next(l for l in result.stderr.splitlines() if name in l)
        assert line.startswith("skipped:") and len(line.split(name, 1)[1].strip(": ")) > 3
    info = json.loads(run("info", "--json", "--failed").stdout)
    assert info["images"] == 12 and info["failed"] == 3
    assert {Path(f["path"]).name for f in info["failed_files"]} == {"empty.jpg", "notes.png", "truncated.jpg"}


def test_info_and_list(image_folder: Path, tmp_path: Path) -> None:
    run("index", str(image_folder), "--model", TINY_MODEL, "-q", "--index", "holiday")
    info = run("info", "--index", "holiday")
    assert info.exit_code == 0 and TINY_MODEL in info.stdout and "12 images" in info.stdout
    listing = json.loads(run("list", "--json").stdout)
    assert [(i["name"], i["images"]) for i in listing] == [("holiday", 12)]
    assert run("list", "--index-dir", str(tmp_path / "elsewhere")).exit_code == 0


def test_index_dir_option_overrides_env(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "explicit"
    assert run("index", str(image_folder), "--model", TINY_MODEL, "-q", "--index-dir", str(root)).exit_code == 0
    assert (root / "default" / "manifest.json").is_file()
    assert run("query", "x", "--index-dir", str(root)).exit_code == 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["query", "red shoes", "--index", "nope"], ["nope"]),
        (["info", "--index", "nope"], ["nope"]),
        (["index", "/definitely/not/here", "--model", TINY_MODEL], ["/definitely/not/here"]),
        (["index", "{images}", "--model", "no-such-arch"], ["no-such-arch"]),
        (["index", "{images}", "--model", "/no/such/model/dir"], ["/no/such/model/dir"]),
        (["index", "{images}", "--model", "ViT-B-32:not-a-tag"], ["not-a-tag"]),
        (["index", "{images}", "--model", TINY_MODEL, "--device", "cuda"], ["cuda", "no CUDA GPU"]),
        (["index", "{images}", "--model", TINY_MODEL, "--device", "tpu"], ["tpu", "auto, cpu, cuda or mps"]),
        (["index", "{images}", "--model", TINY_MODEL, "--precision", "fp16"], ["fp16 is for GPUs"]),
    ],
)
def test_errors_are_one_line(image_folder: Path, args: list[str], words: list[str]) -> None:
    args = [a.replace("{images}", str(image_folder)) for a in args]
    assert_clean_error(run(*args), *words)


def test_query_errors(image_folder: Path, tmp_path: Path) -> None:
    run("index", str(image_folder), "--model", TINY_MODEL, "-q")
    assert_clean_error(run("query", "   "), "empty")
    assert_clean_error(run("query"), "empty")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 nope")
    assert_clean_error(run("query", "--image", str(broken)), "broken.jpg")
    assert_clean_error(run("query", "--image", str(tmp_path / "missing.jpg")), "missing.jpg")


def test_empty_folder_is_an_error_and_leaves_no_index(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    assert_clean_error(run("index", str(empty), "--model", TINY_MODEL), "no image")
    assert run("list", "--json").stdout.strip() == "[]"


def test_model_mismatch_on_existing_index(image_folder: Path) -> None:
    run("index", str(image_folder), "--model", TINY_MODEL, "-q")
    assert_clean_error(run("index", str(image_folder), "--model", "mmsearch-small"), "mmsearch-tiny")


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from retrieval.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
        "r = CliRunner().invoke(app, ['list']); assert r.exit_code == 0; "
        "heavy = [m for m in ('torch', 'open_clip', 'faiss') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_help_shows_bracketed_text_as_written() -> None:
    """Help is plain text: rich markup once swallowed "[WEIGHT:]" and every "[default: ...]"."""
    out = run("query", "--help").stdout
    assert "[WEIGHT:]FILE" in out and "$MMSEARCH_INDEX_DIR" in out
    assert "1e-5" in run("train", "--help").stdout


def test_a_text_run_reports_texts_per_second(tmp_path: Path) -> None:
    """Issue 15 (10): 'mmsearch index --texts' spoke of images/s."""
    texts = tmp_path / "captions.txt"
    texts.write_text("a red shoe\na blue cup\n")
    result = runner.invoke(app, ["index", "--texts", str(texts), "--model", TINY_MODEL])
    assert result.exit_code == 0, result.output
    assert "texts/s" in result.stdout and "images/s" not in result.stdout
