"""Which ANN index to build, and how to tune it (the rules autofaiss taught us).

``choose_ann`` is a small set of explicit rules from the number of items and
a memory budget; the chosen parameters and the rule that chose them are saved
in the manifest. ``tune`` then sets the search parameters (nprobe, efSearch,
re-rank depth) to the cheapest ones that reach a target recall@10 against
exact search, measured on a sample of the stored vectors.
"""

from __future__ import annotations

import math
from dataclasses import replace
import numpy as np

from .ann import ANN_TYPES, AnnConfig, VectorIndex, exact_knn
from .errors import MMSearchError
from .search import rerank

DEFAULT_MAX_MEMORY = 4 * 1024**3  # bytes the ANN index may take in RAM, unless --max-memory says otherwise
EXACT_BELOW = 20_000  # brute force over <20k vectors takes ~1-2 ms: no approximation needed
DEFAULT_TARGET_RECALL = 0.95
HNSW_M = 32
REBUILD_GROWTH = 4.0  # rebuild a trained index once the collection is 4x what it was built for


def nlist_for(n: int) -> int:
    """Inverted lists: ~4*sqrt(n), a power of two, at least 16 vectors per list on average."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and n / nlist < 16:
        nlist //= 2
    return int(min(nlist, 65536))


def estimate_memory(config: AnnConfig, n: int, dim: int) -> int:
    """Approximate RAM of the index in bytes (vectors/codes, ids, lists, quantizers)."""
    ids = 16 * n  # id per entry + the id map's bookkeeping
    if config.type == "flat":
        return 4 * dim * n + ids
    if config.type == "hnsw":
        links = int(2 * (config.hnsw_m or HNSW_M) * 4 * 1.1)  # level-0 neighbours + upper levels
        return (4 * dim + links) * n + ids
    centroids = 4 * dim * (config.nlist or 1)
    if config.type == "ivf":
        return 4 * dim * n + 8 * n + centroids
    m = config.pq_m or 8
    opq = 4 * dim * dim
    return (m + 8) * n + centroids + opq + 4 * 256 * dim


def make_config(
    kind: str, n: int, dim: int, *, max_memory: int = DEFAULT_MAX_MEMORY, rule: str = "", opq: bool = False
) -> AnnConfig:
    """The config of one explicit kind (``--ann flat|hnsw|ivf|ivfpq``), sized for ``n`` items.

    ``opq`` adds FAISS's OPQ rotation before PQ: a little more recall per byte,
    but its training costs minutes at 512-d, so it is off unless asked for;
    exact re-ranking from the stored vectors recovers most of the loss anyway.
    """
    if kind == "flat":
        return AnnConfig("flat", "IDMap2,Flat", rule=rule or "asked for exact search", built_for=n)
    if kind == "hnsw":
        return AnnConfig(
            "hnsw", f"IDMap2,HNSW{HNSW_M},Flat", hnsw_m=HNSW_M, rule=rule or "asked for HNSW", built_for=n
        )
    nlist = nlist_for(n)
    if kind == "ivf":
        return AnnConfig("ivf", f"IVF{nlist},Flat", nlist=nlist, rule=rule or "asked for IVF", built_for=n)
    if kind == "ivfpq":
        budget_per_item = max_memory / max(n, 1)
        m = next(
            (m for m in (64, 32, 16, 8) if dim % m == 0 and estimate_memory(
                AnnConfig("ivfpq", "", nlist=nlist, pq_m=m), n, dim) <= max_memory),
            None,
        )
        if m is None:
            raise MMSearchError(
                f"--max-memory {max_memory} bytes ({budget_per_item:.0f} per item) is too small even for "
                f"8-byte codes of {n} items; raise it"
            )
        return AnnConfig(
            "ivfpq", f"{'OPQ%d,' % m if opq else ''}IVF{nlist},PQ{m}x8", nlist=nlist, pq_m=m,
            rule=rule or f"asked for IVF-PQ ({m} bytes per vector)", built_for=n,
        )
    raise MMSearchError(f"unknown ANN type {kind!r}: use auto, {', '.join(ANN_TYPES)}")


def choose_ann(n: int, dim: int, *, max_memory: int = DEFAULT_MAX_MEMORY) -> AnnConfig:
    """``--ann auto``: the documented rule.

    1. fewer than 20k items: ``flat`` (exact; brute force is already fast);
    2. else, if full vectors fit the budget: ``ivf`` (IVF{~4 sqrt(n)},Flat; exact scores);
    3. else: ``ivfpq`` with the largest PQ code (64/32/16/8 bytes) that fits,
       and exact re-ranking of the top candidates from the stored vectors.
    HNSW is never chosen automatically: FAISS cannot delete from it and its build is the
    slowest on CPUs; ask for it with ``--ann hnsw``.
    """
    if n < EXACT_BELOW:
        return make_config("flat", n, dim, rule=f"auto: {n} < {EXACT_BELOW} items, exact search")
    ivf = make_config("ivf", n, dim)
    if estimate_memory(ivf, n, dim) <= max_memory:
        return replace(ivf, rule=f"auto: {n} items, full vectors fit the {_gib(max_memory)} budget: IVF")
    pq = make_config("ivfpq", n, dim, max_memory=max_memory)
    return replace(
        pq, rule=f"auto: {n} items, full vectors exceed the {_gib(max_memory)} budget: IVF-PQ{pq.pq_m} + re-ranking"
    )


def needs_rebuild(config: AnnConfig, n: int) -> bool:
    """Whether the collection has grown (or shrunk) enough that the index should be rebuilt."""
    base = max(config.built_for, 1)
    if config.type == "flat":
        return False
    return n > REBUILD_GROWTH * base or n < base / REBUILD_GROWTH


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


# -- tuning ---------------------------------------------------------------------------


def sample_queries(vectors: np.ndarray, n_queries: int, seed: int = 0, noise: float = 0.5) -> np.ndarray:
    """Queries near the data: stored vectors moved by a random direction, renormalised.

    A stored vector itself would find itself at rank 1 and inflate recall.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)
    base = vectors[pick]
    jitter = rng.standard_normal(base.shape).astype(np.float32)
    jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
    q = base + noise * jitter * np.float32(1 / math.sqrt(2))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Ids of each query's exact top-k among ``vectors`` (the ground truth recall is measured against)."""
    return ids[exact_knn(queries, vectors, k)]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def tune(
    index: VectorIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    target: float = DEFAULT_TARGET_RECALL,
    k: int = 10,
    n_queries: int = 300,
    seed: int = 0,
) -> VectorIndex:
    """Set the cheapest search parameters reaching ``target`` recall@k; record what was measured.

    The sample's recall is itself an estimate, so the parameters must beat the
    target by two standard errors: on 1M vectors a tuner that stopped at the
    target itself (0.9095 on its sample) gave 0.893 on held-out queries.
    """
    cfg = index.config
    if cfg.type == "flat" or len(ids) <= k:
        index.config = replace(cfg, target_recall=target, measured_recall=1.0, search={})
        return index
    order = np.argsort(ids)
    sorted_ids, sorted_vecs = ids[order], vectors[order]

    def fetch(wanted: np.ndarray) -> np.ndarray:
        return sorted_vecs[np.searchsorted(sorted_ids, wanted)]

    queries = sample_queries(vectors, n_queries, seed)
    truth = exact_topk(queries, ids, vectors, k)
    margin = 2 * math.sqrt(max(target * (1 - target), 1e-4) / (len(queries) * k))
    goal = min(1.0, target + margin)
    if cfg.type == "hnsw":
        grid = [{"efSearch": ef} for ef in (16, 32, 64, 128, 256, 512, 1024)]
    else:
        probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= (cfg.nlist or 1)]
        depths = (4, 10, 25) if cfg.type == "ivfpq" else (1,)
        grid = [{"nprobe": p, "rerank": d} if cfg.type == "ivfpq" else {"nprobe": p} for p in probes for d in depths]
    best: tuple[dict[str, int], float] | None = None
    for params in grid:
        index.apply_search_params(params)
        depth = params.get("rerank", 1)
        _, cands = index.search(queries, k * depth)
        if depth > 1 or cfg.type == "hnsw":
            # search.rerank: the same exact re-scoring that queries use, so what is tuned is what is served.
            found = np.stack([
                np.pad(rerank(queries[i], cands[i], fetch)[1][:k], (0, k), constant_values=-1)[:k]
                for i in range(len(queries))
            ])
        else:
            found = cands[:, :k]
        recall = recall_at_k(found, truth)
        if best is None or recall > best[1]:
            best = (params, recall)
        if recall >= goal:
            best = (params, recall)
            break
    assert best is not None
    index.apply_search_params(best[0])
    index.config = replace(index.config, target_recall=target, measured_recall=round(best[1], 4))
    return index
