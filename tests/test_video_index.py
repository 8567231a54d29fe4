"""Videos in an index, end to end: indexed with the photos, answered at their best moment.

The videos are made by the test itself (``tests/video_factory.py``: coloured
scenes that change at known times, a black intro, rotation metadata, capture
tags, damaged and truncated files). A constructed encoder maps a picture to
its dominant colour and a text to the colours it names, so "green" must
answer each video at the moment it turns green (within one sampling
interval), through the CLI as a user runs it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app
from retrieval.search import Filters
from retrieval.video import FrameSampling

from .video_factory import (
    BLACK, BLUE, CYAN, GREEN, MAGENTA, RED, WHITE, YELLOW, MadeVideo, Scene, mean_colour, truncate_copy, write_video,
)

PALETTE = {"red": RED, "green": GREEN, "blue": BLUE, "yellow": YELLOW, "magenta": MAGENTA, "cyan": CYAN,
           "white": WHITE}
NAMES = list(PALETTE)
INTERVAL = FrameSampling().interval  # the default sampling interval: "one sample"


class ColourEncoder:
    """Constructed embeddings: one axis per colour; a picture points at the colour its mean is closest to in hue."""

    spec = "fake-colours"
    fingerprint = "colour01"
    image_size = 16
    logit_scale = 100.0
    dim = len(NAMES) + 1

    def __init__(self) -> None:
        self.image_calls = 0
        self.frames = 0

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.tensor(mean_colour(img.convert("RGB")), dtype=torch.float32)

    def pixels_from_prepared(self, prepared) -> torch.Tensor:
        return torch.stack(list(prepared))

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        self.image_calls += 1
        self.frames += len(pixels)
        out = []
        for rgb in pixels.numpy():
            direction = rgb / (np.linalg.norm(rgb) + 1e-9)
            scores = [float(direction @ (np.array(c) / np.linalg.norm(c))) for c in PALETTE.values()]
            v = np.zeros(self.dim, dtype=np.float32)
            v[int(np.argmax(scores))] = 1.0
            v[-1] = 0.05 + float(rgb.sum()) / 1e4  # brightness: distinct pictures of one colour stay distinct
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    def encode_images(self, images) -> np.ndarray:
        return self.encode_pixels(torch.stack([self.preprocess(i) for i in images]))

    def encode_texts(self, texts) -> np.ndarray:
        out = []
        for text in texts:
            v = np.zeros(self.dim, dtype=np.float32)
            for word in text.lower().split():
                if word in PALETTE:
                    v[NAMES.index(word)] = 1.0
            v[-1] = 0.01
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def flat_photo(colour: tuple[int, int, int], path: Path) -> Path:
    img = Image.new("RGB", (64, 48), colour)
    img.paste(tuple(int(c * 0.6) for c in colour), (0, 0, 32, 24))
    img.save(path)
    return path


def make_library(folder: Path) -> dict[str, MadeVideo]:
    """Three videos, two photos, and three damaged video files."""
    (folder / "clips").mkdir(parents=True)
    made = {
        # Black intro, then red, green, blue: green starts at 4 s.
        "party": write_video(folder / "clips" / "party.mp4",
                             [Scene(BLACK, 1, "flat"), Scene(RED, 3), Scene(GREEN, 3), Scene(BLUE, 3)]),
        # Portrait (the phone turned it 90 degrees), with capture time, place and camera tags.
        "beach": write_video(folder / "clips" / "beach.mov", [Scene(YELLOW, 3), Scene(CYAN, 3, "corner")],
                             size=(90, 160), rotation=90,
                             tags={"com.apple.quicktime.creationdate": "2023-07-14T18:30:05+0200",
                                   "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
                                   "com.apple.quicktime.make": "Apple", "com.apple.quicktime.model": "iPhone 12"}),
        # Magenta, then green from 4 s: a second green video.
        "walk": write_video(folder / "walk.mkv", [Scene(MAGENTA, 4), Scene(GREEN, 2)], muxer="matroska"),
    }
    flat_photo(RED, folder / "red.png")
    flat_photo(GREEN, folder / "green.png")
    (folder / "clips" / "broken.mp4").write_bytes(b"this is not a video, only its name is\n" * 50)
    truncate_copy(made["party"].path, folder / "clips" / "cut.mp4", 0.6)  # an MP4 cut before its index
    long = write_video(folder / "long.mkv", [Scene(WHITE, 4), Scene(WHITE, 4, "stripes"), Scene(WHITE, 4)],
                       muxer="matroska")
    truncate_copy(long.path, folder / "half.mkv", 0.55)  # a Matroska file cut half way: indexed in part
    long.path.unlink()
    return made


@pytest.fixture
def colours(monkeypatch: pytest.MonkeyPatch) -> ColourEncoder:
    """The colour encoder, for the CLI too (it opens its own Index)."""
    import retrieval.api as api

    encoder = ColourEncoder()
    monkeypatch.setattr(api, "load_query_model", lambda *args, **kwargs: encoder)
    return encoder


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, dict[str, MadeVideo]]:
    folder = tmp_path / "media"
    return folder, make_library(folder)


runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def cli_json(*args: str):
    return json.loads(cli(*args, "--json").stdout)


def green_scene_check(video: MadeVideo, time: float, colour: tuple[int, int, int]) -> None:
    """The moment shows the scene of ``colour``, and is within one sample of the scene's start."""
    index = [s.colour for s in video.scenes].index(colour)
    start = video.starts[index]
    assert video.scene_at(time) == index, (time, video.starts)
    assert abs(time - start) <= INTERVAL + 1e-6, (time, start)


