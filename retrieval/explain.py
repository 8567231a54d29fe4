"""Why did this picture match? A signed heatmap over the photo, per query.

``explain(encoder, query, image, method=...)`` scores every region of the
picture by how much it pulls the picture's embedding towards the query
(positive) or pushes it away (negative), and returns an :class:`Explanation`:
the grid of scores over what the model saw, one grid per query term (they add
up to the total), the crop geometry that places the grid on the full photo,
boxes around the peak regions, and :meth:`Explanation.overlay` to draw it on
the photo as the user sees it.

The score explained is the one search ranks by: the cosine between the image
embedding and the query vector. A combined query is the weighted sum of unit
term vectors, normalised (:func:`retrieval.query.combine`), so its cosine is
the sum of ``weight / norm x cosine(term)``; every method here is linear in
the score, so the per-term maps add up exactly to the combined one, and a
negative term's map shows what pushed the picture away.

Methods (``passes`` on the result counts image-sized forward passes and
backward passes; those of gradcam and gradeclip go through the tower's last
stage only):

``intgrad``    integrated gradients (Sundararajan et al., ICML 2017) from the
               picture's mean colour to the picture, pooled per cell: what each
               region adds to the cosine compared with a blank picture, the
               first-order account of occlusion. 4 forward + 3 backward passes
               (batched) per term. Every tower family. The default: on the
               synthetic world's pointing game it beats occlusion and raw patch
               similarity, a little behind RISE with two objects, for about 5
               encodes of ViT-B-32 where RISE takes 51 (docs/explain.md).
``gradcam``    Grad-CAM (Selvaraju et al., ICCV 2017) on the last block's input
               activations, signed (no ReLU): 1 forward + 1 short backward per
               term. Every tower family.
``gradeclip``  Grad-ECLIP (Zhao et al., "Gradient-based Visual Explanation for
               Transformer-based CLIP", ICML 2024): the gradient of the cosine at
               the pooling attention's output, times each cell's value, times a
               loosened attention weight (the query-key cosine, min-max scaled),
               per head and signed: 1 forward + 1 short backward per term.
               Towers that pool with attention (ViT class token, RN50's attention
               pool, SigLIP's ``map`` head); ConvNeXt has none.
``tokens``     raw patch-token similarity: each cell's embedding as if it alone
               were pooled (ViT: token -> final LayerNorm -> projection; ResNet:
               MaskCLIP's value path through the attention pool), cosine with the
               query, centred on the picture's mean cell: 1 forward.
``occlusion``  sliding-window occlusion (Zeiler & Fergus, ECCV 2014): the drop
               in the cosine when a window is filled with the picture's mean
               colour, averaged per cell: 1 + windows forwards, batched.
``rise``       RISE (Petsiuk et al., BMVC 2018) with N seeded random masks,
               signed (score covariance with each pixel's visibility): N forwards.

The perturbation methods need nothing but the tower's forward pass, so they
work on any tower (int8 ones too); intgrad needs its gradients, not its
layout. The grids of these three do not depend on the tower's own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ExplainUnsupportedError, InvalidQueryError, UnknownPreprocessError
from .explain_overlay import CropGeometry, colorize, crop_geometry, peak_boxes, peak_point
from .explain_towers import Tower, has_quantized_modules, tower_of
from .explanation import DEFAULT_METHOD, METHODS, Explanation, TermMap, oriented_photo

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "CropGeometry",
    "ExplainUnsupportedError",
    "Explanation",
    "TermMap",
    "UnknownPreprocessError",
    "colorize",
    "explain",
]

# Perturbation defaults: a 7x7 cell grid with 2x2-cell windows (36 windows + 1 = 37
# forward passes); RISE: 96 masks over a 7x7 grid, half the cells visible.
OCCLUSION_GRID = 7
OCCLUSION_WINDOW = 2
RISE_MASKS = 96
RISE_CELLS = 7
RISE_P = 0.5
RISE_GRID = 14
RISE_SEED = 0
BATCH = 16
# Integrated gradients: points on the straight path from the picture's mean colour to the picture
# (midpoint rule), shares summed onto a 14x14 grid and spread over each cell's 3x3 neighbourhood.
# Three points: chosen with benchmarks/bench_explain.py on a world the model never saw (seed 2),
# confirmed on another (seed 1; docs/explain.md). Two points spill onto the other object of a
# two-object scene (12 % of peaks) and then lose to raw patch similarity; three beat it in both
# kinds of scene for about 5 encodes of ViT-B-32; four point better still for one encode more.
INTGRAD_STEPS = 3
INTGRAD_GRID = 14
INTGRAD_SPREAD = 1


def _terms(encoder: Any, query: Any) -> tuple[np.ndarray, np.ndarray, list[str | None], list[float]]:
    """(K, D) unit term vectors, their coefficients w_k / |sum_k w_k t_k|, labels and weights."""
    if isinstance(query, str):
        if not query.strip():
            raise InvalidQueryError("empty query: give some words to explain")
        raw = [(encoder.encode_texts([query])[0], 1.0, query)]
    elif isinstance(query, np.ndarray) or torch.is_tensor(query):
        raw = [(np.asarray(query, dtype=np.float32).reshape(-1), 1.0, None)]
    else:
        try:
            raw = [(t[0], float(t[1]), t[2] if len(t) > 2 else None) for t in query]
        except (TypeError, ValueError, IndexError):
            raise InvalidQueryError("a query is a vector, a text, or a list of (vector, weight[, label]) terms") from None
    if not raw:
        raise InvalidQueryError("empty query: give a vector or some terms to explain")
    vectors, weights, labels = [], [], []
    for vec, weight, label in raw:
        if isinstance(vec, str):
            vec = encoder.encode_texts([vec])[0]
            label = label or raw[len(vectors)][0]
        v = np.asarray(vec, dtype=np.float32).reshape(-1)
        if v.shape[0] != encoder.dim:
            raise InvalidQueryError(f"a query vector has {v.shape[0]} dimensions; this model's have {encoder.dim}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm < 1e-12:
            raise InvalidQueryError("a query vector is zero or not finite: there is nothing to explain")
        if not np.isfinite(weight):
            raise InvalidQueryError(f"a query term's weight is not a number ({weight})")
        vectors.append(v / norm)
        weights.append(weight)
        labels.append(label)
    if not any(w > 0 for w in weights):
        raise InvalidQueryError("a query needs at least one term with a positive weight")
    units = np.stack(vectors)
    total = float(np.linalg.norm((np.asarray(weights, dtype=np.float32)[:, None] * units).sum(0)))
    if total < 1e-6:
        raise InvalidQueryError("the query terms cancel each other out")
    return units, np.asarray(weights, dtype=np.float32) / total, labels, weights


# -- the methods ---------------------------------------------------------------------------------


def _cosines(emb: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(B, K) cosine of each embedding with each unit term vector, in float32."""
    return F.normalize(emb.float(), dim=-1) @ units.T


