"""Files in and out of ``mmsearch serve``: uploads decoded in a bounded pool, indexed files streamed.

Uploaded query images are decoded on a few threads with a bounded queue, for
every app ``mmsearch serve`` runs (the page's API, clip-retrieval's protocol,
immich's ML stand-in).

An upload is untrusted: a few kilobytes can claim tens of megapixels. Three
rules bound what a burst of them costs:

- the pixel limit is checked from the header, before any pixel is decoded
  (:func:`retrieval.loading.load_image`);
- a JPEG is decoded at reduced size (1/2, 1/4 or 1/8) down to the model's
  input side, exactly as a query file is (``Index.embed_image``), so a forged
  6000x6000 header costs a 750x750 buffer, not 108 MB;
- at most ``workers`` decodes run at once and ``queue`` more wait; beyond
  that the request is answered ``503`` with ``Retry-After`` at once, so memory
  and CPU stay bounded and other requests keep their share.

Indexed files go out through :func:`stream_file`, from the descriptor that
``Index.open_original`` checked (never reopened by path).
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from fastapi.responses import StreamingResponse

from .loading import load_image
from .server_guard import ApiError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .loading import LoadedImage

__all__ = ["DecodePool", "DEFAULT_DECODE_WORKERS", "DEFAULT_DECODE_QUEUE", "stream_file"]

DEFAULT_DECODE_WORKERS = 2  # decoding is CPU-bound; more threads only add memory
DEFAULT_DECODE_QUEUE = 8
RETRY_AFTER_S = 2
_STREAM_CHUNK = 256 * 1024


class DecodePool:
    """Decodes uploaded images on ``workers`` threads; refuses (503 + Retry-After) beyond ``workers + queue``."""

    def __init__(self, workers: int = DEFAULT_DECODE_WORKERS, queue: int = DEFAULT_DECODE_QUEUE) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"need at least one worker and a queue >= 0 (got {workers}, {queue})")
        self.workers, self.queue = workers, queue
        self._pool: ThreadPoolExecutor | None = None  # made on first use, and again after a shutdown
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Decodes running or waiting now."""
        with self._lock:
            return self._admitted

    def _release(self, _: Future) -> None:
        with self._lock:
            self._admitted -= 1

    async def decode(
        self, data: bytes | BinaryIO, *, min_side: int | None, max_pixels: int, error_status: int = 415,
    ) -> "LoadedImage":
        """The decoded picture (orientation applied); ``ApiError`` 503 when full, ``error_status`` when unusable.

        ``data`` is an upload's bytes, or an open file (an indexed file that
        ``Index.open_original`` checked). ``min_side`` is the model's input side
        (None: full size). The slot is held until the decode finishes, even if the
        client has gone away.
        """
        loaded, _ = await self._submit(data, min_side, max_pixels, error_status, None)
        return loaded

    async def decode_and_embed(
        self, data: bytes | BinaryIO, embed: "Callable[[Image.Image], np.ndarray]", *, min_side: int | None,
        max_pixels: int, error_status: int = 415,
    ) -> "tuple[LoadedImage, np.ndarray]":
        """:meth:`decode`, then ``embed`` (e.g. ``Index.embed_image``) on the decoded picture, in the same slot.

        The image tower then runs here, not on the server's index thread, whose
        queue stays free for other people's searches.
        """
        loaded, vector = await self._submit(data, min_side, max_pixels, error_status, embed)
        assert vector is not None
        return loaded, vector

    async def _submit(
        self, data: bytes | BinaryIO, min_side: int | None, max_pixels: int, error_status: int,
        embed: "Callable[[Image.Image], np.ndarray] | None",
    ) -> "tuple[LoadedImage, np.ndarray | None]":
        if isinstance(data, (bytes, bytearray)) and not data:
            raise ApiError(error_status, "not_an_image", "the upload is empty")
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                raise ApiError(503, "busy", "the server is decoding as many uploads as it can take; try again shortly",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            self._admitted += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mmsearch-decode")
            pool = self._pool
        try:
            future = pool.submit(_decode_job, data, min_side, max_pixels, embed)
        except BaseException:
            with self._lock:
                self._admitted -= 1
            raise
        future.add_done_callback(self._release)
        loaded, vector = await asyncio.wrap_future(future)
        if loaded.image is None:
            raise ApiError(error_status, "not_an_image", f"the upload is not usable as an image: {loaded.error}")
        return loaded, vector

    def shutdown(self) -> None:
        """Stop the threads (waiting decodes are dropped); a later ``decode`` starts new ones."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _decode_job(
    data: bytes | BinaryIO, min_side: int | None, max_pixels: int,
    embed: "Callable[[Image.Image], np.ndarray] | None",
) -> "tuple[LoadedImage, np.ndarray | None]":
    """On a pool thread: decode, and embed what decoded."""
    loaded = load_image(data, min_side=min_side, max_pixels=max_pixels)
    vector = embed(loaded.image) if embed is not None and loaded.image is not None else None
    return loaded, vector


def content_disposition(filename: str) -> str:
    """``inline`` with the file's name, RFC 6266 style when it is not plain ASCII."""
    if filename.isascii() and filename.isprintable() and '"' not in filename and "\\" not in filename:
        return f'inline; filename="{filename}"'
    return f"inline; filename*=utf-8''{urllib.parse.quote(filename)}"


def stream_file(source: BinaryIO, name: str) -> StreamingResponse:
    """Stream an open file (closed at the end) as it was when opened: its size then, its type by ``name``."""
    size = os.fstat(source.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        left = size
        try:
            while left > 0 and (chunk := source.read(min(_STREAM_CHUNK, left))):
                left -= len(chunk)
                yield chunk
        finally:
            source.close()

    return StreamingResponse(
        chunks(), media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
        headers={"Content-Length": str(size), "Content-Disposition": content_disposition(os.path.basename(name)),
                 "Cache-Control": "private, max-age=3600",
                 # A picture that is really HTML or SVG must not run as a page of this origin.
                 "Content-Security-Policy": "default-src 'none'; sandbox"},
    )
