"""Near-duplicate groups from constructed vectors: copies and bursts grouped, similar scenes not, best copy first."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.ann import range_pairs
from retrieval.duplicates import (
    ItemFacts,
    exact_neighbours,
    find_duplicates,
    keep_order,
)
from retrieval.errors import InvalidQueryError
from retrieval.synthetic_vectors import clustered_unit_vectors

DIM = 64


def toward(v: np.ndarray, other: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at exactly ``cos`` to ``v``, turned toward ``other``."""
    u = other - (other @ v) * v
    u /= np.linalg.norm(u)
    return (cos * v + math.sqrt(1 - cos * cos) * u).astype(np.float32)


class Library:
    """Rows of vectors with their facts, built up photo by photo."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        # Distinct photos of a few scene types: a tight cone of clusters, like CLIP embeddings.
        self.pool = clustered_unit_vectors(400, DIM, n_clusters=8, cone=1.3, spread=1.2, seed=seed)
        self.vectors: list[np.ndarray] = []
        self.facts: list[ItemFacts] = []

    def add(self, v: np.ndarray, w: int = 4000, h: int = 3000, taken: float | None = 1e9, size: int = 3_000_000,
            hash_: str | None = None, path: str | None = None) -> int:
        i = len(self.facts)
        self.vectors.append(np.asarray(v, dtype=np.float32))
        self.facts.append(ItemFacts(i, w, h, taken, hash_ or f"h{i}", size, path or f"/photos/{i:04d}.jpg"))
        return i

    def other(self) -> np.ndarray:
        return self.pool[self.rng.integers(len(self.pool))]

    def groups(self, **kwargs):
        return find_duplicates(np.stack(self.vectors), self.facts, exact_neighbours, **kwargs)


def ids(groups) -> list[list[int]]:
    return [[m.id for m in g.members] for g in groups]


def test_copies_and_bursts_grouped_similar_scenes_not():
    lib = Library()
    photo = lib.pool[0]
    original = lib.add(photo, taken=1000.0)
    resized = lib.add(toward(photo, lib.other(), 0.995), w=1600, h=1200, taken=1000.0, size=400_000)
    reencoded = lib.add(toward(photo, lib.other(), 0.985), taken=1000.0, size=900_000)
    cropped = lib.add(toward(photo, lib.other(), 0.965), w=3600, h=2700, taken=1000.0)
    burst = [lib.add(toward(photo, lib.other(), c), taken=1000.0 + 0.3 * (k + 1)) for k, c in enumerate((0.97, 0.96))]
    # The same kind of scene, another photo: close, but not that close.
    same_scene = [lib.add(toward(photo, lib.other(), c), taken=5000.0 + k) for k, c in enumerate((0.90, 0.86, 0.80))]
    unrelated = [lib.add(v) for v in lib.pool[200:260]]
    groups = lib.groups(threshold=0.95)
    assert ids(groups) == [[original, reencoded, burst[0], burst[1], cropped, resized]]
    grouped = set(ids(groups)[0])
    assert grouped.isdisjoint(same_scene) and grouped.isdisjoint(unrelated)
    sims = {m.id: m.similarity for m in groups[0].members}
    assert sims[original] == 1.0 and sims[resized] == pytest.approx(0.995, abs=1e-5)


def test_keep_order_resolution_then_capture_then_file_size_then_path():
    a = ItemFacts(1, 4000, 3000, 200.0, "x", 10, "/b.jpg")
    b = ItemFacts(2, 4000, 3000, 100.0, "y", 10, "/c.jpg")  # earlier capture wins at equal size
    c = ItemFacts(3, 6000, 4000, 900.0, "z", 10, "/d.jpg")  # more pixels win over everything
    d = ItemFacts(4, 4000, 3000, 100.0, "w", 99, "/e.jpg")  # same pixels and time: the larger file
    e = ItemFacts(5, 4000, 3000, 100.0, "v", 99, "/a.jpg")  # ... then the path
    f = ItemFacts(6, 4000, 3000, None, "u", 999, "/0.jpg")  # no capture time sorts after any time
    assert [x.id for x in sorted([a, b, c, d, e, f], key=keep_order)] == [3, 5, 4, 2, 1, 6]


def test_exact_byte_copies_are_marked_and_grouped_whatever_the_vectors():
    lib = Library(1)
    photo = lib.pool[3]
    first = lib.add(photo, hash_="same", path="/z/late.jpg", taken=50.0)
    copy = lib.add(photo, hash_="same", path="/a/early.jpg", taken=50.0)
    edited = lib.add(toward(photo, lib.other(), 0.98), taken=50.0)
    # A byte copy whose stored vector differs (e.g. re-embedded by another model run) still joins.
    odd = lib.add(lib.pool[150], hash_="same", path="/m/odd.jpg", taken=50.0)
    for v in lib.pool[300:340]:
        lib.add(v)
    (group,) = lib.groups()
    # Equal pixels, time and size: by path ("/a/early.jpg" < "/m/odd.jpg" < "/photos/0002.jpg" < "/z/late.jpg").
    assert [m.id for m in group.members] == [copy, odd, edited, first]
    assert [m.exact_copy_of for m in group.members] == [None, copy, None, copy]
    assert not group.all_exact
    only_copies = find_duplicates(np.stack([photo, photo]), [ItemFacts(0, hash="k"), ItemFacts(1, hash="k")],
                                  exact_neighbours)
    assert only_copies[0].all_exact and only_copies[0].as_dict()["keep"] == 0


def test_bounded_groups_do_not_chain_but_connected_ones_do():
    lib = Library(2)
    chain = [lib.pool[5]]
    for _ in range(10):  # each step 0.96 from the last, drifting away
        chain.append(toward(chain[-1], lib.other(), 0.96))
    rows = [lib.add(v, taken=float(k)) for k, v in enumerate(chain)]
    bounded = lib.groups(threshold=0.95)
    connected = lib.groups(threshold=0.95, method="connected")
    assert ids(connected) == [rows]
    assert len(bounded) >= 2
    x = np.stack(lib.vectors)
    for group in bounded:
        keep = x[group.keep.id]
        assert all(float(x[m.id] @ keep) >= 0.85 - 1e-6 for m in group.members)
    assert sorted(i for g in ids(bounded) for i in g) == rows  # nobody lost


def test_messy_neighbour_output_gives_the_same_groups():
    lib = Library(3)
    photo = lib.pool[7]
    for c in (1.0, 0.99, 0.97):
        lib.add(toward(photo, lib.other(), c) if c < 1 else photo)
    for v in lib.pool[100:140]:
        lib.add(v)
    x = np.stack(lib.vectors)
    clean = find_duplicates(x, lib.facts, exact_neighbours)

    def messy(vectors: np.ndarray, threshold: float) -> np.ndarray:
        pairs = exact_neighbours(vectors, threshold)
        noise = np.array([[0, 0], [5, 5], [-1, 3], [2, 10_000], [10, 20], [30, 31]])  # self, bad, below threshold
        return np.concatenate([pairs[:, ::-1], pairs, noise])

    assert ids(find_duplicates(x, lib.facts, messy)) == ids(clean) == [[0, 1, 2]]


def test_range_pairs_finds_the_close_pairs():
    x = clustered_unit_vectors(6000, DIM, n_clusters=60, cone=1.3, spread=1.2, seed=4)
    rng = np.random.default_rng(4)
    planted = np.stack([toward(x[i], x[rng.integers(6000)], 0.97) for i in rng.choice(6000, 300, replace=False)])
    x = np.concatenate([x, planted])
    exact = {tuple(p) for p in exact_neighbours(x, 0.95).tolist()}
    found = range_pairs(x, 0.95)
    assert found.dtype == np.int64 and (found[:, 0] < found[:, 1]).all()
    found_set = {tuple(p) for p in found.tolist()}
    assert found_set <= exact  # everything returned is a true pair
    assert len(found_set) / len(exact) >= 0.99
    assert range_pairs(x, 0.95).tolist() == found.tolist()  # deterministic
    small = x[:500]
    assert range_pairs(small, 0.95).tolist() == exact_neighbours(small, 0.95).tolist()  # exact below 4096
    assert range_pairs(x[:1], 0.95).shape == (0, 2)


@pytest.mark.parametrize(("kwargs", "words"), [({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"),
                                               ({"method": "single"}, "method"), ({"max_spread": 1.0}, "max_spread")])
def test_bad_parameters_are_typed_errors(kwargs, words):
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(InvalidQueryError, match=words):
        find_duplicates(x, [ItemFacts(i) for i in range(3)], exact_neighbours, **kwargs)


def test_nothing_to_group():
    assert find_duplicates(np.eye(4, dtype=np.float32), [ItemFacts(i) for i in range(4)], exact_neighbours) == []
    assert find_duplicates(np.zeros((1, 4), dtype=np.float32), [ItemFacts(0)], exact_neighbours) == []
    with pytest.raises(ValueError):
        find_duplicates(np.eye(3, dtype=np.float32), [ItemFacts(0)], exact_neighbours)


def test_threshold_one_groups_identical_vectors_despite_float_round_off():
    v = np.random.default_rng(9).standard_normal(DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    other = np.random.default_rng(10).standard_normal(DIM).astype(np.float32)
    x = np.stack([v, v.copy(), other / np.linalg.norm(other)])
    facts = [ItemFacts(i, 100, 100, hash=f"h{i}") for i in range(3)]  # not byte copies: only the vectors agree
    assert ids(find_duplicates(x, facts, range_pairs, threshold=1.0)) == [[0, 1]]