def _gradcam(tower: Tower, pixels: torch.Tensor, units: torch.Tensor) -> tuple[list[np.ndarray], float, dict]:
    a = tower.prefix(pixels).detach().requires_grad_(True)
    with torch.enable_grad():
        cos = _cosines(tower.rest(a), units)[0]
        maps = []
        for k in range(len(units)):
            (grad,) = torch.autograd.grad(cos[k], a, retain_graph=k + 1 < len(units))
            acts, grads = tower.cells(a.detach()).float(), tower.cells(grad).float()
            weights = grads.mean(dim=(1, 2))  # per channel: Grad-CAM's alpha
            maps.append(torch.einsum("bhwc,bc->bhw", acts, weights)[0].cpu().numpy())
    return maps, cos.detach(), {"forward": 1, "backward": len(units)}


def _gradeclip(tower: Tower, pixels: torch.Tensor, units: torch.Tensor) -> tuple[list[np.ndarray], Any, dict]:
    a = tower.prefix(pixels).detach().requires_grad_(True)
    with torch.enable_grad():
        parts = tower.attention(a)
        cos = _cosines(parts.embedding, units)[0]
        # Loosened attention: the query-key cosine per head, min-max scaled over the cells.
        sim = torch.einsum("bhd,bhnd->bhn", F.normalize(parts.q.float(), dim=-1), F.normalize(parts.k.float(), dim=-1))
        lo, hi = sim.amin(dim=-1, keepdim=True), sim.amax(dim=-1, keepdim=True)
        loose = (sim - lo) / (hi - lo).clamp_min(1e-12)
        maps = []
        gh, gw = parts.grid
        for k in range(len(units)):
            (grad,) = torch.autograd.grad(cos[k], parts.o, retain_graph=k + 1 < len(units))
            contrib = torch.einsum("bhd,bhnd->bhn", grad.float(), parts.v.float())
            maps.append((contrib * loose).sum(dim=1)[0].reshape(gh, gw).cpu().numpy())
    return maps, cos.detach(), {"forward": 1, "backward": len(units)}


