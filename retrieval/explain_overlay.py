"""Where the model looked, in the photo's own pixels: crop geometry, peak boxes and the heatmap overlay.

The model never sees the photo a person sees: open_clip's preprocessing resizes
it (shortest side, or squashed to a square, or longest side then padded) and
centre-crops it. :func:`crop_geometry` replays those steps on the photo's size
alone and returns the rectangle of the (EXIF-oriented) photo that the model's
input covers, so a grid over the model input maps back onto the full frame.
No torch here (not even torchvision: the preprocessing's steps are recognised
by their class names), so the API and the faces can draw and place heatmaps
without loading the model's libraries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .errors import MissingDependencyError, MMSearchError, UnknownPreprocessError

# What fraction of a side must be cut before a note says so (rounding of the resize is ~1 px).
_NOTE_MIN_FRACTION = 0.005


@dataclass(frozen=True)
class CropGeometry:
    """Which rectangle of the oriented photo the model's input covers.

    ``box`` is (x0, y0, x1, y1) in photo pixels (floats, edges not centres); it
    lies inside the photo for a centre crop, is the whole photo for a squash,
    and reaches beyond it where the input was padded (letterbox). ``input_size``
    is the model input's (width, height); ``mode`` is ``crop``, ``squash``,
    ``pad`` or ``exact``.
    """

    photo_size: tuple[int, int]
    box: tuple[float, float, float, float]
    input_size: tuple[int, int]
    mode: str

    def scaled(self, size: tuple[int, int]) -> CropGeometry:
        """The same geometry for the photo shown at ``size`` (a thumbnail, or the full-size original)."""
        sx, sy = size[0] / self.photo_size[0], size[1] / self.photo_size[1]
        x0, y0, x1, y1 = self.box
        return CropGeometry(size, (x0 * sx, y0 * sy, x1 * sx, y1 * sy), self.input_size, self.mode)

    def outside(self) -> dict[str, float]:
        """Fraction of the photo cut off on each side (left, right, top, bottom), 0 where nothing was."""
        w, h = self.photo_size
        x0, y0, x1, y1 = self.box
        return {
            "left": max(0.0, x0) / w, "right": max(0.0, w - x1) / w,
            "top": max(0.0, y0) / h, "bottom": max(0.0, h - y1) / h,
        }

    def outside_note(self) -> str | None:
        """A sentence for a person when part of the photo was not seen (or was squashed or padded), else None."""
        cut = {side: f for side, f in self.outside().items() if f >= _NOTE_MIN_FRACTION}
        notes = []
        if cut:
            pct = {side: _percent(f) for side, f in cut.items()}
            parts = []
            for a, b in (("left", "right"), ("top", "bottom")):
                if a in pct and b in pct and pct[a] == pct[b]:
                    parts.append(f"the {a} and {b} {pct[a]}")
                else:
                    parts += [f"the {side} {pct[side]}" for side in (a, b) if side in pct]
            plural = len(parts) > 1 or " and " in parts[0]
            notes.append(_join(parts) + " of the photo " + ("were" if plural else "was") + " outside what the model saw")
        if self.mode == "squash" and not _same_aspect(self.photo_size, self.input_size):
            notes.append(f"the model saw the whole photo squashed to {self.input_size[0]}x{self.input_size[1]}")
        if self.mode == "pad":
            notes.append("the model saw the whole photo, padded to its input shape")
        if not notes:
            return None
        text = "; ".join(notes)
        return text[0].upper() + text[1:]

    def cell_box(self, row: int, col: int, grid: tuple[int, int]) -> tuple[float, float, float, float]:
        """The photo rectangle of one grid cell (not clipped to the photo)."""
        gh, gw = grid
        x0, y0, x1, y1 = self.box
        cw, ch = (x1 - x0) / gw, (y1 - y0) / gh
        return (x0 + col * cw, y0 + row * ch, x0 + (col + 1) * cw, y0 + (row + 1) * ch)

    def as_dict(self) -> dict[str, Any]:
        return {
            "photo_size": list(self.photo_size), "box": [round(v, 2) for v in self.box],
            "input_size": list(self.input_size), "mode": self.mode,
            "outside": {k: round(v, 4) for k, v in self.outside().items()},
        }


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%" if fraction >= 0.01 else f"{fraction * 100:.1f}%"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= 0.01 * (b[0] / b[1])


# -- replaying the preprocessing --------------------------------------------------------------


class _Affine:
    """Current image size and the map from its pixel coordinates to photo pixels (x = ax * u + bx)."""

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.ax, self.bx, self.ay, self.by = 1.0, 0.0, 1.0, 0.0
        self.resized = self.cropped = self.padded = self.squashed = False

    def resize(self, w: int, h: int) -> None:
        if (w, h) == (self.w, self.h):
            return
        # A resize that keeps the aspect up to its one pixel of rounding is no squash (96x72 -> 42x32).
        if abs(w - self.w * h / self.h) > 1 and abs(h - self.h * w / self.w) > 1:
            self.squashed = True
        self.ax *= self.w / w
        self.ay *= self.h / h
        self.w, self.h = w, h
        self.resized = True

    def centre_crop_or_pad(self, ch: int, cw: int) -> None:
        # torchvision's center_crop and open_clip's center_crop_or_pad: pad (left/top gets the
        # smaller half) when the crop is larger, then crop at round((size - crop) / 2).
        pad_l = (cw - self.w) // 2 if cw > self.w else 0
        pad_t = (ch - self.h) // 2 if ch > self.h else 0
        w = self.w + (pad_l + (cw - self.w + 1) // 2 if cw > self.w else 0)
        h = self.h + (pad_t + (ch - self.h + 1) // 2 if ch > self.h else 0)
        left, top = round((w - cw) / 2.0), round((h - ch) / 2.0)
        if pad_l or pad_t or w != self.w or h != self.h:
            self.padded = True
        if left or top or (cw, ch) != (w, h):
            self.cropped = True
        self.bx += self.ax * (left - pad_l)
        self.by += self.ay * (top - pad_t)
        self.w, self.h = cw, ch


def _shortest_edge_size(w: int, h: int, size: int, max_size: int | None) -> tuple[int, int]:
    # torchvision.transforms.functional._compute_resized_output_size for a single int.
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _is(step: Any, *names: str) -> bool:
    """True when ``step`` is (a subclass of) a torchvision or open_clip transform with one of these names."""
    return any(cls.__name__ in names and cls.__module__.split(".")[0] in ("torchvision", "open_clip")
               for cls in type(step).__mro__)


def crop_geometry(preprocess: Any, photo_size: tuple[int, int]) -> CropGeometry:
    """Replay the geometric steps of an open_clip/torchvision preprocess on a photo of ``photo_size``.

    Understands ``Resize`` (shortest side or fixed size), ``CenterCrop``,
    open_clip's ``ResizeKeepRatio`` and ``CenterCropOrPad``; mode conversion,
    ``ToTensor`` and ``Normalize`` move no pixel. Any other step raises
    :class:`UnknownPreprocessError`: a heatmap placed by a guess would mislead.
    """
    steps = getattr(preprocess, "transforms", None)
    if steps is None:
        raise UnknownPreprocessError(
            f"cannot tell how {type(preprocess).__name__} crops the picture, so the heatmap cannot be placed on it"
        )
    w, h = photo_size
    geo = _Affine(w, h)
    for step in steps:
        name = type(step).__name__
        if _is(step, "Resize"):
            size = step.size
            if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
                size = size if isinstance(size, int) else size[0]
                geo.resize(*_shortest_edge_size(geo.w, geo.h, int(size), step.max_size))
            else:
                geo.resize(int(size[1]), int(size[0]))
        elif _is(step, "CenterCrop", "CenterCropOrPad"):
            ch, cw = (step.size, step.size) if isinstance(step.size, int) else (step.size[0], step.size[-1])
            geo.centre_crop_or_pad(int(ch), int(cw))
        elif _is(step, "ResizeKeepRatio"):
            if getattr(step, "random_scale_prob", 0) or getattr(step, "random_aspect_prob", 0):
                raise UnknownPreprocessError("the preprocessing resizes at random; a heatmap cannot be placed")
            target_h, target_w = step.size
            rh, rw = geo.h / target_h, geo.w / target_w
            ratio = max(rh, rw) * step.longest + min(rh, rw) * (1.0 - step.longest)
            geo.resize(round(geo.w / ratio), round(geo.h / ratio))
        elif _is(step, "ToTensor", "Normalize", "MaybeConvertMode", "MaybeToTensor", "ConvertImageDtype") or (
            "convert" in getattr(step, "__name__", getattr(getattr(step, "lambd", None), "__name__", ""))
        ):
            continue
        else:
            raise UnknownPreprocessError(
                f"the model's preprocessing has a step ({name}) whose geometry is unknown; cannot place a heatmap"
            )
    box = (geo.bx, geo.by, geo.ax * geo.w + geo.bx, geo.ay * geo.h + geo.by)
    mode = "pad" if geo.padded else "squash" if geo.squashed else "crop" if geo.cropped else "exact"
    return CropGeometry((w, h), box, (geo.w, geo.h), mode)


# -- peaks and boxes ---------------------------------------------------------------------------


def peak_point(grid: np.ndarray, geometry: CropGeometry) -> tuple[float, float]:
    """Photo coordinates of the strongest cell's centre (first on ties), clamped into the photo."""
    row, col = np.unravel_index(int(np.argmax(grid)), grid.shape)
    x0, y0, x1, y1 = geometry.cell_box(int(row), int(col), grid.shape)  # type: ignore[arg-type]
    w, h = geometry.photo_size
    return (min(max((x0 + x1) / 2, 0.0), w), min(max((y0 + y1) / 2, 0.0), h))


