"""Groups of near-duplicate photos, the copy to keep first.

Near-duplicates are found from the image vectors: resized, re-encoded and
slightly cropped copies, edits and burst shots have embeddings within a small
angle of each other, while different photos of the same kind of scene do not.
The pairs closer than a threshold come from a ``neighbours`` callable:
:func:`retrieval.ann.range_pairs` (an inverted-file range search, what
``Index.duplicates`` uses) or :func:`exact_neighbours` (all pairs, for tests
and small sets); this module never imports faiss. The grouping itself costs
time in the number of close pairs, not in n².

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
    # Asked a hair below the threshold: float32 round-off puts identical vectors at 0.99999994.
    found = np.asarray(neighbours(x, threshold - 1e-6), dtype=np.int64).reshape(-1, 2)
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
