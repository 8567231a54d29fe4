"""Walking folders: which files on disk are images (and videos) to index.

The walk streams (one sorted listing per level of depth in memory), is deterministic
(sorted by name, depth-first), follows directory symlinks without looping, and
reports every file it cannot take through ``on_skip`` instead of failing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from . import config
from .errors import SourceError, printable
from .video_files import VIDEO_EXTENSIONS

__all__ = ["DEFAULT_EXCLUDES", "FileEntry", "Skipped", "file_is_gone", "iter_files"]

# Never photos: Synology thumbnail folders, macOS zip debris and AppleDouble
# resource forks ("._IMG_1.jpg", which carry an image extension but no image).
_ALWAYS_EXCLUDED: tuple[str, ...] = ("@eaDir", "__MACOSX", "._*")
# Hidden files and folders (".git", ".cache", ".thumbnails", ...).
_HIDDEN: tuple[str, ...] = (".*",)
DEFAULT_EXCLUDES: tuple[str, ...] = _ALWAYS_EXCLUDED + _HIDDEN

# A valid-UTF-8 name using the private-use characters that stand for undecodable bytes in
# items.sqlite (store_schema.to_db) could not be told apart from such a name: vanishingly rare.
AMBIGUOUS_NAME = "file name uses private-use characters U+F0080..U+F00FF (rename it to index it)"


@dataclass(frozen=True)
class FileEntry:
    """An image or video file found by the walk (``path`` absolute, symlinks not resolved).

    ``dev``/``inode`` identify the file the path leads to, and ``real_path`` is
    where it really is when a symlink (of the file or a folder above it) was
    followed (None: the path itself): the server later serves a file only while
    it is still this one.
    """

    path: Path
    size: int
    mtime_ns: int
    dev: int | None = None
    inode: int | None = None
    real_path: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A file or folder the walk could not take, with a one-line reason.

    ``path`` is the real path: a non-UTF-8 name keeps its bytes as lone
    surrogates (escape it with :func:`printable` to show it).
    """

    path: str
    reason: str


def iter_files(
    roots: Sequence[str | os.PathLike[str]],
    *,
    extensions: Collection[str] = config.IMAGE_EXTENSIONS,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    on_skip: Callable[[Skipped], None] | None = None,
) -> Iterator[FileEntry]:
    """Yield the files under ``roots`` with one of ``extensions`` (folders, walked recursively, or single files).

    ``extensions`` are matched case-insensitively. ``exclude`` holds glob
    patterns matched (case-insensitively) against each entry's name and its
    path relative to its root in posix form; an excluded folder is not entered.
    ``DEFAULT_EXCLUDES`` always apply, except that hidden entries are taken
    when ``include_hidden`` is true. Unreadable folders, broken symlinks,
    symlink loops, files that vanish, non-regular files and non-UTF-8 names are
    passed to ``on_skip`` and the walk goes on.

    Raises ``SourceError`` (before yielding anything) if a root does not exist.
    """
    if isinstance(roots, (str, bytes, os.PathLike)):
        raise TypeError("iter_files() takes a sequence of roots, not a single path")
    root_paths = [_checked_root(r) for r in roots]
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    patterns = _ALWAYS_EXCLUDED + (() if include_hidden else _HIDDEN) + tuple(exclude)
    walker = _Walker(exts, tuple(p.lower() for p in patterns), on_skip)
    return walker.walk(root_paths)


