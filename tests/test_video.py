"""Video probing and frame sampling on videos the suite makes itself (tests/video_factory.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from retrieval.errors import MMSearchError
from retrieval.video import (
    VIDEO_EXTENSIONS,
    FrameSampling,
    VideoDecodeError,
    frame_at,
    is_video_path,
    probe_video,
    sample_frames,
)
from retrieval.video_meta import (
    GeoPoint,
    parse_capture_time,
    parse_iso6709,
    read_container_metadata,
)
from retrieval.video_pixels import (
    Orientation,
    orientation_from_matrix,
    orientation_from_tag,
)
from tests.video_factory import (
    BLACK,
    BLUE,
    CONTAINER_CODECS,
    CYAN,
    GREEN,
    MAGENTA,
    RED,
    YELLOW,
    MadeVideo,
    Scene,
    encoder_available,
    mean_colour,
    nearest_colour,
    sdr_to_hdr_signal,
    truncate_copy,
    write_audio_only,
    write_video,
)

PALETTE = [RED, GREEN, BLUE, YELLOW, MAGENTA, CYAN]
STRATEGIES = ["auto", "sequential", "keyframes", "seek"]


def _four_scenes(path: Path, **kwargs) -> MadeVideo:
    """Red 0-3 s, green 3-5.5 s, blue 5.5-7 s, yellow 7-10 s; every scene moves."""
    scenes = [Scene(RED, 3, "moving"), Scene(GREEN, 2.5, "moving"), Scene(BLUE, 1.5, "moving"),
              Scene(YELLOW, 3, "moving")]
    return write_video(path, scenes, **kwargs)


def _colours(frames) -> list[tuple[float, int, str]]:
    return [(f.time, nearest_colour(f.image, PALETTE), f.reason) for f in frames]


def _assert_scenes_found(video: MadeVideo, found: list[tuple[float, int, str]], tolerance: float) -> None:
    """Every kept frame shows its scene's colour; every scene is found within ``tolerance`` of its start."""
    colour_of = [PALETTE.index(s.colour) for s in video.scenes]
    for t, colour, _ in found:
        assert colour == colour_of[video.scene_at(t)], (t, colour, found)
    for start, colour in zip(video.starts, colour_of):
        first = min((t for t, c, _ in found if c == colour), default=None)
        assert first is not None and start - 1e-6 <= first <= start + tolerance, (start, colour, found)


# -- scenes, times, strategies ------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_scene_is_found_at_its_time_within_one_interval(tmp_path: Path, strategy: str) -> None:
    video = _four_scenes(tmp_path / "scenes.mp4")
    sampling = FrameSampling(interval=1.0, strategy=strategy)
    frames = sample_frames(video.path, sampling)
    found = _colours(frames)
    _assert_scenes_found(video, found, tolerance=sampling.interval)
    assert found[0][2] == "first" and found[0][0] == 0.0
    assert {"interval", "scene"} <= {reason for _, _, reason in found}
    assert not frames.truncated and frames.problems == []


def test_keyframe_strategies_decode_far_fewer_frames_than_sequential(tmp_path: Path) -> None:
    video = _four_scenes(tmp_path / "scenes.mp4")
    counts = {}
    for strategy in ("sequential", "keyframes"):
        frames = sample_frames(video.path, FrameSampling(interval=2.0, strategy=strategy))
        list(frames)
        counts[strategy] = frames.decoded_frames
    assert counts["sequential"] == 100  # 10 s at 10 fps: every frame
    assert counts["keyframes"] <= 15  # about one keyframe a second