def _tokens(tower: Tower, pixels: torch.Tensor, units: torch.Tensor) -> tuple[list[np.ndarray], Any, dict]:
    a = tower.prefix(pixels)
    cells = F.normalize(tower.cell_embeddings(a).float(), dim=-1)[0]  # (gh, gw, D)
    cos = _cosines(tower.rest(a), units)[0]
    maps = []
    for k in range(len(units)):
        sim = cells @ units[k]
        maps.append((sim - sim.mean()).cpu().numpy())
    return maps, cos, {"forward": 1, "backward": 0}


def spread(cells: np.ndarray, radius: int) -> np.ndarray:
    """Each cell's value shared out evenly over the cells within ``radius`` of it (itself included).

    A box blur that keeps the total: at the edges a cell has fewer neighbours
    and each gets a larger part, so the map still adds up to what it did.
    """
    if radius == 0:
        return cells
    gh, gw = cells.shape
    ones = np.pad(np.ones_like(cells), radius)
    size = 2 * radius + 1
    shifts = [(dy, dx) for dy in range(size) for dx in range(size)]
    count = sum(ones[dy:dy + gh, dx:dx + gw] for dy, dx in shifts)
    part = np.pad(cells / count, radius)
    return sum(part[dy:dy + gh, dx:dx + gw] for dy, dx in shifts).astype(cells.dtype)


def _intgrad(visual: torch.nn.Module, pixels: torch.Tensor, units: torch.Tensor, *, steps: int = INTGRAD_STEPS,
             grid: int | None = None, spread_cells: int = INTGRAD_SPREAD, batch: int = BATCH
             ) -> tuple[list[np.ndarray], Any, dict]:
    """Integrated gradients (Sundararajan et al., ICML 2017) from the occlusion's fill to the picture.

    Each pixel's share is (x - fill) times the gradient of the cosine averaged
    along the straight path from the picture's mean colour to the picture
    (``steps`` points, midpoint rule); cells sum their pixels' shares, and each
    cell's share is then spread over the cells within ``spread_cells`` of it
    (pixel gradients are noisy; a peak should be a region, not one cell). The
    shares add up to about cos(picture) - cos(its mean colour): the first-order
    account of what occlusion measures window by window, for ``steps`` forward
    and backward passes instead of one forward pass per window.
    """
    if grid is None:  # a model input smaller than the default grid gets one cell per pixel
        grid = min(INTGRAD_GRID, *pixels.shape[-2:])
    if not 1 <= grid <= min(pixels.shape[-2:]):
        raise InvalidQueryError(f"intgrad grid must be 1..{min(pixels.shape[-2:])} cells (the model's input "
                                f"side), got {grid}")
    fill = _fill(pixels)
    delta = pixels - fill
    alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).to(pixels.device, pixels.dtype)
    grads = [torch.zeros_like(pixels, dtype=torch.float32) for _ in range(len(units))]
    with torch.enable_grad():
        for i in range(0, steps, batch):
            path = (fill + alphas[i:i + batch].view(-1, 1, 1, 1) * delta).detach().requires_grad_(True)
            cos = _cosines(visual(path), units).sum(dim=0)  # (K,): summed over the path's points
            for k in range(len(units)):
                (grad,) = torch.autograd.grad(cos[k], path, retain_graph=k + 1 < len(units))
                grads[k] += grad.float().sum(dim=0, keepdim=True)
    with torch.no_grad():
        base = _cosines(visual(pixels), units)[0]
    _, _, h, w = pixels.shape
    # Each pixel belongs to exactly one cell, so the cells' shares add up to the pixels' (an
    # adaptive pool's overlapping windows would count some pixels twice).
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    maps = []
    for k in range(len(units)):
        share = (grads[k][0] / steps * delta[0].float()).sum(dim=0).cpu().numpy()  # (h, w)
        rows = np.add.reduceat(share, ys[:-1], axis=0)
        maps.append(spread(np.add.reduceat(rows, xs[:-1], axis=1).astype(np.float32), spread_cells))
    return maps, base, {"forward": steps + 1, "backward": steps * len(units)}