def file_is_gone(path: str) -> bool:
    """Whether a file no longer exists; one that cannot be checked (permissions, I/O) is not gone."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # unreadable is not absent: its item stays
    return False


def _checked_root(root: str | os.PathLike[str]) -> str:
    path = os.path.abspath(os.fsdecode(root))
    try:
        os.stat(path)
    except FileNotFoundError:
        kind = "broken symlink" if os.path.islink(path) else "no such file or directory"
        raise SourceError(f"{kind}: {printable(path)}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {printable(path)}: {exc.strerror or exc}") from None
    return path


def _may_be_dir(entry: os.DirEntry[str], ext: str) -> bool:
    """Whether an entry needs a stat() to know if it is a folder (d_type answers most)."""
    try:
        if entry.is_dir():
            return True
        # A broken link named like a folder may be one the user expects walked.
        return not ext and entry.is_symlink()
    except OSError:
        return True  # let _stat() report why


def _ambiguous(name: str) -> bool:
    from .store_schema import is_ambiguous_path

    return is_ambiguous_path(name)


class _Walker:
    """State of one ``iter_files`` call: filters, and the directories already walked."""

    def __init__(
        self, exts: frozenset[str], patterns: tuple[str, ...], on_skip: Callable[[Skipped], None] | None
    ) -> None:
        self.exts = exts
        self.patterns = patterns
        self.on_skip = on_skip
        # (st_dev, st_ino) -> path of every directory walked in this call. Keyed
        # by identity, not path, so symlinks and overlapping roots cannot make
        # the walk loop or index the same folder twice.
        self.walked: dict[tuple[int, int], str] = {}

    def skip(self, path: str, reason: str) -> None:
        if self.on_skip is not None:
            self.on_skip(Skipped(path, reason))

    def excluded(self, name: str, rel: str, is_dir: bool) -> bool:
        candidates = [name.lower(), rel.lower()]
        if is_dir:
            candidates.append(rel.lower() + "/")  # lets "raw/" and "**/thumbs/**" name a folder
        for pattern in self.patterns:
            # "**/x" should also match "x" at the top of the root.
            variants = (pattern, pattern[3:]) if pattern.startswith("**/") else (pattern,)
            if any(fnmatchcase(c, p) for p in variants for c in candidates):
                return True
        return False

    def walk(self, roots: list[str]) -> Iterator[FileEntry]:
        for root in roots:
            st = os.stat(root)
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk_dir(root, st)
            elif _ambiguous(root):
                self.skip(root, AMBIGUOUS_NAME)
            elif not stat.S_ISREG(st.st_mode):
                self.skip(root, "not a regular file")
            elif os.path.splitext(root)[1].lower() not in self.exts:
                ext = os.path.splitext(root)[1].lower()
                self.skip(root, "a video (videos are left out: --no-video)" if ext in VIDEO_EXTENSIONS
                          else "not an image file extension")
            else:
                real = os.path.realpath(root)
                yield FileEntry(Path(root), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino,
                                real if real != root else None)

    def _walk_dir(self, root: str, root_st: os.stat_result) -> Iterator[FileEntry]:
        key = (root_st.st_dev, root_st.st_ino)
        if key in self.walked:
            return  # the same folder given twice (or through a link to it): walked once, nothing to report
        self.walked[key] = root
        # An explicit stack instead of recursion: deep trees cannot hit the
        # recursion limit. Each frame holds one sorted directory listing.
        stack: list[tuple[Iterator[os.DirEntry[str]], str, tuple[int, int], str]] = []
        ancestors: set[tuple[int, int]] = set()
        listing = self._list(root)
        if listing is None:
            return
        real_root = os.path.realpath(root)
        stack.append((iter(listing), "", key, real_root))
        ancestors.add(key)
        while stack:
            entries, rel_dir, dir_key, real_dir = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                ancestors.discard(dir_key)
                continue
            rel = rel_dir + entry.name
            ext = os.path.splitext(entry.name)[1].lower()
            if ext not in self.exts and not _may_be_dir(entry, ext):
                continue  # not an image: silently ignored, without a stat() per file
            st = self._stat(entry, rel)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                if self.excluded(entry.name, rel, is_dir=True):
                    continue
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    self.skip(entry.path, f"symlink loop (leads back to {self.walked[key]})")
                    continue
                if key in self.walked:
                    continue  # a link to a folder walked already: its files are indexed once, under that path
                self.walked[key] = entry.path
                listing = self._list(entry.path)
                if listing is not None:
                    # Where the folder really is: only a symlink (rare) costs a realpath() call.
                    real_sub = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_dir, entry.name)
                    stack.append((iter(listing), rel + "/", key, real_sub))
                    ancestors.add(key)
                continue
            if ext not in self.exts:
                continue
            if self.excluded(entry.name, rel, is_dir=False):
                continue
            if _ambiguous(entry.name):
                self.skip(entry.path, AMBIGUOUS_NAME)
            elif not stat.S_ISREG(st.st_mode):
                # A FIFO named x.jpg would block the decoder forever.
                self.skip(entry.path, "not a regular file")
            else:
                real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_dir, entry.name)
                yield FileEntry(Path(entry.path), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino,
                                real if real != entry.path else None)

    def _list(self, path: str) -> list[os.DirEntry[str]] | None:
        """One directory's entries sorted by name, or None (reported) if it cannot be read."""
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except PermissionError:
            self.skip(path, "permission denied (cannot list folder)")
            return None
        except OSError as exc:
            self.skip(path, f"cannot list folder: {exc.strerror or exc}")
            return None
        entries.sort(key=lambda e: e.name)
        return entries

    def _stat(self, entry: os.DirEntry[str], rel: str) -> os.stat_result | None:
        """stat() following symlinks; failures are reported unless the entry would be ignored anyway."""
        try:
            return entry.stat()
        except OSError as exc:
            # Only report entries the walk would have taken: a broken "notes.txt"
            # link is as uninteresting as a working one. Folders have no extension.
            ext = os.path.splitext(entry.name)[1].lower()
            if (ext and ext not in self.exts) or self.excluded(entry.name, rel, is_dir=False):
                return None
            if isinstance(exc, FileNotFoundError):
                reason = "broken symlink" if entry.is_symlink() else "file vanished during the walk"
            elif exc.errno == errno.ELOOP:
                reason = "symlink loop"
            elif isinstance(exc, PermissionError):
                reason = "permission denied"
            else:
                reason = f"cannot read: {exc.strerror or exc}"
            self.skip(entry.path, reason)
            return None


