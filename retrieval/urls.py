"""Files named by URL (``s3://``, ``gs://``, ``abfs://``, ...): recognising, listing and reading them.

Everything goes through fsspec, so any filesystem with an fsspec package
installed (s3fs, gcsfs, adlfs, ...) works, and a missing one is a clear error
naming the package. fsspec is imported only when a URL is actually used.
Local paths never come here: :mod:`retrieval.sources` walks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from . import config
from .errors import MissingDependencyError, SourceError
from .sources import FileEntry

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a local path; ``file://`` counts as a URL."""
    return bool(_URL.match(location))


def filesystem(url: str) -> tuple["AbstractFileSystem", str]:
    """(fsspec filesystem, path inside it) for ``url``; a clear error if its package is missing."""
    try:
        import fsspec.core
    except ImportError as exc:  # pragma: no cover - fsspec comes with Ray Data and pyarrow users
        raise MissingDependencyError("reading URLs needs fsspec: pip install fsspec") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        raise MissingDependencyError(
            f"cannot read {scheme}:// URLs: {exc} (for s3:// install s3fs, for gs:// gcsfs, for abfs:// adlfs)"
        ) from exc
    except ValueError as exc:
        raise SourceError(f"cannot use {url}: {exc}") from exc


def iter_url_files(
    roots: Sequence[str],
    *,
    extensions: Collection[str] = config.IMAGE_EXTENSIONS,
    exclude: Sequence[str] = (),
) -> Iterator[FileEntry]:
    """The image files under URL ``roots`` (folders/prefixes, walked recursively, or single objects).

    Sorted by URL, like the local walk, so a run is deterministic. Hidden names
    (``.*``) and ``exclude`` globs are skipped as in :func:`sources.iter_files`.
    ``FileEntry.path`` holds the URL string itself (a ``Path`` would fold ``//``).
    """
    exts = {e.lower() for e in extensions}
    patterns = tuple(p.lower() for p in (".*", *exclude))
    for root in roots:
        fs, base = filesystem(root)
        scheme = root.split("://", 1)[0]
        try:
            if fs.isfile(base):
                found = {base: fs.info(base)}
            else:
                found = fs.find(base, detail=True)
        except FileNotFoundError:
            raise SourceError(f"no such file or folder: {root}") from None
        except OSError as exc:
            raise SourceError(f"cannot list {root}: {exc}") from exc
        if not found and not fs.exists(base):
            raise SourceError(f"no such file or folder: {root}")
        for path in sorted(found):
            info = found[path]
            name = path.rsplit("/", 1)[-1]
            rel = path[len(base):].lstrip("/")
            if info.get("type", "file") != "file" or ("." + name.rsplit(".", 1)[-1].lower()) not in exts:
                continue
            if any(fnmatchcase(name.lower(), p) or fnmatchcase(rel.lower(), p) for p in patterns) or any(
                part.startswith(".") for part in rel.split("/")[:-1]
            ):
                continue
            url = fs.unstrip_protocol(path) if hasattr(fs, "unstrip_protocol") else f"{scheme}://{path}"
            yield FileEntry(path=url, size=int(info.get("size") or 0), mtime_ns=_mtime_ns(info))  # type: ignore[arg-type]


def _mtime_ns(info: dict[str, Any]) -> int:
    """Modification time in ns from an fsspec ``info`` dict (each filesystem names it differently)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return int(value.timestamp() * 1e9)
        try:
            return int(float(value) * 1e9)
        except (TypeError, ValueError):
            continue
    # No time at all: the ETag/checksum, if any, still tells changed content apart via the size check.
    return 0


def url_reader() -> Callable[[FileEntry], tuple[bytes | None, str | None]]:
    """A reader for :class:`embed.ImagePipeline` that opens ``entry.path`` as a URL (or a local path)."""
    cache: dict[str, Any] = {}

    def read(entry: FileEntry) -> tuple[bytes | None, str | None]:
        location = str(entry.path)
        if not is_url(location):
            from .embed import read_file

            return read_file(entry)
        scheme = location.split("://", 1)[0]
        try:
            fs = cache.get(scheme)
            if fs is None:
                fs = cache[scheme] = filesystem(location)[0]
            with fs.open(location, "rb") as fh:
                return fh.read(), None
        except FileNotFoundError:
            return None, "file disappeared while indexing"
        except PermissionError:
            return None, "permission denied"
        except Exception as exc:  # noqa: BLE001 - one unreadable object must not end the run
            return None, f"cannot read: {' '.join(str(exc).split())[:200] or type(exc).__name__}"

    return read