def test_auto_seeks_over_long_stretches_and_still_spreads_frames(tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.mp4", [Scene(RED, 60, "moving"), Scene(GREEN, 60, "moving")])
    sampling = FrameSampling(max_frames=8)
    frames = sample_frames(video.path, sampling)
    found = _colours(frames)
    assert frames.strategy == "seek"
    assert len(found) == 8
    times = [t for t, _, _ in found]
    # Spread over the whole video (a frame every 15 s), not bunched at the start.
    assert times[-1] >= 100.0
    assert all(b - a >= 10.0 for a, b in pairwise(times)), times
    assert frames.decoded_frames < 40  # 1200 frames, 120 keyframes: only those near the targets
    _assert_scenes_found(video, found, tolerance=15.0 + 1.0)


def test_long_keyframe_gaps_decode_inside_the_group(tmp_path: Path) -> None:
    # One keyframe every 10 s (x264's default): interval frames need the frames between keyframes.
    video = write_video(tmp_path / "longgop.mkv", [Scene(RED, 10, "moving"), Scene(GREEN, 10, "moving")],
                        muxer="matroska", gop=100, scenecut=False)
    frames = sample_frames(video.path, FrameSampling(interval=2.0, strategy="keyframes"))
    times = [f.time for f in frames]
    assert len(times) == 10
    assert all(1.5 <= b - a <= 2.5 for a, b in pairwise(times)), times


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_black_intro_is_skipped_and_the_real_scenes_come_out(tmp_path: Path, strategy: str) -> None:
    video = write_video(tmp_path / "intro.mp4", [Scene(BLACK, 2.5, "flat"), Scene(MAGENTA, 3, "moving"),
                                                 Scene(CYAN, 3, "moving")])
    found = _colours(sample_frames(video.path, FrameSampling(interval=1.0, strategy=strategy)))
    assert found[0][2] == "first"
    assert 2.5 <= found[0][0] <= 3.5
    for t, colour, _ in found:
        assert colour == PALETTE.index(video.scenes[video.scene_at(t)].colour)
    assert {c for _, c, _ in found} == {PALETTE.index(MAGENTA), PALETTE.index(CYAN)}


def test_all_black_video_yields_one_frame_and_says_so(tmp_path: Path) -> None:
    video = write_video(tmp_path / "black.mp4", [Scene(BLACK, 3, "flat")])
    frames = sample_frames(video.path)
    kept = list(frames)
    assert len(kept) == 1 and kept[0].reason == "first"
    assert frames.all_flat
    assert mean_colour(kept[0].image).max() < 8


def test_still_frames_are_not_kept_twice(tmp_path: Path) -> None:
    video = write_video(tmp_path / "still.mp4", [Scene(BLUE, 8, "checker"), Scene(RED, 4, "moving")])
    found = _colours(sample_frames(video.path, FrameSampling(interval=1.0)))
    blue = [t for t, c, _ in found if c == PALETTE.index(BLUE)]
    red = [t for t, c, _ in found if c == PALETTE.index(RED)]
    assert blue == [0.0]  # 8 s of the same picture: one frame
    assert len(red) >= 3  # a moving scene is sampled by time


def test_cap_and_min_gap_hold_on_rapid_cuts(tmp_path: Path) -> None:
    # A cut every 0.3 s: scene changes everywhere, but kept frames stay min_gap apart and under the cap.
    scenes = [Scene(PALETTE[i % 6], 0.3, "checker") for i in range(40)]
    video = write_video(tmp_path / "cuts.mp4", scenes, gop=3)
    for sampling in (FrameSampling(interval=2.0, min_gap=1.0, max_frames=100, strategy="sequential"),
                     FrameSampling(interval=0.5, min_gap=0.5, max_frames=5)):
        times = [f.time for f in sample_frames(video.path, sampling)]
        assert len(times) <= sampling.max_frames
        assert all(b - a >= sampling.min_gap - 1e-6 for a, b in pairwise(times)), times
    assert times[-1] >= 0.6 * video.duration  # the cap is spread over the video


def test_sampling_is_deterministic(tmp_path: Path) -> None:
    video = _four_scenes(tmp_path / "scenes.mkv", muxer="matroska")
    runs = [[(f.time, f.reason, f.image.tobytes()) for f in sample_frames(video.path)] for _ in range(2)]
    assert runs[0] == runs[1]


# -- pictures: size, orientation, colour ---------------------------------------------------


def test_frames_are_downscaled_by_libswscale_to_min_side(tmp_path: Path) -> None:
    video = write_video(tmp_path / "big.mp4", [Scene(GREEN, 1, "corner")], size=(640, 360))
    image = next(iter(sample_frames(video.path, FrameSampling(min_side=90))))
    assert image.image.size == (160, 90)
    assert image.image.mode == "RGB"
    small = write_video(tmp_path / "small.mp4", [Scene(GREEN, 1, "corner")], size=(160, 90))
    assert next(iter(sample_frames(small.path, FrameSampling(min_side=256)))).image.size == (160, 90)  # no upscale


def test_anamorphic_pixels_are_made_square(tmp_path: Path) -> None:
    video = write_video(tmp_path / "anamorphic.mp4", [Scene(BLUE, 1, "corner")], size=(160, 90), sar=Fraction(4, 3))
    info = probe_video(video.path)
    assert (info.width, info.height) == (160, 90)
    assert next(iter(sample_frames(video.path))).image.size == (160, 90)


def _quadrant_brightness(image: Image.Image) -> list[float]:
    """Mean brightness of the top-left, top-right, bottom-left, bottom-right quarters."""
    return [float(mean_colour(image, box).mean()) for box in
            ((0, 0, .5, .5), (.5, 0, 1, .5), (0, .5, .5, 1), (.5, .5, 1, 1))]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotation_metadata_is_read_back_and_applied(tmp_path: Path, rotation: int) -> None:
    # A portrait phone video: stored turned, a display matrix says how to show it upright.
    video = write_video(tmp_path / f"rot{rotation}.mov", [Scene(BLUE, 1, "corner")], size=(90, 160),
                        rotation=rotation)
    info = probe_video(video.path)
    assert info.rotation == rotation and not info.mirrored
    assert (info.width, info.height) == (90, 160)
    with av.open(str(video.path)) as container:  # PyAV's own reading of the matrix, counter-clockwise
        assert (-next(container.decode(video=0)).rotation) % 360 == rotation
    image = next(iter(sample_frames(video.path))).image
    assert image.size == (90, 160)  # portrait comes out portrait
    quadrants = _quadrant_brightness(image)
    assert quadrants[0] > 240 and max(quadrants[1:]) < 120, quadrants  # the white block is top-left


def test_mirror_in_the_display_matrix_is_applied(tmp_path: Path) -> None:
    video = write_video(tmp_path / "mirror.mp4", [Scene(BLUE, 1, "corner")], hflip=True)
    info = probe_video(video.path)
    assert info.mirrored and info.rotation == 0
    quadrants = _quadrant_brightness(next(iter(sample_frames(video.path))).image)
    assert quadrants[0] > 240 and max(quadrants[1:]) < 120, quadrants


def test_legacy_rotate_tag_is_read() -> None:
    assert orientation_from_tag("90") == Orientation(90)
    assert orientation_from_tag("-90") == Orientation(270)
    assert orientation_from_tag("45") == Orientation(0)
    assert orientation_from_tag("garbage") == Orientation(0)


def test_legacy_rotate_tag_in_a_file_is_used_without_a_display_matrix(tmp_path: Path) -> None:
    # Matroska keeps a "rotate" tag as written; FFmpeg makes no display matrix of it.
    video = write_video(tmp_path / "tag.mkv", [Scene(BLUE, 1, "corner")], size=(160, 90), muxer="matroska",
                        stream_tags={"rotate": "90"})
    info = probe_video(video.path)
    assert info.rotation == 90 and (info.width, info.height) == (90, 160)
    assert next(iter(sample_frames(video.path))).image.size == (90, 160)


def test_display_matrix_orientations() -> None:
    def matrix(a: int, b: int, c: int, d: int) -> bytes:
        return np.array([a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30], dtype=np.int32).tobytes()

    assert orientation_from_matrix(matrix(1, 0, 0, 1)) == Orientation(0)
    assert orientation_from_matrix(matrix(0, 1, -1, 0)) == Orientation(90)
    assert orientation_from_matrix(matrix(-1, 0, 0, -1)) == Orientation(180)
    assert orientation_from_matrix(matrix(0, -1, 1, 0)) == Orientation(270)
    assert orientation_from_matrix(matrix(-1, 0, 0, 1)) == Orientation(0, True)
    assert orientation_from_matrix(matrix(0, 0, 0, 0)) is None
    assert orientation_from_matrix(b"short") is None
    marker = np.zeros((2, 3, 3), dtype=np.uint8)
    marker[0, 0] = 255  # top-left
    turned = Orientation(90).apply(marker)  # clockwise: top-left goes to top-right
    assert turned.shape == (3, 2, 3) and turned[0, 1, 0] == 255


@pytest.mark.parametrize("hdr", ["pq", "hlg"])
def test_ten_bit_hdr_comes_out_as_sane_8_bit_colours(tmp_path: Path, hdr: str) -> None:
    encoder = "libx265" if encoder_available("libx265") else "libx264"
    grey = (128, 128, 128)
    video = write_video(tmp_path / f"{hdr}.mp4", [Scene(RED, 1, "checker"), Scene(grey, 1, "checker"),
                                                  Scene(GREEN, 1, "checker")],
                        encoder=encoder, pix_fmt="yuv420p10le", hdr=hdr)
    info = probe_video(video.path)
    assert (info.bit_depth, info.hdr, info.pixel_format) == (10, hdr, "yuv420p10le")
    sdr = write_video(tmp_path / "sdr.mp4", list(video.scenes))
    hdr_frames = list(sample_frames(video.path))
    sdr_frames = list(sample_frames(sdr.path))
    assert [f.time for f in hdr_frames] == [f.time for f in sdr_frames] == [0.0, 1.0, 2.0]
    for h, s in zip(hdr_frames, sdr_frames):
        # Mid-tones below the roll-off knee keep their SDR values (codec noise aside).
        difference = np.abs(mean_colour(h.image) - mean_colour(s.image)).max()
        assert difference < 6, (mean_colour(h.image), mean_colour(s.image))


def test_pq_tone_mapping_agrees_with_libswscale_below_the_knee_and_keeps_highlight_hue() -> None:
    from retrieval.video_pixels import TRC_PQ, tone_map_to_srgb

    # sRGB mid-tones, and an HDR highlight: pure red at 1000 nits (five times reference white).
    rgb = np.array([[[128, 128, 128], [60, 120, 200], [200, 80, 40]]], dtype=np.uint8)
    signal = sdr_to_hdr_signal(rgb, "pq")
    ours = tone_map_to_srgb(signal, TRC_PQ)
    frame = av.VideoFrame.from_ndarray(signal, format="rgb48le")
    frame.color_trc, frame.color_primaries = TRC_PQ, 9
    reference = frame.reformat(format="rgb24", dst_color_trc=13, dst_color_primaries=1).to_ndarray()
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 3, (ours, reference)
    red = np.zeros((1, 1, 3), dtype=np.float64)
    red[..., 0] = 1000.0
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (red / 10000.0) ** m1
    highlight = np.rint(((c1 + c2 * y) / (1 + c3 * y)) ** m2 * 65535).astype(np.uint16)
    r, g, b = tone_map_to_srgb(highlight, TRC_PQ)[0, 0]
    assert r > 240 and g < 40 and b < 40  # still red, not clipped to white


# -- containers and codecs --------------------------------------------------------------------


@pytest.mark.parametrize("suffix,muxer,encoder,pix_fmt", CONTAINER_CODECS,
                         ids=[f"{s[1:]}-{e}" for s, _, e, _ in CONTAINER_CODECS])
def test_containers_and_codecs(tmp_path: Path, suffix: str, muxer: str, encoder: str, pix_fmt: str) -> None:
    if not encoder_available(encoder):
        pytest.skip(f"this FFmpeg build has no {encoder} encoder")
    assert suffix in VIDEO_EXTENSIONS
    video = write_video(tmp_path / f"v{suffix}", [Scene(RED, 2, "moving"), Scene(GREEN, 2, "moving"),
                                                  Scene(BLUE, 2, "moving")],
                        muxer=muxer, encoder=encoder, pix_fmt=pix_fmt)
    info = probe_video(video.path)
    assert abs((info.duration or 0) - video.duration) < 0.5
    assert (info.width, info.height) == (160, 90)
    frames = sample_frames(video.path, FrameSampling(interval=1.0))
    _assert_scenes_found(video, _colours(frames), tolerance=1.0)
    assert not frames.truncated


@pytest.mark.parametrize("suffix,muxer", [(".mp4", None), (".mts", "mpegts"), (".avi", "avi")])
def test_frame_at_shows_the_picture_on_screen_at_that_time(tmp_path: Path, suffix: str, muxer: str | None) -> None:
    video = _four_scenes(tmp_path / f"scenes{suffix}", muxer=muxer, encoder="mpeg4" if suffix == ".avi" else "libx264")
    for t in (0.0, 2.95, 3.0, 4.4, 5.5, 6.9, 7.0, 9.9, 60.0):
        colour = nearest_colour(frame_at(video.path, t, min_side=64), PALETTE)
        expected = video.scenes[video.scene_at(min(t, video.duration - 0.1))].colour
        assert colour == PALETTE.index(expected), (t, colour)
    with pytest.raises(ValueError):
        frame_at(video.path, -1.0)


def test_frame_at_is_upright(tmp_path: Path) -> None:
    video = write_video(tmp_path / "portrait.mov", [Scene(BLUE, 2, "corner")], size=(90, 160), rotation=90)
    image = frame_at(video.path, 1.0)
    assert image.size == (90, 160)
    assert _quadrant_brightness(image)[0] > 240


def test_is_video_path() -> None:
    assert is_video_path("a/b/IMG_0001.MOV") and is_video_path("clip.mts") and is_video_path("x.webm")
    assert not is_video_path("notes.ts") and not is_video_path("photo.jpg")


# -- bad files -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,muxer", [(".mp4", None), (".mkv", "matroska"), (".webm", "webm")])
def test_truncated_file_yields_what_it_can_and_says_so(tmp_path: Path, suffix: str, muxer: str | None) -> None:
    encoder = "libvpx-vp9" if suffix == ".webm" else "libx264"
    video = _four_scenes(tmp_path / f"full{suffix}", muxer=muxer, encoder=encoder, faststart=suffix == ".mp4")
    cut = truncate_copy(video.path, tmp_path / f"cut{suffix}", keep=0.5)
    frames = sample_frames(cut, FrameSampling(interval=1.0))
    found = _colours(frames)
    assert frames.truncated
    assert any("truncated" in p or "breaks off" in p for p in frames.problems), frames.problems
    assert found and found[0][0] == 0.0
    assert max(t for t, _, _ in found) < video.duration * 0.75
    for t, colour, _ in found:
        assert colour == PALETTE.index(video.scenes[video.scene_at(t)].colour)
    full = sample_frames(video.path, FrameSampling(interval=1.0))
    list(full)
    assert not full.truncated


def test_mp4_cut_before_its_index_is_a_typed_error(tmp_path: Path) -> None:
    # Without faststart the index (moov box) is written last: a cut file has none.
    video = _four_scenes(tmp_path / "full.mp4")
    cut = truncate_copy(video.path, tmp_path / "cut.mp4", keep=0.5)
    with pytest.raises(VideoDecodeError, match="incomplete MP4/MOV") as info:
        sample_frames(cut)
    assert isinstance(info.value, MMSearchError) and info.value.path == str(cut)


@pytest.mark.parametrize("kind", ["text", "empty", "audio", "missing", "directory"])
def test_non_video_is_a_typed_error_with_a_reason(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing.mp4"
    if kind == "text":
        path.write_text("not a video at all\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "audio":
        write_audio_only(path)
    elif kind == "directory":
        path.mkdir()
    expected = {"text": "not a video", "empty": "not a video", "audio": "audio only", "missing": "file not found",
                "directory": "is a directory"}[kind]
    for call in (probe_video, sample_frames):
        with pytest.raises(VideoDecodeError) as info:
            call(path)
        assert expected in info.value.reason
        assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_damaged_data_in_the_middle_never_shows_wrong_pictures(tmp_path: Path, seed: int) -> None:
    video = _four_scenes(tmp_path / "ok.mkv", muxer="matroska")
    data = bytearray(video.path.read_bytes())
    rng = np.random.default_rng(seed)
    middle = len(data) // 2
    data[middle:middle + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(bytes(data))
    for strategy in ("sequential", "keyframes"):
        found = _colours(sample_frames(damaged, FrameSampling(interval=1.0, strategy=strategy)))
        assert found[0][:2] == (0.0, PALETTE.index(RED))
        times = [t for t, _, _ in found]
        assert times == sorted(times)
        for t, colour, _ in found:  # frames decoded from broken references would show the wrong scene
            assert colour == PALETTE.index(video.scenes[video.scene_at(t)].colour), (t, colour, found)


def test_decode_budget_stops_cleanly(tmp_path: Path) -> None:
    video = _four_scenes(tmp_path / "scenes.mp4")
    frames = sample_frames(video.path, FrameSampling(max_decode_seconds=1e-9, strategy="sequential"))
    with pytest.raises(VideoDecodeError, match="decode budget"):
        list(frames)  # nothing decoded within the budget: no frame at all is an error, said plainly


def test_sampling_arguments_are_checked() -> None:
    for bad in ({"interval": 0}, {"max_frames": 0}, {"strategy": "fast"}, {"scene_threshold": 2.0},
                {"min_side": 0}, {"min_gap": -1}):
        with pytest.raises(ValueError):
            FrameSampling(**bad)


# -- container metadata -----------------------------------------------------------------------


def test_probe_reads_capture_time_place_and_camera(tmp_path: Path) -> None:
    tags = {
        "creation_time": "2023-05-01T12:34:56.000000Z",
        "com.apple.quicktime.creationdate": "2023-05-01T14:34:56+0200",
        "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
        "com.apple.quicktime.make": "Apple",
        "com.apple.quicktime.model": "iPhone 15",
    }
    video = write_video(tmp_path / "phone.mov", [Scene(RED, 1, "moving")], muxer="mov", tags=tags)
    info = probe_video(video.path)
    assert info.created == datetime(2023, 5, 1, 14, 34, 56, tzinfo=timezone(timedelta(hours=2)))
    assert info.location == GeoPoint(48.8584, 2.2945, 35.0)
    assert (info.make, info.model) == ("Apple", "iPhone 15")
    assert info.codec == "h264" and info.fps == 10.0 and info.hdr is None and info.bit_depth == 8


def test_probe_reads_plain_mp4_location_tag(tmp_path: Path) -> None:
    tags = {"creation_time": "2021-07-04T18:00:00.000000Z", "location": "-33.8568+151.2153/"}
    video = write_video(tmp_path / "android.mp4", [Scene(RED, 1, "moving")], tags=tags)
    info = probe_video(video.path)
    assert info.created == datetime(2021, 7, 4, 18, 0, tzinfo=timezone.utc)
    assert info.location == GeoPoint(-33.8568, 151.2153)


@pytest.mark.parametrize("text,expected", [
    ("+48.8584+002.2945/", GeoPoint(48.8584, 2.2945)),
    ("+48.8584+002.2945+035.000/", GeoPoint(48.8584, 2.2945, 35.0)),
    ("-33.8568+151.2153-012.5/", GeoPoint(-33.8568, 151.2153, -12.5)),
    ("+4851.504+00217.67/", GeoPoint(48 + 51.504 / 60, 2 + 17.67 / 60)),  # degrees and minutes
    ("+485130.2+0021740.2/", GeoPoint(48 + 51 / 60 + 30.2 / 3600, 2 + 17 / 60 + 40.2 / 3600)),
    ("+40.7484-073.9857CRSWGS_84/", GeoPoint(40.7484, -73.9857)),
])
def test_iso6709(text: str, expected: GeoPoint) -> None:
    got = parse_iso6709(text)
    assert got is not None
    assert got.latitude == pytest.approx(expected.latitude) and got.longitude == pytest.approx(expected.longitude)
    assert got.altitude == expected.altitude


@pytest.mark.parametrize("text", ["", "garbage", "+91.0000+000.0000/", "+00.0000+000.0000/", "+48.8584/",
                                  "+4875.000+00217.67/"])
def test_iso6709_rejects_what_is_not_a_place(text: str) -> None:
    assert parse_iso6709(text) is None


def test_capture_time_forms() -> None:
    assert parse_capture_time("2023:05:01 12:34:56") == datetime(2023, 5, 1, 12, 34, 56)
    assert parse_capture_time("2023-05-01T12:34:56.5Z") == datetime(2023, 5, 1, 12, 34, 56, 500000,
                                                                      tzinfo=timezone.utc)
    assert parse_capture_time("2023-05-01T12:34:56-05:00").utcoffset() == timedelta(hours=-5)
    assert parse_capture_time("1904-01-01T00:00:00.000000Z") is None  # QuickTime's "unset"
    assert parse_capture_time("1970-01-01T00:00:00Z") is None
    assert parse_capture_time("2023-13-45T00:00:00Z") is None
    assert parse_capture_time("yesterday") is None


def test_metadata_keys_any_case_and_language_suffix() -> None:
    meta = read_container_metadata({"LOCATION-eng": "+10.0000+020.0000/", "Make": "  Canon\x00 "},
                                   {"com.android.model": "Pixel 8"})
    assert meta.location == GeoPoint(10.0, 20.0)
    assert (meta.make, meta.model) == ("Canon", "Pixel 8")
    assert meta.created is None
