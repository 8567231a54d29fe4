"""Where the ANN side reads vectors from: the stored float32 ones, and a compact copy for re-ranking.

Re-ranking (:func:`retrieval.search.rerank`) re-scores tens to thousands of
candidates per query. Reading their float32 vectors from ``items.sqlite``
costs ~20 us a row, which dominated IVF-PQ latency; so an index that
re-ranks keeps a copy of every vector beside ``index.faiss``
(:data:`COPY_FILE`), memory-mapped by readers, written with index.faiss and
vouched for by the manifest the same way (rebuilt from the stored vectors when
stale). The copy holds float16 rows (half the float32 size; int8 with a scale
per vector is the other choice, a quarter): a cosine from a float16 row is
within :attr:`VectorCopy.max_error` (~5e-4) of the exact one, and the few
candidates within that distance of the k-th best are re-scored from float32
(``rerank``'s ``refine``), so the top-k and their scores are exact.

File layout (little-endian)::

    header  64 bytes: b"MMSVEC01", dtype code (u32: 1 float16, 2 int8), dim (u32), count (u64), zeros
    ids     count x int64, ascending and unique
    rows    count x dim x (2 | 1) bytes
    scales  count x float32 (int8 only: row i is rows[i] * scales[i])

:class:`VectorSource` is what building and tuning read the float32 vectors
through: :class:`ArrayVectors` over arrays in memory, or the index store's
reader over items.sqlite (chunks in id order inside one read transaction),
so a 10M-vector index never holds all its float32 vectors in memory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from .errors import IndexCorruptError

COPY_FILE = "rerank.vectors"
MAGIC = b"MMSVEC01"
HEADER_BYTES = 64
DTYPES = {"float16": 1, "int8": 2}
_CODES = {code: name for name, code in DTYPES.items()}
_WRITE_ROWS = 262_144  # rows per block when writing: 256 MiB of float32 at 256-d, bounded for any n


class VectorSource(Protocol):
    """The stored float32 unit vectors, readable in pieces (what building, tuning and verify read)."""

    dim: int

    def __len__(self) -> int: ...

    def chunks(self, size: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 ascending, vectors float32) blocks covering every vector once."""
        ...

    def sample(self, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``m`` distinct vectors picked uniformly with ``seed`` (all of them when ``m >= len``), by id."""
        ...

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """The float32 vectors of ``ids``, one row per id (zeros for ids that are gone)."""
        ...


class ArrayVectors:
    """A :class:`VectorSource` over arrays in memory (tests, benchmarks, or a ``np.memmap``)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
        order = np.argsort(ids, kind="stable")
        self._sorted = bool(np.all(order == np.arange(len(ids))))
        self.ids = ids if self._sorted else ids[order]
        self._order = None if self._sorted else order
        if len(self.ids) > 1 and not np.all(np.diff(self.ids) > 0):
            raise ValueError("ids must be unique")
        self.vectors = vectors
        self.dim = int(vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        rows = positions if self._order is None else self._order[positions]
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def chunks(self, size: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.ids), size):
            pos = np.arange(start, min(start + size, len(self.ids)))
            yield self.ids[pos], self._rows(pos)

    def sample(self, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        m = min(m, len(self.ids))
        pos = np.sort(np.random.default_rng(seed).choice(len(self.ids), size=m, replace=False))
        return self.ids[pos], self._rows(pos)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        wanted = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, wanted).clip(0, max(len(self.ids) - 1, 0))
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        if len(self.ids):
            hit = self.ids[pos] == wanted
            out[hit] = self._rows(pos[hit])
        return out


class VectorCopy:
    """A float16 (or int8) copy of vectors keyed by id: in memory, or memory-mapped from :data:`COPY_FILE`.

    A writer changes it with :meth:`add` / :meth:`remove` (kept aside until
    :meth:`write`, which streams the merged copy to a new file), so readers of
    the old file are never disturbed.
    """

    def __init__(
        self, dim: int, ids: np.ndarray, rows: np.ndarray, scales: np.ndarray | None = None, *,
        dtype: str = "float16", path: Path | None = None,
    ) -> None:
        self.dim, self.dtype, self.path = dim, dtype, path
        self.ids, self.rows, self.scales = ids, rows, scales
        self._added: dict[int, np.ndarray] = {}
        self._removed: set[int] = set()
        self.temporary = False  # a temp file of a build, renamed into place by write()

    # -- making one -------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray, *, dtype: str = "float16") -> "VectorCopy":
        """A copy in memory of these vectors (any id order)."""
        source = ArrayVectors(ids, vectors)
        rows, scales = _encode(np.asarray(source._rows(np.arange(len(source))), dtype=np.float32), dtype)
        return cls(source.dim, source.ids.copy(), rows, scales, dtype=dtype)

    @classmethod
    def from_chunks(
        cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, dtype: str = "float16"
    ) -> "VectorCopy":
        """A copy in memory of vectors read in chunks (ids ascending across chunks, as a source gives them)."""
        id_parts, row_parts, scale_parts = [], [], []
        for ids, vectors in chunks:
            rows, scales = _encode(np.asarray(vectors, dtype=np.float32).reshape(-1, dim), dtype)
            id_parts.append(np.asarray(ids, dtype=np.int64))
            row_parts.append(rows)
            if scales is not None:
                scale_parts.append(scales)
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)
        if len(ids) > 1 and np.any(np.diff(ids) <= 0):
            raise ValueError("from_chunks needs unique ids in ascending order across chunks")
        empty = np.zeros((0, dim), dtype=np.float16 if dtype == "float16" else np.int8)
        rows = np.concatenate(row_parts) if row_parts else empty
        scales = (np.concatenate(scale_parts) if scale_parts else np.zeros(0, np.float32)) if dtype == "int8" else None
        return cls(dim, ids, rows, scales, dtype=dtype)

    @classmethod
    def write_from(
        cls, path: Path, dim: int, count: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *,
        dtype: str = "float16",
    ) -> "VectorCopy":
        """Stream ``count`` vectors (chunks with ascending ids) into a new file at ``path``, atomically; open it."""
        _check_dtype(dtype)

        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
            last = None
            for ids, vectors in chunks:
                ids = np.asarray(ids, dtype=np.int64)
                if len(ids) and ((last is not None and ids[0] <= last) or np.any(np.diff(ids) <= 0)):
                    raise ValueError("write_from needs ids in ascending order across chunks")
                if len(ids):
                    last = int(ids[-1])
                rows, scales = _encode(np.asarray(vectors, dtype=np.float32).reshape(-1, dim), dtype)
                yield ids, rows, scales

        _write_file(path, dim, count, dtype, blocks())
        return cls.open(path, dim)

    @classmethod
    def open(cls, path: Path, dim: int) -> "VectorCopy":
        """Memory-map a copy file; a file that is not a whole copy of ``dim``-d vectors is IndexCorruptError."""
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                head = fh.read(HEADER_BYTES)
        except OSError as exc:
            raise IndexCorruptError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
        if len(head) < HEADER_BYTES or head[:8] != MAGIC:
            raise IndexCorruptError(f"{path.name} is not a vector copy (bad header)")
        code, file_dim = (int(v) for v in np.frombuffer(head, dtype="<u4", count=2, offset=8))
        count = int(np.frombuffer(head, dtype="<u8", count=1, offset=16)[0])
        dtype = _CODES.get(code)
        if dtype is None or file_dim != dim:
            raise IndexCorruptError(f"{path.name} holds {file_dim}-d {dtype or 'unknown'} rows, expected {dim}-d")
        if size != _file_size(dim, count, dtype):
            raise IndexCorruptError(f"{path.name} is {size} bytes, a copy of {count} vectors takes "
                                    f"{_file_size(dim, count, dtype)} (truncated or padded)")
        if count == 0:
            empty = np.zeros((0, dim), dtype=np.float16 if dtype == "float16" else np.int8)
            return cls(dim, np.zeros(0, dtype=np.int64), empty, np.zeros(0, np.float32) if dtype == "int8" else None,
                       dtype=dtype, path=path)
        ids = np.memmap(path, dtype="<i8", mode="r", offset=HEADER_BYTES, shape=(count,))
        row_type = np.float16 if dtype == "float16" else np.int8
        rows_at = HEADER_BYTES + 8 * count
        rows = np.memmap(path, dtype=row_type, mode="r", offset=rows_at, shape=(count, dim))
        scales = None
        if dtype == "int8":
            scales = np.memmap(path, dtype="<f4", mode="r", offset=rows_at + count * dim, shape=(count,))
        return cls(dim, ids, rows, scales, dtype=dtype, path=path)

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        if not self._added and not self._removed:
            return len(self.ids)
        return len(self._merged_ids()[0])

    @property
    def max_error(self) -> float:
        """A bound on |cosine from this copy - exact cosine| for unit vectors and a unit query.

        float16 rounds each component to 11 significant bits: |error| <= 2**-11 |x_i|
        (2**-25 absolute below 2**-14), and sum |q_i x_i| <= 1; int8 rounds to half a
        step of its row's scale, and sum |q_i| <= sqrt(dim). Plus float32 summation.
        """
        summation = self.dim * 2.0**-24
        if self.dtype == "float16":
            return 2.0**-11 + np.sqrt(self.dim) * 2.0**-25 + summation
        biggest = float(np.max(self.scales)) if self.scales is not None and len(self.scales) else 0.0
        biggest = max([biggest, *(float(np.abs(v).max()) / 127 for v in self._added.values())])
        return biggest / 2 * float(np.sqrt(self.dim)) + summation

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of ``ids`` as float32 rows, in the order given (zeros for ids not in the copy)."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        if len(self.ids):
            pos = np.searchsorted(self.ids, wanted).clip(0, len(self.ids) - 1)
            hit = np.asarray(self.ids[pos]) == wanted
            if self._removed:
                hit &= ~np.isin(wanted, np.fromiter(self._removed, dtype=np.int64))
            picked = pos[hit]
            order = np.argsort(picked, kind="stable")  # read the file front to back
            rows = np.empty((len(picked), self.dim), dtype=np.float32)
            rows[order] = self.rows[picked[order]]
            if self.scales is not None:
                rows *= np.asarray(self.scales[picked], dtype=np.float32)[:, None]
            out[hit] = rows
        for i, item_id in enumerate(wanted.tolist()) if self._added else ():
            vec = self._added.get(item_id)
            if vec is not None:
                out[i] = vec
        return out

    # -- changing ---------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors; kept aside, in their coded form, until :meth:`write`."""
        vecs = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        rows, scales = _encode(vecs, self.dtype)
        decoded = rows.astype(np.float32) * (scales[:, None] if scales is not None else 1.0)
        for item_id, vec in zip(np.asarray(ids, dtype=np.int64).tolist(), decoded):
            self._added[item_id] = vec
            self._removed.discard(item_id)

    def remove(self, ids: np.ndarray) -> None:
        for item_id in np.asarray(ids, dtype=np.int64).tolist():
            self._added.pop(item_id, None)
            self._removed.add(item_id)

    @property
    def changed(self) -> bool:
        return bool(self._added or self._removed)

    def write(self, path: Path) -> "VectorCopy":
        """Write this copy (with its changes) to ``path`` atomically and return the memory-mapped result."""
        if not self.changed and self.path is not None and Path(self.path) == Path(path) and Path(path).exists():
            return self
        if not self.changed and self.temporary and self.path is not None and Path(self.path).parent == Path(path).parent:
            os.replace(self.path, path)  # a build's file: already whole and synced
            return VectorCopy.open(Path(path), self.dim)
        ids, base_pos, added_ids = self._merged_ids()
        added = {i: self._added[i] for i in added_ids.tolist()}

        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
            for start in range(0, len(ids), _WRITE_ROWS):
                block_ids = ids[start : start + _WRITE_ROWS]
                from_base = base_pos[start : start + _WRITE_ROWS]
                rows = np.empty((len(block_ids), self.dim), dtype=self.rows.dtype)
                scales = np.empty(len(block_ids), dtype=np.float32) if self.dtype == "int8" else None
                keep = from_base >= 0
                rows[keep] = self.rows[from_base[keep]]
                if scales is not None and self.scales is not None:
                    scales[keep] = self.scales[from_base[keep]]
                if not keep.all():
                    fresh = np.stack([added[int(i)] for i in block_ids[~keep]])
                    coded, coded_scales = _encode(fresh, self.dtype)
                    rows[~keep] = coded
                    if scales is not None and coded_scales is not None:
                        scales[~keep] = coded_scales
                yield block_ids, rows, scales

        _write_file(Path(path), self.dim, len(ids), self.dtype, blocks())
        return VectorCopy.open(Path(path), self.dim)

    def _merged_ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(every id after the changes, its position in the base or -1 when added, the added ids)."""
        base = np.asarray(self.ids)
        dropped = set(self._removed) | set(self._added)
        keep = ~np.isin(base, np.fromiter(dropped, dtype=np.int64, count=len(dropped))) if dropped else \
            np.ones(len(base), dtype=bool)
        added = np.array(sorted(self._added), dtype=np.int64)
        ids = np.concatenate([base[keep], added])
        pos = np.concatenate([np.flatnonzero(keep), np.full(len(added), -1, dtype=np.int64)])
        order = np.argsort(ids, kind="stable")
        return ids[order], pos[order], added

    # -- checking ---------------------------------------------------------------------

    def problems_against(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, shown: int = 3) -> list[str]:
        """What disagrees with the stored float32 vectors (ids missing or extra, rows off by more than rounding)."""
        problems: list[str] = []
        copy_ids = np.asarray(self.ids)
        seen = 0
        wrong: list[int] = []
        missing: list[int] = []
        for ids, vectors in chunks:
            ids = np.asarray(ids, dtype=np.int64)
            pos = np.searchsorted(copy_ids, ids).clip(0, max(len(copy_ids) - 1, 0))
            present = copy_ids[pos] == ids if len(copy_ids) else np.zeros(len(ids), dtype=bool)
            missing += ids[~present].tolist()
            seen += int(present.sum())
            got = self.fetch(ids[present])
            want = np.asarray(vectors, dtype=np.float32)[present]
            tolerance = _row_tolerance(want, self.dtype)
            bad = np.any(np.abs(got - want) > tolerance, axis=1)
            wrong += ids[present][bad].tolist()
        if missing:
            problems.append(f"{len(missing)} stored vectors are missing from {COPY_FILE} (e.g. item {missing[0]})")
        if len(copy_ids) > seen:
            problems.append(f"{COPY_FILE} holds {len(copy_ids) - seen} vectors that items.sqlite does not")
        if wrong:
            problems.append(f"{len(wrong)} vectors in {COPY_FILE} differ from the stored ones beyond {self.dtype} "
                            f"rounding (e.g. item{'s' if len(wrong) > 1 else ''} "
                            f"{', '.join(map(str, wrong[:shown]))})")
        return problems


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown copy dtype {dtype!r}: use {', '.join(DTYPES)}")


def _encode(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows, per-row scales or None) of float32 vectors in ``dtype``."""
    _check_dtype(dtype)
    if dtype == "float16":
        return vectors.astype(np.float16), None
    peak = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0, dtype=np.float32)
    scales = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
    rows = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return rows, scales


