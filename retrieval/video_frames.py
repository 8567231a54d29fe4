"""The frame sampler: decodes what :class:`~retrieval.video_select.FrameSelector` can use, and nothing else.

By default only keyframes are decoded (phones write one every 0.5-2 s, and
editors put one at each cut); a group of pictures is decoded in full only
when the keyframes are too sparse for the interval, and over a long stretch
that no rule needs the reader seeks ahead instead of reading on. The
crossover comes from ``benchmarks/bench_video.py``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
from PIL import Image

from .errors import VideoDecodeError
from .video_decode import (
    EXACT_SEEK_FORMATS,
    PacketReader,
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
from .video_pixels import FrameConverter, orientation_from_tag
from .video_select import FrameSampling, FrameSelector, Reason

__all__ = ["SEEK_MIN_JUMP_S", "SampledFrame", "VideoFrames"]

# Seeking instead of reading on pays once the jump is this long. benchmarks/bench_video.py (640x360,
# keyframe every second, busy 2-core machine) measured the crossover between 2 s and 4 s jumps; reading
# on below it keeps the scene-change scan over every keyframe. Recheck on 1080p with the bench.
SEEK_MIN_JUMP_S = 4.0
_MAX_CONSECUTIVE_DECODE_ERRORS = 64


@dataclass(frozen=True)
class SampledFrame:
    """One kept frame: its time from the start of the video, the picture, and why it was kept."""

    time: float
    image: Image.Image
    reason: Reason



class VideoFrames(Iterator[SampledFrame]):
    """An iterator of :class:`SampledFrame` that also reports how decoding went.

    After iteration: ``truncated`` (the file ends before its stated duration,
    or its data broke off), ``problems`` (one line each: damaged packets,
    decode budget spent), ``decoded_frames``, ``strategy`` (what ``auto``
    chose), ``all_flat``, ``budget_spent``.
    """

    def __init__(self, path: VideoSource, sampling: FrameSampling | None = None) -> None:
        self.path = source_name(path)
        self.sampling = sampling or FrameSampling()
        self.truncated = False
        self.problems: list[str] = []
        self.decoded_frames = 0
        self.all_flat = False
        self.budget_spent = False  # stopped at max_decode_seconds: the rest of the video was not looked at
        self._container = open_video(path)
        try:
            self._stream = video_stream(self._container, path)
            self.duration = duration_of(self._container, self._stream)
            self._t0 = start_time(self._stream)
            self._gop = keyframe_interval(self._container, self._stream)
        except BaseException:
            self._container.close()
            raise
        self.strategy = self._choose_strategy()
        self._busy = 0.0
        self._resumed = 0.0
        self._gen = self._run()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> VideoFrames:
        return self

    def __next__(self) -> SampledFrame:
        # Only time spent here counts against max_decode_seconds, not the caller's (embedding) time.
        self._resumed = time.perf_counter()
        try:
            return next(self._gen)
        except (av.FFmpegError, ValueError, NotImplementedError, MemoryError) as exc:
            # PyAV errors outside the decoding calls that handle their own (scaling an odd pixel format).
            self.close()
            raise VideoDecodeError(self.path, describe_error(exc)) from exc
        except BaseException:  # StopIteration included: the file is released as soon as iteration ends
            self.close()
            raise
        finally:
            self._busy += time.perf_counter() - self._resumed

    def close(self) -> None:
        """Release the file (safe to call twice)."""
        self._gen.close()
        self._container.close()

    # -- planning --------------------------------------------------------------------

    def _choose_strategy(self) -> str:
        """``auto``: seek where seeks are exact, else read on; decode everything when keyframes are too sparse."""
        if self.sampling.strategy != "auto":
            return self.sampling.strategy
        interval = max(self.sampling.interval, (self.duration or 0.0) / self.sampling.max_frames)
        exact_seeks = self._container.format.name.startswith(EXACT_SEEK_FORMATS)
        if self._gop is not None and self._gop > interval and not (exact_seeks and interval >= SEEK_MIN_JUMP_S):
            return "sequential"  # nearly every group of pictures must be decoded anyway: use frame threads
        return "seek" if exact_seeks else "keyframes"

    def _seek_jump(self) -> float | None:
        """How far ahead the next needed time must be before seeking beats reading on; None: never seek."""
        if self.strategy != "seek":
            return None
        if self.sampling.strategy == "auto":
            return max(SEEK_MIN_JUMP_S, 2 * (self._gop or 0.0))
        return max(self._gop or 0.0, 1e-3)

    # -- the loop --------------------------------------------------------------------

    def _run(self) -> Iterator[SampledFrame]:
        sampling = self.sampling
        stream = self._stream
        converter = FrameConverter(sampling.min_side, sample_aspect(stream),
                                   orientation_from_tag(tag(stream.metadata, "rotate")))
        selector = FrameSelector(sampling, self.duration, 1.0 / frame_seconds(stream))
        fallback: tuple[float, float, Image.Image] | None = None  # (spread, time, image) of the least flat frame
        last_scan = -math.inf
        for frame, t, spacing in self._decoded(selector):
            if t is None or t < last_scan:
                continue  # no timestamp, or out of order after a seek: not a candidate
            if not frame.key_frame and t - last_scan < sampling.scene_step and not selector.due(t, spacing):
                continue  # between scan points: decoded only as a reference for later frames
            last_scan = t
            signature = converter.signature(frame)
            reason = selector.consider(t, signature, spacing)
            if reason is not None:
                fallback = None
                yield SampledFrame(round(t, 3), converter.image(frame), reason)
                if selector.full:
                    return
            elif selector.count == 0 and signature.spread < sampling.flat_threshold:
                if fallback is None or signature.spread > fallback[0] + 1e-6:
                    fallback = (signature.spread, t, converter.image(frame))
        if selector.count == 0:
            if fallback is None:
                detail = f" ({self.problems[0]})" if self.problems else ""
                raise VideoDecodeError(self.path, f"no frame could be decoded{detail}")
            self.all_flat = True
            yield SampledFrame(round(fallback[1], 3), fallback[2], "first")

    def _decoded(self, selector: FrameSelector) -> Iterator[tuple[av.VideoFrame, float | None, float]]:
        """Decoded frames, their times from the start, and the spacing of the frames decoded around them.

        Decodes only what ``selector`` can use. The spacing is one frame inside
        a fully decoded group of pictures, else the keyframe spacing.

        Outside ``sequential``, a keyframe decoded on its own is drained out of
        the decoder at once, so every decision below sees the selector up to
        date (decoders hold frames back for reordering and threading).
        """
        stream, sampling = self._stream, self.sampling
        context = stream.codec_context
        decode_all = self.strategy == "sequential"
        # Frame threads pay only on long runs of consecutive frames; they delay every output frame.
        context.thread_type = "AUTO" if decode_all else "SLICE"
        context.thread_count = sampling.threads
        tb = stream.time_base
        reader = PacketReader(self._container, stream, self._t0, self.duration, frame_seconds(stream),
                              can_seek=self._container.format.name.startswith(EXACT_SEEK_FORMATS),
                              problems=self.problems)
        seek_jump = self._seek_jump()
        seeked_from: float | None = None
        gop_open = False  # decoding every packet of the current group of pictures
        opened: list[tuple[float, float]] = []  # (keyframe time, spacing) of the latest groups, for late frames
        key_time: float | None = None
        gop: float | None = self._gop
        last_key_decoded = -math.inf
        gaps: list[float] = []
        errors = 0
        while True:
            for packet, t, hole in reader.packets():
                if self._busy + time.perf_counter() - self._resumed > sampling.max_decode_seconds:
                    self.problems.append(f"stopped after {sampling.max_decode_seconds:g} s of decoding "
                                         "(decode budget)")
                    self.budget_spent = True
                    yield from self._drain(tb, opened)
                    return
                if packet.is_keyframe:
                    if seeked_from is not None and t is not None and t <= seeked_from:
                        seek_jump = None  # the seek did not move forward (keyframes too sparse): read on
                    seeked_from = None
                    if t is not None and key_time is not None and t > key_time:
                        gaps = (gaps + [t - key_time])[-16:]
                    gop = self._gop or (statistics.median(gaps) if gaps else None)
                    key_spacing = gop or selector.interval
                    need = selector.earliest_useful(key_spacing)
                    if need is None:
                        return  # the cap is reached: nothing more can be kept
                    if seek_jump is not None and t is not None and need - t >= seek_jump:
                        yield from self._drain(tb, opened)  # the seek would drop frames still in the decoder
                        need = selector.earliest_useful(key_spacing)
                        if need is None:
                            return
                        if need - t >= seek_jump:
                            if reader.seek(selector.target()):
                                selector.jumped()
                                seeked_from, key_time, gop_open, opened = t, None, False, []
                                last_key_decoded = -math.inf
                                continue
                            seek_jump = None
                    key_time = t
                    gop_open = decode_all or t is None or gop is None or selector.needs_inside(t, t + gop)
                    if (not gop_open and t is not None and t - last_key_decoded < sampling.scene_step
                            and not selector.due(t, key_spacing)):
                        continue  # keyframes closer than the scan step (all-intra codecs: MJPEG, ProRes)
                    if t is not None:
                        last_key_decoded = t
                        opened = (opened + [(t, selector.frame_spacing if gop_open else key_spacing)])[-8:]
                elif not gop_open:
                    continue  # a frame between keyframes that no rule needs
                elif hole:
                    gop_open = False  # its references were lost in the hole: wait for the next keyframe
                    continue
                elif (not decode_all and t is not None and key_time is not None and gop is not None
                      and not selector.needed_before(t, key_time + gop)):
                    gop_open = False  # the rest of this group is not needed: the next keyframe serves
                    continue
                try:
                    frames = stream.decode(packet)
                    errors = 0
                except av.FFmpegError as exc:
                    errors += 1
                    gop_open = False  # later frames of this group may lean on the lost one: wait for a keyframe
                    if errors == 1 and len(self.problems) < 8:
                        where = f"{t:.2f} s" if t is not None else "unknown time"
                        self.problems.append(f"damaged packet at {where}: {describe_error(exc)}")
                    if errors >= _MAX_CONSECUTIVE_DECODE_ERRORS:
                        self.problems.append(f"gave up after {errors} damaged packets in a row")
                        reader.truncated = True
                        break
                    continue
                for frame in frames:
                    if frame.is_corrupt:
                        # Concealed damage: neither this frame nor those predicted from it show the video.
                        if len(self.problems) < 8:
                            self.problems.append(f"damaged frame at {float(frame.pts * tb) - self._t0:.2f} s")
                        gop_open = False
                        continue
                    yield self._output(frame, tb, opened)
                if packet.is_keyframe and not gop_open:
                    yield from self._drain(tb, opened)
            yield from self._drain(tb, opened)
            if reader.truncated or not reader.resync():
                break
            selector.jumped()
            key_time, gop_open, opened, last_key_decoded = None, False, [], -math.inf
        reader.finish()
        self.truncated = reader.truncated

    def _drain(self, tb: Fraction, opened: list[tuple[float, float]]
               ) -> Iterator[tuple[av.VideoFrame, float | None, float]]:
        try:
            frames = self._stream.decode(None)
        except av.FFmpegError:
            frames = []
        for frame in frames:
            yield self._output(frame, tb, opened)
        # After draining, the decoder accepts packets again only once flushed.
        self._stream.codec_context.flush_buffers()

    def _output(self, frame: av.VideoFrame, tb: Fraction, opened: list[tuple[float, float]]
                ) -> tuple[av.VideoFrame, float | None, float]:
        self.decoded_frames += 1
        # Frames from a drain carry no time base of their own: use the stream's.
        t = float(frame.pts * tb) - self._t0 if frame.pts is not None else None
        # Decoders hand frames back late: find the group of pictures the frame belongs to.
        spacing = next((sp for start, sp in reversed(opened) if t is not None and start <= t + 1e-6),
                       opened[0][1] if opened else 0.0)
        return frame, t, spacing
