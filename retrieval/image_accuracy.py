"""The accuracy floor of a lowered image tower, measured on a catalogue's held-out queries.

A runtime that multiplies in fewer bits (torch bf16 or int8, ONNX int8) is
acceptable on a trained model only when its image vectors keep a mean cosine
>= :data:`MIN_MEAN_COSINE` to the exact (torch fp32) ones AND text->image
recall@10 on held-out queries stays within :data:`MAX_RECALL_DROP` of the
exact one's. The queries are the captions of the synthetic world's
(:mod:`retrieval.synthetic`) ``test`` and ``unseen`` pictures; a hit is any
picture with every attribute a caption names. ``benchmarks/bench_runtimes.py``
and the tests both use :func:`measure_accuracy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from .synthetic import Catalogue, SyntheticItem, relevance

if TYPE_CHECKING:
    from .encoder import Encoder

MIN_MEAN_COSINE = 0.995
MAX_RECALL_DROP = 0.005  # 0.5 points of recall@10
HELD_OUT_SPLITS: tuple[str, ...] = ("test", "unseen")


@dataclass(frozen=True)
class RuntimeAccuracy:
    """A candidate runtime beside the exact one on the same held-out gallery and queries."""

    mean_cosine: float  # candidate image vectors to the reference's, averaged over the gallery
    min_cosine: float
    recall_reference: float  # text->image recall@k of the reference encoder
    recall_candidate: float
    k: int
    queries: int
    gallery: int

    @property
    def passes(self) -> bool:
        """True when both floors hold: mean cosine and recall@k drop."""
        return (self.mean_cosine >= MIN_MEAN_COSINE
                and self.recall_reference - self.recall_candidate <= MAX_RECALL_DROP + 1e-12)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passes": self.passes}


def held_out(catalogue: Catalogue, splits: Sequence[str] = HELD_OUT_SPLITS) -> tuple[list[SyntheticItem], list[str]]:
    """The held-out pictures and their distinct (English) captions, in a stable order."""
    items = catalogue.split(*splits)
    if not items:
        raise ValueError(f"the catalogue has no pictures in the splits {', '.join(splits)}")
    captions = list(dict.fromkeys(c for item in items for c in item.captions))
    return items, captions


def recall_at_k(image_vectors: np.ndarray, text_vectors: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant picture among their top ``k``."""
    scores = text_vectors @ image_vectors.T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean(np.take_along_axis(relevant, top, axis=1).any(axis=1)))


def encode_gallery(encoder: "Encoder", catalogue: Catalogue, items: Sequence[SyntheticItem],
                   batch_size: int = 32) -> np.ndarray:
    """Image vectors of ``items`` through ``encoder`` (whatever runtime it holds)."""
    out = []
    for start in range(0, len(items), batch_size):
        pictures = []
        for item in items[start:start + batch_size]:
            with Image.open(catalogue.root / item.image) as img:
                pictures.append(img.convert("RGB"))
        out.append(encoder.encode_images(pictures))
    return np.concatenate(out)


def measure_accuracy(reference: "Encoder", candidate: "Encoder", catalogue: Catalogue, k: int = 10,
                     splits: Sequence[str] = HELD_OUT_SPLITS) -> RuntimeAccuracy:
    """``candidate`` (the same model in other numerics) against ``reference`` (torch fp32) on held-out queries.

    Each encoder embeds the queries with its own text tower, so a runtime that
    also lowers the text side (bf16) is judged whole.
    """
    items, captions = held_out(catalogue, splits)
    relevant = np.asarray(relevance([item.attributes for item in items], captions), dtype=bool)
    ref_images = encode_gallery(reference, catalogue, items)
    cand_images = encode_gallery(candidate, catalogue, items)
    cosines = np.sum(ref_images * cand_images, axis=1)
    return RuntimeAccuracy(
        mean_cosine=float(np.mean(cosines)), min_cosine=float(np.min(cosines)),
        recall_reference=recall_at_k(ref_images, reference.encode_texts(captions), relevant, k),
        recall_candidate=recall_at_k(cand_images, candidate.encode_texts(captions), relevant, k),
        k=k, queries=len(captions), gallery=len(items),
    )
