"""Test videos made with PyAV itself: coloured scenes that change at known times.

Every video is a list of :class:`Scene` (a colour, a length, a pattern); the
factory encodes it with any encoder of PyAV's bundled FFmpeg into any
container, optionally with rotation metadata (the pictures given are what a
viewer should see), 10-bit HDR (PQ or HLG) signals, container tags, a chosen
keyframe spacing, or a file cut short. Sizes are tiny (160x90, 10 fps) so a
test makes and decodes a video in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

Pattern = Literal["checker", "stripes", "moving", "flat", "corner"]

RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 210, 30)
MAGENTA, CYAN, BLACK, WHITE = (210, 40, 200), (40, 210, 220), (0, 0, 0), (255, 255, 255)


@dataclass(frozen=True)
class Scene:
    """``seconds`` of one colour. Patterns mix the colour with a darker shade of itself
    (so the picture is not flat and its mean hue is the colour); ``moving`` shifts each
    frame; ``corner`` adds a white block in the top-left quarter, to see orientation."""

    colour: tuple[int, int, int]
    seconds: float
    pattern: Pattern = "checker"


@dataclass(frozen=True)
class MadeVideo:
    """A written test video and what is in it, as the viewer sees it."""

    path: Path
    scenes: tuple[Scene, ...]
    fps: int
    size: tuple[int, int]  # displayed (width, height)

    @property
    def starts(self) -> tuple[float, ...]:
        """Each scene's start time in seconds (whole frames, as encoded)."""
        out, frames = [], 0
        for scene in self.scenes:
            out.append(frames / self.fps)
            frames += _frame_count(scene, self.fps)
        return tuple(out)

    @property
    def duration(self) -> float:
        return sum(_frame_count(s, self.fps) for s in self.scenes) / self.fps

    def scene_at(self, t: float) -> int:
        """Index of the scene shown at time ``t``."""
        index = 0
        for i, start in enumerate(self.starts):
            if t + 1e-6 >= start:
                index = i
        return index


def _frame_count(scene: Scene, fps: int) -> int:
    return max(1, round(scene.seconds * fps))