def peak_boxes(grid: np.ndarray, geometry: CropGeometry, threshold: float = 0.5,
               max_boxes: int = 3) -> list[tuple[int, int, int, int]]:
    """Boxes (photo pixels, clipped) around the connected regions scoring >= ``threshold`` x the top score.

    Regions are 4-connected groups of cells, strongest (summed score) first.
    Nothing is boxed when no cell scores above zero.
    """
    top = float(grid.max()) if grid.size else 0.0
    if not top > 0:
        return []
    hot = grid >= threshold * top
    seen = np.zeros_like(hot)
    regions: list[tuple[float, list[tuple[int, int]]]] = []
    gh, gw = grid.shape
    for r in range(gh):
        for c in range(gw):
            if not hot[r, c] or seen[r, c]:
                continue
            stack, cells = [(r, c)], []
            seen[r, c] = True
            while stack:
                i, j = stack.pop()
                cells.append((i, j))
                for ni, nj in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                    if 0 <= ni < gh and 0 <= nj < gw and hot[ni, nj] and not seen[ni, nj]:
                        seen[ni, nj] = True
                        stack.append((ni, nj))
            regions.append((float(sum(grid[i, j] for i, j in cells)), cells))
    regions.sort(key=lambda item: -item[0])
    w, h = geometry.photo_size
    boxes = []
    for _, cells in regions[:max_boxes]:
        rects = [geometry.cell_box(i, j, (gh, gw)) for i, j in cells]
        x0 = max(0, math.floor(min(r[0] for r in rects)))
        y0 = max(0, math.floor(min(r[1] for r in rects)))
        x1 = min(w, math.ceil(max(r[2] for r in rects)))
        y1 = min(h, math.ceil(max(r[3] for r in rects)))
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