# -- the CLI, end to end --------------------------------------------------------------------


def test_index_and_query_answer_each_video_at_its_moment(library, colours: ColourEncoder) -> None:
    folder, made = library
    report = cli_json("index", str(folder))
    assert (report["added"], report["failed"], report["videos"]) == (6, 2, 4)  # 2 photos, 3 videos + half.mkv
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["broken.mp4"].startswith("not a video or damaged")
    assert "incomplete MP4/MOV" in reasons["cut.mp4"]
    assert [Path(p["path"]).name for p in report["partial"]] == ["half.mkv"]
    assert report["video_seconds"] > 20

    hits = cli_json("query", "green", "-k", "3")
    by_name = {Path(h["path"]).name: h for h in hits}
    assert set(by_name) == {"party.mp4", "walk.mkv", "green.png"}  # one hit per video, not one per frame
    assert len(hits) == len({h["path"] for h in hits})
    for name, video in (("party.mp4", made["party"]), ("walk.mkv", made["walk"])):
        hit = by_name[name]
        assert hit["kind"] == "video"
        green_scene_check(video, hit["time"], GREEN)
        moments = hit["moments"]
        assert moments[0]["time"] == hit["time"] and moments[0]["frame"] == hit["frame"]
        assert [m["score"] for m in moments] == sorted((m["score"] for m in moments), reverse=True)
    assert by_name["green.png"]["kind"] == "image" and "time" not in by_name["green.png"]

    # Every scene of the party video, asked for by its colour.
    for colour, name in ((RED, "red"), (BLUE, "blue")):
        hit = cli_json("query", name, "--type", "video", "-k", "1")[0]
        assert Path(hit["path"]).name == "party.mp4"
        green_scene_check(made["party"], hit["time"], colour)
    # --type video: videos only; --type image: photos only.
    assert {h["kind"] for h in cli_json("query", "red", "--type", "video", "-k", "10")} == {"video"}
    assert {Path(h["path"]).name for h in cli_json("query", "red", "--type", "image", "-k", "10")} == {
        "red.png", "green.png"}
    # The plain listing names the moment.
    lines = cli("query", "blue", "--type", "video", "-k", "1").stdout.splitlines()
    assert lines[1].endswith(f"party.mp4  at 00:0{int(made['party'].starts[3])}")


def test_similar_from_a_moment_and_from_a_whole_video(library, colours: ColourEncoder) -> None:
    folder, made = library
    cli("index", str(folder), "-q")
    party = made["party"].path
    # The green moment of the party video: the other green video comes first (the source video is left out).
    hits = cli_json("similar", f"{party}#t=5", "-k", "2")
    assert Path(hits[0]["path"]).name == "walk.mkv" and hits[0]["kind"] == "video"
    green_scene_check(made["walk"], hits[0]["time"], GREEN)
    assert all(Path(h["path"]).name != "party.mp4" for h in hits)
    # MM:SS works too, and names the same moment.
    assert cli_json("similar", f"{party}#t=00:05", "-k", "1")[0]["path"] == hits[0]["path"]
    # From the frame's id (what a hit's "frame" is).
    frame = cli_json("query", "green", "--type", "video", "--under", str(party.parent), "-k", "1")[0]["frame"]
    assert cli_json("similar", str(frame), "-k", "1")[0]["path"] == hits[0]["path"]
    # The whole video: not itself.
    whole = cli_json("similar", str(party), "-k", "5")
    assert all(Path(h["path"]).name != "party.mp4" for h in whole) and whole
    # A moment of something that is not a video is a clear error.
    bad = runner.invoke(app, ["similar", f"{folder / 'red.png'}#t=3"])
    assert bad.exit_code == 1 and "not a video" in bad.stderr