def _batched_cosines(visual: torch.nn.Module, pixels: torch.Tensor, units: torch.Tensor, batch: int) -> torch.Tensor:
    out = [_cosines(visual(pixels[i:i + batch]), units) for i in range(0, len(pixels), batch)]
    return torch.cat(out)


def _fill(pixels: torch.Tensor) -> torch.Tensor:
    """What a hidden region becomes: the picture's own mean colour (neutral for it, whatever the normalisation)."""
    return pixels.mean(dim=(2, 3), keepdim=True)


def _occlusion(visual: torch.nn.Module, pixels: torch.Tensor, units: torch.Tensor, *, grid: int = OCCLUSION_GRID,
               window: int = OCCLUSION_WINDOW, batch: int = BATCH) -> tuple[list[np.ndarray], Any, dict]:
    if not 1 <= window <= grid:
        raise InvalidQueryError(f"occlusion window must be 1..{grid} cells, got {window}")
    _, _, h, w = pixels.shape
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    spots = [(r, c) for r in range(grid - window + 1) for c in range(grid - window + 1)]
    fill = _fill(pixels)
    masked = pixels.repeat(len(spots) + 1, 1, 1, 1)
    for i, (r, c) in enumerate(spots, start=1):
        masked[i, :, ys[r]:ys[r + window], xs[c]:xs[c + window]] = fill[0, :, :, :]
    cos = _batched_cosines(visual, masked, units, batch)  # row 0: the whole picture
    drop = (cos[:1] - cos[1:]).cpu().numpy()  # (windows, K)
    maps = []
    for k in range(len(units)):
        total, count = np.zeros((grid, grid)), np.zeros((grid, grid))
        for (r, c), d in zip(spots, drop[:, k]):
            total[r:r + window, c:c + window] += d
            count[r:r + window, c:c + window] += 1
        maps.append((total / count).astype(np.float32))
    return maps, cos[0], {"forward": len(spots) + 1, "backward": 0}


