"""Decoded video frames to what the encoder sees: small 8-bit sRGB pictures, upright.

One place decides, for every frame that :mod:`retrieval.video` keeps:

* **size**: libswscale scales the YUV frame straight to the target size
  (short side about ``min_side``, pixel aspect ratio corrected) and converts
  it to RGB in the same pass; a 4K frame never exists as a full-size RGB
  array or PIL image.
* **orientation**: the display matrix (phones store portrait video as
  landscape frames plus a rotation) is applied to the small array, flips
  included.
* **colour**: SDR frames are converted with their own matrix and range
  (untagged HD is taken as BT.709, as players do). HDR frames (PQ or HLG
  transfer) are tone mapped to SDR here, in numpy: a plain conversion would
  show PQ as a flat, grey picture and clip every highlight.
* **signatures**: a 32x32 colour thumbnail per scanned frame, for cheap
  scene-change, still-frame and flat/black-frame tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import VideoReformatter
from PIL import Image

__all__ = [
    "FrameConverter",
    "Orientation",
    "Signature",
    "frame_orientation",
    "make_signature",
    "orientation_from_matrix",
    "orientation_from_tag",
    "target_size",
    "tone_map_to_srgb",
]

# FFmpeg's AVColorTransferCharacteristic values for the two HDR transfers.
TRC_PQ = 16  # SMPTE ST 2084
TRC_HLG = 18  # ARIB STD-B67
_SPC_UNSPECIFIED = 2
_SIGNATURE_SIDE = 32


@dataclass(frozen=True)
class Orientation:
    """How a stored frame is turned for display: ``rotation`` degrees clockwise, then mirrored left-right."""

    rotation: int = 0
    mirrored: bool = False

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The upright version of an (H, W, 3) array."""
        out = np.rot90(rgb, k=-(self.rotation // 90)) if self.rotation else rgb
        if self.mirrored:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    @property
    def swaps_axes(self) -> bool:
        """True for 90/270 degrees: the displayed width is the stored height."""
        return self.rotation in (90, 270)


def orientation_from_matrix(raw: bytes) -> Orientation | None:
    """Read FFmpeg's 3x3 display matrix (nine native int32, 16.16 fixed point).

    The matrix maps a stored pixel (x, y) to its displayed place
    ``(a*x + c*y, b*x + d*y)`` in y-down coordinates (a, b, c, d = entries
    0, 1, 3, 4). Only the 90-degree family is meaningful for video; a matrix
    that is not one of those eight (or is degenerate) gives ``None``.
    """
    if len(raw) < 36:
        return None
    m = np.frombuffer(raw[:36], dtype=np.int32)
    a, b, c, d = (float(v) / 65536.0 for v in (m[0], m[1], m[3], m[4]))
    # Snap to the nearest axis-aligned map: scales other than 1 only mean anamorphic display.
    if abs(a) + abs(d) >= abs(b) + abs(c):
        if a == 0 or d == 0:
            return None
        sx, sy = math.copysign(1, a), math.copysign(1, d)
        # (x, y) -> (sx*x, sy*y): identity, a mirror, or a half turn.
        if sx > 0 and sy > 0:
            return Orientation(0, False)
        if sx < 0 and sy < 0:
            return Orientation(180, False)
        return Orientation(0, True) if sx < 0 else Orientation(180, True)
    if b == 0 or c == 0:
        return None
    sb, sc = math.copysign(1, b), math.copysign(1, c)
    # (x, y) -> (sc*y, sb*x). A clockwise quarter turn is (x, y) -> (-y, x); counter-clockwise (y, -x).
    if sc < 0 and sb > 0:
        return Orientation(90, False)
    if sc > 0 and sb < 0:
        return Orientation(270, False)
    # Transpose (y, x) = clockwise turn then mirror of (-y, x); (-y, -x) = counter-clockwise turn then mirror.
    return Orientation(90, True) if sc > 0 else Orientation(270, True)


def orientation_from_tag(value: str | None) -> Orientation:
    """The legacy ``rotate`` tag (clockwise degrees, as old FFmpeg and some muxers write it)."""
    try:
        degrees = int(round(float(value or "0")))
    except ValueError:
        return Orientation()
    degrees %= 360
    return Orientation(degrees) if degrees in (90, 180, 270) else Orientation()


def frame_orientation(frame: av.VideoFrame) -> Orientation | None:
    """The orientation a decoded frame carries in its display-matrix side data, if any."""
    try:
        side = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    except (KeyError, ValueError):
        return None
    if side is None:
        return None
    return orientation_from_matrix(bytes(side))


def target_size(width: int, height: int, sar: Fraction | None, min_side: int) -> tuple[int, int]:
    """The stored-orientation size to scale a frame to.

    Pixels are made square (``sar`` stretches the width) and the picture is
    shrunk, never enlarged, so that its shorter side is ``min_side``.
    """
    display_w = width * float(sar) if sar and sar > 0 else float(width)
    short = min(display_w, float(height))
    scale = min(1.0, min_side / short) if short > 0 else 1.0
    return max(1, round(display_w * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class Signature:
    """A 32x32 colour thumbnail in [0, 1], its luma spread, and its soft 4x4x4 colour histogram."""

    pixels: np.ndarray
    spread: float
    histogram: np.ndarray

    def distance(self, other: Signature) -> float:
        """Mean absolute pixel difference: 0 (same picture) to 1 (black vs white)."""
        return float(np.mean(np.abs(self.pixels - other.pixels)))

    def scene_distance(self, other: Signature) -> float:
        """Total-variation distance of the colour histograms, 0 to 1.

        Motion and camera pans move colours around without changing how much
        of each there is, so they stay low; a cut to another shot changes the
        palette. (Two shots of the same palette look alike here: the interval
        rule still samples them.)
        """
        return 0.5 * float(np.abs(self.histogram - other.histogram).sum())


def make_signature(pixels: np.ndarray) -> Signature:
    """Signature of an (h, w, 3) float thumbnail in [0, 1]."""
    luma = pixels @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return Signature(pixels, float(luma.std()), _soft_histogram(pixels.reshape(-1, 3)))


_BINS = 4


def _soft_histogram(rgb: np.ndarray) -> np.ndarray:
    """A 4x4x4 colour histogram where each value is shared between its two nearest bins.

    Hard bins would flip a whole flat area from one bin to the next on a
    one-level change of compression noise, which reads as a scene cut.
    """
    pos = np.clip(rgb * _BINS - 0.5, 0.0, _BINS - 1.0)
    low = np.minimum(pos.astype(np.int64), _BINS - 2)
    frac = pos - low
    hist = np.zeros(_BINS ** 3, dtype=np.float64)
    for dr in (0, 1):
        wr = frac[:, 0] if dr else 1 - frac[:, 0]
        for dg in (0, 1):
            wg = frac[:, 1] if dg else 1 - frac[:, 1]
            for db in (0, 1):
                wb = frac[:, 2] if db else 1 - frac[:, 2]
                index = ((low[:, 0] + dr) * _BINS + (low[:, 1] + dg)) * _BINS + (low[:, 2] + db)
                hist += np.bincount(index, weights=wr * wg * wb, minlength=_BINS ** 3)
    return hist / max(hist.sum(), 1e-12)


class FrameConverter:
    """Turns decoded frames into signatures and small upright RGB pictures.

    Holds its own swscale contexts (one per output size), so repeated frames of
    one video reuse the scaler set-up.
    """

    def __init__(self, min_side: int, sar: Fraction | None, fallback: Orientation) -> None:
        self.min_side = min_side
        self.sar = sar
        self.fallback = fallback
        self._small = VideoReformatter()
        self._full = VideoReformatter()

    def signature(self, frame: av.VideoFrame) -> Signature:
        """The frame's 32x32 colour thumbnail (area-averaged by libswscale) and its measures."""
        small = self._small.reformat(frame, width=_SIGNATURE_SIDE, height=_SIGNATURE_SIDE, format="rgb24",
                                     interpolation="AREA", **_colour_args(frame))
        return make_signature(small.to_ndarray().astype(np.float32) / 255.0)

    def orientation(self, frame: av.VideoFrame) -> Orientation:
        """The display matrix on the frame, else the stream's legacy tag."""
        return frame_orientation(frame) or self.fallback

    def image(self, frame: av.VideoFrame) -> Image.Image:
        """The frame as an upright 8-bit sRGB PIL image, short side about ``min_side``."""
        width, height = target_size(frame.width, frame.height, self.sar, self.min_side)
        hdr = int(frame.color_trc) in (TRC_PQ, TRC_HLG)
        scaled = self._full.reformat(frame, width=width, height=height, format="rgb48le" if hdr else "rgb24",
                                     interpolation="AREA", **_colour_args(frame))
        rgb = scaled.to_ndarray()
        if hdr:
            rgb = tone_map_to_srgb(rgb, int(frame.color_trc))
        return Image.fromarray(self.orientation(frame).apply(rgb), "RGB")


def _colour_args(frame: av.VideoFrame) -> dict[str, str]:
    """swscale takes untagged YUV as BT.601; players take untagged HD (>= 720 lines) as BT.709."""
    if int(frame.colorspace) == _SPC_UNSPECIFIED and frame.format.name.startswith("yuv") and frame.height >= 720:
        return {"src_colorspace": "ITU709"}
    return {}


# -- HDR to SDR -------------------------------------------------------------------------

_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073
_HLG_PEAK_NITS, _HLG_GAMMA = 1000.0, 1.2  # BT.2100's nominal display for the HLG system gamma
_REFERENCE_WHITE_NITS = 203.0  # BT.2408: HDR diffuse white, mapped to SDR white
_KNEE = 0.7  # below this (relative to reference white) tones pass unchanged; above, they roll off to 1
_BT2020_TO_BT709 = np.array([
    [1.6605, -0.5876, -0.0728],
    [-0.1246, 1.1329, -0.0083],
    [-0.0182, -0.1006, 1.1187],
], dtype=np.float32)
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)


def tone_map_to_srgb(rgb48: np.ndarray, transfer: int) -> np.ndarray:
    """PQ or HLG BT.2020 RGB (uint16, full range) to 8-bit sRGB.

    Decode the transfer to light in nits (HLG through its BT.2100 OOTF at a
    1000-nit display), convert BT.2020 primaries to BT.709, put reference
    white (203 nits) at 1.0, pass tones below 0.7 unchanged and roll brighter
    ones off smoothly towards 1.0 on the brightest channel (so a bright red
    firework stays red instead of clipping to white), then sRGB-encode.
    This is a static curve: no per-scene peak analysis, no Dolby Vision
    reshaping.
    """
    signal = rgb48.astype(np.float32) / 65535.0
    if transfer == TRC_PQ:
        p = np.power(signal, 1.0 / _PQ_M2)
        nits = 10000.0 * np.power(np.maximum(p - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * p), 1.0 / _PQ_M1)
    else:
        scene = np.where(signal <= 0.5, signal * signal / 3.0,
                         (np.exp((signal - _HLG_C) / _HLG_A) + _HLG_B) / 12.0)
        luma = np.maximum(scene @ _BT2020_LUMA, 1e-6)[..., None]
        nits = _HLG_PEAK_NITS * np.power(luma, _HLG_GAMMA - 1.0) * scene
    linear = np.maximum(nits @ _BT2020_TO_BT709.T, 0.0) / _REFERENCE_WHITE_NITS
    peak = linear.max(axis=-1, keepdims=True)
    rolled = np.where(peak > _KNEE, _KNEE + (1 - _KNEE) * (1 - np.exp(-(peak - _KNEE) / (1 - _KNEE))), peak)
    linear = linear * (rolled / np.maximum(peak, 1e-6))
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return np.clip(np.rint(encoded * 255.0), 0, 255).astype(np.uint8)
