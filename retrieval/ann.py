"""The ANN index over item vectors (the only module that imports faiss).

Vectors are L2-normalised float32, so inner product = cosine similarity.
Every index is keyed by item id, so ids line up with the rows of
``items.sqlite``. One wrapper covers the four kinds we build (see
:mod:`retrieval.ann_policy` for when each is chosen):

- ``flat``   exact search (``IDMap2,Flat``)
- ``hnsw``   graph search (``IDMap2,HNSW{M},Flat``); FAISS cannot delete from
             it, so removed ids stay in the graph until the next rebuild and
             are filtered out by the caller (their rows are gone)
- ``ivf``    inverted lists of full vectors (``IVF{nlist},Flat``)
- ``ivfpq``  inverted lists of product-quantised codes, optionally rotated
             by OPQ (``OPQ{m},IVF{nlist},PQ{m}x8``); scores are approximate,
             so the caller re-ranks candidates exactly from stored vectors
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from .errors import IndexCorruptError

ANN_TYPES = ("flat", "hnsw", "ivf", "ivfpq")


@dataclass(frozen=True)
class AnnConfig:
    """How to build an index, and how to search it (saved in the manifest)."""

    type: str = "flat"
    factory: str = "IDMap2,Flat"
    nlist: int | None = None
    pq_m: int | None = None
    hnsw_m: int | None = None
    rule: str = ""
    search: dict[str, int] = field(default_factory=dict)  # nprobe / efSearch / rerank
    trained_on: int = 0  # vectors the coarse quantizer was trained on (IVF kinds)
    built_for: int = 0  # items when the index was (re)built: growth past it triggers a rebuild
    target_recall: float | None = None
    measured_recall: float | None = None  # recall@10 vs exact search, after tuning

    @property
    def exact_scores(self) -> bool:
        """Whether the index's own scores are exact inner products."""
        return self.type != "ivfpq"

    @property
    def needs_training(self) -> bool:
        return self.type in ("ivf", "ivfpq")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "AnnConfig":
        if not data:
            return cls()
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class VectorIndex:
    """A FAISS index keyed by int64 ids, with its :class:`AnnConfig`."""

    def __init__(self, dim: int, index: faiss.Index | None = None, config: AnnConfig | None = None) -> None:
        self.dim = dim
        self.config = config or AnnConfig()
        self._index = index if index is not None else _new_index(dim, self.config)
        if self._index.d != dim:
            raise IndexCorruptError(f"FAISS index has dimension {self._index.d}, expected {dim}")
        self.apply_search_params(self.config.search)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, config: AnnConfig | None = None) -> "VectorIndex":
        """A new index over ``vectors``, trained on them first when the kind needs it."""
        index = cls(dim, config=config)
        if index.config.needs_training:
            index.train(vectors)
        index.add(ids, vectors)
        return index

    # -- properties -------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def supports_remove(self) -> bool:
        return self.config.type != "hnsw"

    # -- building ---------------------------------------------------------------

    def train(self, vectors: np.ndarray, *, max_points: int = 256 * 1024, seed: int = 1234) -> None:
        """Train the coarse quantizer (and PQ/OPQ) on a seeded sample of ``vectors``."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(vecs) == 0:
            raise IndexCorruptError("cannot train an ANN index on zero vectors")
        nlist = self.config.nlist or 1
        if len(vecs) < nlist:
            raise IndexCorruptError(f"{self.config.type} index needs at least {nlist} vectors to train, got {len(vecs)}")
        if len(vecs) > max_points:
            pick = np.random.default_rng(seed).choice(len(vecs), size=max_points, replace=False)
            vecs = vecs[np.sort(pick)]
        _prepare_training(self._index)
        self._index.train(vecs)
        self.config = AnnConfig(**{**self.config.as_dict(), "trained_on": int(len(vecs))})

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        self._index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; on HNSW (no deletion in FAISS) this is a no-op and the caller filters."""
        if len(ids) == 0 or not self.supports_remove:
            return 0
        return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    # -- searching --------------------------------------------------------------

    def apply_search_params(self, params: dict[str, int]) -> None:
        """Set nprobe / efSearch (ignores keys that don't apply, such as rerank)."""
        ivf = _ivf_of(self._index)
        if ivf is not None and "nprobe" in params:
            ivf.nprobe = int(params["nprobe"])
        hnsw = _hnsw_of(self._index)
        if hnsw is not None and "efSearch" in params:
            hnsw.hnsw.efSearch = int(params["efSearch"])
        self.config = AnnConfig(**{**self.config.as_dict(), "search": dict(params)})

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing slots have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(self.ntotal, 1)))
        if len(q) > 1:
            return self._index.search(q, k)
        # One query: FAISS would split a flat scan over OpenMP threads, and on a
        # busy machine waiting for a descheduled thread costs more than the
        # split saves (measured 4x slower on 2 loaded cores). Batches keep them.
        with _omp_threads(1):
            return self._index.search(q, k)

    # -- persistence ------------------------------------------------------------

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
    def load(cls, path: Path, dim: int, config: AnnConfig | None = None, *, mmap: bool = False) -> "VectorIndex":
        """Read an index; ``mmap`` maps the vectors/codes from the file instead of copying them.

        A memory-mapped index is read-only in effect: the writer loads without it.
        """
        try:
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise IndexCorruptError(f"cannot read FAISS index {path}: {str(exc).splitlines()[0]}") from exc
        return cls(dim, index, config)


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Row positions in ``vectors`` of each query's exact top-k by inner product (brute force)."""
    _, pos = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(vectors, dtype=np.float32), k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return pos