def rise_masks(n: int, cells: int, size: tuple[int, int], p: float, seed: int) -> torch.Tensor:
    """(n, 1, h, w) soft masks: a random ``cells`` x ``cells`` binary grid, upsampled and shifted (RISE)."""
    h, w = size
    rng = np.random.default_rng(seed)
    grids = torch.from_numpy((rng.random((n, 1, cells, cells)) < p).astype(np.float32))
    ch, cw = int(np.ceil(h / cells)), int(np.ceil(w / cells))
    up = F.interpolate(grids, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear", align_corners=False)
    shifts = rng.integers(0, [ch, cw], size=(n, 2))
    return torch.stack([up[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])


def _rise(visual: torch.nn.Module, pixels: torch.Tensor, units: torch.Tensor, *, masks: int = RISE_MASKS,
          cells: int = RISE_CELLS, p: float = RISE_P, grid: int = RISE_GRID, seed: int = RISE_SEED,
          batch: int = BATCH) -> tuple[list[np.ndarray], Any, dict]:
    if masks < 2 or cells < 2:
        raise InvalidQueryError("rise needs masks >= 2 and cells >= 2")
    _, _, h, w = pixels.shape
    m = rise_masks(masks, cells, (h, w), p, seed).to(pixels.device, pixels.dtype)
    fill = _fill(pixels)
    cos = []
    for i in range(0, masks, batch):
        mi = m[i:i + batch]
        cos.append(_cosines(visual(pixels * mi + fill * (1 - mi)), units))
    scores = torch.cat(cos)  # (masks, K)
    base = _cosines(visual(pixels), units)[0]
    # Signed RISE: the covariance of the score with each pixel's visibility, so a region
    # that raises the score when shown is positive and one that lowers it negative.
    # Per cell, the least-squares slope of the score on the cell's visibility: the score
    # change between the cell shown and the cell hidden.
    pooled = F.adaptive_avg_pool2d(m.float(), (grid, grid)).reshape(masks, -1)  # (masks, cells)
    centred = pooled - pooled.mean(dim=0, keepdim=True)
    slope = (scores - scores.mean(dim=0, keepdim=True)).T @ centred / (centred ** 2).sum(dim=0).clamp_min(1e-12)
    maps = [slope[k].reshape(grid, grid).cpu().numpy() for k in range(len(units))]
    return maps, base, {"forward": masks + 1, "backward": 0}


GRADIENT_METHODS = frozenset({"intgrad", "gradcam", "gradeclip"})
_MAY_BE_ZERO = frozenset({"seed", "spread_cells"})

_OPTIONS: dict[str, set[str]] = {
    "gradcam": {"min_side"}, "gradeclip": set(), "tokens": set(),
    "occlusion": {"grid", "window", "batch"}, "rise": {"masks", "cells", "p", "grid", "seed", "batch"},
    "intgrad": {"steps", "grid", "spread_cells", "batch"},
}


# -- the door ------------------------------------------------------------------------------------


def explain(encoder: Any, query: Any, image: Image.Image | str | os.PathLike[str], method: str = DEFAULT_METHOD,
            *, boxes_threshold: float = 0.5, max_boxes: int = 3, **opts: Any) -> Explanation:
    """Explain why ``image`` scores as it does for ``query`` with the encoder's image tower.

    ``query``: a vector (D,), a text (encoded with ``encoder``), or terms
    ``[(vector or text, weight[, label]), ...]`` combined as in
    :func:`retrieval.query.combine`. ``image``: a path (decoded like the
    indexer does, EXIF orientation applied) or a PIL image (oriented here if it
    still carries an orientation tag). ``method``: one of :data:`METHODS`;
    ``opts`` go to it (occlusion: ``grid``, ``window``, ``batch``; rise:
    ``masks``, ``cells``, ``p``, ``grid``, ``seed``, ``batch``).

    Raises ``InvalidQueryError`` (empty, zero or mis-sized query, unknown
    method), ``ImageDecodeError`` (unreadable or empty image),
    ``ExplainUnsupportedError`` (the method cannot read this tower; the message
    names one that can) and ``UnknownPreprocessError``.
    """
    # inference_mode(False): a caller inside inference_mode (a server handler) would otherwise make
    # every tensor here one that autograd refuses, and the gradient methods would fail.
    with torch.inference_mode(False):
        return _explain(encoder, query, image, method, boxes_threshold, max_boxes, opts)


def _explain(encoder: Any, query: Any, image: Any, method: str, boxes_threshold: float, max_boxes: int,
             opts: dict[str, Any]) -> Explanation:
    if method not in METHODS:
        raise InvalidQueryError(f"unknown explain method {method!r}: use one of {', '.join(METHODS)}")
    allowed = _OPTIONS[method]
    unknown = sorted(set(opts) - allowed)
    if unknown:
        takes = f"takes {', '.join(sorted(allowed))}" if allowed else "takes no options"
        raise InvalidQueryError(f"the {method} method {takes} (got {', '.join(unknown)})")
    for name, value in opts.items():
        if name == "p":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise InvalidQueryError(f"rise option p must be between 0 and 1, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < (0 if name in _MAY_BE_ZERO else 1):
            kind = "non-negative" if name in _MAY_BE_ZERO else "positive"
            raise InvalidQueryError(f"{method} option {name} must be a {kind} whole number, got {value!r}")
    units_np, coefs, labels, weights = _terms(encoder, query)
    size = getattr(encoder, "image_size", 224)
    picture, photo_size = oriented_photo(image, int(size))
    geometry = crop_geometry(encoder.preprocess, picture.size)
    pixels = encoder.preprocess(picture).unsqueeze(0)
    if tuple(pixels.shape[-2:]) != (geometry.input_size[1], geometry.input_size[0]):
        raise UnknownPreprocessError(
            f"the preprocessing made a {pixels.shape[-1]}x{pixels.shape[-2]} input where its steps say "
            f"{geometry.input_size[0]}x{geometry.input_size[1]}; cannot place a heatmap"
        )
    visual = encoder.model.visual
    dtype = next((p.dtype for p in visual.parameters() if p.is_floating_point()), torch.float32)
    pixels = pixels.to(encoder.device, dtype)
    units = torch.from_numpy(units_np).to(encoder.device)
    notes: list[str] = []
    tower_text = type(visual).__name__
    with torch.no_grad():
        if method in GRADIENT_METHODS and has_quantized_modules(visual):
            raise ExplainUnsupportedError(
                f"{method} needs gradients, which int8 layers do not have: load the model with precision "
                "fp32 or bf16, or use tokens, occlusion or rise"
            )
        if method in ("occlusion", "rise"):
            run = _occlusion if method == "occlusion" else _rise
            maps, cos, passes = run(visual, pixels, units, **opts)
            tower_text += f" (any tower: {method} needs only its forward pass)"
        elif method == "intgrad":
            maps, cos, passes = _intgrad(visual, pixels, units, **opts)
            tower_text += " (any tower: intgrad differentiates its whole forward pass)"
        else:
            tower = tower_of(encoder.model, **({"min_side": opts["min_side"]} if "min_side" in opts else {}))
            fn = {"gradcam": _gradcam, "gradeclip": _gradeclip, "tokens": _tokens}[method]
            maps, cos, passes = fn(tower, pixels, units)
            if method == "gradcam":
                tower_text = f"{tower.family}: {tower.where}"
                if "too small" in tower.where:
                    notes.append("the tower's last feature map is too small to point with; gradcam read an earlier stage")
            else:
                read = "the pooling attention over" if method == "gradeclip" else "one embedding per cell of"
                tower_text = f"{tower.family}: {read} the last feature map"
    cos_np = np.asarray(torch.as_tensor(cos).float().cpu().numpy(), dtype=np.float64).reshape(-1)
    term_grids = [np.ascontiguousarray(np.float32(c) * np.asarray(m, dtype=np.float32)) for c, m in zip(coefs, maps)]
    grid = np.sum(term_grids, axis=0).astype(np.float32)
    if not np.all(np.isfinite(grid)):
        raise ExplainUnsupportedError(f"{method} produced non-finite scores for this picture; try another method")
    geometry = geometry.scaled(photo_size) if photo_size != picture.size else geometry
    terms = tuple(TermMap(label, w, g) for label, w, g in zip(labels, weights, term_grids))
    return Explanation(
        grid=grid, method=method, geometry=geometry, score=float(np.dot(coefs, cos_np)), terms=terms,
        boxes=tuple(peak_boxes(grid, geometry, boxes_threshold, max_boxes)), peak=peak_point(grid, geometry),
        passes=dict(passes), tower=tower_text, notes=tuple(notes),
    )

