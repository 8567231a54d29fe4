"""Groups of near-duplicate photos, the copy to keep first.

Near-duplicates are found from the image vectors: resized, re-encoded and
slightly cropped copies, edits and burst shots have embeddings within a small
angle of each other, while different photos of the same kind of scene do not.
The pairs closer than a threshold come from a ``neighbours`` callable:
:func:`ivf_neighbours` (numpy: a coarse k-means partition, each vector compared
with the cells nearest to it by matrix products), or a FAISS range search
from ``retrieval.ann``; this module never imports faiss. The grouping itself
costs time in the number of close pairs, not in n².

Grouping. Joining every close pair (union-find, ``connected``) keeps a burst
together however long it is, but it chains: in a dense part of the space
A~B, B~C, ..., Y~Z puts A and Z in one group though they look nothing alike.
The default ``bounded`` grouping follows the same close pairs from the copy
to keep, but admits only items within ``threshold - max_spread`` of that copy
(0.85 by default: the two ends of a five-frame burst, ~0.89 apart, stay
together; a chain drifting further starts a group of its own). A star
clustering (each item within the threshold of a centre) was tried first and
dropped: it split ordinary bursts into two or three groups (family recall
0.39 against 0.99 in benchmarks/bench_duplicates.py).

Order. The copy to keep comes first: the largest pixel count, then the
earliest capture time, then the larger file (less compressed), then the path
and id, so the order is stable. Members with the same content hash as an
earlier member are exact byte copies (``exact_copy_of``), grouped together
whatever the vectors say.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import InvalidQueryError

__all__ = [
    "DEFAULT_THRESHOLD",
    "DuplicateGroup",
    "DuplicateMember",
    "ItemFacts",
    "Neighbours",
    "exact_neighbours",
    "find_duplicates",
    "keep_order",
]

# Cosine above which two CLIP image embeddings are treated as the same photo:
# resized/re-encoded copies sit at ~0.98-0.999, bursts and light crops at
# ~0.93-0.98, different photos of one scene type mostly below 0.9.
DEFAULT_THRESHOLD = 0.95
# How much further than the threshold a group may reach from its kept copy
# (the two ends of a five-frame burst at 0.97 per step are ~0.89 apart).
DEFAULT_MAX_SPREAD = 0.1

# (n, d) unit vectors and a cosine threshold -> (m, 2) index pairs with cosine >= threshold
Neighbours = Callable[[np.ndarray, float], np.ndarray]
Method = Literal["bounded", "connected"]


@dataclass(frozen=True)
class ItemFacts:
    """What decides which copy to keep, and what a report shows."""

    id: int
    width: int | None = None
    height: int | None = None
    taken_ts: float | None = None
    hash: str | None = None
    size: int | None = None
    path: str | None = None
    taken_at: str | None = None  # the capture time as recorded (ISO 8601), for reports

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass(frozen=True)
class DuplicateMember:
    """One item of a group: its cosine to the kept copy, and whether it is a byte copy of another member."""

    facts: ItemFacts
    similarity: float  # cosine to the group's first member (1.0 for that member itself)
    exact_copy_of: int | None = None  # id of an earlier member with the same bytes

    @property
    def id(self) -> int:
        return self.facts.id

    def as_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "id": f.id, "path": f.path, "width": f.width, "height": f.height, "taken_at": f.taken_at,
            "taken_ts": f.taken_ts,
            "size": f.size, "hash": f.hash, "similarity": round(self.similarity, 6),
            "exact_copy_of": self.exact_copy_of,
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-identical items, the one to keep first. Nothing is ever deleted by this module."""

    members: tuple[DuplicateMember, ...]

    @property
    def keep(self) -> DuplicateMember:
        return self.members[0]

    @property
    def all_exact(self) -> bool:
        """Whether every member is a byte copy of the kept one."""
        return all(m.exact_copy_of is not None for m in self.members[1:])

    def as_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep.id,
            "all_exact": self.all_exact,
            "members": [m.as_dict() for m in self.members],
        }


def keep_order(facts: ItemFacts) -> tuple[Any, ...]:
    """Sort key: the copy to keep sorts first (most pixels, earliest capture, larger file, path, id)."""
    taken = facts.taken_ts if facts.taken_ts is not None and math.isfinite(facts.taken_ts) else math.inf
    return (-facts.pixels, taken, -(facts.size or 0), facts.path or "", facts.id)


