"""Turning files into vectors: read, hash, decode and preprocess in worker
threads while the model encodes the previous batch.

Pillow releases the GIL while decoding, resizing and cropping, and torch
while multiplying, so threads overlap I/O, decoding and model compute without
the cost of pickling pixels between processes (benchmarks/bench_index.py
measures both). Workers stop at cropped uint8 pixels; the float conversion
and normalisation run once per batch. Memory stays bounded: at most a few
batches are in flight, whatever the size of the folder.

Each file's capture metadata (EXIF/XMP time, camera, GPS: :mod:`retrieval.photo_meta`)
is read from the same bytes in memory: a parse of its headers, no second read
of the file and no pixel decode (benchmarks/bench_metadata.py measures the cost).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Iterator, Sequence

import numpy as np

from .loading import load_image
from .photo_meta import PhotoMeta, read_photo_metadata
from .sources import FileEntry

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .encoder import Encoder


@dataclass
class Prepared:
    """A file after the CPU-side work: hashed, decoded and preprocessed (or failed)."""

    entry: FileEntry
    hash: str | None
    pixels: "np.ndarray | torch.Tensor | None"  # what encoder.prepare_image gave
    width: int
    height: int
    error: str | None
    reused: bool = False
    photo: PhotoMeta | None = None  # capture metadata; None when not read (a reused file takes its twin's)


@dataclass
class Embedded:
    """A file's outcome: a vector, or the reason it has none."""

    entry: FileEntry
    hash: str | None
    vector: np.ndarray | None
    width: int
    height: int
    error: str | None
    reused: bool = False  # same content as an item already indexed: its vector is copied, not encoded
    photo: PhotoMeta | None = None  # capture metadata read from the file's bytes (None: not read)


def content_hash(data: bytes) -> str:
    """Content hash used to recognise renamed and copied files."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_file(entry: FileEntry) -> tuple[bytes | None, str | None]:
    try:
        with open(entry.path, "rb") as fh:
            return fh.read(), None
    except FileNotFoundError:
        return None, "file disappeared while indexing"
    except PermissionError:
        return None, "permission denied"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"


def default_workers() -> int:
    """Decoding threads: half the CPUs (at least one, at most eight).

    With reduced-size decoding a 3000x2000 JPEG costs ~15 ms of CPU, a tenth of
    what the model spends on it, so one worker per two cores keeps the encoder
    fed; more only take cores from the model's threads (on 2 cores, 1 worker
    indexed ~1.3x faster than 2 in benchmarks/bench_index.py).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return max(1, min(8, cpus // 2))


def default_min_side(encoder: "Encoder") -> int:
    """Shortest side a reduced-size JPEG decode must keep: the model's input side.

    libjpeg scales in the DCT domain (an averaging filter), so a 3000x2000 photo
    decoded at 1/4 (750x500) and then resized to 256 gives embeddings with cosine
    >= 0.9999 to a full decode, for about a third of the decode and resize time
    (measured by benchmarks/bench_index.py).
    """
    return int(getattr(encoder, "image_size", 224))


MAX_ASPECT = 20  # longer side / shorter side


def _clip_aspect(img: "Image.Image") -> "Image.Image":
    """Crop a very elongated image to its central MAX_ASPECT:1 part.

    The model's resize scales the SHORT side up to its input size, so a
    1x150000 strip would become a 224x33-million-pixel image (gigabytes)
    before the centre crop throws almost all of it away. The crop keeps the
    part of the picture the centre crop would keep anyway.
    """
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if long <= MAX_ASPECT * short:
        return img
    keep = MAX_ASPECT * short
    if w > h:
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


class ImagePipeline:
    """Prepares files in a thread pool and encodes them in batches."""

    def __init__(
        self,
        encoder: "Encoder",
        *,
        batch_size: int = 32,
        workers: int = 0,
        max_pixels: int = 178_956_970,
        known_hashes: Collection[str] = (),
        min_side: int | None = None,
        read: Callable[[FileEntry], tuple[bytes | None, str | None]] | None = None,
        read_metadata: bool = True,
    ):
        """``min_side``: reduced-size JPEG decoding keeps the shorter side >= this
        (default: the model's input side, see :func:`default_min_side`); 0 decodes
        every image at full size. ``read`` fetches a file's bytes (default: the
        local file; the Ray engine passes one that also opens URLs).
        ``read_metadata``: also read each file's capture metadata (``Embedded.photo``)."""
        self.encoder = encoder
        self.known_hashes = known_hashes
        self.batch_size = max(1, batch_size)
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        self.read = read or read_file
        self.read_metadata = read_metadata
        self.min_side = default_min_side(encoder) if min_side is None else max(0, min_side)
        # Encoders without the split preprocessing (fakes in tests) run theirs whole.
        self._prepare_image = getattr(encoder, "prepare_image", None) or encoder.preprocess
        self._stack = encoder.pixels_from_prepared

    def prepare(self, entry: FileEntry, data: bytes | None = None) -> Prepared:
        if data is None:
            data, error = self.read(entry)
            if data is None:
                return Prepared(entry, None, None, 0, 0, error)
        digest = content_hash(data)
        if not data:
            return Prepared(entry, digest, None, 0, 0, "empty file (0 bytes)")
        if digest in self.known_hashes:
            return Prepared(entry, digest, None, 0, 0, None, reused=True)
        # Headers only, from the bytes in memory; never raises (a damaged tag is skipped).
        photo = read_photo_metadata(data, mtime_ns=entry.mtime_ns) if self.read_metadata else None
        loaded = load_image(io.BytesIO(data), min_side=self.min_side or None, max_pixels=self.max_pixels)
        if not loaded.ok or loaded.image is None:
            return Prepared(entry, digest, None, 0, 0, loaded.error, photo=photo)
        try:
            pixels = self._prepare_image(_clip_aspect(loaded.image))
        except Exception as exc:  # a transform failing on an odd image must not end the run
            return Prepared(entry, digest, None, loaded.width, loaded.height, f"preprocessing failed: {exc}", photo=photo)
        return Prepared(entry, digest, pixels, loaded.width, loaded.height, None, photo=photo)

    def run(self, entries: Iterable[FileEntry]) -> Iterator[list[Embedded]]:
        """Yield one list of outcomes per encoder batch, in input order."""
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mmsearch-decode") as pool:
            pending: deque[Future[Prepared]] = deque()
            window = self.batch_size * 2  # bounded look-ahead: memory stays flat on huge folders
            batch: list[Prepared] = []
            for entry in entries:
                pending.append(pool.submit(self.prepare, entry))
                while len(pending) > window:
                    batch.append(pending.popleft().result())
                    if len(batch) == self.batch_size:
                        yield self._encode(batch)
                        batch = []
            while pending:
                batch.append(pending.popleft().result())
                if len(batch) == self.batch_size:
                    yield self._encode(batch)
                    batch = []
            if batch:
                yield self._encode(batch)

    def _encode(self, batch: Sequence[Prepared]) -> list[Embedded]:
        good = [p for p in batch if p.pixels is not None]
        vectors: dict[int, np.ndarray] = {}
        if good:
            feats = self.encoder.encode_pixels(self._stack([p.pixels for p in good]))
            vectors = {id(p): feats[i] for i, p in enumerate(good)}
        return [
            Embedded(p.entry, p.hash, vectors.get(id(p)), p.width, p.height, p.error, p.reused, p.photo)
            for p in batch
        ]

