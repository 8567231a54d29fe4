"""The re-rank copy (float16 / int8 rows memory-mapped beside index.faiss) and the exact refinement of re-ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import IndexCorruptError
from retrieval.search import rerank
from retrieval.synthetic_vectors import clip_like_vectors
from retrieval.vector_copy import ArrayVectors, VectorCopy

from .ann_helpers import one_faiss_thread  # noqa: F401 - autouse

DIM = 48


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vectors = clip_like_vectors(3000, DIM, seed=11)
    ids = np.random.default_rng(0).permutation(3000).astype(np.int64) * 7 + 3  # unsorted, sparse
    return ids, vectors


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_scores_from_the_copy_stay_within_its_error_bound(dtype: str, data, tmp_path: Path) -> None:
    ids, vectors = data
    copy = VectorCopy.from_arrays(ids, vectors, dtype=dtype).write(tmp_path / "rerank.vectors")
    assert copy.path == tmp_path / "rerank.vectors" and len(copy) == len(ids)
    queries = clip_like_vectors(40, DIM, seed=12)
    approx = copy.fetch(ids) @ queries.T
    exact = vectors @ queries.T
    assert np.abs(approx - exact).max() <= copy.max_error
    size = {"float16": 2 * DIM + 8, "int8": DIM + 12}[dtype] * len(ids) + 64
    assert (tmp_path / "rerank.vectors").stat().st_size == size
    missing = copy.fetch(np.array([-5, 1, int(ids[0])]))
    assert not missing[:2].any() and missing[2].any()  # ids not in the copy read as zeros, as vectors_of does


def test_changes_are_kept_aside_until_written_and_readers_keep_the_old_file(data, tmp_path: Path) -> None:
    ids, vectors = data
    path = tmp_path / "rerank.vectors"
    reader = VectorCopy.from_arrays(ids, vectors).write(path)
    writer = VectorCopy.open(path, DIM)
    fresh = clip_like_vectors(2, DIM, seed=99)
    writer.remove(ids[:10])
    writer.add(np.array([ids[20], 123456]), fresh)  # replace one, add one
    assert writer.changed and len(writer) == len(ids) - 10 + 1
    np.testing.assert_allclose(writer.fetch(np.array([123456]))[0], fresh[1], atol=1e-3)
    assert not writer.fetch(ids[:10]).any()
    written = writer.write(path)
    np.testing.assert_allclose(reader.fetch(ids[20:21])[0], vectors[20], atol=1e-3)  # the old mapping is intact
    np.testing.assert_allclose(written.fetch(ids[20:21])[0], fresh[0], atol=1e-3)
    assert len(written) == len(ids) - 9 and not written.changed
    expected_ids = np.sort(np.concatenate([ids[10:], [123456]]))
    np.testing.assert_array_equal(np.asarray(written.ids), expected_ids)


def test_a_damaged_copy_is_a_typed_error_and_verify_style_checks_find_wrong_rows(data, tmp_path: Path) -> None:
    ids, vectors = data
    path = tmp_path / "rerank.vectors"
    copy = VectorCopy.from_arrays(ids, vectors).write(path)
    source = ArrayVectors(ids, vectors)
    assert copy.problems_against(source.chunks(500)) == []
    other = vectors.copy()
    other[5] = -other[5]
    problems = VectorCopy.open(path, DIM).problems_against(ArrayVectors(ids, other).chunks(500))
    assert len(problems) == 1 and "beyond float16 rounding" in problems[0] and str(ids[5]) in problems[0]
    short = ArrayVectors(ids[:-3], vectors[:-3])
    assert any("items.sqlite does not" in p for p in copy.problems_against(short.chunks()))
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[:-10])
    with pytest.raises(IndexCorruptError, match="truncated"):
        VectorCopy.open(path, DIM)
    path.write_bytes(b"not a copy" + data_bytes[10:])
    with pytest.raises(IndexCorruptError, match="not a vector copy"):
        VectorCopy.open(path, DIM)
    path.write_bytes(data_bytes)
    with pytest.raises(IndexCorruptError, match="expected 64-d"):
        VectorCopy.open(path, 64)


def test_rerank_from_the_copy_scores_its_top_k_exactly_and_stays_within_the_copy_error(data) -> None:
    """The float16 copy chooses the top k and float32 re-scores them: exact scores, each within 2x the copy's
    error of the exact k-th best, and the same top k as float32 wherever no near-tie decides."""
    ids, vectors = data
    rng = np.random.default_rng(3)
    # Near-ties on purpose: candidates that differ from each other by less than float16's rounding.
    base = vectors[0]
    twins = base[None, :] + rng.standard_normal((50, DIM)).astype(np.float32) * 2e-4
    twins /= np.linalg.norm(twins, axis=1, keepdims=True)
    twin_ids = np.arange(10**6, 10**6 + 50)
    source = ArrayVectors(np.concatenate([ids, twin_ids]), np.concatenate([vectors, twins]))
    copy = VectorCopy.from_arrays(source.ids, source._rows(np.arange(len(source))))
    same = 0
    queries = clip_like_vectors(20, DIM, seed=4)
    for q in [base, *queries]:
        candidates = np.concatenate([twin_ids, ids[:500]])
        exact_scores, exact_ids = rerank(q, candidates, source.fetch)
        scores, found = rerank(q, candidates, copy.fetch, refine=source.fetch, top=10)
        assert sorted(found.tolist()) == sorted(exact_ids.tolist())  # every candidate, once
        # The first 10: exact float32 scores (another subset may sum in another order: 1e-6), best first ...
        np.testing.assert_allclose(scores[:10], source.fetch(found[:10]) @ q, rtol=0, atol=1e-6)
        assert np.all(np.diff(scores[:10]) <= 0)
        # ... each within twice the copy's error of the exact 10th best; the rest within the error.
        assert scores[:10].min() >= exact_scores[9] - 2 * copy.max_error
        assert np.abs(scores[10:] - (source.fetch(found[10:]) @ q)).max() <= copy.max_error
        same += set(found[:10].tolist()) == set(exact_ids[:10].tolist())
    assert same >= len(queries) - 2  # only the near-tie query (the twins) may differ from float32's top 10