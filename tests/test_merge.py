"""Parquet embedding shards: `mmsearch embed` + `mmsearch merge` give the index a local run gives.

Also: shards of two models are refused, and a missing or damaged shard is a
clear error that leaves an existing index exactly as it was. No Ray needed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import TINY_MODEL, make_image, one_line_error
from .index_compare import assert_same_index, skipped_lines, snapshot

pytest.importorskip("pyarrow")

runner = CliRunner()
OTHER_MODEL = "mmsearch-small"  # 64-d: another model altogether


def run(*args: str):
    return runner.invoke(app, list(args))


def make_folder(folder: Path) -> Path:
    """14 pictures in nested folders, a text file named .jpg and a truncated JPEG."""
    (folder / "a" / "b").mkdir(parents=True)
    for i in range(14):
        sub = folder if i < 5 else folder / "a" if i < 10 else folder / "a" / "b"
        make_image(100 + i, size=(80 + 4 * i, 64)).save(sub / f"p{i:02d}.{'png' if i % 4 == 0 else 'jpg'}")
    (folder / "notes.jpg").write_text("this is not a picture\n")
    data = (folder / "p01.jpg").read_bytes()
    (folder / "a" / "cut.jpg").write_bytes(data[: len(data) // 3])
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "photos")


def test_merged_shards_equal_a_local_run(folder: Path, tmp_path: Path, _private_index_root: Path) -> None:
    shards = tmp_path / "shards"
    made = run("embed", str(folder), "-o", str(shards), "-m", TINY_MODEL, "--precision", "fp32", "--json")
    assert made.exit_code == 0, made.output
    out = json.loads(made.stdout)
    assert out["rows"] == 16 and out["embedded"] == 14 and out["failed"] == 2

    merged = run("merge", str(shards), "--index", "merged", "--json")
    assert merged.exit_code == 0, merged.output
    report = json.loads(merged.stdout)
    assert (report["added"], report["failed"], report["items"], report["created"]) == (14, 2, 14, True)
    local = run("index", str(folder), "--index", "local", "-m", TINY_MODEL, "--precision", "fp32", "--json")
    assert local.exit_code == 0, local.output

    assert_same_index(snapshot(_private_index_root, "local"), snapshot(_private_index_root, "merged"))
    assert skipped_lines(merged.stderr) == skipped_lines(local.stderr)
    assert len(skipped_lines(merged.stderr)) == 2
    # The merged index answers queries with the model its manifest names.
    hits = run("query", "a red square", "--index", "merged", "-k", "3", "--json")
    assert hits.exit_code == 0 and len(json.loads(hits.stdout)) == 3

    # Incremental: merging the same shards again changes nothing ...
    again = json.loads(run("merge", str(shards), "--index", "merged", "--json").stdout)
    assert (again["added"], again["updated"], again["unchanged"], again["failed"]) == (0, 0, 14, 2)
    # ... and shards of a changed file update its item in place (same id), as a local run does.
    before = snapshot(_private_index_root, "merged")
    changed = folder / "a" / "p05.jpg"
    make_image(999, size=(90, 70)).save(changed)
    os.utime(changed, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    shards2 = tmp_path / "shards2"
    assert run("embed", str(folder), "-o", str(shards2), "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    update = json.loads(run("merge", str(shards2), "--index", "merged", "--json").stdout)
    assert (update["added"], update["updated"], update["unchanged"]) == (0, 1, 13)
    after = snapshot(_private_index_root, "merged")
    key = str(changed)
    assert after[key][0] == before[key][0]
    assert float(np.dot(after[key][3], before[key][3])) < 0.999


def test_shards_of_two_models_are_refused(folder: Path, tmp_path: Path, _private_index_root: Path) -> None:
    tiny, other = tmp_path / "tiny", tmp_path / "other"
    assert run("embed", str(folder), "-o", str(tiny), "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    assert run("embed", str(folder), "-o", str(other), "-m", OTHER_MODEL, "--precision", "fp32").exit_code == 0

    mixed = run("merge", str(tiny), str(other), "--index", "mixed")
    one_line_error(mixed, "2 different models", TINY_MODEL, OTHER_MODEL)
    assert not (_private_index_root / "mixed").exists()  # nothing created

    assert run("merge", str(tiny), "--index", "photos").exit_code == 0
    before = snapshot(_private_index_root, "photos")
    foreign = run("merge", str(other), "--index", "photos")
    one_line_error(foreign, OTHER_MODEL, "photos", TINY_MODEL)
    assert_same_index(snapshot(_private_index_root, "photos"), before)


def test_missing_or_damaged_shards_leave_the_index_untouched(
    folder: Path, tmp_path: Path, _private_index_root: Path
) -> None:
    shards = tmp_path / "shards"
    assert run("embed", str(folder), "-o", str(shards), "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    good = next(shards.glob("*.parquet"))
    assert run("merge", str(good), "--index", "photos").exit_code == 0
    manifest = (_private_index_root / "photos" / "manifest.json").read_text()
    before = snapshot(_private_index_root, "photos")

    # New files, so the good shard would change the index if the bad one did not stop the merge first.
    make_image(500).save(folder / "new.jpg")
    fresh = tmp_path / "fresh"
    assert run("embed", str(folder), "-o", str(fresh), "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    fresh_shard = next(fresh.glob("*.parquet"))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-200])
    plain = tmp_path / "plain.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["x.jpg"], "vector": [[0.0, 1.0]]}), plain)

    cases = [
        ([str(fresh_shard), str(truncated)], ("truncated.parquet", "not a readable Parquet shard")),
        ([str(fresh_shard), str(tmp_path / "nowhere.parquet")], ("shard not found", "nowhere.parquet")),
        ([str(fresh_shard), str(plain)], ("plain.parquet", "not an mmsearch embedding shard")),
    ]
    for args, words in cases:
        result = run("merge", *args, "--index", "photos")
        one_line_error(result, *words)
        assert_same_index(snapshot(_private_index_root, "photos"), before)
        assert (_private_index_root / "photos" / "manifest.json").read_text() == manifest
    verified = run("verify", "--index", "photos")
    assert verified.exit_code == 0, verified.output
    shutil.rmtree(shards)


def test_shard_round_trip_keeps_vectors_and_failures(tmp_path: Path) -> None:
    from retrieval.indexer import FileOutcome
    from retrieval.shards import ShardModel, ShardWriter, open_shards, table_outcomes

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3, 8)).astype(np.float32)
    outcomes = [
        FileOutcome("/x/a.jpg", 10, 1, "h1", vecs[0], 4, 3),
        FileOutcome("/x/b.jpg", 11, 2, "h2", None, error="truncated file"),
        FileOutcome("/x/c.jpg", 12, 3, "h3", None, reused=True),
        FileOutcome("/x/d.jpg", 13, 4, "h4", vecs[2], 5, 6),
    ]
    writer = ShardWriter(tmp_path / "s", ShardModel("m", "f" * 16, 8))
    writer.write([7, 8, 9, 10], outcomes)
    (shard,) = open_shards([tmp_path / "s"])
    assert shard.model == ShardModel("m", "f" * 16, 8) and shard.first_id == 7
    back = table_outcomes(shard.read())
    assert [o.key for o in back] == [o.key for o in outcomes]
    assert np.array_equal(back[0].vector, vecs[0]) and np.array_equal(back[3].vector, vecs[2])
    assert back[1].vector is None and back[1].error == "truncated file"
    assert back[2].vector is None and back[2].reused and back[2].error is None
    assert (back[0].width, back[0].height, back[1].width) == (4, 3, 0)


def test_embed_into_a_path_that_cannot_hold_shards_is_a_clean_error(folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(run("embed", str(folder), "-o", str(blocker), "-m", TINY_MODEL), "cannot write shards", str(blocker))


def test_the_newest_run_wins_when_runs_share_a_folder(folder: Path, tmp_path: Path, _private_index_root: Path) -> None:
    """Two embed runs into one folder, a file changed between them: the merge keeps the newer vector."""
    from retrieval import shards as shard_io

    out = tmp_path / "shards"
    assert run("embed", str(folder), "-o", str(out), "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    changed = folder / "p01.jpg"
    make_image(777, size=(90, 70)).save(changed)
    os.utime(changed, ns=(1_800_000_000_000_000_000, 1_800_000_000_000_000_000))
    assert run("embed", str(folder), "-o", str(out), "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    opened = shard_io.open_shards([str(out)])
    assert len({s.run for s in opened}) == 2
    assert [s.created_at for s in opened] == sorted(s.created_at for s in opened)  # oldest run first
    assert run("merge", str(out), "--index", "merged").exit_code == 0
    assert run("index", str(folder), "--index", "local", "-m", TINY_MODEL, "--precision", "fp32").exit_code == 0
    assert_same_index(snapshot(_private_index_root, "local"), snapshot(_private_index_root, "merged"))
