"""Turning video files into vectors: sample frames in worker threads, embed them in full batches.

Each video is fingerprinted (:func:`retrieval.video_files.video_fingerprint`;
a known fingerprint is a renamed or copied video, reused without decoding),
probed, and sampled (:func:`retrieval.video.sample_frames`: keyframes, scene
changes, black intros skipped) in a worker thread; FFmpeg releases the GIL
while it decodes and scales. The frames are preprocessed there too, so the
encoder thread only stacks and encodes. Frames of consecutive videos share
encoder batches (a 4-second clip gives 2 frames: a batch per clip would leave
the model mostly idle); a video is handed on once all of its frames have
vectors, in listing order, so the caller can commit it whole.

Memory stays bounded: at most ``workers + 1`` videos are sampled ahead, each
holding at most ``max_frames`` preprocessed frames.

A file that cannot be read or decoded is an :class:`EmbeddedVideo` with an
``error`` (the same one-line reasons as for images), never an exception. A
truncated or damaged file keeps the frames it could give; ``info`` then says
``truncated`` and why.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator

import numpy as np

from .embed import default_min_side, default_workers
from .errors import VideoDecodeError
from .photo_meta import PhotoMeta
from .sources import FileEntry
from .urls import filesystem, is_url
from .video import FrameSampling, VideoInfo, probe_video, sample_frames
from .video_decode import VideoSource, describe_error
from .video_files import video_fingerprint
from .video_meta import capture_meta

if TYPE_CHECKING:
    from .encoder import Encoder

__all__ = ["SAMPLING_VERSION", "EmbeddedFrame", "EmbeddedVideo", "VideoPipeline", "VideoStats", "video_info"]

# Bump when what is sampled changes (rules or defaults): recorded with every video (meta.sampling.version).
SAMPLING_VERSION = 1


@dataclass(frozen=True)
class EmbeddedFrame:
    """One sampled frame of a video: its time (seconds from the start), why it was kept, its vector."""

    time: float
    reason: str
    vector: np.ndarray


@dataclass
class EmbeddedVideo:
    """A video's outcome: its frames with vectors, or the reason it has none.

    ``reused``: the file's content is already indexed (``hash`` names it); its
    frames are taken from there, nothing was decoded. ``info`` is what the
    index records about the video (duration, codec, rotation, sampling,
    ``truncated`` and ``problems``); ``photo`` its capture time, place and camera.
    """

    entry: FileEntry
    hash: str | None
    frames: list[EmbeddedFrame]
    width: int = 0
    height: int = 0
    error: str | None = None
    reused: bool = False
    photo: PhotoMeta | None = None
    info: dict[str, Any] = field(default_factory=dict)
    decode_seconds: float = 0.0


@dataclass
class VideoStats:
    """Where a pipeline's time went (for ``benchmarks/bench_video.py``): decoding or the model."""

    videos: int = 0
    frames: int = 0
    video_seconds: float = 0.0  # total duration of the videos sampled
    decode_seconds: float = 0.0  # summed over the worker threads (probe, sample, scale, preprocess)
    encode_seconds: float = 0.0  # the encoder thread

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class _Prepared:
    """A video after the worker's part: sampled and preprocessed, waiting for the encoder."""

    entry: FileEntry
    hash: str | None
    times: list[float]
    reasons: list[str]
    pixels: list[Any]
    width: int = 0
    height: int = 0
    error: str | None = None
    reused: bool = False
    photo: PhotoMeta | None = None
    info: dict[str, Any] = field(default_factory=dict)
    decode_seconds: float = 0.0
    vectors: list[np.ndarray | None] = field(default_factory=list)


def video_info(info: VideoInfo, sampled: dict[str, Any]) -> dict[str, Any]:
    """The facts an index records about a video (its item's ``meta`` JSON)."""
    out: dict[str, Any] = {
        "duration": round(info.duration, 3) if info.duration is not None else None,
        "fps": round(info.fps, 3) if info.fps else None,
        "codec": info.codec, "container": info.container, "rotation": info.rotation,
        "mirrored": info.mirrored or None, "hdr": info.hdr, "bit_depth": info.bit_depth,
        "audio": info.has_audio,
    }
    out.update(sampled)
    return {k: v for k, v in out.items() if v is not None}


