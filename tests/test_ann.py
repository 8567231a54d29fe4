"""ANN index kinds, the auto rule, tuning, incremental add/remove (VectorIndex level)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.ann import AnnConfig, VectorIndex
from retrieval.ann_policy import (
    EXACT_BELOW,
    choose_ann,
    estimate_memory,
    exact_topk,
    make_config,
    needs_rebuild,
    nlist_for,
    recall_at_k,
    sample_queries,
    tune,
)
from retrieval.synthetic_vectors import clustered_unit_vectors

DIM = 64
N = 6000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vectors = clustered_unit_vectors(N, DIM, n_clusters=60, seed=3)
    ids = np.arange(100, 100 + N, dtype=np.int64) * 3  # ids are not positions
    return ids, vectors


def _config(kind: str) -> AnnConfig:
    cfg = make_config(kind, N, DIM)
    if kind in ("ivf", "ivfpq"):  # a small collection: fewer lists than the large-scale rule
        cfg = AnnConfig(**{**cfg.as_dict(), "nlist": 32, "factory": cfg.factory.replace(f"IVF{cfg.nlist}", "IVF32")})
    if kind == "ivfpq":
        cfg = AnnConfig(**{**cfg.as_dict(), "pq_m": 16, "factory": "IVF32,PQ16x8"})
    return cfg


_BUILT: dict[str, VectorIndex] = {}


def built(kind: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    """A fresh copy of a built index (training IVF-PQ takes seconds: once per module)."""
    import faiss

    if kind not in _BUILT:
        _BUILT[kind] = VectorIndex.build(DIM, ids, vectors, _config(kind))
    original = _BUILT[kind]
    return VectorIndex(DIM, faiss.clone_index(original._index), original.config)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_each_kind_round_trips_through_save_and_load(kind: str, data, tmp_path: Path) -> None:
    ids, vectors = data
    index = built(kind, ids, vectors)
    index.apply_search_params({"nprobe": 8, "efSearch": 64})
    queries = sample_queries(vectors, 20, seed=1)
    scores, found = index.search(queries, 10)
    path = tmp_path / "x.faiss"
    index.save(path)
    for mmap in (False, True):
        loaded = VectorIndex.load(path, DIM, index.config, mmap=mmap)
        assert loaded.ntotal == N and loaded.config == index.config
        s2, f2 = loaded.search(queries, 10)
        np.testing.assert_array_equal(found, f2)
        np.testing.assert_allclose(scores, s2, rtol=1e-6)
    assert set(found.ravel().tolist()) <= set(ids.tolist())


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_removed_ids_never_come_back(kind: str, data) -> None:
    ids, vectors = data
    index = VectorIndex(DIM, config=_config(kind))
    if index.config.needs_training:
        trained = built(kind, ids, vectors)  # reuse the trained quantizers, drop the vectors
        trained._index.reset()
        index = trained
    index.add(ids[:4000], vectors[:4000])
    index.add(ids[4000:], vectors[4000:])  # incremental add to a trained index, no retraining
    assert index.ntotal == N
    index.apply_search_params({"nprobe": 32})
    removed = ids[::7]
    assert index.remove(removed) == len(removed)
    _, found = index.search(vectors[::7][:200], 50)  # query exactly the removed vectors
    assert not set(found.ravel().tolist()) & set(removed.tolist())


def test_hnsw_cannot_delete_so_the_caller_filters(data) -> None:
    ids, vectors = data
    index = VectorIndex.build(DIM, ids[:500], vectors[:500], _config("hnsw"))
    assert not index.supports_remove and index.remove(ids[:3]) == 0  # documented no-op


@pytest.mark.parametrize("kind, target", [("ivf", 0.95), ("hnsw", 0.95), ("ivfpq", 0.90)])
def test_tuning_reaches_its_recall_target(kind: str, target: float, data) -> None:
    ids, vectors = data
    index = tune(built(kind, ids, vectors), ids, vectors, target=target, n_queries=150)
    cfg = index.config
    assert cfg.measured_recall is not None and cfg.measured_recall >= target
    assert cfg.target_recall == target and cfg.search
    # Check on fresh queries (another seed): the tuned parameters hold up.
    queries = sample_queries(vectors, 150, seed=99)
    truth = exact_topk(queries, ids, vectors, 10)
    depth = cfg.search.get("rerank", 1)
    _, cands = index.search(queries, 10 * depth)
    if depth > 1:
        from retrieval.search import rerank

        order = np.argsort(ids)
        fetch = lambda w: vectors[order][np.searchsorted(ids[order], w)]
        cands = np.stack([rerank(q, c, fetch)[1][:10] for c, q in zip(cands, queries)])
    assert recall_at_k(cands[:, :10], truth) >= target - 0.05


def test_auto_rule_choices() -> None:
    gib = 1024**3
    assert choose_ann(1_000, 512).type == "flat"
    assert choose_ann(EXACT_BELOW - 1, 512).type == "flat"
    big = choose_ann(1_000_000, 512)
    assert (big.type, big.nlist, big.factory) == ("ivf", 4096, "IVF4096,Flat")
    assert "fit" in big.rule
    flat_bytes = 1_000_000 * 512 * 4
    small = choose_ann(1_000_000, 512, max_memory=flat_bytes // 8)
    assert (small.type, small.pq_m, small.factory) == ("ivfpq", 64, "IVF4096,PQ64x8")
    assert make_config("ivfpq", 1_000_000, 512, opq=True).factory == "OPQ64,IVF4096,PQ64x8"
    assert estimate_memory(small, 1_000_000, 512) <= flat_bytes // 8
    tiny = choose_ann(1_000_000, 512, max_memory=40 * 1_000_000)
    assert tiny.type == "ivfpq" and tiny.pq_m == 16
    assert choose_ann(10_000_000, 512, max_memory=4 * gib).type == "ivfpq"
    assert nlist_for(100_000) == 1024 and nlist_for(20_000) == 512


def test_growth_triggers_rebuild() -> None:
    cfg = make_config("ivf", 100_000, 64)
    assert not needs_rebuild(cfg, 300_000)
    assert needs_rebuild(cfg, 500_000)
    assert not needs_rebuild(make_config("flat", 10, 64), 10_000_000)