RANGE_EXACT_BELOW = 4096  # range_pairs compares every pair below this many vectors


def range_pairs(
    vectors: np.ndarray,
    threshold: float,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    exact_below: int = RANGE_EXACT_BELOW,
    block: int = 4096,
    seed: int = 1234,
) -> np.ndarray:
    """Every pair (i, j), i < j, of rows of unit ``vectors`` with inner product >= ``threshold``: (m, 2) int64.

    What near-duplicate grouping needs (:func:`retrieval.duplicates.find_duplicates`
    takes it as its ``neighbours``), without an all-pairs loop: an inverted-file
    range search of the vectors against themselves, turned inside out so that
    BLAS does the scanning. FAISS k-means (spherical, seeded, on a sample of 40
    points per list) splits the vectors into ``nlist`` lists (~sqrt(n)); each
    vector is compared with the members of its ``nprobe`` nearest lists (~1/12
    of them), one matrix product per list. A pair is found when either
    vector's probes reach the other's list: near-duplicates, a small angle
    apart, almost always do (pair recall 0.99+ in benchmarks/bench_duplicates.py).
    FAISS's own IVF range search scans vector by vector, 2-3x slower on the same
    lists and probes there. Below ``exact_below`` vectors every pair is compared.
    Deterministic for a given ``seed``.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if n < exact_below:
        return _pairs_above(x, np.arange(n), x, np.arange(n), threshold, block)
    nlist = nlist or int(np.clip(round(np.sqrt(n)), 16, 4096))
    nprobe = min(nlist, nprobe or max(8, nlist // 12))
    kmeans = faiss.Kmeans(x.shape[1], nlist, niter=8, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=40, min_points_per_centroid=1)
    kmeans.train(x)
    _, probes = kmeans.index.search(x, nprobe)  # nearest lists first: probes[:, 0] is a vector's own list
    home = probes[:, 0]
    members_order = np.argsort(home, kind="stable")
    members_start = np.searchsorted(home[members_order], np.arange(nlist + 1))
    probe_lists = probes.ravel()
    probe_order = np.argsort(probe_lists, kind="stable")
    probers = np.repeat(np.arange(n, dtype=np.int64), nprobe)[probe_order]
    probers_start = np.searchsorted(probe_lists[probe_order], np.arange(nlist + 1))
    found = []
    for cell in range(nlist):
        members = members_order[members_start[cell]:members_start[cell + 1]]
        queries = probers[probers_start[cell]:probers_start[cell + 1]]
        if len(members) and len(queries):
            found.append(_pairs_above(x[queries], queries, x[members], members, threshold, block))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _pairs_above(
    queries: np.ndarray, query_ids: np.ndarray, base: np.ndarray, base_ids: np.ndarray, threshold: float, block: int
) -> np.ndarray:
    """(min id, max id) of every query/base pair of different ids with inner product >= threshold."""
    found = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, len(queries), block):
        rows, cols = np.nonzero(queries[start:start + block] @ base.T >= threshold)
        i, j = query_ids[rows + start], base_ids[cols]
        keep = i != j
        found.append(np.stack([np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])], axis=1).astype(np.int64))
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


_OMP_LOCK = threading.Lock()


@contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP thread count for the duration of a call (global, hence the lock)."""
    with _OMP_LOCK:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def _new_index(dim: int, config: AnnConfig) -> faiss.Index:
    try:
        return faiss.index_factory(dim, config.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexCorruptError(f"bad FAISS index description {config.factory!r}: {exc}") from exc


def _ivf_of(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw_of(index: faiss.Index) -> Any:
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def _prepare_training(index: faiss.Index) -> None:
    """Training settings: no polysemous training; no warning per k-means on small samples."""
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.cp.min_points_per_centroid = 1
        ivfpq = faiss.downcast_index(ivf)
        if hasattr(ivfpq, "do_polysemous_training"):
            # On by default from index_factory, and it is most of the training time
            # (a minute for 6k vectors); we never use polysemous (Hamming) filtering.
            ivfpq.do_polysemous_training = False
        pq = getattr(ivfpq, "pq", None)
        if pq is not None:
            pq.cp.min_points_per_centroid = 1
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if hasattr(vt, "pq") and vt.pq is not None:
                vt.pq.cp.min_points_per_centroid = 1
