"""Retrieval quality of an encoder on image-caption pairs: recall@K both ways, mean rank, zero-shot.

Protocol (as for Flickr30k/COCO): every caption is a text query whose correct
answer is its own image; an image query is answered correctly when *any* of its
captions is retrieved. A ``relevance`` matrix may widen "correct" (e.g. on the
synthetic world, any picture with every attribute the caption names).

Training's validation calls the same function, so the numbers are comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..encoder import Encoder
from .data import PairItem, load_item

RECALL_KS: tuple[int, ...] = (1, 5, 10)
ZERO_SHOT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.", "a picture of a {}.")


@dataclass
class RetrievalMetrics:
    """Recall@K in both directions (fractions in [0, 1]) and 1-based mean/median ranks."""

    n_images: int
    n_texts: int
    image_to_text: dict[str, float] = field(default_factory=dict)  # "R@1" -> value
    text_to_image: dict[str, float] = field(default_factory=dict)
    image_to_text_mean_rank: float = 0.0
    text_to_image_mean_rank: float = 0.0
    image_to_text_median_rank: float = 0.0
    text_to_image_median_rank: float = 0.0
    zero_shot_accuracy: float | None = None
    zero_shot_classes: int | None = None
    skipped_images: int = 0  # items left out because their picture could not be decoded

    @property
    def mean_recall(self) -> float:
        """Mean of the six recalls: the score by which training keeps its best checkpoint."""
        values = list(self.image_to_text.values()) + list(self.text_to_image.values())
        return float(np.mean(values)) if values else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_recall"] = self.mean_recall
        return out


def ranks_of_first_hit(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """For each query row, the 1-based rank of the best-scored relevant column.

    ``similarity`` and ``relevant`` are (n_queries, n_candidates); a query with no
    relevant candidate gets rank ``n_candidates + 1`` (never found).
    """
    sim = np.asarray(similarity, dtype=np.float32)
    rel = np.asarray(relevant, dtype=bool)
    best_relevant = np.where(rel, sim, -np.inf).max(axis=1, keepdims=True)
    # Rank = 1 + number of candidates scored strictly higher than the best relevant one.
    ranks = 1 + (sim > best_relevant).sum(axis=1)
    ranks = np.where(rel.any(axis=1), ranks, sim.shape[1] + 1)
    return ranks.astype(np.int64)


def retrieval_metrics(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_to_image: Sequence[int],
    relevance: np.ndarray | None = None,
    ks: Sequence[int] = RECALL_KS,
) -> RetrievalMetrics:
    """Metrics from unit-length features.

    ``text_to_image[t]`` is the index of caption ``t``'s own image. ``relevance``
    (n_texts, n_images), when given, marks every image that counts as a correct answer
    to caption ``t`` (it should include the caption's own image).
    """
    img = np.asarray(image_features, dtype=np.float32)
    txt = np.asarray(text_features, dtype=np.float32)
    owner = np.asarray(text_to_image, dtype=np.int64)
    sim = txt @ img.T  # (n_texts, n_images)
    if relevance is None:
        rel = np.zeros(sim.shape, dtype=bool)
        rel[np.arange(len(owner)), owner] = True
    else:
        rel = np.asarray(relevance, dtype=bool)
    t2i = ranks_of_first_hit(sim, rel)
    i2t = ranks_of_first_hit(sim.T, rel.T)
    return RetrievalMetrics(
        n_images=int(img.shape[0]),
        n_texts=int(txt.shape[0]),
        image_to_text={f"R@{k}": float((i2t <= k).mean()) for k in ks},
        text_to_image={f"R@{k}": float((t2i <= k).mean()) for k in ks},
        image_to_text_mean_rank=float(i2t.mean()),
        text_to_image_mean_rank=float(t2i.mean()),
        image_to_text_median_rank=float(np.median(i2t)),
        text_to_image_median_rank=float(np.median(t2i)),
    )


PictureSource = Callable[[Sequence[int]], Sequence["Image.Image | None"]]


def decode_pictures(items: Sequence[PairItem], min_side: int | None = None, workers: int | None = None
                    ) -> PictureSource:
    """A :data:`PictureSource` decoding ``items`` in a thread pool (reduced-size JPEG decoding at ``min_side``)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..embed import default_workers
    from .shards import BlobReader

    reader = BlobReader()
    n_workers = workers or default_workers()

    def pictures(indices: Sequence[int]) -> list[Image.Image | None]:
        with ThreadPoolExecutor(n_workers) as pool:
            return [r.image for r in pool.map(lambda i: load_item(items[i], reader, min_side), indices)]

    return pictures


def encode_items(
    encoder: Encoder,
    items: Sequence[PairItem],
    batch_size: int = 64,
    images: PictureSource | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(image features, caption features, caption -> image index) for the items whose picture decodes.

    ``images(indices)`` may supply the pictures (training's validation keeps them in
    memory); by default they are decoded here in parallel. Items whose picture cannot
    be decoded are left out with their captions: see :func:`encode_kept`.
    """
    image_feats, text_feats, owner, _ = encode_kept(encoder, items, batch_size, images)
    return image_feats, text_feats, owner


def encode_kept(
    encoder: Encoder,
    items: Sequence[PairItem],
    batch_size: int = 64,
    images: PictureSource | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """:func:`encode_items` plus the indices of the items kept (those whose picture decoded)."""
    source = images or decode_pictures(items, min_side=encoder.image_size)
    image_feats, kept = [], []
    for start in range(0, len(items), batch_size):
        indices = list(range(start, min(start + batch_size, len(items))))
        pictures = source(indices)
        good = [(i, img) for i, img in zip(indices, pictures) if img is not None]
        if good:
            image_feats.append(encoder.encode_images([img for _, img in good]))
            kept.extend(i for i, _ in good)
    captions = [c for i in kept for c in items[i].captions]
    owner = [k for k, i in enumerate(kept) for _ in items[i].captions]
    text_feats = [encoder.encode_texts(captions[s:s + batch_size * 4]) for s in range(0, len(captions), batch_size * 4)]
    empty = np.zeros((0, encoder.dim), dtype=np.float32)
    return (
        np.concatenate(image_feats) if image_feats else empty,
        np.concatenate(text_feats) if text_feats else empty,
        owner,
        kept,
    )


def zero_shot_accuracy(
    encoder: Encoder,
    image_features: np.ndarray,
    labels: Sequence[str],
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
) -> tuple[float, int]:
    """Top-1 accuracy of classifying each image by the nearest class-prompt embedding.

    Each class embedding is the normalised mean of its prompts (as in open_clip's
    zero-shot classifier). Returns (accuracy, number of classes).
    """
    classes = sorted(set(labels))
    weights = []
    for name in classes:
        feats = encoder.encode_texts([t.format(name) for t in templates]).mean(axis=0)
        weights.append(feats / max(np.linalg.norm(feats), 1e-12))
    predicted = (np.asarray(image_features) @ np.stack(weights).T).argmax(axis=1)
    truth = np.array([classes.index(label) for label in labels])
    return float((predicted == truth).mean()), len(classes)


def evaluate(
    encoder: Encoder,
    items: Sequence[PairItem],
    batch_size: int = 64,
    relevance: np.ndarray | None = None,
    images: PictureSource | None = None,
) -> RetrievalMetrics:
    """Recall@1/5/10 both ways, mean ranks and, when every item has a label, zero-shot accuracy.

    Items whose picture cannot be decoded are left out (with their captions and their
    rows and columns of ``relevance``) and counted in ``skipped_images``.
    """
    image_feats, text_feats, owner, kept = encode_kept(encoder, items, batch_size, images)
    if relevance is not None and len(kept) < len(items):
        rel = np.asarray(relevance, dtype=bool)
        caption_rows = np.cumsum([0] + [len(item.captions) for item in items])
        rows = [r for i in kept for r in range(caption_rows[i], caption_rows[i + 1])]
        relevance = rel[np.ix_(rows, kept)]
    metrics = retrieval_metrics(image_feats, text_feats, owner, relevance)
    metrics.skipped_images = len(items) - len(kept)
    labels = [items[i].label for i in kept]
    if kept and all(labels) and len(set(labels)) > 1:
        acc, n_classes = zero_shot_accuracy(encoder, image_feats, labels)  # type: ignore[arg-type]
        metrics.zero_shot_accuracy, metrics.zero_shot_classes = acc, n_classes
    return metrics


def format_metrics(metrics: RetrievalMetrics) -> str:
    """A short human-readable table."""
    lines = [f"{metrics.n_images} images, {metrics.n_texts} captions"
             + (f" ({metrics.skipped_images} undecodable images left out)" if metrics.skipped_images else "")]
    for name, recalls, mean_rank in (
        ("image->text", metrics.image_to_text, metrics.image_to_text_mean_rank),
        ("text->image", metrics.text_to_image, metrics.text_to_image_mean_rank),
    ):
        cells = "  ".join(f"{k} {v:.3f}" for k, v in recalls.items())
        lines.append(f"{name:12s} {cells}  mean rank {mean_rank:.1f}")
    if metrics.zero_shot_accuracy is not None:
        lines.append(f"zero-shot    accuracy {metrics.zero_shot_accuracy:.3f} over {metrics.zero_shot_classes} classes")
    return "\n".join(lines)


def attribute_recall(
    encoder: Encoder,
    catalogue: Any,
    query_splits: Sequence[str] = ("test", "unseen"),
    batch_size: int = 64,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, RetrievalMetrics]:
    """Recall on the synthetic world (:mod:`retrieval.synthetic`), where a hit is any picture that
    has every attribute the caption names.

    Gallery: the pictures of ``query_splits`` (default: held-out pictures of seen
    combinations, ``test``, and of held-out combinations, ``unseen``). Every picture of a
    held-out combination is ``unseen``, but only ~10% of a seen one is ``test``; so that both
    kinds of query face the same number of correct answers, ``unseen`` is thinned to the
    density of ``test`` (the first pictures of each combination, deterministically). Queries: their
    captions that name both kind and colour (so an ``unseen`` query names a combination
    never shown in training). text->image: the top-K pictures contain one satisfying
    the caption. image->text: the top-K captions (among all queries) contain one the
    picture satisfies. Reported per split of the query's own picture.
    """
    from ..synthetic import caption_attributes, satisfies

    items = _balanced_gallery(catalogue, query_splits)
    root = Path(catalogue.root)
    pair_items = [PairItem(image_path=root / it.image, captions=[], label=it.label, split=it.split) for it in items]
    image_feats, _, _ = encode_items(encoder, pair_items, batch_size)
    texts, owner = [], []
    for i, it in enumerate(items):
        for caption in it.captions:
            named = caption_attributes(caption)
            if "kind" in named and "colour" in named:
                texts.append(caption)
                owner.append(i)
    text_feats = encoder.encode_texts(texts)
    sim = text_feats @ image_feats.T
    rel = np.array([[satisfies(it.attributes, caption_attributes(t)) for it in items] for t in texts], dtype=bool)
    t2i_all = ranks_of_first_hit(sim, rel)
    i2t_all = ranks_of_first_hit(sim.T, rel.T)
    owner_split = np.array([items[o].split for o in owner])
    image_split = np.array([it.split for it in items])
    out: dict[str, RetrievalMetrics] = {}
    for name in query_splits:
        t2i, i2t = t2i_all[owner_split == name], i2t_all[image_split == name]
        if not len(t2i):
            continue
        out[name] = RetrievalMetrics(
            n_images=int(len(i2t)), n_texts=int(len(t2i)),
            image_to_text={f"R@{k}": float((i2t <= k).mean()) for k in ks},
            text_to_image={f"R@{k}": float((t2i <= k).mean()) for k in ks},
            image_to_text_mean_rank=float(i2t.mean()), text_to_image_mean_rank=float(t2i.mean()),
            image_to_text_median_rank=float(np.median(i2t)), text_to_image_median_rank=float(np.median(t2i)),
        )
    return out


def _balanced_gallery(catalogue: Any, splits: Sequence[str]) -> list[Any]:
    items = [it for it in catalogue.items if it.split in splits]
    seen = [it for it in catalogue.items if it.split in ("train", "val", "test")]
    n_test = sum(1 for it in seen if it.split == "test")
    if "unseen" not in splits or "test" not in splits or not n_test:
        return items
    keep_fraction = n_test / len(seen)
    by_combo: dict[tuple[str, str], list[Any]] = {}
    for it in items:
        if it.split == "unseen":
            by_combo.setdefault((it.attributes["kind"], it.attributes["colour"]), []).append(it)
    kept = {id(it) for group in by_combo.values() for it in group[: max(1, round(len(group) * keep_fraction))]}
    return [it for it in items if it.split != "unseen" or id(it) in kept]
