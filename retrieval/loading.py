"""Safe image decoding: one bad file yields a reason, never an exception.

Everything that reads pixels from a user's files goes through :func:`load_image`,
so EXIF orientation, mode conversion, alpha handling, decompression-bomb limits
and reduced-size JPEG decoding are decided in exactly one place.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from collections.abc import Iterator
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import reading_problem
from .jxl import jpeg_xl_size

__all__ = ["LoadedImage", "load_image", "register_format_plugins", "DEFAULT_MAX_PIXELS"]

# Pillow's own decompression-bomb error threshold (2 * Image.MAX_IMAGE_PIXELS).
# Image.open refuses anything above that whatever max_pixels says, and warns
# (DecompressionBombWarning) above half of it; we leave the limit alone, and
# silence the warning (register_format_plugins): max_pixels decides.
DEFAULT_MAX_PIXELS = 178_956_970

_HEADER_BYTES = 64
_JXL_HEAD_BYTES = 1 << 16  # enough for the container boxes before the codestream's size header
_plugins_lock = threading.Lock()
_plugins_registered = False
_heif_available = False
_jxl_available = False


@dataclass(frozen=True)
class LoadedImage:
    """The outcome of decoding one image.

    ``image`` is a fully loaded RGB image with EXIF orientation applied, or
    ``None`` when decoding failed, in which case ``error`` is a one-line reason
    a user can act on. ``width``/``height`` are the original pixel size (after
    orientation), even when a reduced-size decode made ``image`` smaller.
    """

    image: Image.Image | None
    error: str | None
    width: int = 0
    height: int = 0

    @property
    def ok(self) -> bool:
        """True when ``image`` holds a decoded picture."""
        return self.image is not None


def register_format_plugins() -> None:
    """Register optional decoders (HEIC/HEIF via pillow_heif, JPEG XL via pillow_jxl). Idempotent.

    AVIF is decoded by Pillow itself (>= 11.3). If a plugin is not installed,
    its files come back from :func:`load_image` with an error saying so
    instead of failing here.
    """
    global _plugins_registered, _heif_available, _jxl_available
    with _plugins_lock:
        if _plugins_registered:
            return
        try:
            import pillow_heif
        except ImportError:
            _heif_available = False
        else:
            pillow_heif.register_heif_opener()
            _heif_available = True
        try:
            import pillow_jxl  # noqa: F401 - importing it registers the JPEG XL opener
        except ImportError:
            _jxl_available = False
        else:
            _jxl_available = True
        _plugins_registered = True


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Decode ``source`` (a path, the file's bytes, or a binary file object).

    Never raises for a bad, unreadable or unsupported file: the reason is in
    ``LoadedImage.error``. ``min_side`` allows a faster reduced-size decode of
    large JPEGs whose shorter side stays >= ``min_side``. Images with more than
    ``max_pixels`` pixels are refused before their pixels are decoded.
    Raises ``TypeError``/``ValueError`` only for invalid arguments.
    """
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) and not hasattr(source, "read"):
        kind = type(source).__name__
        raise TypeError(f"load_image() needs a path, bytes or a binary file object, not {kind}")
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    register_format_plugins()
    _quiet_bomb_warnings()
    header = b""
    try:
        with _open_stream(source) as stream:
            header = stream.read(_HEADER_BYTES)
            if not header:
                return LoadedImage(None, "empty file (0 bytes)")
            stream.seek(0)
            return _decode(stream, header, min_side, max_pixels)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raise for a bad file"
        if _is_jpeg_xl(header) and not isinstance(exc, OSError | MemoryError):
            # libjxl's errors say "Generic Error. Please build libjxl from source...": not for users.
            return LoadedImage(None, "cannot decode: damaged or truncated JPEG XL file")
        return LoadedImage(None, _describe(exc, max_pixels))


def _quiet_bomb_warnings() -> None:
    """Keep Pillow's DecompressionBombWarning (two lines on stderr per picture above 89 MP) quiet.

    The limit that counts is ``max_pixels``, checked from the header before
    decoding; a refusal is a reason in ``LoadedImage.error``, not a warning. A
    filter, not ``catch_warnings()`` (which is not thread-safe, and decoding runs
    on many threads); checked on every call because ``catch_warnings()`` blocks
    elsewhere (test runners, user code) restore the filters they found. Someone
    who set a filter for this warning themselves (e.g. "error": treat such
    pictures as bombs) keeps it: they are then refused as too large.
    """
    if not any(entry[2] is Image.DecompressionBombWarning for entry in warnings.filters):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@contextmanager
