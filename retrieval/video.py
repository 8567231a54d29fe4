"""Video files: what they are (:func:`probe_video`) and which frames are worth embedding (:func:`sample_frames`).

Decoding goes through PyAV, whose wheels ship FFmpeg's libraries, so every
container and codec that build reads works the same on every platform.

Sampling keeps a frame

* first: the first frame that is not black or flat (a black intro is skipped);
* by time: about every ``interval`` seconds (stretched for long videos so that
  at most ``max_frames`` frames cover the whole duration, not just the start);
* by scene change: when the colours of a frame (a histogram of its 32x32
  thumbnail) differ from the previous scanned frame's by more than
  ``scene_threshold`` (motion moves colours around; a cut changes them);

never two kept frames closer than ``min_gap`` seconds, and never a frame that
is almost identical to the last kept one (a tripod shot, a paused screen).

Decoding does only what those rules need (see :mod:`retrieval.video_frames`):
keyframes, unless they are too sparse for the interval, and seeks over long
stretches that no rule needs. Pictures are scaled by libswscale straight to
the model's size, turned upright and tone mapped from HDR in
:mod:`retrieval.video_pixels`; the rules live in :mod:`retrieval.video_select`,
reading and damage in :mod:`retrieval.video_decode`, capture metadata in
:mod:`retrieval.video_meta`. :func:`frame_at` gives the picture at any time
(thumbnails of a moment, ``similar`` from a moment).

A file that cannot be opened or decoded raises :class:`VideoDecodeError`. A
truncated or damaged file yields the frames it can, then stops;
:class:`VideoFrames` then says ``truncated`` and why in ``problems``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import av
from PIL import Image

from .errors import VideoDecodeError
from .video_decode import (
    EXACT_SEEK_FORMATS,
    describe_error,
    duration_of,
    frame_seconds,
    keyframe_interval,
    open_video,
    VideoSource,
    sample_aspect,
    source_name,
    start_time,
    tag,
    video_stream,
)
from .video_files import VIDEO_EXTENSIONS, is_video_path
from .video_frames import SEEK_MIN_JUMP_S, SampledFrame, VideoFrames
from .video_meta import ContainerMetadata, GeoPoint, read_container_metadata
from .video_pixels import (
    TRC_HLG,
    TRC_PQ,
    FrameConverter,
    frame_orientation,
    orientation_from_tag,
    target_size,
)
from .video_select import FrameSampling

__all__ = [
    "SEEK_MIN_JUMP_S",
    "VIDEO_EXTENSIONS",
    "FrameSampling",
    "SampledFrame",
    "VideoDecodeError",
    "VideoFrames",
    "VideoInfo",
    "is_video_path",
    "probe_video",
    "sample_frames",
]

_PROBE_MAX_PACKETS = 2000
_FRAME_AT_MAX_PACKETS = 3000  # a seek lands at most one group of pictures early; more means a broken index


@dataclass(frozen=True)
class VideoInfo:
    """What a video file is, read from its container and its first frame.

    ``width``/``height`` are as displayed: square pixels, rotation applied.
    ``rotation`` is clockwise degrees (0, 90, 180, 270), as exiftool and the
    legacy ``rotate`` tag say it; ``mirrored`` is a left-right flip after it.
    ``hdr`` is ``"pq"`` or ``"hlg"`` for HDR transfers, else ``None``.
    ``created`` is timezone-aware when the file says its offset (Apple's tag)
    or UTC (``creation_time``), naive when the tag has no zone.
    """

    path: str
    container: str
    codec: str
    duration: float | None
    width: int
    height: int
    rotation: int
    mirrored: bool
    fps: float | None
    pixel_format: str
    bit_depth: int
    hdr: str | None
    keyframe_interval: float | None
    has_audio: bool
    created: datetime | None
    location: GeoPoint | None
    make: str | None
    model: str | None
    tags: dict[str, str] = field(default_factory=dict)
    capture: ContainerMetadata = field(default_factory=ContainerMetadata)  # what ``created`` ... ``model`` came from


# -- probe ------------------------------------------------------------------------------


def probe_video(path: VideoSource) -> VideoInfo:
    """Read a video's facts: duration, displayed size, rotation, codec, HDR, capture metadata.

    Decodes the first frame (the rotation lives in its side data, and it
    proves the file decodes). Raises :class:`VideoDecodeError` for a file
    that is not a video or whose first frame cannot be decoded.
    """
    with open_video(path) as container:
        stream = video_stream(container, path)
        first = _first_frame(container, stream, source_name(path))
        tag_orientation = orientation_from_tag(tag(stream.metadata, "rotate"))
        orientation = frame_orientation(first) or tag_orientation
        width, height = target_size(first.width, first.height, sample_aspect(stream), min_side=1 << 30)
        if orientation.swaps_axes:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate
        trc = int(first.color_trc)
        tags = {**{k: str(v) for k, v in stream.metadata.items()}, **{k: str(v) for k, v in container.metadata.items()}}
        meta = read_container_metadata(container.metadata, stream.metadata)
        return VideoInfo(
            path=source_name(path), container=container.format.name, codec=stream.codec_context.name,
            duration=duration_of(container, stream), width=width, height=height,
            rotation=orientation.rotation, mirrored=orientation.mirrored,
            fps=float(rate) if rate else None, pixel_format=first.format.name,
            bit_depth=max((c.bits for c in first.format.components), default=8),
            hdr="pq" if trc == TRC_PQ else "hlg" if trc == TRC_HLG else None,
            keyframe_interval=keyframe_interval(container, stream), has_audio=bool(container.streams.audio),
            created=meta.created, location=meta.location, make=meta.make, model=meta.model, tags=tags,
            capture=meta,
        )


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 path: str | Path) -> av.VideoFrame:
    last_error: BaseException | None = None
    try:
        for count, packet in enumerate(container.demux(stream)):
            if count > _PROBE_MAX_PACKETS:
                break
            try:
                frames = stream.decode(None if packet.size == 0 else packet)
            except av.FFmpegError as exc:
                last_error = exc
                continue
            if frames:
                return frames[0]
    except av.FFmpegError as exc:
        last_error = exc
    reason = describe_error(last_error) if last_error else "no frame could be decoded"
    raise VideoDecodeError(path, f"no frame could be decoded ({reason})" if last_error else reason)


# -- sampling ---------------------------------------------------------------------------


def sample_frames(path: VideoSource, sampling: FrameSampling | None = None) -> VideoFrames:
    """The frames of ``path`` worth embedding, in time order (see the module docstring).

    Opens the file now, so a file that is not a video raises
    :class:`VideoDecodeError` here; frames are decoded as they are iterated.
    Iterating may raise :class:`VideoDecodeError` only when not a single frame
    decodes. A video that is black or flat throughout yields its least flat
    frame, once (``all_flat`` is then true). Use it as a context manager, or
    iterate to the end, to close the file promptly.
    """
    return VideoFrames(path, sampling or FrameSampling())




def frame_at(path: VideoSource, time: float, min_side: int = 256) -> Image.Image:
    """The picture shown at ``time`` seconds (upright, 8-bit sRGB, short side about ``min_side``).

    For thumbnails and for ``similar`` from a moment: seeks to the keyframe
    before ``time`` and decodes forward to the frame on screen at that time
    (the last one at or before it; past the end, the last frame). Raises
    :class:`VideoDecodeError` when the file cannot be opened or no frame
    decodes, ``ValueError`` for a negative time.
    """
    if not time >= 0:
        raise ValueError(f"time must be >= 0 seconds, got {time}")
    with open_video(path) as container:
        stream = video_stream(container, path)
        tb, t0 = stream.time_base, start_time(stream)
        duration = duration_of(container, stream)
        if duration is not None:
            time = min(time, max(0.0, duration - frame_seconds(stream)))  # past the end: the last frame
        stream.codec_context.thread_type = "SLICE"  # one picture wanted: frame threads would only delay it
        converter = FrameConverter(min_side, sample_aspect(stream),
                                   orientation_from_tag(tag(stream.metadata, "rotate")))
        # Without a sample index or cues (MPEG-TS, AVI) a seek may land after its target: aim earlier.
        target = time if container.format.name.startswith(EXACT_SEEK_FORMATS) else max(0.0, time - 3.0)
        try:
            container.seek(int((target + t0) / tb), stream=stream, backward=True, any_frame=False)
        except av.FFmpegError:
            pass  # no way to seek: read on from the start
        shown: av.VideoFrame | None = None
        epsilon = min(1e-3, frame_seconds(stream) / 4)  # timestamps are exact; this absorbs float rounding
        try:
            for count, packet in enumerate(container.demux(stream)):
                if count > _FRAME_AT_MAX_PACKETS:
                    break
                try:
                    frames = stream.decode(None if packet.size == 0 else packet)
                except av.FFmpegError:
                    continue
                for frame in frames:
                    if frame.pts is None or frame.is_corrupt:
                        continue
                    if float(frame.pts * tb) - t0 > time + epsilon:
                        return converter.image(shown or frame)
                    shown = frame
        except av.FFmpegError:
            pass  # the data breaks off: the last frame read is the best there is
        if shown is None:
            raise VideoDecodeError(source_name(path), f"no frame could be decoded near {time:.2f} s")
        return converter.image(shown)
