"""Videos through Parquet shards (``embed`` + ``merge``) and the Ray engine: the index a local run builds.

Same items (videos and their frames), same ids, vectors at cosine >= 0.999,
the same skipped files; a shard holds whole videos (a video's row and all its
frame rows); a renamed video is reused, not sampled again, by every engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import TINY_MODEL, make_image
from .index_compare import assert_same_index, skipped_lines, snapshot
from .video_factory import BLUE, GREEN, RED, YELLOW, Scene, truncate_copy, write_video

pyarrow = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        make_image(300 + i, size=(72 + 4 * i, 56)).save(folder / f"p{i}.{'png' if i % 2 else 'jpg'}")
    write_video(folder / "a.mp4", [Scene(RED, 2), Scene(GREEN, 2), Scene(BLUE, 2)])
    write_video(folder / "sub" / "b.mkv", [Scene(YELLOW, 3), Scene(GREEN, 3)], muxer="matroska", rotation=90,
                size=(90, 160))
    long = write_video(folder / "long.webm", [Scene(BLUE, 3), Scene(RED, 3)], encoder="libvpx", muxer="webm")
    truncate_copy(long.path, folder / "sub" / "cut.webm", 0.6)
    long.path.unlink()
    (folder / "bad.mov").write_bytes(b"\x00" * 4096)
    return folder


def test_merged_shards_equal_a_local_run_with_videos(media: Path, tmp_path: Path, _private_index_root: Path) -> None:
    shards = tmp_path / "shards"
    made = json.loads(run("embed", str(media), "-o", str(shards), "-m", TINY_MODEL, "--precision", "fp32",
                          "--json").stdout)
    assert (made["embedded"], made["failed"]) == (8, 1)  # 5 photos, 3 videos; bad.mov
    files = sorted(shards.glob("*.parquet"))
    table = pq.read_table(files[0])
    kinds = table.column("kind").to_pylist()
    assert kinds.count("video") == 4 and kinds.count("image") == 5
    # Every frame row follows its video's row, with its id: whole videos.
    ids, parts = table.column("id").to_pylist(), table.column("part").to_pylist()
    for j, kind in enumerate(kinds):
        if kind == "frame":
            assert ids[j] == ids[j - 1] and parts[j] == parts[j - 1] + 1

    merged = run("merge", str(shards), "--index", "merged", "--json")
    local = run("index", str(media), "--index", "local", "-m", TINY_MODEL, "--precision", "fp32", "--json")
    assert_same_index(snapshot(_private_index_root, "local"), snapshot(_private_index_root, "merged"))
    assert skipped_lines(merged.stderr) == skipped_lines(local.stderr)
    report = json.loads(merged.stdout)
    assert (report["added"], report["failed"]) == (8, 1)
    assert json.loads(run("verify", "--index", "merged", "--json").stdout)["ok"]
    # The video facts and capture columns travel in the shard.
    hit = json.loads(run("query", "anything", "--index", "merged", "--type", "video", "--glob", "*b.mkv",
                         "--json").stdout)[0]
    assert hit["meta"]["rotation"] == 90 and hit["photo"]["time_source"] == "file-mtime"
    # Merging the same shards again changes nothing.
    again = json.loads(run("merge", str(shards), "--index", "merged", "--json").stdout)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 8)


def test_ray_engine_indexes_videos_like_a_local_run(media: Path, tmp_path: Path, _private_index_root: Path) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        by_ray = run("index", str(media), "--index", "by-ray", "-m", TINY_MODEL, "--engine", "ray",
                     "--num-workers", "2", "--json")
        by_local = run("index", str(media), "--index", "by-local", "-m", TINY_MODEL, "--json")
        assert_same_index(snapshot(_private_index_root, "by-ray"), snapshot(_private_index_root, "by-local"))
        assert skipped_lines(by_ray.stderr) == skipped_lines(by_local.stderr)
        ray_report, local_report = json.loads(by_ray.stdout), json.loads(by_local.stdout)
        for key in ("added", "failed", "encoded", "videos", "frames", "partial"):
            assert ray_report[key] == local_report[key], key
        # A renamed video is reused on Ray too: nothing sampled.
        os.rename(media / "a.mp4", media / "renamed.mp4")
        moved = json.loads(run("index", str(media), "--index", "by-ray", "--engine", "ray", "--json").stdout)
        assert (moved["added"], moved["removed"], moved["reused"], moved["encoded"]) == (1, 1, 1, 0)
        assert json.loads(run("verify", "--index", "by-ray", "--json").stdout)["ok"]
    finally:
        ray.shutdown()
