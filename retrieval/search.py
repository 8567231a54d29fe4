"""From a query vector to ranked hits."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidQueryError
from .store import IndexStore

if TYPE_CHECKING:
    from .ann import VectorIndex
    from .query import Filters


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is the cosine similarity to the query."""

    rank: int
    score: float
    id: int
    kind: str
    path: str | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None}


def fetch_vectors(db: "sqlite3.Connection", ids: np.ndarray, dim: int) -> np.ndarray:
    """Stored vectors for ``ids`` (rows in the same order; zeros for ids that are gone)."""
    wanted = [int(i) for i in ids]
    out = np.zeros((len(wanted), dim), dtype=np.float32)
    if not wanted:
        return out
    where = {item_id: pos for pos, item_id in enumerate(wanted)}
    marks = ",".join("?" * len(wanted))
    for item_id, blob in db.execute(f"SELECT id, vec FROM vectors WHERE id IN ({marks})", wanted):
        out[where[item_id]] = np.frombuffer(blob, dtype=np.float32)
    return out


def rerank_exact(
    db: "sqlite3.Connection", query: np.ndarray, ids: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine scores of candidate ids from their stored vectors, best first (duplicates dropped)."""
    cand = np.unique(ids[ids >= 0])
    if len(cand) == 0:
        return np.zeros(0, dtype=np.float32), cand
    scores = fetch_vectors(db, cand, dim) @ query
    order = np.argsort(-scores, kind="stable")
    return scores[order], cand[order]


def normalise(vector: np.ndarray) -> np.ndarray:
    """Unit-length float32 copy of a 1-d vector; a zero vector is an error."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm < 1e-8:
        raise InvalidQueryError("the query vector is zero (e.g. a term cancelled by its negation)")
    return v / norm


def search_vector(
    store: IndexStore,
    index: "VectorIndex",
    vector: np.ndarray,
    k: int = 10,
    *,
    exclude_ids: frozenset[int] = frozenset(),
    filters: "Filters | None" = None,
    dedup: float | None = None,
) -> list[Hit]:
    """The ``k`` items nearest to ``vector`` that pass ``filters``, best first.

    Candidates are fetched in growing rounds until ``k`` pass the filters (or
    the index is exhausted), so ``k`` means k results after filtering. With
    ``dedup``, a hit whose cosine to a better hit is >= ``dedup`` is dropped.
    """
    if k < 1:
        raise InvalidQueryError(f"k must be at least 1 (got {k})")
    if vector.shape[-1] != store.manifest.dim:
        raise InvalidQueryError(
            f"query vector has {vector.shape[-1]} dimensions, the index has {store.manifest.dim}"
        )
    query = normalise(vector)
    fetch = k + len(exclude_ids)
    hits: list[Hit] = []
    while True:
        depth = int(index.config.search.get("rerank", 1))
        scores, ids = index.search(query[None, :], fetch * depth)
        if not index.config.exact_scores or not index.supports_remove:
            # Compressed codes give approximate scores, and HNSW may hold stale
            # copies of updated ids: re-score the candidates from stored vectors.
            exact, cand = rerank_exact(store.connect(), query, ids[0], store.manifest.dim)
            scores, ids = exact[None, :], cand[None, :]
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in exclude_ids]
        rows = store.items_by_id([i for _, i in found])
        hits = []
        kept: list[np.ndarray] = []
        below_min = False
        for score, item_id in found:
            if filters is not None and filters.min_score is not None and score < filters.min_score:
                below_min = True  # scores come best first: nothing after this can pass
                break
            row = rows.get(item_id)
            if row is None:  # removed since the ANN index was loaded
                continue
            if filters is not None and not filters.accepts(row):
                continue
            if dedup is not None:
                vec = store.vector(item_id)
                if vec is not None and any(float(vec @ other) >= dedup for other in kept):
                    continue
                if vec is not None:
                    kept.append(vec)
            hits.append(
                Hit(
                    rank=len(hits) + 1, score=score, id=item_id, kind=row.kind, path=row.path, text=row.text,
                    meta=json.loads(row.meta) if row.meta else None,
                )
            )
            if len(hits) == k:
                return hits
        if below_min or fetch >= index.ntotal:
            return hits
        fetch = min(index.ntotal, fetch * 2)
