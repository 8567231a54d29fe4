"""The FAISS index over item vectors (the only module that imports faiss).

Vectors are L2-normalised float32, so inner product = cosine similarity.
Every index is keyed by item id (``IndexIDMap2``), so ids survive removals
and line up with the rows of ``items.sqlite``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

from .errors import IndexCorruptError


class VectorIndex:
    """Exact inner-product search keyed by int64 ids."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self._index.d != dim:
            raise IndexCorruptError(f"FAISS index has dimension {self._index.d}, expected {dim}")

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        index = cls(dim)
        index.add(ids, vectors)
        return index

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        self._index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing slots have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(self.ntotal, 1)))
        scores, ids = self._index.search(q, k)
        return scores, ids

    def reconstruct(self, item_id: int) -> np.ndarray:
        return self._index.reconstruct(int(item_id))

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves either the old file or the new one."""
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, dim: int) -> "VectorIndex":
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexCorruptError(f"cannot read FAISS index {path}: {str(exc).splitlines()[0]}") from exc
        return cls(dim, index)
