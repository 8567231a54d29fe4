"""Parquet tables of image-caption pairs: the index pass and sequential reads of image bytes.

A table has a caption column and an image column of bytes (img2dataset's ``jpg``, a
Hugging Face ``image`` struct of bytes and path) or of paths. Parquet has no cheap
random access to one row (a row group's column chunk is read whole), so training
visits a row group's rows in ascending chunks (:func:`retrieval.train.pipeline.epoch_order`)
and :class:`RowGroupReader` streams them. See :mod:`retrieval.train.shards`.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from ..errors import DataError, MissingDependencyError
from ..urls import filesystem, is_url
from .records import BlobRef, PairData, PairItem

PARQUET_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
PARQUET_PATH_COLUMNS = ("image", "filepath", "file", "path", "image_path", "img", "filename")
PARQUET_CAPTION_COLUMNS = ("caption", "text", "title", "captions", "txt")
TARGET_CHUNK_BYTES = 16 << 20  # a reader holds at most ~2 chunks of this many image bytes per row group


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    return pq


def index_parquet(url: str, data: PairData, images_dir: str | Path | None, image_column: str | None,
                   caption_column: str | None) -> None:
    """Add the rows of the Parquet file at ``url`` to ``data``, one block per row group; reads no image bytes.

    Image paths (rather than bytes) are taken relative to ``images_dir``, else to the file's folder.
    """
    _pyarrow_parquet()  # a missing pyarrow is a MissingDependencyError, not an ImportError
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
    block = data.next_block()
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
                data.skip("rows without image or caption")
                continue
            label = labels[row]
            split = splits[row]
            if paths is not None:
                raw = paths[row]
                if not isinstance(raw, str) or not raw.strip():
                    data.skip("rows without image or caption")
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
        fs, path = filesystem(url)
        return pq.ParquetFile(fs.open(path, "rb"))
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


class RowGroupReader:
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
