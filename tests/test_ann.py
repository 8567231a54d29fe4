"""ANN index kinds, the auto rule, tuning, incremental add/remove (VectorIndex level)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.ann import AnnConfig, VectorIndex, exact_knn, exact_search
from retrieval.ann_policy import (
    EXACT_BELOW,
    FAST_SCAN_FROM,
    alternatives,
    choose_ann,
    code_bytes,
    estimate_disk,
    estimate_memory,
    make_config,
    needs_rebuild,
    nlist_for,
)
from retrieval.ann_tuning import ground_truth, make_queries, recall_at_k, tune
from retrieval.errors import MMSearchError
from retrieval.search import rerank_candidates
from retrieval.synthetic_vectors import clip_like_vectors
from retrieval.vector_copy import ArrayVectors

from .ann_helpers import one_faiss_thread  # noqa: F401 - autouse

DIM = 32
N = 5000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vectors = clip_like_vectors(N, DIM, seed=3)
    ids = np.arange(100, 100 + N, dtype=np.int64) * 3  # ids are not positions
    return ids, vectors


def _config(kind: str) -> AnnConfig:
    """Each kind at a size a test trains in a second or two (4-bit PQ: 16 centroids per sub-quantizer)."""
    return {
        "flat": AnnConfig("flat", "IDMap2,Flat"),
        "hnsw": AnnConfig("hnsw", "IDMap2,HNSW32,Flat", hnsw_m=32),
        "ivf": AnnConfig("ivf", "IVF32,Flat", nlist=32),
        "ivfpq": AnnConfig("ivfpq", "IVF32,PQ8x4", nlist=32, pq_m=8, copy_dtype="float16"),
    }[kind]


_BUILT: dict[str, VectorIndex] = {}


def built(kind: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    """A fresh copy of a built index (trained once per module)."""
    import faiss

    if kind not in _BUILT:
        _BUILT[kind] = VectorIndex.build(DIM, ids, vectors, _config(kind))
    original = _BUILT[kind]
    copy = None
    if original.copy is not None:
        from retrieval.vector_copy import VectorCopy

        copy = VectorCopy.from_arrays(ids, vectors)
    return VectorIndex(DIM, faiss.clone_index(original._index), original.config, copy=copy)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_each_kind_round_trips_through_save_and_load(kind: str, data, tmp_path: Path) -> None:
    ids, vectors = data
    index = built(kind, ids, vectors)
    index.apply_search_params({"nprobe": 8, "efSearch": 64})
    queries = clip_like_vectors(20, DIM, seed=1)
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
    assert (tmp_path / "rerank.vectors").exists() == (kind == "ivfpq")  # the copy travels with the kinds that re-rank


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_removed_ids_never_come_back(kind: str, data) -> None:
    ids, vectors = data
    index = built(kind, ids, vectors)
    index._index.reset()  # keep the trained quantizers, drop the vectors
    index.copy = None
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


def test_streamed_exact_search_equals_brute_force(data) -> None:
    ids, vectors = data
    queries = clip_like_vectors(30, DIM, seed=5)
    scores, found = exact_search(queries, ArrayVectors(ids, vectors), 10, chunk=700)  # chunks smaller than k*...
    np.testing.assert_array_equal(found, ids[exact_knn(queries, vectors, 10)])
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # best first


@pytest.mark.parametrize("kind, target", [("ivf", 0.95), ("hnsw", 0.95), ("ivfpq", 0.90)])
def test_tuning_reaches_its_recall_target_on_held_out_queries(kind: str, target: float, data) -> None:
    ids, vectors = data
    source = ArrayVectors(ids, vectors)
    index = tune(built(kind, ids, vectors), source, target=target, n_queries=80)
    cfg = index.config
    assert cfg.shortfall is None and cfg.search
    assert cfg.measured_recall is not None and cfg.measured_recall >= target
    assert set(cfg.held_out) == {"image", "text"} and min(cfg.held_out.values()) == cfg.measured_recall
    assert cfg.target_recall == target and cfg.p50_ms is not None and cfg.p50_ms > 0
    # Fresh queries (another seed), answered the way queries are: the tuned parameters hold up.
    queries = make_queries(source, 80, seed=99)
    truth = ground_truth(queries, source, 10)
    depth = cfg.search.get("rerank", 1)
    found = []
    for q, ex in zip(queries.vectors, queries.exclude):
        want = 10 + int(ex >= 0)
        _, cands = index.search(q[None, :], want * depth)
        if cfg.reranks:
            cands = rerank_candidates(q, cands[0], index, source.fetch, want)[1][None, :]
        found.append([i for i in cands[0] if i != ex][:10])
    recall = recall_at_k(np.array([np.pad(f, (0, 10 - len(f)), constant_values=-1) for f in found]), truth)
    for kind_name in ("image", "text"):
        assert recall[queries.kinds == kind_name].mean() >= target - 0.05


def test_auto_rule_choices() -> None:
    gib = 1024**3
    assert choose_ann(1_000, 512).type == "flat"
    assert choose_ann(EXACT_BELOW - 1, 512).type == "flat"
    mid = choose_ann(FAST_SCAN_FROM - 1, 512)  # full vectors fit: exact scores from IVF-Flat
    assert (mid.type, mid.factory) == ("ivf", "IVF2048,Flat")
    assert "fit" in mid.rule and mid.copy_dtype is None and not mid.lists_on_disk
    big = choose_ann(1_000_000, 512)  # full vectors fit, but fast-scan codes + re-ranking answer faster
    assert (big.type, big.nlist, big.factory) == ("ivfpq", 4096, "IVF4096,PQ256x4fsr")
    assert (big.pq_m, big.pq_bits, code_bytes(big)) == (256, 4, 128) and "fast scan" in big.rule
    flat_bytes = 1_000_000 * 512 * 4
    small = choose_ann(1_000_000, 512, max_memory=flat_bytes // 8)  # 128-byte codes still fit 1/8
    assert (small.type, small.pq_m, small.factory) == ("ivfpq", 256, "IVF4096,PQ256x4fsr")
    assert "exceed" in small.rule
    assert small.copy_dtype == "float16"  # re-ranked from a float16 copy beside index.faiss
    assert make_config("ivfpq", 1_000_000, 512, opq=True).factory == "OPQ64,IVF4096,PQ256x4fsr"
    # What the builder tries when the code misses: full vectors where they fit, then OPQ.
    assert [a.factory for a in alternatives(big, 1_000_000, 512)] == \
        ["IVF4096,Flat", "OPQ64,IVF4096,PQ256x4fsr"]
    assert [a.factory for a in alternatives(small, 1_000_000, 512, max_memory=flat_bytes // 8)] == \
        ["OPQ64,IVF4096,PQ256x4fsr"]
    assert estimate_memory(small, 1_000_000, 512) <= flat_bytes // 8
    assert estimate_disk(small, 1_000_000, 512) > 1_000_000 * 512 * 2  # the copy is on disk, not in the budget
    tiny = choose_ann(1_000_000, 512, max_memory=40 * 1_000_000)
    assert tiny.type == "ivfpq" and (tiny.pq_m, tiny.pq_bits, tiny.factory) == (32, 4, "IVF4096,PQ32x4fsr")
    odd = choose_ann(1_000_000, 24)  # no 4-bit layout divides 24 dimensions: 8-bit codes
    assert (odd.pq_bits, odd.factory) == (8, "IVF4096,PQ8x8")
    assert choose_ann(10_000_000, 512, max_memory=4 * gib).type == "ivfpq"
    assert nlist_for(100_000) == 1024 and nlist_for(20_000) == 512 and nlist_for(10**9) == 131072
    assert choose_ann(100_000, 512).factory == "IVF1024,Flat"  # a flat coarse quantizer below 8192 lists
    assert choose_ann(10_000_000, 512).factory == "IVF16384_HNSW32,PQ256x4fsr"  # a graph over 16k centroids


def test_the_opq_alternative_of_a_fast_scan_code_builds_and_answers() -> None:
    """OPQ over a 4-bit code's one-dimension sub-spaces ran past 5 minutes here: the rotation gets wider blocks."""
    vectors = clip_like_vectors(6_000, 32, seed=5)
    config = make_config("ivfpq", 6_000, 32, max_memory=10**9, opq=True)
    assert config.factory == "OPQ4,IVF256,PQ32x4fsr" and config.pq_bits == 4
    index = VectorIndex.build(32, np.arange(6_000), vectors, config)
    index.apply_search_params({"nprobe": 256})  # every list: what is left is the code's own error
    _, found = index.search(vectors[:50], 10)
    assert np.mean(found[:, 0] == np.arange(50)) >= 0.9  # each vector finds itself first


def test_past_the_budget_lists_go_on_disk() -> None:
    gib = 1024**3
    billion = choose_ann(10**9, 512, max_memory=4 * gib)
    assert billion.type == "ivfpq" and billion.lists_on_disk and billion.pq_m == 64
    assert billion.pq_bits == 8 and billion.factory.endswith(",PQ64x8")  # on-disk lists hold 8-bit codes
    assert "on disk" in billion.rule
    assert estimate_memory(billion, 10**9, 512) <= 4 * gib  # centroids and tables only
    asked = make_config("ivf", 10_000_000, 512, max_memory=4 * gib)
    assert asked.lists_on_disk and "on disk" in asked.rule
    assert not make_config("ivf", 10_000_000, 512, max_memory=64 * gib).lists_on_disk
    with pytest.raises(MMSearchError, match="centroids"):
        make_config("ivfpq", 10**9, 512, max_memory=2**20)


def test_growth_triggers_rebuild() -> None:
    cfg = make_config("ivf", 100_000, 64)
    assert not needs_rebuild(cfg, 300_000)
    assert needs_rebuild(cfg, 500_000)
    assert not needs_rebuild(make_config("flat", 10, 64), 10_000_000)
