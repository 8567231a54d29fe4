"""What an explanation is, without torch: the result of :func:`retrieval.explain.explain` and how it is drawn.

:class:`Explanation` holds a signed grid of scores over what the model saw of
one picture, one grid per query term, the crop geometry that places the grid on
the full (EXIF-oriented) photo, and the peak regions in photo pixels. It
serialises to JSON (:meth:`Explanation.as_dict`) and draws itself on the photo
(:meth:`Explanation.overlay`). Computing one needs the model
(:mod:`retrieval.explain`); holding, drawing and sending one does not, so the
API, the CLI and the server import this module without importing torch.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageDecodeError, InvalidQueryError, MMSearchError
from .explain_overlay import CropGeometry, draw_overlay

__all__ = ["DEFAULT_METHOD", "METHODS", "ExplainedItem", "Explanation", "TermMap", "oriented_photo"]

# The methods of retrieval.explain. The default: the best pointing on the synthetic world for a few
# encodes' cost (docs/explain.md has the table; benchmarks/bench_explain.py measures it).
METHODS = ("intgrad", "gradcam", "gradeclip", "tokens", "occlusion", "rise")
DEFAULT_METHOD = "intgrad"


@dataclass(frozen=True, eq=False)  # numpy fields: compare grids with numpy, not ==
class TermMap:
    """One query term's share of the map: ``grid`` already includes its (normalised) weight."""

    label: str | None
    weight: float
    grid: np.ndarray


