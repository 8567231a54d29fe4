"""Video files on disk, before any decoding: which names are videos, and a content fingerprint.

Light on purpose (no PyAV import): the folder walk, the store and the file
server use it. Decoding is :mod:`retrieval.video`'s job.

The fingerprint (:func:`video_fingerprint`) recognises a renamed or copied
video without reading all of it: a video is often gigabytes, and hashing every
byte would read the whole file once more than decoding does (sampling decodes
keyframes and seeks over the rest). It hashes the size and 16 spread-out
windows of 64 KiB (the first and last included: headers, the ``moov`` index
of an MP4, the end of the data), about 1 MiB in all, plus everything when the
file is smaller than that. Two different recordings agree on all of those
bytes only if they are copies; a file that differs anywhere but those windows
is not, in practice, another video (compressed video data has no long runs of
identical bytes at the same offsets). It is not a defence against a file
forged to collide: :mod:`retrieval.originals` serves a video only while it
is the very file (inode) that was indexed, or one whose windows all agree,
which a secret file of another content cannot.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = [
    "FINGERPRINT_PREFIX", "VIDEO_EXTENSIONS", "format_clock", "format_seconds", "frame_key", "is_video_path",
    "split_moment",
    "video_fingerprint", "video_fingerprint_fd",
]

# Containers phones, cameras and editors write. (.ts is left out: it is far more often TypeScript.)
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2",  # ISO base media: phones, cameras, screen recorders
    ".mkv", ".webm",  # Matroska
    ".avi", ".mts", ".m2ts",  # older cameras, AVCHD camcorders
    ".mpg", ".mpeg", ".wmv", ".asf", ".flv", ".ogv", ".dv",
})
# Stored hashes of videos carry this prefix: they are fingerprints, never equal to an image's
# whole-file hash (so a video and an image never count as content twins).
FINGERPRINT_PREFIX = "v1:"
_WINDOWS = 16
_WINDOW = 64 * 1024


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of :data:`VIDEO_EXTENSIONS`."""
    return Path(os.fspath(path)).suffix.lower() in VIDEO_EXTENSIONS


def _fingerprint(size: int, read_at: Callable[[int, int], bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(size.to_bytes(8, "little"))
    if size <= _WINDOWS * _WINDOW:
        offsets = list(range(0, size, _WINDOW))  # small: every byte
    else:
        step = (size - _WINDOW) / (_WINDOWS - 1)  # evenly spread, the last window ending at the end of the file
        offsets = [round(i * step) for i in range(_WINDOWS)]
    for offset in offsets:
        chunk = read_at(offset, min(_WINDOW, size - offset))
        digest.update(chunk)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def video_fingerprint_fd(fd: int, size: int | None = None) -> str:
    """The fingerprint of the open file ``fd`` (read with ``pread``; the file position is not moved)."""
    size = os.fstat(fd).st_size if size is None else size

    def read_at(offset: int, length: int) -> bytes:
        out = b""
        while len(out) < length:
            chunk = os.pread(fd, length - len(out), offset + len(out))
            if not chunk:
                break  # the file shrank meanwhile: what is there is hashed, and will not match
            out += chunk
        return out

    return _fingerprint(size, read_at)


def video_fingerprint(source: str | os.PathLike[str] | BinaryIO, size: int | None = None) -> str:
    """The fingerprint of a video file: a path, or a seekable binary file object (fsspec files too).

    Raises ``OSError`` when the file cannot be read.
    """
    if isinstance(source, (str, os.PathLike)):
        fd = os.open(os.fspath(source), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            return video_fingerprint_fd(fd, size)
        finally:
            os.close(fd)
    fh = source
    if size is None:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()

    def read_at(offset: int, length: int) -> bytes:
        fh.seek(offset)
        return fh.read(length) or b""

    try:
        return _fingerprint(size, read_at)
    finally:
        fh.seek(0)


def frame_key(path: str, seconds: float) -> str:
    """The item key of the frame of video ``path`` at ``seconds``: ``PATH#t=SECONDS`` (a media-fragment time)."""
    return f"{path}#t={format_seconds(seconds)}"


def format_seconds(seconds: float) -> str:
    """Seconds as keys and links write them: at most 3 decimals, no trailing zeros (``83.2``, ``0``)."""
    text = f"{float(seconds):.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def split_moment(text: str) -> tuple[str, float] | None:
    """``PATH#t=SECONDS`` (or ``PATH#t=HH:MM:SS.s`` / ``MM:SS``) -> (PATH, seconds); None when ``text`` names no moment."""
    path, sep, fragment = text.rpartition("#t=")
    if not sep or not path:
        return None
    parts = fragment.strip().split(":")
    if not 1 <= len(parts) <= 3:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    if not seconds >= 0 or seconds == float("inf") or any(v < 0 for v in values):
        return None
    return path, seconds


def format_clock(seconds: float) -> str:
    """A time in a video as people read it: ``01:23.2``, ``1:02:03`` (tenths only when there are some)."""
    tenths = round(float(seconds) * 10)
    whole, tenth = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
    return f"{text}.{tenth}" if tenth else text
