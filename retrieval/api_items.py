"""The items half of :class:`retrieval.api.Index`: finding an item, its vector and moments, its original file and thumbnail."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Sequence

import numpy as np

from .errors import (
    InvalidQueryError,
    ItemNotFoundError,
)
from .store import ItemRow

if TYPE_CHECKING:

    pass


PathLike = str | os.PathLike[str]


class ItemsMixin:
    """Items by id or path, originals opened only while they are the indexed files, thumbnails; mixed into Index."""

    # -- items ------------------------------------------------------------------

    def item(self, item_id: int) -> ItemRow | None:
        """One item's stored row (path or text, size, dimensions, status, metadata), or None."""
        return self.items([item_id]).get(item_id)

    def items(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        """Stored rows of the given ids (ids not in the index are left out)."""
        for item_id in ids:
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                raise InvalidQueryError(f"an item id is a whole number (got {item_id!r})")
        return self.store.items_by_id([i for i in ids if 0 <= i < 2**63])

    def find_item(self, path_or_id: "PathLike | int") -> int:
        """The id of an indexed item, given its id, its file path, its text key, or a moment of a video.

        A moment is ``PATH#t=SECONDS`` (or ``#t=MM:SS``): the id of the video's
        frame nearest that time.
        """
        if isinstance(path_or_id, bool) or not isinstance(path_or_id, (int, str, os.PathLike)):
            raise InvalidQueryError(f"an item is named by its id or its path, not {type(path_or_id).__name__}")
        if isinstance(path_or_id, int) or (isinstance(path_or_id, str) and path_or_id.isascii() and path_or_id.isdigit()):
            item_id = int(path_or_id)
            if 0 <= item_id < 2**63 and self.store.items_by_id([item_id]):
                return item_id
            raise ItemNotFoundError(f"no item with id {item_id} in index {self.name!r}")
        row = self._row_by_path(os.fspath(path_or_id))
        if row is None:
            from .video_files import split_moment

            moment = split_moment(os.fspath(path_or_id))
            if moment is not None and (video := self._row_by_path(moment[0])) is not None:
                return self._frame_near(video, moment[1])
            raise ItemNotFoundError(
                f"{os.fspath(path_or_id)} is not in index {self.name!r} (index it first, or use 'query --image')"
            )
        if row.status != "ok":
            raise ItemNotFoundError(f"{os.fspath(path_or_id)} could not be indexed: {row.error}")
        return row.id

    def _row_by_path(self, text: str) -> ItemRow | None:
        key = os.path.abspath(os.path.expanduser(text))
        return self.store.item_by_key(key) or self.store.item_by_key(text)

    def _frame_near(self, video: ItemRow, seconds: float) -> int:
        """The id of the frame of ``video`` nearest ``seconds`` (what a moment names)."""
        if video.kind != "video":
            raise ItemNotFoundError(f"{video.key} is not a video: a moment (#t=SECONDS) names a time in a video")
        if video.status != "ok":
            raise ItemNotFoundError(f"{video.key} could not be indexed: {video.error}")
        frames = self.store.frames_of(video.id)
        if not frames:
            raise ItemNotFoundError(f"{video.key} has no indexed frames ('mmsearch repair', then index it again)")
        return min(frames, key=lambda f: (abs(f[1] - seconds), f[1]))[0]

    def item_vector(self, item_id: int) -> np.ndarray | None:
        """An item's stored vector; for a video, the mean of its frames' (the video as a whole); None if none."""
        vector = self.store.vector(int(item_id))
        if vector is not None:
            return vector
        frames = self.store.frames_of(int(item_id))
        if not frames:
            return None
        mean = self.store.vectors_of([i for i, _ in frames]).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 1e-8 else None

    def moments(self, item_id: int) -> list[tuple[int, float]]:
        """(frame id, seconds) of a video's indexed frames in time order; [] for anything else."""
        return self.store.frames_of(int(item_id))

    def open_original(self, item: "ItemRow | int") -> tuple[BinaryIO, ItemRow]:
        """The file of an image or video item, open for reading, only while it is still the file that was indexed.

        Opened without following a symlink put in its place, checked on the open
        descriptor (a regular file of the recorded size and time) and by its
        content hash (once per unchanged file); see :mod:`retrieval.originals`.
        A frame of a video opens its video (the row returned is the video's).
        Raises ``ItemNotFoundError`` with the reason for a text, an item that
        failed, or a file that is gone, changed or replaced. Given a row (not an
        id) it does not touch the store, except to find a frame's video. The
        caller closes the file.
        """
        return self._open_checked(item, check_content=True)

    def _file_row(self, item: "ItemRow | int") -> ItemRow:
        """The row whose file an item shows: itself for images and videos, the video for a frame."""
        row = self.item(item) if isinstance(item, int) else item
        if row is None:
            raise ItemNotFoundError(f"no item with id {item} in index {self.name!r}")
        if row.kind == "frame":
            video = self.item(row.parent_id) if row.parent_id is not None else None
            if video is None:
                raise ItemNotFoundError(f"item {row.id} is a frame of a video that is no longer indexed")
            row = video
        if row.kind not in ("image", "video") or row.path is None:
            raise ItemNotFoundError(f"item {row.id} is a text, it has no image")
        if row.status != "ok":
            raise ItemNotFoundError(f"item {row.id} could not be indexed: {row.error}")
        return row

    def _open_checked(self, item: "ItemRow | int", *, check_content: bool) -> tuple[BinaryIO, ItemRow]:
        from .originals import ExpectedFile, VerifiedFiles, open_indexed_file

        row = self._file_row(item)
        if self._verified is None:
            with self._thumbnails_lock:
                if self._verified is None:
                    self._verified = VerifiedFiles()
        expected = ExpectedFile.of(row)
        return open_indexed_file(expected, self._verified, check_content=check_content), row

    def shown_at(self, item: "ItemRow | int") -> tuple[ItemRow, float | None]:
        """(the row of the file an item shows, the time it shows): what a thumbnail or a player needs.

        An image: itself, no time. A video: itself at its first indexed frame
        (after any black intro). A frame: its video at the frame's time. Reads
        the store (the server calls it on its index thread, then hands the
        result to :meth:`thumbnail` and :meth:`open_original` elsewhere).
        """
        if isinstance(item, ItemRow) and item.kind == "image":
            return item, None
        row = self._file_row(item)
        if row.kind != "video":
            return row, None
        given = item if isinstance(item, ItemRow) else self.item(item)
        if given is not None and given.kind == "frame":
            return row, float(given.time or 0.0)
        frames = self.store.frames_of(row.id)
        return row, frames[0][1] if frames else 0.0

    def thumbnail(self, item: ItemRow, size: int | None = None, *, time: float | None = None) -> Path:
        """A JPEG thumbnail of an image item, or of a video at a moment (longest side ``size``), made once and cached.

        A video shows ``time`` (seconds); a frame item, or a video without
        ``time``, is first resolved with :meth:`shown_at` (which reads the
        store). Served only while the item's file is still the file that was
        indexed (the rule of :meth:`open_original`) and made from that open
        file; a thumbnail made earlier is served after the cheap part of the
        check (the content was checked when it was made). Raises
        ``ItemNotFoundError`` when the file is not the one indexed,
        ``ImageDecodeError`` (``VideoDecodeError``) when it can no longer be
        decoded. Given an image, or a video with ``time``, it does not touch
        the store: any thread may call it.
        """
        from .thumbnails import DEFAULT_THUMB_SIZE, ThumbnailCache

        if self._thumbnails is None:
            with self._thumbnails_lock:
                if self._thumbnails is None:
                    self._thumbnails = ThumbnailCache.for_index(self.path)
        row = item
        if item.kind == "frame" or (item.kind == "video" and time is None):
            row, time = self.shown_at(item)
        key = row.hash or f"id{row.id}-{row.mtime_ns}"
        if row.kind == "video":
            from .video_files import format_seconds

            time = float(time or 0.0)
            key = f"{key}-t{format_seconds(time)}"
        size = size or DEFAULT_THUMB_SIZE
        made = self._thumbnails.path_for(key, size).is_file()
        source, row = self._open_checked(row, check_content=not made)
        with source:
            return self._thumbnails.get(source, key, size, name=row.path, time=time if row.kind == "video" else None)
