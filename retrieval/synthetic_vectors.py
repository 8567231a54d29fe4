"""Synthetic embedding sets shaped like CLIP's, for ANN tests and benchmarks.

Uniform random unit vectors are the easiest case for an ANN index and the
least like real embeddings. CLIP image embeddings instead sit in a narrow
cone (a shared mean direction; random pairs have cosine ~0.5), cluster by
content, and spread unevenly over dimensions (a decaying spectrum). This
generator reproduces those three properties:

- a common mean direction ``mu`` (cone),
- ``n_clusters`` cluster centres of varied sizes (Zipf-like weights),
- anisotropic within-cluster noise whose per-dimension scale decays as i**-0.75
  in a random rotation of the space.
"""

from __future__ import annotations

import numpy as np


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
    """``n`` L2-normalised float32 vectors (made in chunks so 1M x 512 needs ~2 GiB, not 3x that)."""
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
