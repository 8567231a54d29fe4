"""Typed errors. Every message is written for the person who will read it.

The library raises these; only the CLI (and the server) turn them into output.
"""

from __future__ import annotations

import os


def reading_problem(exc: BaseException) -> str | None:
    """The user's words for the errors any file read can meet (missing, not allowed, a folder, no memory)."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    return None


def printable(text: str) -> str:
    """Text safe to print as one line: undecodable bytes as \\xNN, control characters (ESC, newline) escaped."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for c in text:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or c in "\u2028\u2029":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(c)
    return "".join(out)


class MMSearchError(Exception):
    """Base class of every error mmsearch raises on purpose."""


class ModelLoadError(MMSearchError):
    """A model spec could not be turned into a working encoder."""


class IndexNotFoundError(MMSearchError):
    """The named index does not exist under the index root."""


class IndexExistsError(MMSearchError):
    """Creating an index whose directory already exists."""


class IndexCorruptError(MMSearchError):
    """An index directory is inconsistent or unreadable."""


class SchemaVersionError(MMSearchError):
    """An index was written by an incompatible (usually newer) version."""


class ModelMismatchError(MMSearchError):
    """An index was built by one model and is being used with another."""


class IndexLockedError(MMSearchError):
    """Another process is writing to the index."""


class InvalidQueryError(MMSearchError):
    """A query that cannot be answered (empty text, bad weights, ...)."""


class ItemNotFoundError(InvalidQueryError):
    """A query names an item (by id or path) that the index does not hold, or holds without a vector."""


class ImageDecodeError(MMSearchError):
    """An image given as a query could not be decoded."""


class VideoDecodeError(MMSearchError):
    """A video file could not be opened or no frame of it could be decoded.

    ``path`` is the file, ``reason`` one line for the person reading it (the
    same text an index records for a skipped file).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class SourceError(MMSearchError):
    """A path to index is missing, empty or unreadable."""


class DataError(MMSearchError):
    """Training / evaluation data is missing or has no usable rows."""


class MissingDependencyError(MMSearchError):
    """An optional feature needs a package that is not installed (the message says which extra)."""


class ShardError(MMSearchError):
    """A Parquet embedding shard is missing, unreadable, or not one that mmsearch wrote."""


class EngineError(MMSearchError):
    """A distributed embedding run (the Ray engine) failed as a whole."""


class ExplainUnsupportedError(MMSearchError):
    """An explanation method cannot be applied to this model's image tower (the message names one that can)."""


class UnknownPreprocessError(MMSearchError):
    """The model's image preprocessing has a step whose geometry is unknown, so a heatmap cannot be placed."""
