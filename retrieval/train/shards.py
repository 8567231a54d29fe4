"""Image-caption pairs stored in shards: webdataset tar files and Parquet tables.

These are the formats large image-text datasets come in (img2dataset writes both;
open_clip_train reads the tar shards):

  - **webdataset tar shards**: ``'shards/{00000..00099}.tar'`` (brace-expanded, or a
    glob, a folder of ``.tar`` files, or fsspec URLs such as ``s3://bucket/{000..009}.tar``).
    Each sample is the run of members sharing a key (``000000123.jpg``,
    ``000000123.txt``, ``000000123.json``); the caption is the ``.txt``, else the
    ``caption``/``text`` field of the ``.json``.
  - **Parquet**: one file, a folder or a glob of ``.parquet`` files with a caption
    column and an image column of bytes (img2dataset's ``jpg``, a Hugging Face
    ``image`` struct of bytes and path) or of paths.

Reading a source is an *index pass*: tar headers and captions, Parquet metadata and
the non-image columns. No image is read or decoded until training meets it, so a
100k-sample dataset costs its captions' memory, not its pictures'. Each item gets a
:class:`BlobRef` saying where its bytes are, and :class:`BlobReader` fetches them:
local tar members by offset (``os.pread``), remote ones by a ranged read, Parquet
rows by a per-row-group sequential reader (Parquet has no cheap random access to a
row, so training visits a row group's rows in ascending chunks: see
:func:`retrieval.train.pipeline.epoch_order`).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from ..errors import DataError
from ..urls import filesystem, is_url
from .parquet import RowGroupReader, index_parquet
from .records import BlobRef, PairData, PairItem

# Member extensions taken as the sample's picture, in order of preference.
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "avif", "heic", "jxl", "bmp", "gif", "tif", "tiff", "img",
                    "image")
_COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


# -- where the shards are --------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset and the shell do it: ``{000..003}`` (zero-padded) and ``{a,b}``."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        step = 1 if int(hi) >= int(lo) else -1
        parts = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        parts = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [p for part in parts for p in expand_braces(head + part + tail)]


def looks_like_shards(source: str) -> bool:
    """True when ``source`` names tar shards or Parquet data rather than a CSV/JSONL/folder of images."""
    if is_url(source) or re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", source) or any(c in source for c in "*?["):
        return True
    path = Path(source).expanduser()
    if path.suffix.lower() in (".tar", ".parquet") or path.name.lower().endswith(_COMPRESSED_TAR):
        return True
    if path.is_dir() and not (path / "captions.csv").is_file():
        return any(path.glob("*.tar")) or any(path.glob("*.parquet"))
    return False


def shard_urls(source: str) -> list[str]:
    """The shard files ``source`` names, in order: braces expanded, globs matched, a folder's .tar/.parquet files."""
    urls: list[str] = []
    for part in expand_braces(source):
        if is_url(part):
            urls.append(part)
            continue
        path = Path(part).expanduser()
        if any(c in part for c in "*?["):
            urls.extend(sorted(glob.glob(str(path))))
        elif path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in (".tar", ".parquet"))
            tars = [u for u in found if u.endswith(".tar")]
            urls.extend(tars or found)
        else:
            urls.append(str(path))
    if not urls:
        raise DataError(f"{source!r} matches no shard files")
    kinds = {_kind_of(u) for u in urls}
    if len(kinds) > 1:
        raise DataError(f"{source!r} mixes tar shards and Parquet files: give one kind at a time")
    if not is_url(urls[0]):
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"shard {missing[0]!r}{more} does not exist (from {source!r})")
    return urls


def _kind_of(url: str) -> str:
    name = url.split("?")[0].lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(_COMPRESSED_TAR):
        raise DataError(f"{url!r} is a compressed tar: training reads samples by offset, so give uncompressed "
                        ".tar shards (img2dataset writes those)")
    return "tar"


# -- the index pass --------------------------------------------------------------


def read_shards(source: str, images_dir: str | Path | None = None, image_column: str | None = None,
                caption_column: str | None = None) -> PairData:
    """Index the tar shards or Parquet files ``source`` names (see the module docstring). Reads no pixels."""
    urls = shard_urls(source)
    data = PairData(source=Path(source), items=[])
    if _kind_of(urls[0]) == "parquet":
        for url in urls:
            index_parquet(url, data, images_dir, image_column, caption_column)
    else:
        for url in urls:
            _index_tar(url, data)
    return data


def _sample_key(name: str) -> tuple[str, str]:
    """(key, extension) as webdataset splits a member name: the key ends at the basename's first dot."""
    path = PurePosixPath(name)
    base, _, ext = path.name.partition(".")
    return str(path.parent / base) if str(path.parent) != "." else base, ext.lower()