def test_capture_metadata_rotation_and_thumbnails_of_the_moment(library, colours: ColourEncoder,
                                                                  tmp_path: Path) -> None:
    folder, made = library
    idx = retrieval.create_index("v", encoder=colours, root=tmp_path / "root")
    idx.add_folder(folder)
    beach = idx.item(idx.find_item(made["beach"].path))
    assert beach is not None and beach.kind == "video"
    assert (beach.width, beach.height) == (90, 160)  # as shown: portrait
    assert beach.taken_at == "2023-07-14T18:30:05+02:00" and beach.utc_offset_min == 120
    assert (round(beach.gps_lat, 4), round(beach.gps_lon, 4)) == (48.8584, 2.2945)
    assert (beach.camera_make, beach.camera_model, beach.place_cc) == ("Apple", "iPhone 12", "FR")
    meta = json.loads(beach.meta)
    assert meta["rotation"] == 90 and meta["duration"] == pytest.approx(6.0)
    # The photo filters see videos: by date, place and camera.
    taken = idx.search_text("cyan", k=5, filters=Filters(taken_after="2023-07", taken_before="2023-08"))
    assert [h.path for h in taken] == [str(made["beach"].path)]
    assert [h.path for h in idx.search_text("cyan", k=5, filters=Filters(place="Paris", camera="iphone"))] == [
        str(made["beach"].path)]
    assert taken[0].photo["place"].endswith("France")  # the nearest place the gazetteer names
    # The thumbnail of the cyan moment: upright (white corner top-left), cyan elsewhere.
    hit = idx.search_text("cyan", k=1)[0]
    thumb = Image.open(idx.thumbnail(idx.item(hit.frame), 128)).convert("RGB")
    assert thumb.height > thumb.width
    assert mean_colour(thumb, (0, 0, 0.4, 0.4)).min() > 200  # the white corner, where a viewer sees it
    lower = mean_colour(thumb, (0.1, 0.6, 0.9, 0.9))
    assert lower[1] > 120 and lower[2] > 120 and lower[0] < 100  # cyan
    # A video's own thumbnail: its first frame worth showing (after a black intro).
    party = idx.item(idx.find_item(made["party"].path))
    poster = Image.open(idx.thumbnail(party, 128)).convert("RGB")
    assert mean_colour(poster)[0] > 100 > mean_colour(poster)[1]  # red, not the black intro
    # The original is the video file, for a frame too.
    source, row = idx.open_original(idx.item(hit.frame))
    with source:
        assert row.kind == "video" and source.read() == made["beach"].path.read_bytes()
    idx.close()


def test_html_report_plays_each_video_from_its_moment(library, colours: ColourEncoder, tmp_path: Path) -> None:
    folder, made = library
    cli("index", str(folder), "-q")
    page = tmp_path / "r.html"
    cli("query", "green", "-k", "3", "--html", str(page))
    text = page.read_text()
    hits = cli_json("query", "green", "-k", "3")
    for hit in (h for h in hits if h["kind"] == "video"):
        seconds = f"{hit['time']:.3f}".rstrip("0").rstrip(".")
        assert f'src="{Path(hit["path"]).as_uri()}#t={seconds}"' in text
    assert text.count("<video ") == 2 and 'poster="data:image/jpeg;base64,' in text


# -- incremental runs, maintenance ------------------------------------------------------------


def frames_by_video(root: Path, name: str) -> dict[str, list[float]]:
    db = sqlite3.connect(root / name / "items.sqlite")
    try:
        rows = db.execute("SELECT v.key, f.time FROM items f JOIN items v ON v.id = f.parent_id "
                          "WHERE f.kind = 'frame' ORDER BY v.key, f.time").fetchall()
    finally:
        db.close()
    out: dict[str, list[float]] = {}
    for key, t in rows:
        out.setdefault(key, []).append(t)
    return out