def _row_tolerance(vectors: np.ndarray, dtype: str) -> np.ndarray | float:
    """Per-component rounding a faithful copy may show (with a little slack for float32 arithmetic)."""
    if dtype == "float16":
        return np.abs(vectors) * 2.0**-11 * 1.01 + 2.0**-24
    peak = np.abs(vectors).max(axis=1, keepdims=True) if len(vectors) else 0.0
    return peak / 127 * 0.5 * 1.01 + 1e-7


def _file_size(dim: int, count: int, dtype: str) -> int:
    return HEADER_BYTES + 8 * count + count * dim * (2 if dtype == "float16" else 1) + (4 * count if dtype == "int8" else 0)


def _write_file(
    path: Path, dim: int, count: int, dtype: str, blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]
) -> None:
    """Header, ids, rows (and scales) to a temp file beside ``path``, fsync, rename over ``path``.

    ``count`` is known up front, so each block goes straight to its place in
    every section (one sequential pass; nothing the size of the copy is held
    in memory).
    """
    row_bytes = dim * (2 if dtype == "float16" else 1)
    ids_at = HEADER_BYTES
    rows_at = ids_at + 8 * count
    scales_at = rows_at + row_bytes * count
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    written = 0
    try:
        head = bytearray(HEADER_BYTES)
        head[:8] = MAGIC
        head[8:16] = np.array([DTYPES[dtype], dim], dtype="<u4").tobytes()
        head[16:24] = np.array([count], dtype="<u8").tobytes()
        os.pwrite(fd, bytes(head), 0)
        for ids, rows, block_scales in blocks:
            if written + len(ids) > count:
                raise ValueError(f"more than the {count} vectors announced for {path.name}")
            os.pwrite(fd, np.ascontiguousarray(ids, dtype="<i8").tobytes(), ids_at + 8 * written)
            os.pwrite(fd, np.ascontiguousarray(rows).tobytes(), rows_at + row_bytes * written)
            if block_scales is not None:
                os.pwrite(fd, np.ascontiguousarray(block_scales, dtype="<f4").tobytes(), scales_at + 4 * written)
            written += len(ids)
        if written != count:
            raise ValueError(f"expected {count} vectors for {path.name}, got {written}")
        os.ftruncate(fd, _file_size(dim, count, dtype))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