def open_video_source(entry: FileEntry) -> VideoSource:
    """What PyAV opens for a listed file: its path, or a seekable fsspec file for a URL (the caller closes it)."""
    location = str(entry.path)
    if not is_url(location):
        return location
    fs, path = filesystem(location)
    return fs.open(path, "rb")


def _read_error(exc: OSError) -> str:
    """The reasons images use for a file that cannot be read (retried by the next run: READ_ERROR_PREFIXES)."""
    if isinstance(exc, FileNotFoundError):
        return "file disappeared while indexing"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read file: {exc.strerror or exc}"


class VideoPipeline:
    """Samples videos in a thread pool and embeds their frames in batches (see the module docstring)."""

    def __init__(
        self,
        encoder: "Encoder",
        *,
        batch_size: int = 32,
        workers: int = 0,
        sampling: FrameSampling | None = None,
        known_hashes: Collection[str] = (),
        open_source: Callable[[FileEntry], VideoSource] = open_video_source,
    ) -> None:
        """``sampling``: which frames to keep (default: :class:`FrameSampling` with the frames scaled to the
        model's input side). ``known_hashes``: fingerprints of videos already indexed (reused, not decoded)."""
        self.encoder = encoder
        self.batch_size = max(1, batch_size)
        self.workers = workers or default_workers()
        self.sampling = sampling or FrameSampling(min_side=max(16, default_min_side(encoder)))
        self.known_hashes = known_hashes
        self.open_source = open_source
        self._prepare_image = getattr(encoder, "prepare_image", None) or encoder.preprocess
        self._stack = encoder.pixels_from_prepared
        self.stats = VideoStats()

    # -- the worker's part --------------------------------------------------------------

    def prepare(self, entry: FileEntry) -> _Prepared:
        """Fingerprint, probe, sample and preprocess one video; never raises for a bad file."""
        started = time.perf_counter()
        prepared = self._prepare(entry)
        prepared.decode_seconds = time.perf_counter() - started
        return prepared

    def _prepare(self, entry: FileEntry) -> _Prepared:
        failed = lambda digest, why: _Prepared(entry, digest, [], [], [], error=why)  # noqa: E731
        if entry.size == 0:
            return failed(None, "empty file (0 bytes)")
        try:
            source = self.open_source(entry)
        except OSError as exc:
            return failed(None, _read_error(exc))
        except Exception as exc:  # noqa: BLE001 - an fsspec backend's own error types: one unreadable file
            return failed(None, f"cannot read: {' '.join(str(exc).split())[:200] or type(exc).__name__}")
        try:
            try:
                digest = video_fingerprint(source, entry.size if isinstance(source, str) else None)
            except OSError as exc:
                return failed(None, _read_error(exc))
            if digest in self.known_hashes:
                return _Prepared(entry, digest, [], [], [], reused=True)
            try:
                return self._sample(entry, source, digest)
            except VideoDecodeError as exc:
                return failed(digest, exc.reason)
            except MemoryError:
                return failed(digest, "out of memory while decoding")
            except Exception as exc:  # noqa: BLE001 - a decoder or transform failing on one odd file must not end the run
                return failed(digest, describe_error(exc))
        finally:
            if not isinstance(source, str):
                source.close()

    def _sample(self, entry: FileEntry, source: VideoSource, digest: str) -> _Prepared:
        info = probe_video(source)
        photo = capture_meta(info.capture, entry.mtime_ns)
        times: list[float] = []
        reasons: list[str] = []
        pixels: list[Any] = []
        with sample_frames(source, self.sampling) as frames:
            for frame in frames:
                times.append(frame.time)
                reasons.append(frame.reason)
                try:
                    pixels.append(self._prepare_image(frame.image))
                except Exception as exc:  # noqa: BLE001 - the model's transform on an odd picture
                    raise VideoDecodeError(str(entry.path), f"preprocessing failed at {frame.time:.2f} s: {exc}") from exc
            s = self.sampling
            sampled = {
                "frames": len(times), "poster": times[0] if times else None, "strategy": frames.strategy,
                "decoded_frames": frames.decoded_frames, "all_flat": frames.all_flat or None,
                "truncated": frames.truncated or None, "problems": list(frames.problems) or None,
                "stopped_early": frames.budget_spent or None,
                "sampling": {"version": SAMPLING_VERSION, "interval": s.interval, "max_frames": s.max_frames,
                             "min_gap": s.min_gap, "scene_threshold": s.scene_threshold},
            }
        return _Prepared(entry, digest, times, reasons, pixels, width=info.width, height=info.height,
                         photo=photo, info=video_info(info, sampled))

    # -- the encoder's part -------------------------------------------------------------

    def run(self, entries: Iterable[FileEntry]) -> Iterator[EmbeddedVideo]:
        """One :class:`EmbeddedVideo` per entry, in input order, each once all its frames are embedded."""
        window = self.workers + 1  # videos sampled ahead: bounded memory, and the encoder never waits long
        waiting: deque[_Prepared] = deque()  # sampled videos, in order, not yet handed on
        queue: list[tuple[_Prepared, int]] = []  # (video, frame) pairs waiting for the encoder

        def take(prepared: _Prepared) -> None:
            prepared.vectors = [None] * len(prepared.pixels)
            waiting.append(prepared)
            queue.extend((prepared, i) for i in range(len(prepared.pixels)))
            self.stats.decode_seconds += prepared.decode_seconds

        def encode(final: bool) -> Iterator[EmbeddedVideo]:
            # Each video goes as soon as its last frame is embedded: a kill loses the video being
            # embedded, not the ones that finished in the same stretch of batches.
            while len(queue) >= self.batch_size or (final and queue):
                chunk, queue[:] = queue[: self.batch_size], queue[self.batch_size:]
                started = time.perf_counter()
                vectors = self.encoder.encode_pixels(self._stack([p.pixels[i] for p, i in chunk]))
                self.stats.encode_seconds += time.perf_counter() - started
                for (p, i), vector in zip(chunk, vectors):
                    p.vectors[i] = np.asarray(vector, dtype=np.float32)
                    p.pixels[i] = None  # the pixels are not needed any more
                yield from ready()

        def ready() -> Iterator[EmbeddedVideo]:
            while waiting and all(v is not None for v in waiting[0].vectors):
                yield self._embedded(waiting.popleft())

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mmsearch-video") as pool:
            pending: deque[Future[_Prepared]] = deque()
            for entry in entries:
                pending.append(pool.submit(self.prepare, entry))
                while len(pending) > window:
                    take(pending.popleft().result())
                    yield from encode(final=False)
                    yield from ready()
            while pending:
                take(pending.popleft().result())
                yield from encode(final=not pending)
                yield from ready()
            yield from encode(final=True)
            yield from ready()

    def _embedded(self, p: _Prepared) -> EmbeddedVideo:
        frames = [EmbeddedFrame(t, r, v) for t, r, v in zip(p.times, p.reasons, p.vectors) if v is not None]
        if p.error is None and not p.reused:
            self.stats.videos += 1
            self.stats.frames += len(frames)
            self.stats.video_seconds += float(p.info.get("duration") or 0.0)
        return EmbeddedVideo(entry=p.entry, hash=p.hash, frames=frames, width=p.width, height=p.height,
                             error=p.error, reused=p.reused, photo=p.photo, info=p.info,
                             decode_seconds=p.decode_seconds)

    def embed_one(self, entry: FileEntry) -> EmbeddedVideo:
        """One video, decoded even when its content is known (its twin vanished meanwhile)."""
        saved, self.known_hashes = self.known_hashes, ()
        try:
            return next(iter(self.run([entry])))
        finally:
            self.known_hashes = saved