# -- drawing ------------------------------------------------------------------------------------

# Signed maps: red pulls the picture towards the query, blue pushes it away; the
# strength shows as opacity, so the photo stays readable where nothing happens.
_POSITIVE = np.array([[255, 236, 150], [245, 140, 40], [200, 20, 30]], dtype=np.float32)
_NEGATIVE = np.array([[170, 220, 250], [60, 140, 230], [25, 50, 170]], dtype=np.float32)
_SHADE = (40, 40, 40)


def _ramp(anchors: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear colours along ``anchors`` for t in [0, 1]; returns (..., 3) float32."""
    pos = np.clip(t, 0.0, 1.0) * (len(anchors) - 1)
    lo = np.minimum(pos.astype(np.int32), len(anchors) - 2)
    frac = (pos - lo)[..., None]
    return anchors[lo] * (1 - frac) + anchors[lo + 1] * frac


def colorize(values: np.ndarray, cmap: str = "builtin") -> np.ndarray:
    """RGB colours (..., 3) uint8 for signed values in [-1, 1].

    ``builtin`` needs nothing installed; any other name is a matplotlib
    colormap (sampled from -1 to 1), which needs matplotlib.
    """
    if cmap == "builtin":
        rgb = np.where(values[..., None] >= 0, _ramp(_POSITIVE, values), _ramp(_NEGATIVE, -values))
        return rgb.astype(np.uint8)
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            f"the colormap {cmap!r} needs matplotlib (pip install matplotlib); the builtin one needs nothing"
        ) from None
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise MMSearchError(f"unknown colormap {cmap!r}") from None
    return (colormap((np.clip(values, -1, 1) + 1) / 2)[..., :3] * 255).astype(np.uint8)


class _Sampler:
    """Samples the grid bilinearly at the pixels of a (w, h) image (all rows, or a strip of them)."""

    def __init__(self, grid: np.ndarray, geometry: CropGeometry, size: tuple[int, int]) -> None:
        w, h = size
        geo = geometry.scaled(size) if geometry.photo_size != size else geometry
        x0, y0, x1, y1 = geo.box
        gh, gw = grid.shape
        # Cell centres in photo pixels; beyond the outer centres the edge value holds.
        xs = (np.arange(w, dtype=np.float64) + 0.5 - x0) / (x1 - x0) * gw - 0.5
        self.rows = np.stack([np.interp(xs, np.arange(gw), grid[r]) for r in range(gh)]).astype(np.float32)
        self.ys = (np.arange(h, dtype=np.float64) + 0.5 - y0) / (y1 - y0) * gh - 0.5
        self.gh = gh
        self.inside_x = (np.arange(w) + 0.5 >= x0) & (np.arange(w) + 0.5 <= x1)
        self.inside_y = (np.arange(h) + 0.5 >= y0) & (np.arange(h) + 0.5 <= y1)

    def strip(self, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
        """Values (rows, w) and the inside-the-view mask for image rows top..bottom-1."""
        yc = np.clip(self.ys[top:bottom], 0, self.gh - 1)
        i0 = np.minimum(yc.astype(np.int64), max(self.gh - 2, 0))
        i1 = np.minimum(i0 + 1, self.gh - 1)
        f = (yc - i0).astype(np.float32)[:, None]
        values = self.rows[i0] * (1 - f) + self.rows[i1] * f
        return values, self.inside_y[top:bottom, None] & self.inside_x[None, :]


# The heat layer is computed at most this many pixels on its long side and then
# resized: the map is smooth, and a 24-megapixel photo then costs ~1 s, not ~10.
_HEAT_SIDE = 1024


def draw_overlay(photo: Image.Image, grid: np.ndarray, geometry: CropGeometry, *, alpha: float = 0.6,
                 boxes: Sequence[tuple[int, int, int, int]] = (), cmap: str = "builtin",
                 scale: float | None = None) -> Image.Image:
    """The photo with the signed heatmap blended on it; parts the model did not see are shaded.

    ``photo`` must already be oriented. ``scale`` is the score that maps to full
    colour (default: the largest absolute value in ``grid``). ``boxes`` are
    outlined (photo pixels of ``geometry``; they are scaled with it).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    rgb = photo if photo.mode == "RGB" else photo.convert("RGB")
    size = rgb.size
    grid = np.asarray(grid, dtype=np.float32)
    full = scale if scale is not None else float(np.abs(grid).max()) if grid.size else 0.0
    shrink = min(1.0, _HEAT_SIDE / max(size))
    heat_size = (max(1, round(size[0] * shrink)), max(1, round(size[1] * shrink)))
    values, inside = _Sampler(grid, geometry, heat_size).strip(0, heat_size[1])
    norm = values / full if full > 0 else np.zeros_like(values)
    # Opacity grows with strength (a gentle curve so mid values still show).
    opacity = alpha * np.sqrt(np.clip(np.abs(norm), 0, 1)) * inside
    heat = np.dstack([colorize(norm, cmap), np.round(opacity * 255).astype(np.uint8)])
    layer = Image.fromarray(heat, "RGBA")
    if heat_size != size:
        layer = layer.resize(size, Image.Resampling.BILINEAR)
    # What the model did not see: darkened, with a sharp edge at full resolution.
    geo = geometry.scaled(size) if geometry.photo_size != size else geometry
    x0, y0, x1, y1 = geo.box
    outside = Image.new("L", size, round(0.65 * 255))
    left, top = round(x0), round(y0)
    ImageDraw.Draw(outside).rectangle([left, top, max(left, round(x1) - 1), max(top, round(y1) - 1)], fill=0)
    shaded = Image.composite(Image.new("RGB", size, _SHADE), rgb, outside)
    image = Image.alpha_composite(shaded.convert("RGBA"), layer).convert("RGB")
    if boxes:
        sx, sy = size[0] / geometry.photo_size[0], size[1] / geometry.photo_size[1]
        draw = ImageDraw.Draw(image)
        width = max(1, round(min(size) / 150))
        for x0, y0, x1, y1 in boxes:
            left, top = x0 * sx, y0 * sy
            draw.rectangle([left, top, max(left, x1 * sx - 1), max(top, y1 * sy - 1)], outline=(255, 255, 255),
                           width=width)
    return image