def find_duplicates(
    vectors: np.ndarray,
    facts: Sequence[ItemFacts],
    neighbours: Neighbours,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    method: Method = "bounded",
    max_spread: float = DEFAULT_MAX_SPREAD,
) -> list[DuplicateGroup]:
    """Groups of near-duplicates among ``facts`` (row i of ``vectors`` is ``facts[i]``).

    ``vectors`` are L2-normalised; ``neighbours(vectors, threshold)`` returns
    index pairs whose cosine is at least ``threshold`` (approximate searches
    may miss some or return a few below it: every pair is re-scored exactly
    here). Items with the same content hash are grouped whatever their vectors.
    Groups come largest first, then by their kept item's order.
    Raises ``InvalidQueryError`` for a threshold outside (0, 1].
    """
    if not 0.0 < threshold <= 1.0 or not math.isfinite(threshold):
        raise InvalidQueryError(f"duplicate threshold must be in (0, 1], got {threshold!r}")
    if method not in ("bounded", "connected"):
        raise InvalidQueryError(f"duplicate grouping method must be 'bounded' or 'connected', got {method!r}")
    if not 0.0 <= max_spread < 1.0:
        raise InvalidQueryError(f"max_spread must be in [0, 1), got {max_spread!r}")
    x = np.asarray(vectors, dtype=np.float32)
    n = len(facts)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"vectors have shape {x.shape}, expected ({n}, dim)")
    if n < 2:
        return []
    pairs = _edges(x, facts, neighbours, threshold)
    if len(pairs) == 0:
        return []
    if method == "bounded":
        labels = _bounded(n, pairs, x, facts, threshold - max_spread)
    else:
        labels = _connected(n, pairs)
    return _groups(labels, x, facts)


