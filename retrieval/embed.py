"""Turning files into vectors: read, hash, decode and preprocess in worker
threads while the model encodes the previous batch.

Pillow and torch release the GIL while decoding, resizing and multiplying,
so threads overlap I/O, decoding and model compute without the cost of
pickling pixels between processes. Memory stays bounded: at most a few
batches are in flight, whatever the size of the folder.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Iterable, Iterator, Sequence

import numpy as np

from .loading import load_image
from .sources import FileEntry

if TYPE_CHECKING:
    import torch

    from .encoder import Encoder


@dataclass
class Prepared:
    """A file after the CPU-side work: hashed, decoded and preprocessed (or failed)."""

    entry: FileEntry
    hash: str | None
    pixels: "torch.Tensor | None"
    width: int
    height: int
    error: str | None
    reused: bool = False


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
    return max(1, min(8, (os.cpu_count() or 2)))


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
    ):
        self.encoder = encoder
        self.known_hashes = known_hashes
        self.batch_size = max(1, batch_size)
        self.workers = workers or default_workers()
        self.max_pixels = max_pixels
        # Decode JPEGs at a reduced size when they are much larger than the model's
        # input: the shorter side stays >= 2x the input side, so the final
        # resize still averages many source pixels (quality kept, work cut 4-16x).
        self.min_side = 2 * encoder.image_size

    def prepare(self, entry: FileEntry, data: bytes | None = None) -> Prepared:
        if data is None:
            data, error = read_file(entry)
            if data is None:
                return Prepared(entry, None, None, 0, 0, error)
        digest = content_hash(data)
        if not data:
            return Prepared(entry, digest, None, 0, 0, "empty file (0 bytes)")
        if digest in self.known_hashes:
            return Prepared(entry, digest, None, 0, 0, None, reused=True)
        loaded = load_image(io.BytesIO(data), min_side=self.min_side, max_pixels=self.max_pixels)
        if not loaded.ok or loaded.image is None:
            return Prepared(entry, digest, None, 0, 0, loaded.error)
        try:
            pixels = self.encoder.preprocess(loaded.image)
        except Exception as exc:  # a transform failing on an odd image must not end the run
            return Prepared(entry, digest, None, loaded.width, loaded.height, f"preprocessing failed: {exc}")
        return Prepared(entry, digest, pixels, loaded.width, loaded.height, None)

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
        import torch

        good = [p for p in batch if p.pixels is not None]
        vectors: dict[int, np.ndarray] = {}
        if good:
            feats = self.encoder.encode_pixels(torch.stack([p.pixels for p in good]))  # type: ignore[misc]
            vectors = {id(p): feats[i] for i, p in enumerate(good)}
        return [
            Embedded(p.entry, p.hash, vectors.get(id(p)), p.width, p.height, p.error, p.reused)
            for p in batch
        ]