def _open_stream(source: str | os.PathLike[str] | bytes | BinaryIO) -> Iterator[BinaryIO]:
    """Yield a seekable binary stream; close it afterwards only if we opened it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield f
    else:
        seekable = getattr(source, "seekable", None)
        if seekable is not None and seekable():
            yield source
        else:
            # Pipes and sockets: Pillow needs to seek, so buffer the whole file.
            yield io.BytesIO(source.read())


def _decode(stream: BinaryIO, header: bytes, min_side: int | None, max_pixels: int) -> LoadedImage:
    if _is_jpeg_xl(header):
        # The JPEG XL plugin decodes everything in Image.open: check the pixel limit first.
        size = jpeg_xl_size(stream.read(_JXL_HEAD_BYTES))
        stream.seek(0)
        if size is not None and size[0] * size[1] > max_pixels:
            return LoadedImage(None, _too_large(size[0], size[1], max_pixels))
    try:
        opened = Image.open(stream)
    except UnidentifiedImageError:
        return LoadedImage(None, _unidentified_reason(header))
    with opened as img:
        # Image.open only parsed the header, so this check costs no decoding.
        width, height = img.size
        if width * height > max_pixels:
            return LoadedImage(None, _too_large(width, height, max_pixels))
        # MPO is how Pillow names JPEGs with a multi-picture index (many phone cameras).
        if min_side is not None and img.format in ("JPEG", "MPO"):
            _request_draft(img, min_side)
        # Decode now, inside the try of load_image, so truncated data fails here.
        img.load()
        decoded_size = img.size
        oriented = _apply_orientation(img)
        if oriented.size != decoded_size:
            width, height = height, width  # a 90/270-degree rotation swaps the axes
        rgb = _to_rgb(oriented)
        if rgb is img:
            # Detach the result from the file object (multi-frame images keep
            # a reference to it for seeking) that is about to be closed.
            rgb = img.copy()
    return LoadedImage(rgb, None, width, height)


def _request_draft(img: Image.Image, min_side: int) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale if the shorter side allows it."""
    width, height = img.size
    short = min(width, height)
    if short < 2 * min_side:
        return  # not even a 1/2 reduction would keep min_side
    # Pillow picks the largest scale s with s <= min(w // rw, h // rh), so
    # requesting the aspect-preserving size whose shorter side is min_side
    # guarantees a decoded shorter side of ceil(short / s) >= min_side.
    request = (-(-width * min_side // short), -(-height * min_side // short))
    img.draft("RGB", request)


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip per EXIF; malformed EXIF keeps the image as stored rather than failing."""
    try:
        # In place: the default returns a full copy even when nothing changes.
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - broken metadata must not lose a decodable picture
        pass
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    if mode == "LAB":
        # Pillow's plain convert() copies LAB bytes as if they were RGB.
        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(img, transform)
    if mode == "La":
        img = img.convert("LA")  # Pillow converts premultiplied La only to LA
        mode = "LA"
    if mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        # Transparent regions are usually meant to be "page" colour; black would
        # turn logos and line art into dark blobs for the encoder.
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float grayscale to 8 bits instead of clipping at 255."""
    if img.mode.startswith("I;16"):
        img = img.convert("I")
        scale, offset = 255 / 65535, 0.0
    else:
        lo, hi = img.getextrema()
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            scale, offset = 255.0, 0.0  # normalised float data
        elif lo >= 0 and hi <= 255:
            scale, offset = 1.0, 0.0  # already 8-bit values in a wide container
        elif lo >= 0 and hi <= 65535:
            scale, offset = 255 / 65535, 0.0  # 16-bit data stored as 32-bit
        else:
            span = (hi - lo) or 1
            scale, offset = 255 / span, -lo * 255 / span  # unknown range: stretch
    # point() on I/F images accepts only a linear function, which this is.
    scaled = img.point(lambda v: v * scale + offset)
    return scaled.convert("L").convert("RGB")


def _too_large(width: int, height: int, limit: int) -> str:
    return f"too large: {width}x{height} pixels exceeds the {limit}-pixel limit"


def _pillow_limit() -> int | None:
    """The pixel count above which Image.open itself refuses a file (None: no limit set)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


_BOMB = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")

# ISO-BMFF (ftyp box) brands, to name formats that Pillow could not identify.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_VIDEO_BRANDS = {b"isom", b"iso2", b"mp41", b"mp42", b"qt  ", b"M4V ", b"3gp4", b"3gp5", b"dash", b"avc1"}


def _is_jpeg_xl(header: bytes) -> bool:
    """A JPEG XL codestream or its ISO-BMFF container."""
    return header.startswith(b"\xff\x0a") or header.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def _unidentified_reason(header: bytes) -> str:
    """Name known formats we cannot decode; everything else is 'not an image'."""
    if _is_jpeg_xl(header):
        if not _jxl_available:
            return "unsupported format (no decoder for JPEG XL installed; pip install pillow-jxl-plugin)"
        return "not an image (damaged JPEG XL file)"
    if header[4:8] == b"ftyp":
        brand, box = header[8:12], header[8:_HEADER_BYTES]
        if brand in _AVIF_BRANDS or (brand == b"mif1" and b"avif" in box):
            return "unsupported format (no decoder for AVIF installed; needs Pillow >= 11.3)"
        if brand in _HEIF_BRANDS:
            if not _heif_available:
                return "unsupported format (no decoder for HEIC/HEIF installed; pip install pillow-heif)"
            return "not an image (HEIF container with no decodable image)"
        if brand in _VIDEO_BRANDS:
            return "not an image (video file)"
    if header.startswith(b"%PDF"):
        return "not an image (PDF document)"
    if b"<svg" in header.lower():
        return "unsupported format (SVG vector images are not supported)"
    return "not an image (cannot identify image file)"


def _describe(exc: Exception, max_pixels: int) -> str:
    """One line a user can act on, for any exception raised while reading a file.

    A decompression bomb refused by Pillow itself is reported against the
    caller's ``max_pixels`` (the limit a user set or a server announced), or
    Pillow's own when that is the lower one.
    """
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        pillow = _pillow_limit()
        limit = max_pixels if pillow is None else min(max_pixels, pillow)
        match = _BOMB.search(str(exc))
        if match:
            return f"too large: {int(match.group(1))} pixels exceeds the {limit}-pixel limit"
        return f"too large: more than the {limit}-pixel limit (possible decompression bomb)"
    common = reading_problem(exc)
    if common:
        return common
    message = " ".join(str(exc).split())  # one line, whatever the library wrote
    lowered = message.lower()
    if "truncated" in lowered or "broken data stream" in lowered or "unexpected end" in lowered:
        return "truncated file"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    if len(message) > 200:
        message = message[:197] + "..."
    return f"cannot decode: {message or type(exc).__name__}"
