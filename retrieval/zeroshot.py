"""Zero-shot classification: which of a set of labels best describes an image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ImageDecodeError, InvalidQueryError

if TYPE_CHECKING:
    from PIL import Image

    from .encoder import Encoder

# A few of CLIP's ImageNet prompt templates: averaging them is steadier than one prompt.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "{}",
)


@dataclass(frozen=True)
class Prediction:
    """Labels ranked by probability for one image."""

    source: str
    labels: list[tuple[str, float]]  # (label, probability), best first

    @property
    def best(self) -> str:
        return self.labels[0][0]

    def as_dict(self) -> dict[str, object]:
        return {
            "image": self.source,
            "label": self.best,
            "probabilities": {label: round(p, 6) for label, p in self.labels},
        }


def parse_labels(raw: str | None = None, labels_file: str | os.PathLike[str] | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a file with one label per line (order kept, duplicates dropped)."""
    labels: list[str] = []
    if raw:
        labels += [part.strip() for part in raw.split(",")]
    if labels_file:
        try:
            with open(labels_file, encoding="utf-8") as fh:
                labels += [line.strip() for line in fh]
        except OSError as exc:
            raise InvalidQueryError(f"cannot read labels file {labels_file}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise InvalidQueryError(
                f"labels file {labels_file} is not UTF-8 text (one label per line)") from None
    labels = list(dict.fromkeys(label for label in labels if label))
    if len(labels) < 2:
        raise InvalidQueryError("give at least two labels, e.g. --labels 'cat,dog,car'")
    return labels


def label_vectors(encoder: "Encoder", labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    """One unit vector per label: the normalised mean of its template embeddings."""
    if not templates or any("{}" not in t for t in templates):
        raise InvalidQueryError("every prompt template must contain '{}' where the label goes")
    prompts = [t.format(label) for label in labels for t in templates]
    vecs = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def classify(
    encoder: "Encoder",
    images: Sequence["str | os.PathLike[str] | Image.Image"],
    labels: Sequence[str],
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> list[Prediction]:
    """Probabilities over ``labels`` for each image (softmax of cosines times the model's logit scale)."""
    from .loading import load_image

    if len(labels) < 2:
        raise InvalidQueryError("give at least two labels")
    decoded = []
    names = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            loaded = load_image(image)
            if loaded.image is None:
                raise ImageDecodeError(f"cannot decode {os.fspath(image)}: {loaded.error}")
            decoded.append(loaded.image)
            names.append(os.fspath(image))
        else:
            decoded.append(image.convert("RGB"))
            names.append("<image>")
    text = label_vectors(encoder, labels, templates)
    logits = encoder.encode_images(decoded) @ text.T * encoder.logit_scale
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    out = []
    for name, row in zip(names, probs):
        order = np.argsort(-row)
        out.append(Prediction(name, [(labels[i], float(row[i])) for i in order]))
    return out
