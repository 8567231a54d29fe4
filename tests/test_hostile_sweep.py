"""Issue 14: the defects a hostile-input sweep found, one test each (numbers are the issue's items).

Each test failed before its fix. Commands run through the real CLI (Typer's
runner); an error must be one ``error:`` line and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app
from retrieval.errors import ImageDecodeError, IndexLockedError, InvalidQueryError, MMSearchError

from .conftest import TINY_MODEL, make_image, one_line_error
from .crash_harness import make_small_images

runner = CliRunner()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(*args: str):
    return runner.invoke(app, list(args))


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def index_dir() -> Path:
    return Path(os.environ["MMSEARCH_INDEX_DIR"]) / "default"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_small_images(folder, 10)
    return folder


@pytest.fixture
def indexed(photos: Path) -> Path:
    ok("index", str(photos), "--model", TINY_MODEL, "-q")
    return photos


def stored_vectors(directory: Path) -> dict[int, bytes]:
    db = sqlite3.connect(directory / "items.sqlite")
    try:
        return dict(db.execute("SELECT id, vec FROM vectors"))
    finally:
        db.close()


# -- silent wrong results / data loss ----------------------------------------------------------


def test_1_a_lost_manifest_never_lets_another_model_reuse_the_vectors(indexed: Path) -> None:
    (index_dir() / "manifest.json").unlink()
    before = stored_vectors(index_dir())
    message = one_line_error(run("index", str(indexed), "--model", "mmsearch-small"), "manifest.json is missing", "repair")
    assert "mmsearch repair" in message
    one_line_error(run("query", "red"), "manifest.json is missing", "mmsearch repair")
    assert stored_vectors(index_dir()) == before  # nothing was reused, rewritten or dropped
    # repair rebuilds the manifest from what items.sqlite records; the index works again.
    ok("repair")
    data = json.loads(ok("info", "--json").stdout)
    assert data["model"] == TINY_MODEL and data["images"] == 10
    assert stored_vectors(index_dir()) == before
    ok("verify")


def test_2_repair_trusts_the_stored_model_over_a_wrong_manifest_dim(indexed: Path) -> None:
    manifest = index_dir() / "manifest.json"
    data = json.loads(manifest.read_text())
    data["dim"] = 128  # the vectors are 32-d
    manifest.write_text(json.dumps(data))
    before = stored_vectors(index_dir())
    one_line_error(run("query", "red"), "128-d", "mmsearch repair")
    verify = run("verify")
    assert verify.exit_code == 1 and "items.sqlite was written by" in verify.stdout
    ok("repair")
    assert stored_vectors(index_dir()) == before  # all 10 kept
    assert json.loads(manifest.read_text())["dim"] == 32


def test_3_drop_refuses_an_index_that_is_being_written(indexed: Path) -> None:
    idx = retrieval.open_index()
    with idx.store.writer_lock():
        one_line_error(run("drop", "default", "--yes", "--no-wait"), "being written by another process")
        assert (index_dir() / "items.sqlite").exists()
        with pytest.raises(IndexLockedError):
            retrieval.delete_index("default")
    idx.close()
    plan = ok("drop", "default", "--dry-run")
    assert "would delete" in plan.stdout and "10 items" in plan.stdout
    assert index_dir().exists()
    dropped = ok("drop", "default", "--yes")
    assert "deleted index 'default'" in dropped.stdout and "10 items" in dropped.stdout  # --yes says what went
    assert not index_dir().exists()


@pytest.mark.skipif(IS_ROOT, reason="root reads anything; the rule is tested through file_is_gone below")
def test_4_prune_keeps_items_of_a_folder_it_cannot_read(indexed: Path) -> None:
    locked = indexed / "sub"
    locked.mkdir()
    make_image(99).save(locked / "x.jpg")
    ok("index", str(indexed), "-q")
    locked.chmod(0)
    try:
        result = ok("prune")
        assert "0 removed" in result.stdout
        assert json.loads(ok("info", "--json").stdout)["images"] == 11
        ok("index", str(indexed), "--prune", "-q")
        assert json.loads(ok("info", "--json").stdout)["images"] == 11
    finally:
        locked.chmod(0o755)


def test_4_file_is_gone_only_when_the_os_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval import sources

    present = tmp_path / "a.jpg"
    present.write_bytes(b"x")
    assert not sources.file_is_gone(str(present))
    assert sources.file_is_gone(str(tmp_path / "missing.jpg"))
    assert sources.file_is_gone(str(present / "below-a-file.jpg"))  # ENOTDIR: gone

    def denied(path: str):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(sources.os, "stat", denied)
    assert not sources.file_is_gone(str(tmp_path / "missing.jpg"))  # cannot tell: not gone


def test_5_a_corrupt_or_missing_manifest_is_recovered_from_items_sqlite(indexed: Path) -> None:
    manifest = index_dir() / "manifest.json"
    manifest.write_text("{ this is not json")
    one_line_error(run("info"), "mmsearch repair")
    listed = json.loads(ok("list", "--json").stdout)
    assert listed[0]["name"] == "default" and "repair" in listed[0]["error"]
    dry = ok("repair", "--dry-run")
    assert "would: manifest.json rebuilt" in dry.stdout and "nothing was changed" in dry.stdout
    assert manifest.read_text() == "{ this is not json"
    ok("repair")
    assert json.loads(ok("info", "--json").stdout)["images"] == 10
    # An index from before the model was recorded, whose manifest is gone: repair needs --model.
    db = sqlite3.connect(index_dir() / "items.sqlite")
    db.execute("DELETE FROM meta WHERE key IN ('model', 'fingerprint', 'dim')")
    db.commit()
    db.close()
    manifest.unlink()
    one_line_error(run("repair"), "--model SPEC")
    one_line_error(run("repair", "--model", "mmsearch-small"), "64-d", "another model")
    ok("repair", "--model", TINY_MODEL)
    assert json.loads(ok("info", "--json").stdout)["model"] == TINY_MODEL
    ok("verify")
    # drop works on an index whose manifest is gone.
    manifest.unlink()
    ok("drop", "default", "--yes")
    assert not index_dir().exists()


def test_6_remove_of_an_empty_path_removes_nothing(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    one_line_error(run("remove", ""), "empty path")
    with pytest.raises(MMSearchError, match="empty path"):
        retrieval.open_index().remove("")
    assert json.loads(ok("info", "--json").stdout)["images"] == 10
    dry = ok("remove", str(indexed), "--dry-run")
    assert dry.stdout.count("would remove:") == 10
    assert json.loads(ok("info", "--json").stdout)["images"] == 10


def test_7_under_is_a_path_match(tmp_path: Path, tiny_encoder) -> None:
    for name in ("2023", "2023-old"):
        folder = tmp_path / "a" / name
        folder.mkdir(parents=True)
        make_image(len(name)).save(folder / "p.jpg")
    idx = retrieval.create_index(encoder=tiny_encoder)
    idx.add_folder(tmp_path / "a")
    hits = idx.search_text("x", k=10, filters=retrieval.Filters(path_prefix=str(tmp_path / "a" / "2023")))
    assert [Path(h.path).parent.name for h in hits] == ["2023"]


def test_8_image_query_on_a_text_only_index_returns_texts(tmp_path: Path, tiny_encoder) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("a red shoe\na blue cup\n")
    ok("index", "--texts", str(texts), "--model", TINY_MODEL, "-q")
    make_image(3).save(tmp_path / "q.png")
    result = ok("query", "--image", str(tmp_path / "q.png"), "--json")
    assert {h["kind"] for h in json.loads(result.stdout)} == {"text"}
    assert len(json.loads(ok("query", "red", "--json").stdout)) == 2
    # --target image is still images only: none here.
    assert json.loads(ok("query", "red", "--target", "image", "--json").stdout) == []


def test_9_non_utf8_file_names_are_indexed_and_printed_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    raw = os.fsencode(str(folder)) + b"/caf\xe9-\xff.jpg"
    try:
        make_image(1).save(os.fsdecode(raw), format="JPEG")
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    make_image(2).save(folder / "plain.jpg")
    result = ok("index", str(folder), "--model", TINY_MODEL)
    assert "skipped" not in result.stderr
    table = ok("query", "x")
    assert "caf\\xe9-\\xff.jpg" in table.stdout  # escaped for the terminal
    listed = json.loads(ok("query", "x", "--json").stdout)
    assert any(os.fsencode(h["path"]) == raw for h in listed)  # JSON round-trips to the real bytes
    idx = retrieval.open_index()
    real = next(h.path for h in idx.search_text("x", k=5) if "caf" in h.path)
    assert os.fsencode(real) == raw and Path(real).is_file()
    ok("verify")


# -- tracebacks instead of one error line --------------------------------------------------------


def test_10_html_to_a_folder_or_a_missing_folder(indexed: Path, tmp_path: Path) -> None:
    one_line_error(run("query", "cat", "--html", str(tmp_path)), "is a folder")
    one_line_error(run("query", "cat", "--html", str(tmp_path / "no" / "such" / "r.html")), "does not exist")


@pytest.mark.parametrize("config", ["[1, 2, 3]", "null", '"str"', '{"model_cfg": "x"}', "{not json"])
def test_10_a_model_folder_with_a_bad_config(tmp_path: Path, photos: Path, config: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "open_clip_config.json").write_text(config)
    one_line_error(run("index", str(photos), "--model", str(model)), "open_clip_config.json")
    one_line_error(run("classify", str(next(photos.rglob("*.png"))), "--labels", "a,b", "--model", str(model)),
                   "open_clip_config.json")
    with pytest.raises(MMSearchError):
        retrieval.load_encoder(str(model))


@pytest.mark.parametrize("field, value", [("ann", "x"), ("fingerprint", None), ("dim", "32"), ("ann", {"search": "x"}),
                                          ("ann", {"policy": {"max_memory": -1}}), ("created_at", "yesterday")])
def test_10_manifest_fields_of_the_wrong_type(indexed: Path, field: str, value: object) -> None:
    manifest = index_dir() / "manifest.json"
    data = json.loads(manifest.read_text())
    data[field] = value
    manifest.write_text(json.dumps(data))
    for command in (["query", "x"], ["info"], ["similar", "1"]):
        one_line_error(run(*command), "mmsearch repair")
    assert run("verify").exit_code == 1
    ok("repair")
    ok("verify")
    assert len(json.loads(ok("query", "x", "--json").stdout)) == 10


def test_10_an_item_id_too_large(indexed: Path) -> None:
    one_line_error(run("similar", "99999999999999999999999"), "no item with id")
    with pytest.raises(InvalidQueryError):
        retrieval.open_index().similar(2**70)


def test_10_a_binary_labels_file(tmp_path: Path, indexed: Path) -> None:
    labels = tmp_path / "labels.bin"
    labels.write_bytes(bytes(range(256)) * 4)
    one_line_error(run("classify", str(next(indexed.rglob("*.png"))), "--labels-file", str(labels)), "not UTF-8")


def test_10_train_output_and_learning_rate(tmp_path: Path) -> None:
    from retrieval import synthetic as syn

    cat = syn.generate_catalogue(tmp_path / "world", n_images=24, seed=0, image_size=32)
    data = str(cat.captions_csv)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(run("train", data, "-o", str(a_file), "--model", TINY_MODEL), "is a file")
    if not IS_ROOT:
        one_line_error(run("train", data, "-o", "/proc/x", "--model", TINY_MODEL), "cannot write")
    for flag, value in [("--lr", "nan"), ("--lr", "-1"), ("--weight-decay", "-5"), ("--warmup", "-3"),
                        ("--grad-clip", "-1")]:
        out = tmp_path / f"out{flag}{value}"
        one_line_error(run("train", data, "-o", str(out), "--model", TINY_MODEL, flag, value), flag)
        assert not out.exists()  # a failed run leaves no empty folder


def test_11_usage_errors_are_one_line_and_exit_1() -> None:
    for args, words in [(["query", "-k", "0", "x"], ["-k"]), (["query", "--x"], ["--x"]),
                        (["query", "--dedup", "2", "x"], ["--dedup"]), (["index", "--threads", "0", "d"], ["--threads"]),
                        (["train"], ["data"]), (["nosuch"], ["nosuch"])]:
        one_line_error(run(*args), *words, "--help")


def test_12_huge_weights_and_a_corrupt_faiss_file(indexed: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning may leak
        hits = json.loads(ok("query", "1e30:red", "--text", "100000000000000000000:blue", "--json").stdout)
    assert len(hits) == 10
    idx = retrieval.open_index()
    big = idx.search([retrieval.QueryTerm.text("red", 1e30), retrieval.QueryTerm.text("blue", 1e25)], k=3)
    assert len(big) == 3
    with pytest.raises(InvalidQueryError):
        idx.search([retrieval.QueryTerm.text("red", float("inf"))], k=3)
    idx.close()
    faiss_file = index_dir() / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # truncated
    assert len(json.loads(ok("query", "red", "--json").stdout)) == 10  # rebuilt from the stored vectors
    verify = run("verify")
    assert verify.exit_code == 1 and "repair" in verify.stdout
    ok("repair")
    ok("verify")


def test_12_a_copied_index_is_known_by_its_folder_name(indexed: Path) -> None:
    import shutil

    shutil.copytree(index_dir(), index_dir().parent / "copy")
    data = json.loads(ok("info", "--index", "copy", "--json").stdout)
    assert data["name"] == "copy"
    (index_dir().parent / "copy" / "manifest.json").unlink()
    one_line_error(run("query", "x", "--index", "copy"), "'copy'", "--index copy")


def test_12_python_api_inputs_are_typed_errors(indexed: Path) -> None:
    idx = retrieval.open_index()
    with pytest.raises(ImageDecodeError):
        idx.search_image(Image.new("RGB", (0, 0)))
    with pytest.raises(InvalidQueryError):
        idx.search_image(123)  # type: ignore[arg-type]
    for k in (1.5, 0, -1, True, "3"):
        with pytest.raises(InvalidQueryError):
            idx.search_text("x", k=k)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError):
        idx.search_vector(np.zeros(32, dtype=np.float32))
    with pytest.raises(InvalidQueryError):
        idx.similar(object())  # type: ignore[arg-type]


# -- smaller -----------------------------------------------------------------------------------------


def test_13_smaller_ones(indexed: Path, tmp_path: Path) -> None:
    one_line_error(run("query", "x", "--min-score", "nan"), "--min-score")
    assert ok("query", "x", "--after", "0001-01-01").stdout.count("\n") == 11  # header + 10
    one_line_error(run("query", "x", "--precision", "bogus"), "precision 'bogus'")
    one_line_error(run("query", "--image", str(indexed)), "is a folder")
    one_line_error(run("query", "x", "--after", "yesterday"), "bad date 'yesterday'")


def test_13_index_dir_dir_reports_no_failure(photos: Path) -> None:
    result = ok("index", str(photos), str(photos), "--model", TINY_MODEL, "--json")
    report = json.loads(result.stdout)
    assert report["failed"] == 0 and report["added"] == 10


def test_13_info_failed_lists_what_the_walk_skipped(photos: Path) -> None:
    (photos / "fifo.jpg").unlink(missing_ok=True)
    os.mkfifo(photos / "fifo.jpg")
    (photos / "dangling.jpg").symlink_to(photos / "no-such.jpg")
    (photos / "bad.jpg").write_bytes(b"not an image")
    result = ok("index", str(photos), "--model", TINY_MODEL)
    skipped = {line.split(": ")[1] for line in result.stderr.splitlines() if line.startswith("skipped:")}
    listed = {line.split(": ")[1].strip() for line in ok("info", "--failed").stdout.splitlines()
              if line.startswith("failed:")}
    assert skipped == listed == {str(photos / n) for n in ("fifo.jpg", "dangling.jpg", "bad.jpg")}
    (photos / "dangling.jpg").unlink()  # fixed: the next run forgets it
    ok("index", str(photos), "-q")
    listed = {line.split(": ")[1].strip() for line in ok("info", "--failed").stdout.splitlines()
              if line.startswith("failed:")}
    assert listed == {str(photos / n) for n in ("fifo.jpg", "bad.jpg")}


def test_13_names_with_escapes_and_newlines_print_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    make_image(5).save(folder / "evil\x1b[31mred\nline.png")
    ok("index", str(folder), "--model", TINY_MODEL, "-q")
    for args in (["query", "x"], ["query", "x", "--paths"]):
        out = ok(*args).stdout
        assert "\x1b" not in out and "evil\\x1b[31mred\\nline.png" in out
    assert json.loads(ok("query", "x", "--json").stdout)[0]["path"].endswith("evil\x1b[31mred\nline.png")
