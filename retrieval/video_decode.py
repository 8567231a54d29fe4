"""Opening a video and reading one stream's packets robustly: damage, truncation, seeking, timestamps.

Opening turns every way a file can fail (missing, not a video, audio only,
an MP4 cut before its index, a codec this FFmpeg build lacks) into a
:class:`VideoDecodeError` with one line for the person reading it.

FFmpeg's demuxers stop at the first damaged Matroska cluster, at the end of
a cut-off file, or on a read error; PyAV raises or simply ends.
:class:`PacketReader` turns those into data: the packets that could be read
(with times in seconds from the start of the video), up to three jumps over
damaged data when the container can seek, holes in the timeline flagged,
and at the end a verdict, ``truncated``, with one line per problem.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterator
from fractions import Fraction
from itertools import pairwise
from typing import Any, BinaryIO, Union

import av
from av.stream import Disposition

from .errors import VideoDecodeError, reading_problem  # VideoDecodeError raised here; defined with the other typed errors

__all__ = [
    "EXACT_SEEK_FORMATS",
    "PacketReader",
    "describe_error",
    "duration_of",
    "frame_seconds",
    "keyframe_interval",
    "VideoSource",
    "open_video",
    "sample_aspect",
    "source_name",
    "start_time",
    "tag",
    "video_stream",
]

# Formats whose seeks land on the keyframe at or before the target (a sample index or cues).
EXACT_SEEK_FORMATS = ("mov", "mp4", "matroska", "webm")
_INDEX_SAMPLE = 4000  # keyframe spacing is estimated from the first entries of a sample index
_MAX_RESYNCS = 3
_RESYNC_STEP_S = 1.0


VideoSource = Union[str, "os.PathLike[str]", BinaryIO]  # a path, or a seekable binary file (an fsspec or checked file)


def source_name(source: VideoSource) -> str:
    """How messages name a video source: its path, or the name of a file object."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None) or getattr(source, "path", None)
    return name if isinstance(name, str) else "<video stream>"


def open_video(source: VideoSource) -> av.container.InputContainer:
    """Open a video for reading with PyAV (a path or a seekable binary file); every failure is a :class:`VideoDecodeError`."""
    try:
        if isinstance(source, (str, os.PathLike)):
            target: Any = os.fspath(source)
        else:
            source.seek(0)  # FFmpeg reads from where the file stands: an earlier reader leaves it anywhere
            target = source
        return av.open(target, mode="r", metadata_errors="replace")
    except Exception as exc:  # noqa: BLE001 - PyAV raises FFmpegError, OSError and more; each becomes one reason
        if isinstance(exc, av.error.InvalidDataError) and _is_iso_media(source):
            raise VideoDecodeError(source_name(source), _INCOMPLETE_ISO) from exc
        raise VideoDecodeError(source_name(source), describe_error(exc, opening=True)) from exc


_INCOMPLETE_ISO = (
    "incomplete MP4/MOV file: its index (moov box) is missing or cut (interrupted copy or recording?)"
)