# -- text items -------------------------------------------------------------------


@dataclass(frozen=True)
class TextRecord:
    """One text to index: a stable id within its file, the text, extra fields."""

    id: str
    text: str
    meta: dict[str, object]


def read_text_records(
    path: str | os.PathLike[str],
    *,
    field: str | None = None,
    id_field: str | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
) -> Iterator[TextRecord]:
    """Texts from a TXT (one per line), CSV (header row; ``field`` column) or JSONL file.

    For CSV/JSONL, ``field`` defaults to ``text`` (else ``caption``); ``id_field``
    gives each record a stable id (default: its line number). Other fields are
    kept as metadata. Empty or malformed rows are reported through ``on_skip``.
    """
    import csv
    import json

    p = Path(path)
    if not p.is_file():
        raise SourceError(f"no such text file: {p}")

    def skip(line: int, reason: str) -> None:
        if on_skip:
            on_skip(Skipped(f"{p}:{line}", reason))

    suffix = p.suffix.lower()
    try:
        fh = open(p, encoding="utf-8", newline="")
    except OSError as exc:
        raise SourceError(f"cannot read {p}: {exc.strerror or exc}") from exc
    with fh:
        try:
            if suffix in (".csv", ".tsv"):
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                columns = reader.fieldnames or []
                column = field or next((c for c in ("text", "caption") if c in columns), None)
                if column is None or column not in columns:
                    raise SourceError(
                        f"{p} has no column {field or 'text'!r} (columns: {', '.join(columns) or 'none'}); "
                        "choose one with --text-field"
                    )
                if id_field and id_field not in columns:
                    raise SourceError(f"{p} has no id column {id_field!r}")
                for line, row in enumerate(reader, start=2):
                    text = (row.get(column) or "").strip()
                    if not text:
                        skip(line, f"empty {column!r}")
                        continue
                    rid = (row.get(id_field) or "").strip() if id_field else str(line)
                    meta = {k: v for k, v in row.items() if k not in (column, None)}
                    yield TextRecord(rid or str(line), text, meta)
            elif suffix in (".jsonl", ".ndjson"):
                for line, raw in enumerate(fh, start=1):
                    if not raw.strip():
                        continue
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        skip(line, "not valid JSON")
                        continue
                    if not isinstance(obj, dict):
                        skip(line, "not a JSON object")
                        continue
                    key = field or next((c for c in ("text", "caption") if c in obj), "text")
                    text = obj.get(key)
                    if not isinstance(text, str) or not text.strip():
                        skip(line, f"no text in field {key!r}")
                        continue
                    rid = str(obj.get(id_field, "")) if id_field else str(line)
                    meta = {k: v for k, v in obj.items() if k != key}
                    yield TextRecord(rid or str(line), text.strip(), meta)
            else:  # plain text: one per line
                for line, raw in enumerate(fh, start=1):
                    if raw.strip():
                        yield TextRecord(str(line), raw.strip(), {})
        except UnicodeDecodeError as exc:
            raise SourceError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except csv.Error as exc:
            raise SourceError(f"{p}: malformed CSV: {exc}") from exc
