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
  that the request is answered ``503`` with ``Retry-After`` at once, before
  its body is read (:class:`UploadAdmission`), so memory and CPU stay bounded;
- the decode threads run ``DECODE_NICE`` below the server's other threads, so
  in a burst the event loop and the index thread keep the CPU they need to
  answer everyone else.

Indexed files go out through :func:`stream_file`, from the descriptor that
``Index.open_original`` checked (never reopened by path).
"""

from __future__ import annotations

import asyncio
import contextvars
import mimetypes
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

from fastapi.responses import StreamingResponse

from .loading import load_image
from .server_guard import ApiError, send_json

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .loading import LoadedImage

__all__ = ["DecodePool", "UploadAdmission", "DEFAULT_DECODE_WORKERS", "DEFAULT_DECODE_QUEUE", "stream_file"]

DEFAULT_DECODE_WORKERS = 2  # decoding is CPU-bound; more threads only add memory
DEFAULT_DECODE_QUEUE = 8
DECODE_NICE = 10  # how far below the server's other threads uploads are decoded
RETRY_AFTER_S = 2
_STREAM_CHUNK = 256 * 1024


class _Slot:
    """One admitted upload: freed when every holder (the request, its decode job) has let go."""

    def __init__(self, pool: "DecodePool") -> None:
        self._pool, self._holders = pool, 1

    def hold(self) -> None:
        with self._pool._lock:
            self._holders += 1

    def drop(self, *_: Any) -> None:
        """Let go (also a future's done-callback); the last holder gives the slot back to the pool."""
        with self._pool._lock:
            self._holders -= 1
            if self._holders == 0:
                self._pool._admitted -= 1


# The slot the current request was admitted with (set by UploadAdmission, used by DecodePool).
_REQUEST_SLOT: contextvars.ContextVar["_Slot | None"] = contextvars.ContextVar("mmsearch_upload_slot", default=None)


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
        """Uploads admitted now (being read, waiting, or decoding)."""
        with self._lock:
            return self._admitted

    def admit(self) -> _Slot:
        """A slot for one upload, or ``ApiError`` 503 (with Retry-After) when all are taken."""
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                raise ApiError(503, "busy", "the server is decoding as many uploads as it can take; try again shortly",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            self._admitted += 1
        return _Slot(self)

    async def decode(
        self, data: bytes | BinaryIO, *, min_side: int | None, max_pixels: int, error_status: int = 415,
    ) -> "LoadedImage":
        """The decoded picture (orientation applied); ``ApiError`` 503 when full, ``error_status`` when unusable.

        ``data`` is an upload's bytes, or an open file (an indexed file that
        ``Index.open_original`` checked). ``min_side`` is the model's input side
        (None: full size). The slot is held until the decode finishes, even if the
        client has gone away. A request that :class:`UploadAdmission` admitted
        decodes in the slot it was given.
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
        slot = _REQUEST_SLOT.get()
        if slot is not None and slot._pool is self:
            _REQUEST_SLOT.set(None)  # one decode per admission
            slot.hold()
        else:
            slot = self.admit()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mmsearch-decode",
                                                initializer=_lower_priority)
            pool = self._pool
        try:
            future = pool.submit(_decode_job, data, min_side, max_pixels, embed)
        except BaseException:
            slot.drop()
            raise
        future.add_done_callback(slot.drop)
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


class UploadAdmission:
    """ASGI middleware: an upload route's request gets a decode slot before its body is read, or a 503 at once.

    Without it a refused upload would still be read and its form parsed on the
    event loop (FastAPI does that before the route runs), the work that slows
    everyone else down in a burst. ``paths``: the POST routes that always
    decode an upload; the slot is the one their decode then runs in.
    """

    def __init__(self, app: Any, *, pool: DecodePool, paths: Iterable[str]) -> None:
        self.app, self.pool, self.paths = app, pool, frozenset(paths)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            slot = self.pool.admit()
        except ApiError as exc:
            await send_json(send, exc.status, exc.error, exc.message, headers=exc.headers)
            return
        token = _REQUEST_SLOT.set(slot)
        try:
            await self.app(scope, receive, send)
        finally:
            _REQUEST_SLOT.reset(token)
            slot.drop()


def _lower_priority() -> None:
    """Run this decode thread (and the threads it starts, e.g. the model's) below the server's other threads.

    Linux gives each thread its own nice value: a burst of uploads then yields
    the CPU to the event loop and the index thread, which answer everyone else.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the rest
        pass


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
