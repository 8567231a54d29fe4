"""The tuner: honest held-out queries, the fastest passing search, and a shortfall it reports instead of hiding."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import ann_tuning
from retrieval.ann import AnnConfig, VectorIndex
from retrieval.ann_lifecycle import build, make_policy, needs
from retrieval.ann_tuning import ground_truth, make_queries, tune
from retrieval.synthetic_vectors import clip_like_vectors, clustered_unit_vectors
from retrieval.vector_copy import ArrayVectors

from .ann_helpers import one_faiss_thread  # noqa: F401 - autouse

DIM = 32
N = 4000


@pytest.fixture(scope="module")
def source() -> ArrayVectors:
    return ArrayVectors(np.arange(N, dtype=np.int64) * 2 + 1, clip_like_vectors(N, DIM, seed=21))


@pytest.fixture(scope="module")
def pq_index(source: ArrayVectors) -> VectorIndex:
    return VectorIndex.build_from(DIM, source, AnnConfig("ivfpq", "IVF32,PQ8x4", nlist=32, pq_m=8, copy_dtype="float16"))


def _fresh(index: VectorIndex, source: ArrayVectors) -> VectorIndex:
    import faiss

    from retrieval.vector_copy import VectorCopy

    copy = VectorCopy.from_arrays(source.ids, source.vectors)
    return VectorIndex(DIM, faiss.clone_index(index._index), index.config, copy=copy)


def test_queries_are_held_out_images_and_captions_far_from_the_data(source: ArrayVectors) -> None:
    queries = make_queries(source, 60, seed=1)
    assert (queries.kinds == "image").sum() == (queries.kinds == "text").sum() == 60
    image, text = queries.kinds == "image", queries.kinds == "text"
    assert set(queries.exclude[image].tolist()) <= set(source.ids.tolist())  # a stored vector, left out of its answers
    assert (queries.exclude[text] == -1).all()
    np.testing.assert_allclose(np.linalg.norm(queries.vectors, axis=1), 1.0, atol=1e-5)
    cos = queries.vectors @ source.vectors.T
    # A caption is far from every photo: mean cosine ~0.17 to the collection, its best match far below a photo's.
    assert abs(float(cos[text].mean()) - ann_tuning.TEXT_COSINE_TO_ALL) < 0.03
    best_text = np.sort(cos[text], axis=1)[:, -1]
    best_image = np.sort(cos[image], axis=1)[:, -2]  # [-1] is the query itself
    assert np.median(best_text) < np.median(best_image) - 0.2
    truth = ground_truth(queries, source, 10)
    assert not any(ex in row for ex, row in zip(queries.exclude[image], truth[image]))


def test_captions_are_harder_for_inverted_lists_than_photos(source: ArrayVectors, pq_index: VectorIndex) -> None:
    index = tune(_fresh(pq_index, source), source, target=0.95, n_queries=60)
    held = index.config.held_out
    assert held["text"] <= held["image"]  # the promise is kept for the harder kind: measured_recall is the lower
    assert index.config.measured_recall == held["text"]


def test_the_tuner_prefers_the_fastest_passing_search(source: ArrayVectors, pq_index: VectorIndex) -> None:
    index = tune(_fresh(pq_index, source), source, target=0.9, n_queries=60)
    cfg = index.config
    assert cfg.shortfall is None and cfg.measured_recall >= 0.9
    assert set(cfg.search) == {"nprobe", "rerank"} and cfg.p50_ms > 0


def test_a_latency_limit_that_excludes_every_passing_search_is_a_reported_shortfall(
    source: ArrayVectors, pq_index: VectorIndex
) -> None:
    index = tune(_fresh(pq_index, source), source, target=0.95, n_queries=60, max_latency_ms=1e-6)
    cfg = index.config
    short = cfg.shortfall
    assert short is not None and short["target"] == 0.95 and short["limit_ms"] == 1e-6
    assert short["reached"] == cfg.measured_recall and short["p50_ms"] == cfg.p50_ms > 1e-6  # what ships is reported
    slower = short["slower"]
    assert slower is not None and slower["recall"] >= 0.95 - 0.02 and slower["p50_ms"] > 1e-6
    full = short["full_vectors"]  # measured on the index's own lists: full vectors would need no re-rank
    assert full is not None and full["recall"] >= 0.95 and 1 <= full["nprobe"] <= 32
    lines = needs(cfg, make_policy("ivfpq", "64MiB", 0.95, max_latency_ms=1e-6), N, DIM)
    assert any(line.startswith("more memory: --max-memory") for line in lines)
    assert any(line.startswith("a slower search:") and "over the 1e-06 ms limit" in line for line in lines)
    assert any(line.startswith("a higher latency limit:") for line in lines)


def test_ladders_that_end_short_of_the_target_are_a_reported_shortfall(
    source: ArrayVectors, pq_index: VectorIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4-bit codes re-ranked at most 2 deep cannot reach 0.99: the tuner ships its best and says so."""
    monkeypatch.setattr(ann_tuning, "DEPTHS", (1, 2))
    index = tune(_fresh(pq_index, source), source, target=0.99, n_queries=60)
    short = index.config.shortfall
    assert short is not None and short["reached"] < 0.99 and short["slower"] is None
    assert index.config.measured_recall == short["reached"] and index.config.search == short["search"]
    assert short["search"]["rerank"] == 2  # the most thorough search measured is what ships
    assert short["full_vectors"]["recall"] >= short["reached"]


def test_build_records_what_would_meet_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the policy: the shortfall carries 'needs' lines (what 'mmsearch info' and 'index' print)."""
    n, dim = 1500, 16
    vectors = clustered_unit_vectors(n, dim, n_clusters=30, seed=5)
    source = ArrayVectors(np.arange(n, dtype=np.int64), vectors)
    monkeypatch.setattr(ann_tuning, "DEPTHS", (1,))
    monkeypatch.setattr("retrieval.ann_lifecycle.alternatives", lambda *a, **k: [])  # no OPQ retraining here
    policy = make_policy("ivfpq", 30_000, 0.999)
    index = build(policy, dim, source, n_queries=40)
    short = index.config.shortfall
    assert index.config.lists_on_disk  # 30 kB cannot hold even 8-byte codes: the lists went to disk
    assert short is not None and short["reached"] < 0.999 and short["needs"]
    assert short["needs"][0].startswith("more memory: --max-memory")


def test_a_short_hnsw_is_pointed_to_ivf_not_to_more_memory() -> None:
    """HNSW keeps full vectors: more memory would not help it, a kind that scans whole lists does."""
    short = {"target": 0.95, "reached": 0.62, "search": {"efSearch": 4096}, "full_vectors": None, "slower": None,
             "deeper": True, "p50_ms": 13.5, "limit_ms": None}
    hnsw = AnnConfig("hnsw", "IDMap2,HNSW32,Flat", hnsw_m=32).but(shortfall=short)
    lines = needs(hnsw, make_policy("hnsw", "4GiB", 0.95), N, DIM)
    assert len(lines) == 1 and "--ann ivf" in lines[0] and "--max-memory" not in lines[0]
    pq = AnnConfig("ivfpq", "IVF32,PQ8x4", nlist=32, pq_m=8).but(shortfall=short)
    assert "--max-memory" in needs(pq, make_policy("ivfpq", "64MiB", 0.95), N, DIM)[0]
