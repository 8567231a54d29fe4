"""Synthetic embedding sets for ANN tests and benchmarks: CLIP-like (hard) and clustered (easy).

Uniform random unit vectors are the easiest case for an ANN index and the
least like real embeddings. Two generators, both seeded:

:class:`ClipLikeModel` (:func:`clip_like_vectors`, what the benchmarks use by
default) reproduces the statistics of CLIP image embeddings that decide how
hard inverted lists find neighbours:

- **a cone**: every vector shares a mean direction ``mu``; random pairs have
  cosine ~0.45, as CLIP ViT-B/32 image embeddings of unrelated photos do;
- **a power-law spectrum**: the content part of a vector has a covariance
  whose eigenvalues decay as ``i**-0.6`` in a random rotation, so many
  directions matter (high intrinsic dimension: k-means cells cut through the
  data instead of around it);
- **concepts of very uneven size**: 30 broad concepts, 200 sub-concepts
  placed around them, picked with Zipf weights (``1/rank``: the largest
  sub-concept holds ~17% of the photos, the smallest a few hundredths of a
  percent), with wide noise inside each, so that the ten nearest neighbours
  of a photo have cosine ~0.8 and differ from the 1st by only ~0.02.

With ~4 sqrt(n) inverted lists, IVF-Flat needs nprobe ~24 of 1,024 lists for
recall@10 0.95 at 100k vectors (~48 of 2,048 at 300k), where
:func:`clustered_unit_vectors` needs ~4: the numbers are in docs/scaling.md.

:func:`clustered_unit_vectors` (the older, easy set: 1000 tight Zipf(0.5)
clusters with a decaying spectrum) stays for tests that need clean clusters
and as the benchmarks' second column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipLikeModel:
    """The fixed part of a CLIP-like distribution (directions, concepts); draw vectors with :meth:`sample`."""

    dim: int
    mu: np.ndarray  # (dim,) the cone's unit direction
    basis: np.ndarray  # (dim, dim) rotation scaled by sqrt(spectrum): z @ basis.T has the content covariance
    centres: np.ndarray  # (n_concepts, dim) sub-concept centres (content part, before the cone)
    weights: np.ndarray  # (n_concepts,) how often each sub-concept is drawn
    cone: float
    noise: float

    @classmethod
    def create(
        cls,
        dim: int = 512,
        *,
        seed: int = 0,
        broad: int = 30,
        concepts: int = 200,
        zipf: float = 1.0,
        decay: float = 0.6,
        cone: float = 1.3,
        broad_spread: float = 1.0,
        concept_spread: float = 0.5,
        noise: float = 1.0,
    ) -> "ClipLikeModel":
        """The defaults are the calibrated ones (see the module docstring); every draw is seeded."""
        if dim < 2 or broad < 1 or concepts < 1:
            raise ValueError(f"need dim >= 2 and at least one concept (got dim={dim}, {broad}, {concepts})")
        rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -decay
        spectrum /= spectrum.sum()  # total content variance 1, whatever the dimension
        basis = (rotation * np.sqrt(spectrum)[None, :]).astype(np.float32)
        mu = rng.standard_normal(dim).astype(np.float32)
        mu /= np.linalg.norm(mu)
        tops = broad_spread * (rng.standard_normal((broad, dim)).astype(np.float32) @ basis.T)
        parent = rng.integers(0, broad, concepts)
        centres = tops[parent] + concept_spread * (rng.standard_normal((concepts, dim)).astype(np.float32) @ basis.T)
        weights = np.arange(1, concepts + 1, dtype=np.float64) ** -zipf
        rng.shuffle(weights)  # sizes unrelated to the order the centres were drawn in
        return cls(dim, mu, basis, centres.astype(np.float32), weights / weights.sum(), cone, noise)

    def sample(self, n: int, *, seed: int = 1, out: np.ndarray | None = None, chunk: int = 100_000) -> np.ndarray:
        """``n`` unit float32 vectors, written into ``out`` (e.g. a ``np.memmap``) chunk by chunk when given.

        Deterministic for a given ``seed`` and ``chunk``: held-out queries are
        another seed of the same model.
        """
        if out is None:
            out = np.empty((n, self.dim), dtype=np.float32)
        if out.shape != (n, self.dim):
            raise ValueError(f"out has shape {out.shape}, expected {(n, self.dim)}")
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            labels = rng.choice(len(self.weights), size=m, p=self.weights)
            content = self.centres[labels] + self.noise * (rng.standard_normal((m, self.dim)).astype(np.float32)
                                                           @ self.basis.T)
            block = self.cone * self.mu[None, :] + content
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + m] = block
        return out


def clip_like_vectors(n: int, dim: int = 512, *, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """``n`` CLIP-like unit vectors (the calibrated :class:`ClipLikeModel`, drawn with ``seed``)."""
    return ClipLikeModel.create(dim, seed=seed).sample(n, seed=seed + 1, chunk=chunk)


def clustered_unit_vectors(
    n: int,
    dim: int = 512,
    *,
    n_clusters: int = 1000,
    seed: int = 0,
    cone: float = 1.0,
    spread: float = 0.6,
    chunk: int = 100_000,
) -> np.ndarray:
    """``n`` L2-normalised float32 vectors in tight clusters (the easy set; made in chunks so 1M x 512 needs ~2 GiB).

    A common mean direction (cone), ``n_clusters`` centres with Zipf(0.5)
    weights, and anisotropic within-cluster noise whose per-dimension scale
    decays as i**-0.75 in a random rotation. Neighbours nearly always share a
    cluster, which makes inverted lists look better than on real embeddings.
    """
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** -0.75).astype(np.float32)
    scale /= np.sqrt(np.mean(scale**2))
    rotation = (rotation * scale[None, :]).astype(np.float32)  # column-scaled rotation
    mu = rng.standard_normal(dim).astype(np.float32)
    mu /= np.linalg.norm(mu)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32) @ rotation.T / np.sqrt(dim)
    centres = cone * mu + centres
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.choice(n_clusters, size=m, p=weights)
        noise = rng.standard_normal((m, dim)).astype(np.float32) @ rotation.T / np.sqrt(dim)
        block = centres[labels] + spread * noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out
