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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from ..errors import DataError, MissingDependencyError

if TYPE_CHECKING:
    from .data import PairData

# Member extensions taken as the sample's picture, in order of preference.
SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "avif", "heic", "jxl", "bmp", "gif", "tif", "tiff", "img",
                    "image")
PARQUET_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
PARQUET_PATH_COLUMNS = ("image", "filepath", "file", "path", "image_path", "img", "filename")
PARQUET_CAPTION_COLUMNS = ("caption", "text", "title", "captions", "txt")
TARGET_CHUNK_BYTES = 16 << 20
_COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")  # a Parquet reader holds at most ~2 chunks of this many image bytes


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where one item's image bytes are.

    ``kind`` is ``tar`` (``offset``/``size`` of the member's data in the file at
    ``url``) or ``parquet`` (row ``row`` of row group ``row_group``; ``column`` is the
    image column, ``field`` the struct field holding bytes, if any). ``block``
    numbers the shard or row group, ``chunk`` is how many consecutive rows of it a
    reader fetches at once.
    """

    kind: str
    url: str
    block: int
    offset: int = 0
    size: int = 0
    row_group: int = 0
    row: int = 0
    column: str = ""
    field: str = ""
    chunk: int = 64


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


def is_url(text: str) -> bool:
    return "://" in text


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


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError as exc:
        raise MissingDependencyError("reading shards from URLs needs fsspec: pip install fsspec "
                                     "(plus s3fs/gcsfs for s3:// or gs://)") from exc
    return fsspec


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    return pq


# -- the index pass --------------------------------------------------------------


def read_shards(source: str, images_dir: str | Path | None = None, image_column: str | None = None,
                caption_column: str | None = None) -> "PairData":
    """Index the tar shards or Parquet files ``source`` names (see the module docstring). Reads no pixels."""
    from .data import PairData

    urls = shard_urls(source)
    data = PairData(source=Path(source), items=[])
    if _kind_of(urls[0]) == "parquet":
        for url in urls:
            _index_parquet(url, data, images_dir, image_column, caption_column)
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
        handle = _fsspec().open(url, "rb", block_size=1 << 22).open()
        return tarfile.open(fileobj=handle, mode="r|"), handle
    handle = open(url, "rb")
    return tarfile.open(fileobj=handle, mode="r:"), handle


def _index_tar(url: str, data: "PairData") -> None:
    from .data import PairItem

    block = _next_block(data)
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
            data._skip("samples without image or caption")
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
        data._skip(f"damaged shards ({name}: {exc})")
    finally:
        tf.close()
        handle.close()


def _next_block(data: "PairData") -> int:
    last = next((item.blob for item in reversed(data.items) if item.blob is not None), None)
    return 0 if last is None else last.block + 1


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


def _index_parquet(url: str, data: "PairData", images_dir: str | Path | None, image_column: str | None,
                   caption_column: str | None) -> None:
    from .data import PairItem

    pq = _pyarrow_parquet()
    try:
        pf = _parquet_file(url)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a damaged or foreign file
        raise DataError(f"cannot read Parquet file {url!r}: {exc}") from exc
    schema = pf.schema_arrow
    names = list(schema.names)
    image_col, field_name, is_bytes = _image_column(schema, image_column, url)
    cap_col = _pick_column(names, caption_column, PARQUET_CAPTION_COLUMNS, "caption", url)
    label_col = _pick_column(names, None, ("label", "class", "category"), "label", url, required=False)
    split_col = _pick_column(names, None, ("split",), "split", url, required=False)
    path_col = None if is_bytes else image_col
    if field_name and "path" in schema.field(image_col).type.names:
        path_col = None  # HF image structs: bytes, with a path only as a fall-back read at training time
    base = Path(images_dir).expanduser() if images_dir else (Path(url).parent if not is_url(url) else None)
    name = PurePosixPath(url.split("?")[0]).name
    meta_cols = [c for c in (cap_col, label_col, split_col, path_col) if c]
    block = _next_block(data)
    for rg in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(rg, columns=list(dict.fromkeys(meta_cols)))
        n = table.num_rows
        if is_bytes:
            col_index = names.index(image_col)
            per_row = pf.metadata.row_group(rg).column(_leaf_index(pf, col_index)).total_uncompressed_size / max(1, n)
            chunk = int(max(8, min(1024, TARGET_CHUNK_BYTES // max(1, per_row))))
        else:
            chunk = 64
        caps = table.column(cap_col).to_pylist()
        labels = table.column(label_col).to_pylist() if label_col else [None] * n
        splits = table.column(split_col).to_pylist() if split_col else [None] * n
        paths = table.column(path_col).to_pylist() if path_col else None
        for row in range(n):
            value = caps[row]
            captions = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
                if isinstance(value, list) else []
            captions = list(dict.fromkeys(c.strip() for c in captions if c.strip()))
            if not captions:
                data._skip("rows without image or caption")
                continue
            label = labels[row]
            split = splits[row]
            if paths is not None:
                raw = paths[row]
                if not isinstance(raw, str) or not raw.strip():
                    data._skip("rows without image or caption")
                    continue
                path = Path(raw.strip()).expanduser()
                if not path.is_absolute() and base is not None:
                    path = base / path
                data.items.append(PairItem(image_path=path, captions=captions,
                                           label=str(label) if label not in (None, "") else None,
                                           split=str(split).lower() if split else None))
                continue
            data.items.append(PairItem(
                image_path=Path(name) / f"rowgroup{rg}-row{row}", captions=captions,
                label=str(label) if label not in (None, "") else None, split=str(split).lower() if split else None,
                blob=BlobRef("parquet", url, block, row_group=rg, row=row, column=image_col, field=field_name,
                             chunk=chunk),
            ))
        block += 1


def _parquet_file(url: str) -> Any:
    pq = _pyarrow_parquet()
    if is_url(url):
        return pq.ParquetFile(_fsspec().open(url, "rb").open())
    return pq.ParquetFile(url)


def _leaf_index(pf: Any, top_index: int) -> int:
    """The first leaf column (what row-group metadata counts) of top-level column ``top_index``."""
    schema = pf.schema_arrow
    leaves = 0
    for i in range(top_index):
        leaves += _n_leaves(schema.field(i).type)
    return leaves


def _n_leaves(dtype: Any) -> int:
    import pyarrow as pa

    if pa.types.is_struct(dtype):
        return sum(_n_leaves(dtype.field(i).type) for i in range(dtype.num_fields))
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _n_leaves(dtype.value_type)
    return 1


def _pick_column(names: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, url: str,
                 required: bool = True) -> str | None:
    lowered = {n.lower(): n for n in names}
    if wanted:
        if wanted in names or wanted.lower() in lowered:
            return wanted if wanted in names else lowered[wanted.lower()]
        raise DataError(f"{url!r} has no {what} column {wanted!r}; its columns are {', '.join(names)}")
    found = next((lowered[c] for c in candidates if c in lowered), None)
    if found is None and required:
        raise DataError(f"{url!r} needs a {what} column ({'/'.join(candidates[:4])}); its columns are "
                        f"{', '.join(names)} (or name it with --{what}-column)")
    return found


def _image_column(schema: Any, wanted: str | None, url: str) -> tuple[str, str, bool]:
    """(column, struct field holding bytes or "", whether the column holds bytes rather than paths)."""
    import pyarrow as pa

    def kind(dtype: Any) -> tuple[str, bool] | None:
        if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
            return "", True
        if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
            return "", False
        if pa.types.is_struct(dtype) and "bytes" in dtype.names:
            return "bytes", True
        return None

    names = list(schema.names)
    if wanted:
        col = _pick_column(names, wanted, (), "image", url)
        assert col is not None
        found = kind(schema.field(col).type)
        if found is None:
            raise DataError(f"column {col!r} of {url!r} holds {schema.field(col).type}, not image bytes or paths")
        return col, found[0], found[1]
    lowered = {n.lower(): n for n in names}
    for candidates, want_bytes in ((PARQUET_IMAGE_COLUMNS, True), (PARQUET_PATH_COLUMNS, False)):
        for c in candidates:
            col = lowered.get(c)
            found = kind(schema.field(col).type) if col else None
            if found is not None and found[1] == want_bytes:
                return col, found[0], found[1]  # type: ignore[return-value]
    raise DataError(f"{url!r} needs an image column of bytes ({'/'.join(PARQUET_IMAGE_COLUMNS[:5])}) or of paths "
                    f"({'/'.join(PARQUET_PATH_COLUMNS[:4])}); its columns are {', '.join(names)} "
                    "(or name it with --image-column)")


# -- reading an item's bytes -----------------------------------------------------


class _RowGroupReader:
    """Sequential reads of one Parquet row group's image column, ``chunk`` rows at a time.

    Keeps the current and the previous chunk, so requests that arrive slightly out
    of order (decode threads racing) are served without starting over; a request
    behind both restarts the row group from its first row.
    """

    def __init__(self, url: str, row_group: int, column: str, field: str, chunk: int) -> None:
        self.url, self.row_group, self.column, self.field, self.chunk = url, row_group, column, field, chunk
        self.lock = threading.Lock()
        self._iter: Iterator[Any] | None = None
        self._next_start = 0
        self._held: list[tuple[int, list[Any]]] = []  # (first row, values)

    def read(self, row: int) -> Any:
        with self.lock:
            while True:
                for start, values in self._held:
                    if start <= row < start + len(values):
                        return values[row - start]
                if self._iter is None or (self._held and row < self._held[0][0]):
                    self._restart()
                if not self._advance():
                    return None  # past the end: the file changed since it was indexed

    def _restart(self) -> None:
        pf = _parquet_file(self.url)
        self._iter = pf.iter_batches(batch_size=self.chunk, row_groups=[self.row_group], columns=[self.column],
                                     use_threads=False)
        self._next_start, self._held = 0, []

    def _advance(self) -> bool:
        assert self._iter is not None
        batch = next(self._iter, None)
        if batch is None:
            return False
        col = batch.column(0)
        if self.field:
            struct = col
            values = struct.field(self.field).to_pylist()
            if "path" in struct.type.names:  # HF image structs keep a path when bytes are absent
                paths = struct.field("path").to_pylist()
                values = [v if v is not None else ("path", p) for v, p in zip(values, paths)]
        else:
            values = col.to_pylist()
        self._held = (self._held + [(self._next_start, values)])[-2:]
        self._next_start += len(values)
        return True


class BlobReader:
    """Fetches the bytes a :class:`BlobRef` points at; safe to call from many threads."""

    def __init__(self, max_row_groups: int = 16) -> None:
        self._fds: dict[str, int] = {}
        self._groups: dict[tuple[str, int], _RowGroupReader] = {}
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
            fs, path = _fsspec().core.url_to_fs(ref.url)
            return bytes(fs.cat_file(path, start=ref.offset, end=ref.offset + ref.size))
        with self._lock:
            fd = self._fds.get(ref.url)
            if fd is None:
                fd = self._fds[ref.url] = os.open(ref.url, os.O_RDONLY)
        data = os.pread(fd, ref.size, ref.offset)
        if len(data) != ref.size:
            raise OSError(f"shard {ref.url} is shorter than when it was indexed")
        return data

    def _row_group(self, ref: BlobRef) -> _RowGroupReader:
        key = (ref.url, ref.row_group)
        with self._lock:
            reader = self._groups.pop(key, None)
            if reader is None:
                reader = _RowGroupReader(ref.url, ref.row_group, ref.column, ref.field, ref.chunk)
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