def ivf_neighbours(
    vectors: np.ndarray,
    threshold: float,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
    block: int = 4096,
) -> np.ndarray:
    """Pairs with cosine >= ``threshold``, found through a coarse partition, with BLAS doing the work.

    An inverted-file search turned inside out: k-means (on a sample) splits the
    vectors into ``nlist`` cells; each vector is compared with the members of
    its ``nprobe`` nearest cells, cell by cell, as one matrix product per
    cell. That scans ``nprobe / nlist`` of all pairs (1/12 by default) at
    matrix-multiply speed, where FAISS's IVF range search scans vector by
    vector. A pair is found when either vector's probes reach the other's
    cell: near-duplicates, a small angle apart, almost always are (recall of
    true pairs 0.99+ in benchmarks/bench_duplicates.py). Deterministic for a
    given ``seed``. Below 4,096 vectors every pair is compared.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 4096:
        return exact_neighbours(x, threshold, block=block)
    nlist = nlist or int(np.clip(round(math.sqrt(n)), 16, 4096))
    nprobe = min(nlist, nprobe or max(8, nlist // 12))
    centroids = _kmeans(x, nlist, seed=seed)
    home = np.empty(n, dtype=np.int64)
    probes = np.empty((n, nprobe), dtype=np.int64)
    for start in range(0, n, 16384):
        sims = x[start:start + 16384] @ centroids.T
        home[start:start + 16384] = np.argmax(sims, axis=1)
        probes[start:start + 16384] = np.argpartition(-sims, nprobe - 1, axis=1)[:, :nprobe]
    members_order = np.argsort(home, kind="stable")
    members_start = np.searchsorted(home[members_order], np.arange(nlist + 1))
    probe_cells = probes.ravel()
    probe_order = np.argsort(probe_cells, kind="stable")
    probers = np.repeat(np.arange(n, dtype=np.int64), nprobe)[probe_order]
    probers_start = np.searchsorted(probe_cells[probe_order], np.arange(nlist + 1))
    found: list[np.ndarray] = []
    for cell in range(nlist):
        members = members_order[members_start[cell]:members_start[cell + 1]]
        queries = probers[probers_start[cell]:probers_start[cell + 1]]
        if len(members) == 0 or len(queries) == 0:
            continue
        base = x[members]
        for start in range(0, len(queries), block):
            q = queries[start:start + block]
            rows, cols = np.nonzero(x[q] @ base.T >= threshold)
            i, j = q[rows], members[cols]
            keep = i != j
            found.append(np.stack([np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _kmeans(x: np.ndarray, k: int, *, seed: int, iters: int = 8, per_centroid: int = 40) -> np.ndarray:
    """Spherical k-means on a sample (a coarse partition only needs to be roughly balanced)."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(len(x), per_centroid * k), replace=False)]
    centroids = sample[rng.choice(len(sample), size=k, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(sample @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        empty = ~np.any(sums, axis=1)
        sums[empty] = sample[rng.choice(len(sample), size=int(empty.sum()), replace=False)]  # reseed empty cells
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centroids.astype(np.float32)


def exact_neighbours(vectors: np.ndarray, threshold: float, *, block: int = 2048) -> np.ndarray:
    """All pairs with cosine >= ``threshold`` by blocked matrix products (O(n²): tests, small libraries)."""
    x = np.asarray(vectors, dtype=np.float32)
    found: list[np.ndarray] = []
    for start in range(0, len(x), block):
        sims = x[start:start + block] @ x.T
        rows, cols = np.nonzero(sims >= threshold)
        rows = rows + start
        keep = cols > rows
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), dtype=np.int64)


# ---------------------------------------------------------------- internals


def _edges(x: np.ndarray, facts: Sequence[ItemFacts], neighbours: Neighbours, threshold: float) -> np.ndarray:
    """Unique (i < j) pairs: the callable's, re-scored exactly, plus every same-hash pair's star."""
    found = np.asarray(neighbours(x, threshold), dtype=np.int64).reshape(-1, 2)
    found = found[(found[:, 0] != found[:, 1]) & (found >= 0).all(axis=1) & (found < len(facts)).all(axis=1)]
    if len(found):
        cos = np.einsum("ij,ij->i", x[found[:, 0]], x[found[:, 1]])
        found = found[cos >= threshold - 1e-6]  # float32 round-off at the threshold
    by_hash: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        if f.hash:
            by_hash.setdefault(f.hash, []).append(i)
    extra = [(rows[0], r) for rows in by_hash.values() if len(rows) > 1 for r in rows[1:]]
    if extra:
        found = np.concatenate([found, np.asarray(extra, dtype=np.int64)])
    if not len(found):
        return np.zeros((0, 2), dtype=np.int64)
    found = np.sort(found, axis=1)
    return np.unique(found, axis=0)


def _adjacency(n: int, pairs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric CSR adjacency: (indptr, neighbour indices, cosines)."""
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    w = np.concatenate([weights, weights])
    order = np.argsort(src, kind="stable")
    src, dst, w = src[order], dst[order], w[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, src + 1, 1)
    return np.cumsum(indptr), dst, w


def _bounded(n: int, pairs: np.ndarray, x: np.ndarray, facts: Sequence[ItemFacts], floor: float) -> np.ndarray:
    """Connected groups whose every member is within ``floor`` of the group's kept copy.

    Per component of the threshold graph: the best copy left (keep order) grows
    a group through close pairs, admitting only items at cosine >= ``floor`` to
    it (or with its bytes); what it cannot admit forms further groups the same way.
    """
    indptr, nbr, _ = _adjacency(n, pairs, np.ones(len(pairs), dtype=np.float32))
    components = _connected(n, pairs)
    labels = np.full(n, -1, dtype=np.int64)
    members_of: dict[int, list[int]] = {}
    for i in np.flatnonzero(components >= 0):
        members_of.setdefault(int(components[i]), []).append(int(i))
    for rows in members_of.values():
        remaining = sorted(rows, key=lambda i: keep_order(facts[i]))
        left = set(remaining)
        for keeper in remaining:
            if keeper not in left:
                continue
            left.discard(keeper)
            anchor, anchor_hash = x[keeper], facts[keeper].hash
            group, frontier = [keeper], [keeper]
            while frontier:
                u = frontier.pop()
                for v in nbr[indptr[u]:indptr[u + 1]].tolist():
                    if v in left and (float(x[v] @ anchor) >= floor or (anchor_hash and facts[v].hash == anchor_hash)):
                        left.discard(v)
                        group.append(v)
                        frontier.append(v)
            if len(group) > 1:
                labels[group] = keeper
    return labels


def _connected(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over all pairs (components of the threshold graph)."""
    parent = np.arange(n, dtype=np.int64)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:  # path compression
            parent[i], i = root, int(parent[i])
        return root

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    labels = np.array([find(i) for i in range(n)], dtype=np.int64)
    touched = np.zeros(n, dtype=bool)
    touched[pairs.ravel()] = True
    labels[~touched] = -1
    return labels


def _groups(labels: np.ndarray, x: np.ndarray, facts: Sequence[ItemFacts]) -> list[DuplicateGroup]:
    members_of: dict[int, list[int]] = {}
    for i in np.flatnonzero(labels >= 0):
        members_of.setdefault(int(labels[i]), []).append(int(i))
    groups: list[DuplicateGroup] = []
    for rows in members_of.values():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda i: keep_order(facts[i]))
        sims = x[rows] @ x[rows[0]]
        first_with_hash: dict[str, int] = {}
        members = []
        for i, sim in zip(rows, sims):
            f = facts[i]
            copy_of = first_with_hash.get(f.hash) if f.hash else None
            if f.hash and copy_of is None:
                first_with_hash[f.hash] = f.id
            members.append(DuplicateMember(f, 1.0 if i == rows[0] else float(min(sim, 1.0)), copy_of))
        groups.append(DuplicateGroup(tuple(members)))
    groups.sort(key=lambda g: (-len(g.members), keep_order(g.keep.facts)))
    return groups