def _is_iso_media(source: VideoSource) -> bool:
    """An ISO base media file (MP4, MOV, 3GP) by its first box, whatever its name."""
    try:
        if not isinstance(source, (str, os.PathLike)):
            source.seek(0)
            head = source.read(12)
            source.seek(0)
            return head[4:8] == b"ftyp"
        with open(source, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except (OSError, ValueError):  # ValueError: a closed file object
        return False


def video_stream(container: av.container.InputContainer, source: VideoSource) -> av.video.stream.VideoStream:
    """The main picture stream: not cover art; the default one first, then the largest."""
    path = source_name(source)
    candidates = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not candidates:
        if not container.streams.audio and _is_iso_media(source):
            raise VideoDecodeError(path, _INCOMPLETE_ISO)
        kind = "audio only" if container.streams.audio else "no streams FFmpeg can read"
        raise VideoDecodeError(path, f"not a video (no video stream; {kind})")
    candidates.sort(key=lambda s: (not s.disposition & Disposition.default,
                                   -(s.codec_context.width * s.codec_context.height) if s.codec_context else 0))
    stream = candidates[0]
    if stream.codec_context is None:
        raise VideoDecodeError(path, "unsupported codec (no decoder in this FFmpeg build)")
    return stream


def tag(tags: dict[str, str], name: str) -> str | None:
    """A tag by name in any case (Matroska upper-cases them)."""
    return next((str(v) for k, v in tags.items() if k.lower() == name), None)


def start_time(stream: av.video.stream.VideoStream) -> float:
    """Seconds of the stream's first timestamp: times reported to callers count from it."""
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def duration_of(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The stream's own duration when the container records it, else the container's (may include audio)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def frame_seconds(stream: av.video.stream.VideoStream) -> float:
    """One frame's duration in seconds (1/25 s when the rate is unknown)."""
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.04


def sample_aspect(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The pixel aspect ratio (anamorphic DV/HDV store wide pictures in narrow pixels), None when square."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar and sar > 0 else None


def keyframe_interval(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Median spacing of keyframes from the container's sample index, without reading packets."""
    if not container.format.name.startswith("mov"):
        return None  # only ISO base media files carry a complete index up front
    entries = stream.index_entries
    times = [e.timestamp for e in entries[:_INDEX_SAMPLE] if e.is_keyframe]
    if len(times) < 2:
        return None
    return float(statistics.median(b - a for a, b in pairwise(times)) * stream.time_base)


def describe_error(exc: BaseException, opening: bool = False) -> str:
    """One line a user can act on, for an exception from PyAV/FFmpeg."""
    common = reading_problem(exc)
    if common:
        return common
    if isinstance(exc, av.error.InvalidDataError):
        return "not a video or damaged (no readable container)" if opening else "damaged video data"
    if isinstance(exc, av.error.DecoderNotFoundError):
        return "unsupported codec (no decoder in this FFmpeg build)"
    message = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    if len(message) > 160:
        message = message[:157] + "..."
    return f"cannot {'open' if opening else 'decode'} video: {message or type(exc).__name__}"


class PacketReader:
    """The packets of ``stream``, in file order, each with its time in seconds from the video's start.

    Iterate :meth:`packets`; when it ends early (damage, a read error, or the
    data stops before the stated duration), :meth:`resync` may jump past the
    damage and :meth:`packets` continues from there. :meth:`finish` then says
    whether the file was cut short (``truncated``); ``problems`` collects one
    line per problem.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 start: float, duration: float | None, frame_seconds: float, can_seek: bool,
                 problems: list[str]) -> None:
        self.container = container
        self.stream = stream
        self.start = start
        self.duration = duration
        self.can_seek = can_seek
        self.problems = problems
        self.truncated = False
        self.last_end = -math.inf  # end time of the latest packet with a plausible timestamp
        # The stream's own duration (MP4/MOV) is exact to the frame; a container's may include
        # an audio track a second or so longer than the picture.
        if stream.duration:
            self.margin = max(3 * frame_seconds, 0.1)
        else:
            self.margin = max(1.5, 0.02 * (duration or 0.0))
        # In a sound stream each packet starts about where the ones before it end (B-frames reorder
        # only a few frames; variable frame rates stretch durations, not gaps): a jump of more than
        # this is data that was never read.
        self.hole_s = max(1.0, 10 * frame_seconds)
        self._reach = math.inf  # the furthest time the packets read since the last jump cover
        self._error: BaseException | None = None
        self._resyncs = 0
        self._resync_from: float | None = None
        self._stalled = False

    def seek(self, target: float) -> bool:
        """Jump to the keyframe at or before ``target`` seconds; False if the container refuses.

        PyAV flushes the decoder: drain it first if its frames matter.
        """
        offset = int((target + self.start) / self.stream.time_base)
        self._reach = math.inf  # where reading resumes is not known yet: no hole to see
        try:
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError:
            return False
        return True

    def packets(self) -> Iterator[tuple[av.Packet, float | None, bool]]:
        """Packets with data (no end-of-stream markers) until the data ends or breaks off.

        Each comes with its time and whether it follows a hole in the decoding
        timeline (a demuxer that skipped damaged data resumes mid-group: what
        follows leans on frames that were never read).
        """
        tb = self.stream.time_base
        demuxer = self.container.demux(self.stream)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except av.FFmpegError as exc:
                self._error = exc
                return
            if packet.size == 0:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            t = float(ts * tb) - self.start if ts is not None else None
            if t is not None and self._resync_from is not None:
                if t <= self._resync_from:
                    self._stalled = True  # the jump landed before the damage: no way forward
                    return
                self.problems.append(f"skipped damaged data between {self._resync_from:.1f} s and {t:.1f} s")
                self._resync_from, self._error = None, None
            if t is not None and self._plausible(t):
                self.last_end = max(self.last_end, t + (float(packet.duration * tb) if packet.duration else 0.0))
            hole = False
            if t is not None:
                if self._reach < math.inf and t - self._reach > self.hole_s:
                    hole = True
                    if len(self.problems) < 8:
                        self.problems.append(f"hole in the data between {self._reach:.1f} s and {t:.1f} s (damaged?)")
                end = t + (float(packet.duration * tb) if packet.duration else 0.0)
                self._reach = end if self._reach == math.inf else max(self._reach, end)
            yield packet, t, hole

    def _plausible(self, t: float) -> bool:
        """Damaged packets can carry any timestamp: only times inside the video count as progress."""
        return t >= -1.0 and (self.duration is None or t <= self.duration + 10.0)

    def _ended_early(self) -> bool:
        return (self.duration is not None and self.last_end > -math.inf
                and self.duration - self.last_end > self.margin)

    def resync(self) -> bool:
        """After :meth:`packets` ended early, jump past the damage; False when there is nothing to do."""
        if self._stalled or not self.can_seek or self._resyncs >= _MAX_RESYNCS or not self._ended_early():
            return False
        self._resyncs += 1
        self._resync_from = self.last_end
        return self.seek(self.last_end + _RESYNC_STEP_S)

    def finish(self) -> None:
        """Settle ``truncated`` and the problems, once reading is over."""
        if self._error is not None:
            self.problems.append(f"data breaks off at {max(self.last_end, 0.0):.1f} s: {describe_error(self._error)}")
            self.truncated = True
        elif self._ended_early():
            self.problems.append(f"file ends at {self.last_end:.1f} s of its stated {self.duration:.1f} s (truncated)")
            self.truncated = True
