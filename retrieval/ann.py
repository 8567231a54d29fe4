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
             by OPQ: 4-bit fast-scan codes in memory (``IVF{nlist},PQ{m}x4fsr``,
             scanned 32 codes at a time with SIMD), 8-bit ones in lists on disk
             (``IVF{nlist},PQ{m}x8``); scores are approximate, so the caller
             re-ranks candidates exactly

Two things scale the IVF kinds. From 8,192 lists the coarse quantizer is an
HNSW graph over the centroids (``IVF{nlist}_HNSW32``): a brute-force pass over
16k centroids costs more than scanning the probed lists. And lists larger
than the memory budget live **on disk** (:attr:`AnnConfig.lists_on_disk`): a
FAISS ``OnDiskInvertedLists`` file ``index.<token>.ivfdata`` beside
index.faiss, memory-mapped read-only, so an index larger than RAM still
answers from the page cache. Nobody writes into a lists file that a reader
may have mapped: a writer's first change copies the lists into its own new
file (copy on write), which :meth:`VectorIndex.save` publishes under a new
name before index.faiss points to it.

The kinds that re-rank (``ivfpq``; ``hnsw``, whose stale copies must be
re-scored) carry a :class:`~retrieval.vector_copy.VectorCopy` of every vector
(float16, memory-mapped), kept in step by :meth:`VectorIndex.add` and
:meth:`VectorIndex.remove`; :func:`retrieval.search.rerank` reads it.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from .errors import IndexCorruptError
from .vector_copy import COPY_FILE, ArrayVectors, VectorCopy, VectorSource

ANN_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
# Lists from which the coarse quantizer is an HNSW graph over the centroids. At 4,096 lists a flat pass over
# the centroids was faster: captions probe ~10% of the lists, and the graph needs efSearch 2x that (on 1M
# CLIP-like vectors, nprobe 384: 1.8 ms a search with a flat quantizer, 2.5 with HNSW32). From 8,192 lists
# the graph pays, and it is what makes adding 10M vectors to 16k lists take minutes, not an hour.
HNSW_QUANTIZER_FROM = 8192
LISTS_SUFFIX = ".ivfdata"


@dataclass(frozen=True)
class AnnConfig:
    """How to build an index, how to search it, and what tuning measured (saved in the manifest)."""

    type: str = "flat"
    factory: str = "IDMap2,Flat"
    nlist: int | None = None
    pq_m: int | None = None  # PQ sub-quantizers
    pq_bits: int = 8  # bits per sub-quantizer: 4 = fast scan (codes scanned in SIMD blocks), 8 = classic PQ
    hnsw_m: int | None = None
    rule: str = ""
    search: dict[str, int] = field(default_factory=dict)  # nprobe / efSearch / rerank
    trained_on: int = 0  # vectors the coarse quantizer was trained on (IVF kinds)
    built_for: int = 0  # items when the index was (re)built: growth past it triggers a rebuild
    target_recall: float | None = None
    measured_recall: float | None = None  # recall@10 vs exact search on held-out queries (the lower query kind)
    lists_on_disk: bool = False  # IVF lists in an OnDiskInvertedLists file, memory-mapped
    copy_dtype: str | None = None  # the re-rank copy's rows ("float16"); None: no copy (exact-score kinds)
    held_out: dict[str, float] = field(default_factory=dict)  # recall@10 per query kind, held-out queries
    p50_ms: float | None = None  # one query's search + re-rank, measured by the tuner
    shortfall: dict[str, Any] | None = None  # set when the target was not met: what was reached, what would

    @property
    def exact_scores(self) -> bool:
        """Whether the index's own scores are exact inner products."""
        return self.type != "ivfpq"

    @property
    def reranks(self) -> bool:
        """Whether queries re-score candidates (approximate codes, or HNSW's stale copies)."""
        return not self.exact_scores or self.type == "hnsw"

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

    def but(self, **changes: Any) -> "AnnConfig":
        """A copy with some fields changed."""
        return AnnConfig(**{**self.as_dict(), **changes})


