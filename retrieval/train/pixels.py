"""From a decoded picture to the model's uint8 pixels, and the memory that keeps them.

:class:`ImagePrep` decides what is cached of a picture and how a sample is made of
it; :class:`PixelCache` keeps cached forms within a byte budget. Used by the
training pipeline (:mod:`retrieval.train.pipeline`); the why of both is in its
docstring and in docs/training.md ("The input pipeline and memory").
"""

from __future__ import annotations

import math
import os
import random
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..fast_paths import SplitPreprocess

MAX_CACHED_ASPECT = 2.0  # crops never reach beyond the central 2:1 of a wider picture (see ImagePrep)
DEFAULT_CACHE_SHARE = 1 / 8  # of the machine's memory
DEFAULT_CACHE_MAX_MB = 1536


def physical_memory_bytes() -> int:
    """The memory this process may use: the machine's RAM, or a smaller cgroup (container) limit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_cache_mb() -> int:
    """``--cache-mb`` when not given: an eighth of memory, at most 1.5 GiB (a laptop keeps working)."""
    return int(min(DEFAULT_CACHE_MAX_MB, physical_memory_bytes() * DEFAULT_CACHE_SHARE / 2**20))


class PixelCache:
    """uint8 pictures by item index, filled until ``budget_bytes`` is used, then read-only. Thread-safe."""

    OVERHEAD = 128  # bytes per entry beyond the pixels (array header, dict slot)

    def __init__(self, budget_bytes: int) -> None:
        self.budget = max(0, int(budget_bytes))
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._items: dict[int, np.ndarray] = {}
        self._full = self.budget == 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: int) -> np.ndarray | None:
        value = self._items.get(key)  # a dict read is atomic under the GIL
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: int, value: np.ndarray) -> bool:
        """Keep ``value`` if it fits in what is left of the budget; True when kept."""
        if self._full:
            return False
        size = value.nbytes + self.OVERHEAD
        with self._lock:
            if key in self._items:
                return True
            if self.used + size > self.budget:
                self._full = self.used + 64 * 64 * 3 > self.budget  # not even a small picture fits: stop trying
                return False
            self._items[key] = value
            self.used += size
        return True


# -- from a decoded picture to pixels --------------------------------------------------


def _interpolation(name: str | None) -> int:
    return {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(name or "", Image.BICUBIC)


def _crop_aspect(img: Image.Image, max_aspect: float) -> Image.Image:
    w, h = img.size
    if max(w, h) <= max_aspect * min(w, h):
        return img
    if w > h:
        keep = int(round(max_aspect * h))
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    keep = int(round(max_aspect * w))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) drawn as torchvision's ``RandomResizedCrop.get_params`` draws it, from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class ImagePrep:
    """How a decoded picture becomes the model's uint8 pixels, and which form of it is cached.

    * ``augment=False`` with open_clip's usual transform (resize, centre crop, to-tensor,
      normalise): the cached form *is* the model's input, uint8 (``SplitPreprocess``),
      bit-identical to the transform's own output once normalised.
    * ``augment=True``: the picture is cached with its shorter side at the input size
      (aspect capped at 2:1: a random crop of at least 85% of the area with an aspect of
      3:4..4:3 falls back to a central crop beyond ~1.6:1, so nothing a crop could show
      is lost), and each sample is a seeded random resized crop of it (open_clip's
      training transform, scale 0.85-1, no flips: captions say left and right).
    * any other transform: the same cached form, and the transform itself per sample
      (float pixels, never cached).
    """

    def __init__(self, model: torch.nn.Module, transform: Callable[[Image.Image], torch.Tensor], augment: bool,
                 scale: tuple[float, float] = (0.85, 1.0)) -> None:
        visual = model.visual  # type: ignore[attr-defined]
        size = visual.image_size
        self.size: tuple[int, int] = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) \
            else (int(size), int(size))  # (height, width)
        pp = dict(getattr(visual, "preprocess_cfg", {}) or {})
        self.interpolation = _interpolation(pp.get("interpolation"))
        self.mean = torch.tensor(list(visual.image_mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(visual.image_std), dtype=torch.float32).view(1, 3, 1, 1)
        self.augment = augment
        self.scale = scale
        self.transform = transform
        self.split = None if augment else SplitPreprocess.of(transform)
        self.min_side = max(self.size)

    @property
    def exact(self) -> bool:
        """True when the cached form is the model's input itself."""
        return self.split is not None

    def cached_form(self, img: Image.Image) -> np.ndarray:
        """What is kept of a decoded picture (uint8, HxWx3)."""
        if self.split is not None:
            return self.split.to_array(_crop_aspect(img, 20.0))
        img = _crop_aspect(img, MAX_CACHED_ASPECT)
        w, h = img.size
        short = min(w, h)
        if short > self.min_side:
            factor = self.min_side / short
            img = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), self.interpolation)
        return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)

    def sample(self, cached: np.ndarray, rng: random.Random) -> np.ndarray | torch.Tensor:
        """The model's pixels for one sample: uint8 HxWx3, or a float CxHxW tensor for other transforms."""
        if self.split is not None:
            return cached
        img = Image.fromarray(cached)
        if not self.augment:
            return self.transform(img)
        box = random_resized_crop_box(img.width, img.height, rng, self.scale)
        out = img.resize((self.size[1], self.size[0]), self.interpolation, box=box)
        return np.asarray(out)

    def to_pixels(self, batch: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """A batch of samples as the model's float input (N, 3, H, W) on ``device``.

        uint8 is moved first and converted there (a quarter of the bytes to copy to a GPU);
        the arithmetic is ToTensor's and Normalize's, in their order.
        """
        if isinstance(batch, torch.Tensor) and batch.dtype != torch.uint8:
            return batch.to(device, non_blocking=True)
        x = torch.as_tensor(batch).to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).contiguous().float().div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    def to_image(self, cached: np.ndarray) -> Image.Image:
        """A cached form as a picture for the encoder's own preprocessing (validation)."""
        return Image.fromarray(cached)