def test_unchanged_renamed_changed_and_removed_videos(library, colours: ColourEncoder,
                                                       _private_index_root: Path) -> None:
    folder, made = library
    cli("index", str(folder), "-q")
    before = frames_by_video(_private_index_root, "default")
    frames_before = colours.frames
    again = cli_json("index", str(folder))
    assert (again["unchanged"], again["encoded"], colours.frames) == (6, 0, frames_before)  # nothing decoded

    # Renamed: same content, no decoding; the frames move with it.
    walk = made["walk"].path
    moved = walk.with_name("moved.mkv")
    os.rename(walk, moved)
    renamed = cli_json("index", str(folder))
    assert (renamed["added"], renamed["removed"], renamed["reused"], renamed["encoded"]) == (1, 1, 1, 0)
    assert colours.frames == frames_before
    after = frames_by_video(_private_index_root, "default")
    assert after[str(moved)] == before[str(walk)] and str(walk) not in after
    green = cli_json("query", "green", "--type", "video", "--glob", "*moved*", "-k", "1")[0]
    green_scene_check(made["walk"], green["time"], GREEN)

    # Changed: sampled again, its old frames gone (from FAISS too: verify checks).
    party = made["party"].path
    write_video(party, [Scene(BLUE, 2), Scene(RED, 2)])  # no black intro, red later than before
    changed = cli_json("index", str(folder))
    assert (changed["updated"], changed["encoded"], changed["videos"]) == (1, 1, 1)
    assert frames_by_video(_private_index_root, "default")[str(party)] == [0.0, 2.0]
    hit = cli_json("query", "red", "--type", "video", "-k", "1")[0]
    assert (Path(hit["path"]).name, hit["time"]) == ("party.mp4", 2.0)
    assert cli_json("verify")["ok"]

    # remove: the video and its frames; prune: a deleted video with its frames.
    removed = cli_json("remove", str(party))
    assert removed["removed"] == {str(party): 1} and removed["keys"] == [str(party)]
    assert str(party) not in frames_by_video(_private_index_root, "default")
    made["beach"].path.unlink()
    pruned = cli_json("prune")
    assert pruned["paths"] == [str(made["beach"].path)]
    verify = cli_json("verify")
    assert verify["ok"] and verify["vectors"] == sum(len(t) for t in frames_by_video(
        _private_index_root, "default").values()) + 2  # the frames left, and two photos
    info = cli_json("info")
    assert (info["videos"], info["images"]) == (2, 2)  # moved.mkv and half.mkv; red.png and green.png


def test_no_video_leaves_videos_out_and_keeps_those_indexed(library, colours: ColourEncoder,
                                                            _private_index_root: Path) -> None:
    folder, made = library
    photos_only = cli_json("index", str(folder), "--no-video", "--index", "photos")
    assert (photos_only["added"], photos_only["failed"], photos_only.get("videos", 0)) == (2, 0, 0)
    assert cli_json("info", "--index", "photos")["videos"] == 0
    cli("index", str(folder), "-q")
    kept = cli_json("index", str(folder), "--no-video")
    assert (kept["removed"], kept["unchanged"]) == (0, 2)
    assert cli_json("info")["videos"] == 4


def test_verify_and_repair_keep_videos_whole(library, colours: ColourEncoder, _private_index_root: Path) -> None:
    folder, made = library
    cli("index", str(folder), "-q")
    db = sqlite3.connect(_private_index_root / "default" / "items.sqlite")
    db.execute("PRAGMA foreign_keys=OFF")  # damage as a crash of another tool or a salvage could leave it
    walk_id = db.execute("SELECT id FROM items WHERE key=?", (str(made["walk"].path),)).fetchone()[0]
    db.execute("DELETE FROM items WHERE id=?", (walk_id,))  # frames without their video
    party_id = db.execute("SELECT id FROM items WHERE key=?", (str(made["party"].path),)).fetchone()[0]
    frame = db.execute("SELECT id FROM items WHERE parent_id=? ORDER BY time LIMIT 1", (party_id,)).fetchone()[0]
    db.execute("UPDATE vectors SET vec=? WHERE id=?", (np.full(ColourEncoder.dim, 9, np.float32).tobytes(), frame))
    db.commit()
    db.close()
    problems = " ".join(cli_json_fail("verify")["problems"])
    assert "frames whose parent is not a video" in problems and "not finite unit vectors" in problems
    repair = cli_json("repair")
    # The orphan frames go; the party video goes whole (a video with a frame missing would count as unchanged).
    assert str(made["party"].path) in repair["dropped"]
    assert not any(key.startswith(str(made["party"].path) + "#") for key in repair["dropped"])
    assert cli_json("verify")["ok"]
    again = cli_json("index", str(folder))
    assert (again["added"], again["videos"]) == (2, 2)  # both sampled again
    assert cli_json("verify")["ok"]


