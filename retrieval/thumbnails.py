"""Thumbnails of indexed images and of moments of videos: made once (orientation applied), cached on disk.

The cache lives inside the index directory (``<index>/thumbs/<size>/<ab>/<key>.jpg``),
so ``mmsearch drop`` removes it with the index. A thumbnail is keyed by the
item's content hash: an edited file gets a new thumbnail once it is re-indexed,
and identical copies share one. Files are written to a temp name and renamed,
so a reader never sees half a JPEG, and a per-key lock makes concurrent
requests for the same picture decode it only once. The cache decodes what it
is handed (an open file, normally: ``Index.thumbnail`` opens the item's file
only while it is still the file that was indexed); it never decides what to open.
A video's thumbnail shows the picture on screen at a given time
(:func:`retrieval.video.frame_at`: rotation applied, HDR tone mapped) and is
keyed by the video's fingerprint and that time.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .errors import ImageDecodeError

if TYPE_CHECKING:
    from PIL import Image

THUMB_SIZES: tuple[int, ...] = (128, 256, 512, 1024)  # longest side in pixels; a fixed set bounds the cache
DEFAULT_THUMB_SIZE = 256
THUMBS_DIR = "thumbs"
_QUALITY = 82
_SAFE_KEY = re.compile(r"[^0-9A-Za-z_-]")


class ThumbnailCache:
    """JPEG thumbnails under ``directory``, generated on first request."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._locks = [threading.Lock() for _ in range(64)]  # striped: parallel work on different keys

    @classmethod
    def for_index(cls, index_dir: Path) -> "ThumbnailCache":
        """The cache inside an index directory, or a private temp dir when that is read-only."""
        directory = Path(index_dir) / THUMBS_DIR
        try:
            directory.mkdir(exist_ok=True)
            if os.access(directory, os.W_OK):
                return cls(directory)
        except OSError:
            pass
        # A read-only index is still searchable; its thumbnails then last as long as the process.
        return cls(Path(tempfile.mkdtemp(prefix="mmsearch-thumbs-")))

    def path_for(self, key: str, size: int) -> Path:
        safe = _SAFE_KEY.sub("_", key) or "_"
        return self.directory / str(size) / safe[:2] / f"{safe}.jpg"

    def get(
        self, source: str | os.PathLike[str] | BinaryIO, key: str, size: int = DEFAULT_THUMB_SIZE, *,
        name: str | None = None, time: float | None = None,
    ) -> Path:
        """The thumbnail of ``source`` (a path or an open binary file; longest side ``size``), made now if not cached.

        ``key`` identifies the content (the item's hash; for a video, with the
        time). ``time``: ``source`` is a video, shown at ``time`` seconds.
        Raises ``ImageDecodeError`` (``VideoDecodeError`` for a video) with the
        reason when the file can no longer be read; ``name`` is the file's name
        in that message (default: ``source`` itself, when a path).
        """
        if size not in THUMB_SIZES:
            raise ValueError(f"thumbnail size must be one of {THUMB_SIZES}, got {size}")
        target = self.path_for(key, size)
        if target.is_file():
            return target
        with self._locks[hash(key) % len(self._locks)]:
            if target.is_file():  # another request made it while we waited
                return target
            self._write(source, target, size, name, time)
        return target

    def _write(self, source: str | os.PathLike[str] | BinaryIO, target: Path, size: int, name: str | None,
               time: float | None = None) -> None:
        if time is not None:
            image = _video_picture(source, time, size, name)
        else:
            from .loading import load_image

            loaded = load_image(source, min_side=size)  # EXIF orientation applied; big JPEGs decoded reduced
            if loaded.image is None:
                shown = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the file")
                raise ImageDecodeError(f"cannot read {shown}: {loaded.error}")
            image = loaded.image
        image.thumbnail((size, size))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                image.save(fh, format="JPEG", quality=_QUALITY, optimize=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _video_picture(source: str | os.PathLike[str] | BinaryIO, time: float, size: int, name: str | None) -> "Image.Image":
    """The picture a video shows at ``time``, its shorter side about ``size`` (scaled by libswscale while decoding)."""
    from .errors import VideoDecodeError
    from .video import frame_at

    try:
        return frame_at(source, time, min_side=size)
    except VideoDecodeError as exc:
        raise VideoDecodeError(name or exc.path, exc.reason) from exc