def _open_tar(url: str) -> tuple[tarfile.TarFile, Any]:
    """A tar reader over a local file (seeking past image data) or a URL (one sequential read)."""
    if is_url(url):
        fs, path = filesystem(url)
        handle = fs.open(path, "rb", block_size=1 << 22)
        return tarfile.open(fileobj=handle, mode="r|"), handle
    handle = open(url, "rb")
    return tarfile.open(fileobj=handle, mode="r:"), handle


def _index_tar(url: str, data: PairData) -> None:
    block = data.next_block()
    name = PurePosixPath(url.split("?")[0]).name
    try:
        tf, handle = _open_tar(url)
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot open shard {url!r}: {exc}") from exc
    current: str | None = None
    sample: dict[str, Any] = {}

    def flush() -> None:
        if current is None:
            return
        image = next(((ext, sample[ext]) for ext in SHARD_IMAGE_EXTS if ext in sample), None)
        captions = _captions_of(sample)
        if image is None or not captions:
            data.skip("samples without image or caption")
            return
        ext, member = image
        data.items.append(PairItem(
            image_path=Path(name) / f"{current}.{ext}", captions=captions, label=_label_of(sample),
            blob=BlobRef("tar", url, block, offset=member.offset_data, size=member.size),
        ))

    try:
        for member in tf:
            if not member.isfile():
                continue
            key, ext = _sample_key(member.name)
            if key != current:
                flush()
                current, sample = key, {}
            if ext in ("txt", "json", "cls", "caption", "text"):
                extracted = tf.extractfile(member)
                sample[ext] = extracted.read() if extracted is not None else b""
            else:
                sample[ext] = member
        flush()
    except (OSError, tarfile.TarError, EOFError) as exc:
        # A truncated last shard (a download cut short) keeps the samples before the damage.
        data.skip(f"damaged shards ({name}: {exc})")
    finally:
        tf.close()
        handle.close()


def _captions_of(sample: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for ext in ("txt", "caption", "text"):
        if ext in sample:
            texts.extend(_decode_text(sample[ext]).splitlines())
    if not any(t.strip() for t in texts) and "json" in sample:
        try:
            meta = json.loads(_decode_text(sample["json"]) or "null")
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            value = next((meta[k] for k in ("caption", "text", "captions", "title") if meta.get(k)), None)
            texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
                if isinstance(value, list) else []
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def _label_of(sample: dict[str, Any]) -> str | None:
    if "cls" in sample:
        label = _decode_text(sample["cls"]).strip()
        return label or None
    return None


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)


# -- reading an item's bytes -----------------------------------------------------


class BlobReader:
    """Fetches the bytes a :class:`BlobRef` points at; safe to call from many threads."""

    def __init__(self, max_row_groups: int = 16) -> None:
        self._fds: dict[str, int] = {}
        self._groups: dict[tuple[str, int], RowGroupReader] = {}
        self._lock = threading.Lock()
        self.max_row_groups = max_row_groups

    def read(self, ref: BlobRef) -> tuple[bytes | str | None, str | None]:
        """(bytes, None); or (a path to read, None) for a Parquet image stored by path; or (None, reason)."""
        try:
            if ref.kind == "tar":
                return self._read_tar(ref), None
            value = self._row_group(ref).read(ref.row)
        except (OSError, ValueError) as exc:
            return None, f"unreadable shards ({exc.__class__.__name__})"
        except Exception as exc:  # pyarrow's own errors (ArrowInvalid, ArrowIOError) for damaged files
            return None, f"unreadable shards ({exc.__class__.__name__})"
        if isinstance(value, tuple):  # ("path", p) from an HF image struct without bytes
            return (value[1], None) if value[1] else (None, "rows without image bytes")
        if not value:
            return None, "rows without image bytes"
        return bytes(value), None

    def _read_tar(self, ref: BlobRef) -> bytes:
        if is_url(ref.url):
            fs, path = filesystem(ref.url)
            return bytes(fs.cat_file(path, start=ref.offset, end=ref.offset + ref.size))
        with self._lock:
            fd = self._fds.get(ref.url)
            if fd is None:
                fd = self._fds[ref.url] = os.open(ref.url, os.O_RDONLY)
        data = os.pread(fd, ref.size, ref.offset)
        if len(data) != ref.size:
            raise OSError(f"shard {ref.url} is shorter than when it was indexed")
        return data

    def _row_group(self, ref: BlobRef) -> RowGroupReader:
        key = (ref.url, ref.row_group)
        with self._lock:
            reader = self._groups.pop(key, None)
            if reader is None:
                reader = RowGroupReader(ref.url, ref.row_group, ref.column, ref.field, ref.chunk)
            self._groups[key] = reader  # most recently used last
            while len(self._groups) > self.max_row_groups:
                self._groups.pop(next(iter(self._groups)))
            return reader

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._groups.clear()


def write_tar_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> Path:
    """Write ``(key, {ext: bytes})`` samples as one webdataset tar shard (for tests and benchmarks)."""
    out = Path(path)
    with tarfile.open(out, "w") as tf:
        for key, members in samples:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(payload))
    return out