def cli_json_fail(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)


def test_a_file_that_fails_keeps_its_reason_and_is_retried_only_when_it_changes(
        library, colours: ColourEncoder) -> None:
    folder, _ = library
    cli("index", str(folder), "-q")
    again = cli_json("index", str(folder))
    assert (again["failed"], again["encoded"]) == (2, 0)
    failed = cli_json("info", "--failed")
    assert {Path(f["path"]).name for f in failed["failed_files"]} >= {"broken.mp4", "cut.mp4"}


# -- crash safety ------------------------------------------------------------------------------


def test_kill_9_mid_video_loses_that_video_only_and_resume_finishes(tmp_path: Path) -> None:
    """SIGKILL inside the encoder call that embeds the second video's last frames, then resume."""
    from . import crash_harness as harness

    harness.preload()
    folder = tmp_path / "clips"
    folder.mkdir()
    palette = [RED, GREEN, BLUE, YELLOW, MAGENTA, CYAN]
    for n in range(3):
        write_video(folder / f"v{n}.mp4", [Scene(palette[(n + i) % 6], 2) for i in range(6)])  # 6 frames each
    root = tmp_path / "indexes"
    count = tmp_path / "encoded.count"
    # --workers 1 samples two videos ahead; batches of 4 frames: calls (v0 1-4) (v0 5-6, v1 1-2) (v1 3-6) ...
    pid = harness.spawn_index(root, [folder], batch_size=4, kind="encode", n=3, count_file=count,
                              out_file=tmp_path / "run1.json")
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), harness._tail(count)
    after = harness.inspect_index(root / "default")
    assert after["verify_ok"] and after["duplicated"] == 0, after
    assert answers_with_whole_videos(root / "default") == {str(folder / "v0.mp4"): 6}
    keys = after["keys"]
    assert str(folder / "v0.mp4") in keys and sum(k.startswith(str(folder / "v0.mp4#")) for k in keys) == 6
    assert not any(k.startswith(str(folder / "v1.mp4")) or k.startswith(str(folder / "v2.mp4")) for k in keys)

    count.unlink()
    pid = harness.spawn_index(root, [folder], batch_size=4, count_file=count, out_file=tmp_path / "run2.json")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, harness._tail(count)
    resumed = json.loads((tmp_path / "run2.json").read_text())
    assert (resumed["unchanged"], resumed["added"], resumed["videos"], resumed["frames"]) == (1, 2, 2, 12)
    final = harness.inspect_index(root / "default")
    assert final["verify_ok"] and final["duplicated"] == 0 and final["ann_current"]
    assert len(final["keys"]) == 3 + 18
    assert answers_with_whole_videos(root / "default") == {str(folder / f"v{n}.mp4"): 6 for n in range(3)}


def answers_with_whole_videos(index_dir: Path) -> dict[str, int]:
    """A reader's query over the committed state: each video once, with all its frames among its moments."""
    from retrieval.search import search_vector, with_moments
    from retrieval.store import IndexStore

    store = IndexStore.open(index_dir, name=index_dir.name)
    try:
        query = np.random.default_rng(0).normal(size=store.manifest.dim)
        hits = search_vector(store, store.load_vector_index(), query, k=10)
        assert len({h.id for h in hits}) == len(hits)
        moments = with_moments(store, query / np.linalg.norm(query), hits, limit=100)
        return {h.path: len(h.moments or []) for h in moments}
    finally:
        store.close()


def test_videos_under_a_url_are_indexed_through_fsspec(colours: ColourEncoder, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    made = write_video(tmp_path / "a.mp4", [Scene(RED, 2), Scene(GREEN, 2)])
    fs = fsspec.filesystem("memory")
    with fs.open("/video-test/clip.mp4", "wb") as fh:
        fh.write(made.path.read_bytes())
    try:
        idx = retrieval.create_index("urls", encoder=colours, root=tmp_path / "root")
        report = idx.add_folder("memory://video-test")
        assert (report.added, report.videos, report.frames, report.failed) == (1, 1, 2, 0)
        hit = idx.search_text("green", k=1)[0]
        assert (hit.path, hit.kind, hit.time) == ("memory:///video-test/clip.mp4", "video", 2.0)
        idx.close()
    finally:
        fs.rm("/video-test", recursive=True)