def scene_picture(scene: Scene, index: int, size: tuple[int, int]) -> np.ndarray:
    """Frame ``index`` of ``scene`` as an (H, W, 3) uint8 array, as displayed."""
    width, height = size
    colour = np.array(scene.colour, dtype=np.float32)
    shade = colour * 0.55
    ys, xs = np.mgrid[0:height, 0:width]
    if scene.pattern == "flat":
        mask = np.zeros((height, width), dtype=bool)
    elif scene.pattern == "stripes":
        mask = (xs // 8) % 2 == 1
    elif scene.pattern == "moving":
        mask = ((xs + 3 * index) // 12) % 2 == 1
    else:  # checker and corner
        mask = ((xs // 10) + (ys // 10)) % 2 == 1
    out = np.where(mask[..., None], shade, colour)
    if scene.pattern == "corner":
        out[: height // 2, : width // 2] = 255.0
    return out.astype(np.uint8)


def encoder_available(name: str) -> bool:
    """True when PyAV's FFmpeg can encode with ``name``."""
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - unknown names raise several FFmpeg error types
        return False
    return True


# (suffix, muxer, encoder, pixel format): containers and codecs phones, cameras and editors write.
CONTAINER_CODECS: tuple[tuple[str, str, str, str], ...] = (
    (".mp4", "mp4", "libx264", "yuv420p"),
    (".mov", "mov", "libx265", "yuv420p"),
    (".m4v", "ipod", "libx264", "yuv420p"),
    (".mkv", "matroska", "libx264", "yuv420p"),
    (".mkv", "matroska", "libsvtav1", "yuv420p"),
    (".webm", "webm", "libvpx-vp9", "yuv420p"),
    (".webm", "webm", "libvpx", "yuv420p"),
    (".avi", "avi", "mpeg4", "yuv420p"),
    (".avi", "avi", "mjpeg", "yuvj420p"),
    (".3gp", "3gp", "mpeg4", "yuv420p"),
    (".mts", "mpegts", "libx264", "yuv420p"),
    (".m2ts", "mpegts", "mpeg2video", "yuv420p"),
    (".mpg", "mpeg", "mpeg2video", "yuv420p"),
    (".wmv", "asf", "wmv2", "yuv420p"),
    (".flv", "flv", "flv", "yuv420p"),
)

_QUIET = {"libx265": {"x265-params": "log-level=none"}, "libsvtav1": {"svtav1-params": "log-level=0"}}
# Muxers that accept only standard frame rates for these codecs.
_STANDARD_RATE = {"mpeg2video": 25}


def write_video(
    path: Path,
    scenes: list[Scene] | tuple[Scene, ...],
    *,
    size: tuple[int, int] = (160, 90),
    fps: int = 10,
    encoder: str = "libx264",
    pix_fmt: str = "yuv420p",
    muxer: str | None = None,
    rotation: int = 0,
    hflip: bool = False,
    gop: int | None = None,
    scenecut: bool = True,
    hdr: Literal["pq", "hlg"] | None = None,
    tags: dict[str, str] | None = None,
    stream_tags: dict[str, str] | None = None,
    sar: Fraction | None = None,
    faststart: bool = False,
) -> MadeVideo:
    """Encode ``scenes`` into ``path`` and describe the result.

    ``size`` is the displayed size; with ``rotation`` (clockwise degrees a
    player turns the stored picture, as a phone records portrait) the frames
    are stored turned the other way and a display matrix says how to undo it.
    ``gop`` is the keyframe spacing in frames (default: one second);
    ``scenecut=False`` stops x264 from adding keyframes at cuts. ``hdr``
    stores 10-bit BT.2020 PQ or HLG signals whose SDR rendering is the
    scene colours. ``sar`` stores anamorphic pixels (the stored width is
    the displayed width divided by it).
    """
    if encoder in _STANDARD_RATE:
        fps = _STANDARD_RATE[encoder]
    flags = ["faststart"] if faststart else []
    if any(key.startswith("com.apple.") for key in tags or {}):
        flags.append("use_metadata_tags")  # Apple's keys go in an mdta box, as an iPhone writes them
    options = {"movflags": "+".join(flags)} if flags else {}
    width, height = size
    stored_w, stored_h = (height, width) if rotation in (90, 270) else (width, height)
    if sar is not None:
        stored_w = round(stored_w / sar)
    with av.open(str(path), "w", format=muxer, options=options) as container:
        for key, value in (tags or {}).items():
            container.metadata[key] = value
        encoder_options = dict(_QUIET.get(encoder, {}))
        if encoder == "libx264" and not scenecut:
            encoder_options["x264-params"] = "scenecut=0"
        stream = container.add_stream(encoder, rate=fps, options=encoder_options)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, pix_fmt
        stream.gop_size = gop if gop is not None else fps
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for key, value in (stream_tags or {}).items():
            stream.metadata[key] = value
        if hdr is not None:
            ctx = stream.codec_context
            ctx.color_primaries, ctx.colorspace, ctx.color_range = 9, 9, 1  # BT.2020, BT.2020 NCL, limited
            ctx.color_trc = 16 if hdr == "pq" else 18
        if rotation or hflip:
            # PyAV takes counter-clockwise degrees; ours say how a player turns the picture (clockwise).
            stream.set_display_rotation(-rotation, hflip=hflip)
        for scene in scenes:
            for i in range(_frame_count(scene, fps)):
                picture = scene_picture(scene, i, size)
                if hflip:
                    picture = picture[:, ::-1]
                stored = np.ascontiguousarray(np.rot90(picture, k=rotation // 90))  # undone by the display matrix
                if sar is not None:
                    stored = _squeeze(stored, stored_w)
                frame = _frame(stored, pix_fmt, hdr)
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return MadeVideo(Path(path), tuple(scenes), fps, size)


def _squeeze(picture: np.ndarray, width: int) -> np.ndarray:
    """Resample columns to ``width`` (nearest), as an anamorphic camera stores them."""
    cols = np.minimum((np.arange(width) * picture.shape[1] / width).astype(int), picture.shape[1] - 1)
    return np.ascontiguousarray(picture[:, cols])


def _frame(rgb: np.ndarray, pix_fmt: str, hdr: str | None) -> av.VideoFrame:
    if hdr is None:
        return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    signal = sdr_to_hdr_signal(rgb, hdr)
    frame = av.VideoFrame.from_ndarray(signal, format="rgb48le")
    return frame.reformat(format=pix_fmt, dst_colorspace="BT2020", dst_color_range="MPEG")


_BT709_TO_BT2020 = np.array([
    [0.6274, 0.3293, 0.0433],
    [0.0691, 0.9195, 0.0114],
    [0.0164, 0.0880, 0.8956],
])


def sdr_to_hdr_signal(rgb: np.ndarray, hdr: str) -> np.ndarray:
    """8-bit sRGB to 16-bit BT.2020 PQ/HLG signal, SDR white at HDR reference white (203 nits).

    Written from the standards (ST 2084, BT.2100, BT.2408) independently of the decoder's tone mapping.
    """
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    nits = (linear @ _BT709_TO_BT2020.T) * 203.0
    if hdr == "pq":
        m1, m2 = 2610 / 16384, 2523 / 4096 * 128
        c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
        y = np.power(np.clip(nits / 10000.0, 0, 1), m1)
        signal = np.power((c1 + c2 * y) / (1 + c3 * y), m2)
    else:
        # Inverse of the BT.2100 OOTF for a 1000-nit display (system gamma 1.2), then the HLG OETF.
        luma = np.maximum(nits @ np.array([0.2627, 0.6780, 0.0593]), 1e-9)[..., None]
        scene_luma = np.power(luma / 1000.0, 1 / 1.2)
        scene = nits / (1000.0 * np.power(scene_luma, 0.2))
        a, b, cc = 0.17883277, 0.28466892, 0.55991073
        signal = np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + cc)
    return np.clip(np.rint(signal * 65535), 0, 65535).astype(np.uint16)


def truncate_copy(source: Path, target: Path, keep: float) -> Path:
    """Write the first ``keep`` fraction of ``source``'s bytes to ``target``, as an interrupted copy does."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An AAC file in an MP4 container: a file with a video suffix but no picture."""
    rate = 16000
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        for i in range(int(seconds * rate / 1024)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def mean_colour(image, box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """Mean RGB of a PIL image over a box given in fractions of its size."""
    arr = np.asarray(image, dtype=np.float32)
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = box
    part = arr[int(y0 * h): max(int(y1 * h), int(y0 * h) + 1), int(x0 * w): max(int(x1 * w), int(x0 * w) + 1)]
    return part.reshape(-1, 3).mean(axis=0)


def nearest_colour(image, palette: list[tuple[int, int, int]]) -> int:
    """Index of the palette colour whose hue the image's mean colour matches best.

    Patterned scenes average to between the colour and its shade, so the
    comparison is on normalised colour (direction), not brightness.
    """
    mean = mean_colour(image)
    mean = mean / (np.linalg.norm(mean) + 1e-9)
    scores = [float(mean @ (np.array(c) / (np.linalg.norm(c) + 1e-9))) for c in palette]
    return int(np.argmax(scores))