@dataclass(frozen=True, eq=False)
class Explanation:
    """A signed heatmap over what the model saw of one picture, for one query.

    ``grid`` (gh, gw) float32: positive cells pull the picture towards the
    query, negative ones push it away; the units depend on ``method`` (see
    :mod:`retrieval.explain`). ``terms`` holds each query term's share (they
    sum to ``grid``). ``geometry`` places the grid on the oriented photo;
    ``boxes`` (photo pixels) surround the peak regions, strongest first;
    ``peak`` is the photo point of the strongest cell. ``score`` is the
    picture's cosine with the query as this computation saw it; ``passes``
    counts the work done; ``tower`` says which activations were read.
    """

    grid: np.ndarray
    method: str
    geometry: CropGeometry
    score: float
    terms: tuple[TermMap, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    peak: tuple[float, float]
    passes: dict[str, int]
    tower: str
    notes: tuple[str, ...] = field(default=())

    @property
    def outside_note(self) -> str | None:
        """E.g. "The left and right 12% of the photo were outside what the model saw"; None if all was seen."""
        return self.geometry.outside_note()

    def as_dict(self, decimals: int = 4) -> dict[str, Any]:
        """JSON-ready: grids rounded to ``decimals``, boxes and geometry in photo pixels.

        Each term also carries ``pull`` and ``push``: the sums of its positive
        and negative cells, so a reader sees at once which term brought the
        picture in and which held it back.
        """
        return {
            "method": self.method,
            "score": round(self.score, 6),
            "grid_shape": list(self.grid.shape),
            "grid": np.round(self.grid.astype(np.float64), decimals).tolist(),
            "terms": [{"label": t.label, "weight": t.weight,
                       "pull": round(float(t.grid[t.grid > 0].sum()), 6),
                       "push": round(float(t.grid[t.grid < 0].sum()), 6),
                       "grid": np.round(t.grid.astype(np.float64), decimals).tolist()} for t in self.terms],
            "geometry": self.geometry.as_dict(),
            "outside_note": self.outside_note,
            "boxes": [list(b) for b in self.boxes],
            "peak": [round(v, 1) for v in self.peak],
            "passes": dict(self.passes),
            "tower": self.tower,
            "notes": list(self.notes),
        }

    def overlay(self, photo: Image.Image | str | os.PathLike[str], alpha: float = 0.6, *,
                term: int | None = None, boxes: bool = True, cmap: str = "builtin",
                max_side: int | None = None) -> Image.Image:
        """The photo as the user sees it (EXIF orientation applied, full frame) with the heatmap on it.

        ``term`` draws one term's share instead of the total, on the same colour
        scale. Parts outside the model's view are shaded. ``max_side`` shrinks a
        large photo first; otherwise the result has the oriented photo's size.
        """
        if term is not None and not 0 <= term < len(self.terms):
            raise InvalidQueryError(f"this explanation has {len(self.terms)} term(s); there is no term {term}")
        if max_side is not None and max_side < 1:
            raise InvalidQueryError(f"max_side must be at least 1 pixel, got {max_side}")
        # A thumbnail-sized overlay of a large JPEG needs no full-size decode.
        image = oriented_photo(photo, max_side)[0]
        if max_side is not None and max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        grid = self.grid if term is None else self.terms[term].grid
        scale = max([float(np.abs(self.grid).max())] + [float(np.abs(t.grid).max()) for t in self.terms])
        geometry = self.geometry.scaled(image.size)
        drawn = [tuple(round(v * image.size[i % 2] / self.geometry.photo_size[i % 2]) for i, v in enumerate(b))
                 for b in self.boxes] if boxes and term is None else []
        return draw_overlay(image, grid, geometry, alpha=alpha, boxes=drawn, cmap=cmap, scale=scale)

    def overlay_bytes(self, photo: Image.Image | str | os.PathLike[str], *, format: str = "PNG",
                      max_side: int | None = None, alpha: float = 0.6, term: int | None = None) -> bytes:
        """The overlay encoded as an image file (PNG by default; JPEG or WebP for smaller pages)."""
        if format.upper() not in _MEDIA_TYPES:
            raise MMSearchError(f"an overlay is written as PNG, JPEG or WEBP, not {format!r}")
        image = self.overlay(photo, alpha, term=term, max_side=max_side)
        buffer = io.BytesIO()
        options = {"quality": 85} if format.upper() in ("JPEG", "WEBP") else {}
        image.save(buffer, format=format, **options)
        return buffer.getvalue()


def oriented_photo(image: Image.Image | str | os.PathLike[str], min_side: int | None
                   ) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB picture with EXIF orientation applied, and the oriented photo's full size.

    A path is decoded as the indexer decodes it (``min_side`` lets a large JPEG
    be decoded at reduced size; the full size is still returned). A PIL image
    still carrying an orientation tag (straight from ``Image.open``) is turned
    upright; one from ``load_image`` already is.
    """
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ImageDecodeError(f"the image has no pixels ({image.width}x{image.height})")
        oriented = ImageOps.exif_transpose(image)
        rgb = oriented if oriented.mode == "RGB" else oriented.convert("RGB")
        return rgb, rgb.size
    if not isinstance(image, (str, os.PathLike)):
        raise ImageDecodeError(f"a heatmap is drawn on a PIL image or an image file, not {type(image).__name__}")
    from .loading import load_image

    if os.path.isdir(image):
        raise ImageDecodeError(f"{os.fspath(image)} is a folder, not an image file")
    if not os.path.exists(image):
        raise ImageDecodeError(f"{os.fspath(image)}: no such file")
    loaded = load_image(image, min_side=min_side)
    if not loaded.ok or loaded.image is None:
        raise ImageDecodeError(f"{os.fspath(image)}: {loaded.error}")
    if loaded.width < 1 or loaded.height < 1:
        raise ImageDecodeError(f"{os.fspath(image)}: the image has no pixels")
    return loaded.image, (loaded.width, loaded.height)


_MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True, eq=False)
class ExplainedItem:
    """One picture explained for the API's callers: the explanation and its overlay as an image file.

    ``item`` is what was asked for (an item id, a path or a PIL image). When the
    picture could not be explained (its file is gone or unreadable), ``error``
    says why and ``explanation`` and ``image`` are None.
    """

    item: object
    explanation: Explanation | None
    image: bytes | None = None
    format: str = "PNG"
    error: str | None = None

    @property
    def media_type(self) -> str:
        """The overlay's MIME type, e.g. ``image/png`` (for an HTTP response or a data URI)."""
        return _MEDIA_TYPES.get(self.format.upper(), "application/octet-stream")