class VectorIndex:
    """A FAISS index keyed by int64 ids, with its :class:`AnnConfig` (and re-rank copy, for the kinds that re-rank)."""

    def __init__(
        self, dim: int, index: faiss.Index | None = None, config: AnnConfig | None = None, *,
        copy: VectorCopy | None = None,
    ) -> None:
        self.dim = dim
        self.config = config or AnnConfig()
        self._index = index if index is not None else _new_index(dim, self.config)
        if self._index.d != dim:
            raise IndexCorruptError(f"FAISS index has dimension {self._index.d}, expected {dim}")
        self.copy = copy
        self._ondisk_private = False  # whether the lists file is this writer's own (a temp file not yet published)
        self._building: Any = None  # the OnDiskInvertedLists a build fills, chunk by chunk
        self.apply_search_params(self.config.search)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, config: AnnConfig | None = None) -> "VectorIndex":
        """A new index over ``vectors`` in memory, trained on them first when the kind needs it."""
        return cls.build_from(dim, ArrayVectors(ids, vectors), config)

    @classmethod
    def build_from(
        cls, dim: int, source: VectorSource, config: AnnConfig | None = None, *, workdir: Path | None = None,
        chunk: int = 100_000, seed: int = 1234,
    ) -> "VectorIndex":
        """A new index over every vector of ``source``, read once in chunks (plus a training sample).

        On-disk lists and a re-rank copy (``config.copy_dtype``) are written as
        temp files in ``workdir`` (published by :meth:`save`); without one, lists
        go to the system's temp folder and the copy stays in memory.
        """
        index = cls(dim, config=config)
        cfg = index.config
        if cfg.needs_training:
            _, sample = source.sample(training_points(cfg, len(source)), seed)
            index.train(sample, max_points=len(sample), seed=seed)
        if cfg.lists_on_disk:
            index._begin_lists_file(workdir or Path(tempfile.gettempdir()))

        def feed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for ids, vectors in source.chunks(chunk):
                index._add_to_index(ids, vectors)
                yield ids, vectors

        if cfg.copy_dtype and workdir is not None:
            temp = workdir / f"{COPY_FILE}.{secrets.token_hex(4)}.tmp"
            index.copy = VectorCopy.write_from(temp, dim, len(source), feed(), dtype=cfg.copy_dtype)
            index.copy.temporary = True
        elif cfg.copy_dtype:
            index.copy = VectorCopy.from_chunks(dim, feed(), dtype=cfg.copy_dtype)
        else:
            for _ in feed():
                pass
        if cfg.lists_on_disk:
            index._end_lists_file()
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

    @property
    def lists_file(self) -> Path | None:
        """The file the on-disk lists are read from (None: lists in memory)."""
        ivf = _ivf_of(self._index)
        if ivf is None or not self.config.lists_on_disk:
            return None
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        return Path(lists.filename) if isinstance(lists, faiss.OnDiskInvertedLists) else None

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
        _prepare_training(self._index, seed)
        self._index.train(vecs)
        self.config = self.config.but(trained_on=int(len(vecs)))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ``ids`` (and to the re-rank copy)."""
        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        self._own_lists()
        self._add_to_index(ids, vecs)
        if self.copy is not None:
            self.copy.add(ids, vecs)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; on HNSW (no deletion in FAISS) the graph keeps them and the caller filters."""
        if len(ids) == 0:
            return 0
        wanted = np.ascontiguousarray(ids, dtype=np.int64)
        if self.copy is not None:
            self.copy.remove(wanted)
        if not self.supports_remove:
            return 0
        self._own_lists()
        return int(self._index.remove_ids(wanted))

    def _add_to_index(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        self._index.add_with_ids(vecs, np.ascontiguousarray(ids, dtype=np.int64))
        if self._building is not None:  # move this chunk's lists from memory to the lists file
            ivf = _ivf_of(self._index)
            with _quiet_stdout():
                _append_lists(self._building, ivf.invlists, ivf.nlist)
            ivf.invlists.reset()

    # -- lists on disk ----------------------------------------------------------

    def _begin_lists_file(self, directory: Path) -> None:
        ivf = _ivf_of(self._index)
        path = directory / f"index{LISTS_SUFFIX}.{secrets.token_hex(4)}.tmp"
        with _quiet_stdout():
            self._building = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
        self._ondisk_private = True

    def _end_lists_file(self) -> None:
        ivf = _ivf_of(self._index)
        lists, self._building = self._building, None
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # FAISS owns it now

    def _own_lists(self) -> None:
        """Before the first change to an on-disk index: copy its lists into a file of our own (copy on write)."""
        if not self.config.lists_on_disk or self._ondisk_private or self._building is not None:
            return
        ivf = _ivf_of(self._index)
        source = self.lists_file
        if ivf is None or source is None:
            return
        path = source.parent / f"index{LISTS_SUFFIX}.{secrets.token_hex(4)}.tmp"
        with _quiet_stdout():
            lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path))
            _append_lists(lists, ivf.invlists, ivf.nlist)
        ivf.replace_invlists(lists, True)  # unmaps (and frees) the read-only lists
        lists.this.disown()
        self._ondisk_private = True

    def _publish_lists(self, directory: Path) -> None:
        """Give a private lists file its lasting name in ``directory`` (before index.faiss names it)."""
        if not self._ondisk_private:
            return
        ivf = _ivf_of(self._index)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        final = directory / f"index.{secrets.token_hex(6)}{LISTS_SUFFIX}"
        with open(lists.filename, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(lists.filename, final)  # the mapping follows the file
        lists.filename = str(final)
        self._ondisk_private = False  # published: the next change copies again

    def discard(self) -> None:
        """Delete the temp files of an index that will not be saved (a build that lost to another)."""
        if self.copy is not None and self.copy.temporary and self.copy.path is not None:
            self.copy.path.unlink(missing_ok=True)
        if self._ondisk_private and self.lists_file is not None:
            self.lists_file.unlink(missing_ok=True)  # FAISS's mapping stays valid until the index is freed

    # -- searching --------------------------------------------------------------

    def apply_search_params(self, params: dict[str, int]) -> None:
        """Set nprobe / efSearch (ignores keys that don't apply, such as rerank)."""
        ivf = _ivf_of(self._index)
        if ivf is not None and "nprobe" in params:
            ivf.nprobe = int(params["nprobe"])
            quantizer = faiss.downcast_index(ivf.quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):  # must return nprobe centroids, and find them
                quantizer.hnsw.efSearch = max(2 * ivf.nprobe, 64)
        hnsw = _hnsw_of(self._index)
        if hnsw is not None and "efSearch" in params:
            hnsw.hnsw.efSearch = int(params["efSearch"])
        self.config = self.config.but(search=dict(params))

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

    def probed_lists(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` lists each query scans (IVF kinds), nearest first: (n, nprobe) int64."""
        return self._coarse(queries, nprobe)

    def home_lists(self, vectors: np.ndarray) -> np.ndarray:
        """The list each vector is filed in (IVF kinds), as ``add`` assigns it: (n,) int64."""
        return self._coarse(vectors, 1)[:, 0]

    def _coarse(self, x: np.ndarray, n: int) -> np.ndarray:
        ivf = _ivf_of(self._index)
        if ivf is None:
            raise ValueError(f"a {self.config.type} index has no inverted lists")
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.dim)
        if isinstance(self._index, faiss.IndexPreTransform):
            for i in range(self._index.chain.size()):
                x = faiss.downcast_VectorTransform(self._index.chain.at(i)).apply(x)
        _, lists = ivf.quantizer.search(np.ascontiguousarray(x, dtype=np.float32), min(n, ivf.nlist))
        return lists

    # -- persistence ------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write index.faiss atomically, after its lists file and re-rank copy: a crash leaves the old or the new.

        The re-rank copy goes to :data:`~retrieval.vector_copy.COPY_FILE` beside
        ``path`` (rewritten only when it changed).
        """
        if self.config.lists_on_disk:
            self._publish_lists(path.parent)
        if self.copy is not None:
            self.copy = self.copy.write(path.parent / COPY_FILE)
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
        On-disk lists are always mapped read-only, from the lists file beside
        ``path`` (wherever the folder has moved); a writer copies them on its
        first change.
        """
        config = config or AnnConfig()
        try:
            if config.lists_on_disk:
                with _quiet_stdout():  # FAISS prints the file it maps
                    index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
            else:
                flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
                index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise IndexCorruptError(f"cannot read FAISS index {path}: {str(exc).splitlines()[0]}") from exc
        loaded = cls(dim, index, config)
        if config.lists_on_disk and loaded.lists_file is None:
            raise IndexCorruptError(f"FAISS index {path} keeps its lists in memory, the manifest says on disk")
        return loaded


def training_points(config: AnnConfig, n: int) -> int:
    """How many vectors to train an IVF index on: ~40 per list, at least 256k (what PQ wants), at most 512k."""
    return int(min(n, max(256 * 1024, min(40 * (config.nlist or 1), 512 * 1024))))


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Row positions in ``vectors`` of each query's exact top-k by inner product (brute force)."""
    _, pos = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(vectors, dtype=np.float32), k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return pos


def exact_search(queries: np.ndarray, source: VectorSource, k: int, *, chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of each query's exact top-k over every vector of ``source``, read in chunks (any size)."""
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for ids, vectors in source.chunks(chunk):
        if len(ids) == 0:
            continue
        scores, pos = faiss.knn(q, np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(ids)),
                                metric=faiss.METRIC_INNER_PRODUCT)
        all_s = np.concatenate([best_s, scores], axis=1)
        all_i = np.concatenate([best_i, np.asarray(ids)[pos]], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return best_s, best_i


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


def _prepare_training(index: faiss.Index, seed: int) -> None:
    """Training settings: seeded; no polysemous training; no warning per k-means on small samples."""
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.cp.min_points_per_centroid = 1
        ivf.cp.seed = seed
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


_STDOUT_LOCK = threading.Lock()


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence FAISS's on-disk lists, which printf() to stdout (our stdout is for results).

    The descriptor is process-wide, so another thread's output during the
    call is lost too: these calls are rare (building, opening or copying
    on-disk lists), never per query.
    """
    libc = ctypes.CDLL(None)
    with _STDOUT_LOCK:
        libc.fflush(None)
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


def _append_lists(target: Any, source: Any, nlist: int) -> None:
    """Append every entry of the inverted lists ``source`` to ``target`` (list by list)."""
    for list_no in range(nlist):
        size = source.list_size(list_no)
        if size:
            target.add_entries(list_no, size, source.get_ids(list_no), source.get_codes(list_no))
