"""Tests for retrieval.loading: safe decoding of whatever a photo folder contains."""

from __future__ import annotations

import gc
import io
import random
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageOps, features

from retrieval import loading
from retrieval.loading import LoadedImage, load_image, register_format_plugins

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
SAMPLE_PHOTOS = Path(__file__).resolve().parents[2] / "shared/datasets/sample-photos"


def halves(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue: any rotation or flip is visible."""
    im = Image.new("RGB", (width, height), RED)
    im.paste(BLUE, (width // 2, 0, width, height))
    return im


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


def assert_ok(result: LoadedImage) -> Image.Image:
    assert result.ok, result.error
    assert result.error is None
    assert result.image is not None and result.image.mode == "RGB"
    return result.image


def assert_failed(result: LoadedImage, *needles: str) -> None:
    assert not result.ok and result.image is None
    assert result.error and "\n" not in result.error
    assert (result.width, result.height) == (0, 0)
    for needle in needles:
        assert needle in result.error, result.error


# --- orientation -----------------------------------------------------------


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    src = halves()
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    src.save(path, quality=95, exif=exif)

    result = load_image(path)
    img = assert_ok(result)
    expected = src.transpose(Image.Transpose.ROTATE_270)
    assert img.size == expected.size == (32, 64)
    assert (result.width, result.height) == (32, 64)
    # Orientation 6 means "rotate 90 degrees clockwise to view": red ends up on top.
    for xy in [(16, 8), (16, 56), (4, 30), (28, 34)]:
        assert close_to(img.getpixel(xy), expected.getpixel(xy)), xy
    assert close_to(img.getpixel((16, 8)), RED) and close_to(img.getpixel((16, 56)), BLUE)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_still_decodes(tmp_path: Path) -> None:
    path = tmp_path / "bad-exif.jpg"
    halves().save(path, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x01\x12garbage")
    img = assert_ok(load_image(path))
    assert img.size == (64, 32)


def test_orientation_failure_falls_back_to_stored_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(image, **kwargs):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    path = tmp_path / "a.jpg"
    halves().save(path)
    result = load_image(path)
    assert assert_ok(result).size == (64, 32) and (result.width, result.height) == (64, 32)


# --- mode conversion ---------------------------------------------------------


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (4, 0, 8, 8))
    path = tmp_path / "p.png"
    im.save(path, transparency=0)
    img = assert_ok(load_image(path))
    assert img.getpixel((0, 0)) == WHITE and img.getpixel((6, 0)) == RED

    plain = tmp_path / "p-opaque.png"
    im.save(plain)
    assert assert_ok(load_image(plain)).getpixel((0, 0)) == (0, 0, 0)


def test_rgba_transparent_pixel_becomes_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 255, 128))
    path = tmp_path / "rgba.png"
    im.save(path)
    img = assert_ok(load_image(path))
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((2, 2)) == RED
    assert close_to(img.getpixel((1, 0)), (127, 127, 255), tol=2)  # half blue over white


def test_la_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("LA", (4, 4), (0, 255))
    im.putpixel((0, 0), (0, 0))
    path = tmp_path / "la.png"
    im.save(path)
    img = assert_ok(load_image(path))
    assert img.getpixel((0, 0)) == WHITE and img.getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa"])
def test_other_alpha_modes_composited_on_white(mode: str) -> None:
    im = Image.new(mode, (2, 2))  # all zeros: fully transparent
    out = loading._to_rgb(im)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # cyan-free, i.e. red
    img = assert_ok(load_image(path))
    assert close_to(img.getpixel((8, 8)), RED)


def test_16bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    im = Image.new("I;16", (8, 8), 32768)
    im.putpixel((0, 0), 65535)
    im.putpixel((1, 0), 0)
    path = tmp_path / "gray16.png"
    im.save(path)
    img = assert_ok(load_image(path))
    assert close_to(img.getpixel((4, 4)), (128, 128, 128), tol=2)
    assert img.getpixel((0, 0)) == WHITE and img.getpixel((1, 0)) == (0, 0, 0)


def test_32bit_int_and_float_tiff(tmp_path: Path) -> None:
    path = tmp_path / "i32.tif"
    Image.new("I", (4, 4), 40000).save(path)  # 16-bit range stored in 32 bits
    assert close_to(assert_ok(load_image(path)).getpixel((0, 0)), (155, 155, 155), tol=2)
    path = tmp_path / "f.tif"
    Image.new("F", (4, 4), 0.5).save(path)  # normalised float
    assert close_to(assert_ok(load_image(path)).getpixel((0, 0)), (127, 127, 127), tol=2)


def test_one_bit_and_lab_and_ycbcr(tmp_path: Path) -> None:
    im = Image.new("1", (8, 8), 0)
    im.putpixel((0, 0), 1)
    path = tmp_path / "bits.png"
    im.save(path)
    img = assert_ok(load_image(path))
    assert img.getpixel((0, 0)) == WHITE and img.getpixel((1, 1)) == (0, 0, 0)

    lab = Image.new("LAB", (4, 4), (255, 128, 128))  # L*=100, a*=b*=0: white
    assert close_to(loading._to_rgb(lab).getpixel((0, 0)), WHITE, tol=4)
    ycc = Image.new("RGB", (4, 4), RED).convert("YCbCr")
    assert close_to(loading._to_rgb(ycc).getpixel((0, 0)), RED, tol=4)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 255, 0), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = assert_ok(load_image(path))
    assert close_to(img.getpixel((4, 4)), RED, tol=8)


def test_animated_webp_and_apng_give_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (BLUE, RED)]
    for name in ["anim.webp", "anim.png"]:
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
        assert close_to(assert_ok(load_image(path)).getpixel((4, 4)), BLUE, tol=8), name


# --- broken files ------------------------------------------------------------


def noisy_jpeg(path: Path, size: tuple[int, int] = (256, 256)) -> Path:
    rng = random.Random(0)
    Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).save(path, quality=90)
    return path


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = noisy_jpeg(tmp_path / "full.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert_failed(load_image(path), "truncated")


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3)).save(buf, "PNG")
    assert_failed(load_image(buf.getvalue()[: len(buf.getvalue()) // 2]), "truncated")


def test_empty_text_and_random_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert_failed(load_image(empty), "empty file (0 bytes)")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    assert_failed(load_image(text), "not an image (cannot identify image file)")
    assert_failed(load_image(random.Random(2).randbytes(4096)), "not an image")
    assert_failed(load_image(b""), "empty file")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert_failed(load_image(tmp_path / "nope.jpg"), "file not found")
    assert_failed(load_image(tmp_path), "is a directory")


def test_permission_denied_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", denied)
    assert_failed(load_image(tmp_path / "x.jpg"), "permission denied")


def test_jpeg_xl_decodes_and_damaged_ones_are_clean_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval import loading

    pytest.importorskip("pillow_jxl")
    loading.register_format_plugins()
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, format="JXL")
    data = buf.getvalue()
    ok = load_image(data)
    assert ok.ok and ok.image is not None and ok.image.size == (64, 48) and ok.image.mode == "RGB"
    assert max(abs(a - b) for a, b in zip(ok.image.getpixel((5, 5)), (200, 10, 10))) <= 8  # lossy by default
    for name, blob in [("code.jxl", b"\xff\x0a" + bytes(200)), ("box.jxl", b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(200)),
                       ("cut.jxl", data[: len(data) // 2])]:
        path = tmp_path / name
        path.write_bytes(blob)
        assert_failed(load_image(path), "damaged or truncated JPEG XL file")
    # The plugin decodes inside Image.open: the pixel limit is checked from the header first.
    from retrieval.jxl import jpeg_xl_size

    big = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(big, format="JXL")
    with monkeypatch.context() as m:
        m.setattr(loading.Image, "open", lambda *a, **k: pytest.fail("decoded a JPEG XL over the pixel limit"))
        assert_failed(load_image(big.getvalue(), max_pixels=1_000_000), "too large")
    for w, h in [(1, 1), (7, 13), (1920, 1080), (1600, 1200), (513, 257), (123, 4567)]:
        out = io.BytesIO()
        Image.new("RGB", (w, h)).save(out, format="JXL")
        assert jpeg_xl_size(out.getvalue()) == (w, h)
    # Without the plugin, a JPEG XL file says what to install.
    monkeypatch.setattr(loading, "_jxl_available", False)
    assert "pip install pillow-jxl-plugin" in loading._unidentified_reason(b"\xff\x0a" + bytes(20))


def test_other_known_non_images(tmp_path: Path) -> None:
    assert_failed(load_image(b"%PDF-1.7\n" + bytes(100)), "PDF")
    assert_failed(load_image(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'), "SVG")
    mp4 = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00isomiso2" + bytes(100)
    assert_failed(load_image(mp4), "video")


def test_motion_photo_decodes_as_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    halves().save(buf, "JPEG")
    video = struct.pack(">I", 24) + b"ftypmp42" + b"\x00\x00\x00\x00mp42isom" + random.Random(3).randbytes(5000)
    path = tmp_path / "MVIMG_0001.jpg"
    path.write_bytes(buf.getvalue() + video)
    result = load_image(path)
    assert assert_ok(result).size == (64, 32)


# --- size limits ---------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def test_decompression_bomb_small_limit(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    assert_failed(load_image(path, max_pixels=100), "too large: 20x20 pixels exceeds the 100-pixel limit")
    assert assert_ok(load_image(path, max_pixels=400)).size == (20, 20)


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    # Above our limit but below Pillow's hard error: refused by load_image's own
    # check (the file has no pixel data, so a decode would fail differently).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert_failed(
            load_image(png_header_only(15000, 10000), max_pixels=100_000_000),
            "too large: 15000x10000 pixels exceeds the 100000000-pixel limit",
        )
    # Above Pillow's hard limit (2 * MAX_IMAGE_PIXELS): Image.open itself refuses.
    assert_failed(load_image(png_header_only(100000, 100000)), "too large: 10000000000 pixels exceeds the")


def test_bomb_warning_as_error_is_caught() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert_failed(load_image(png_header_only(15000, 10000)), "too large")


def test_global_pillow_limit_untouched(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    load_image(path, max_pixels=100)
    load_image(path, max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == before


# --- reduced-size decode ---------------------------------------------------------


def test_draft_mode_reduces_large_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (10, 120, 200)).save(path)
    result = load_image(path, min_side=256)
    img = assert_ok(result)
    assert (result.width, result.height) == (3000, 2000)
    assert img.size[0] < 3000 and min(img.size) >= 256
    assert img.size == (750, 500)  # 1/4 scale: 1/8 would give a 250-pixel side

    full = load_image(path)
    assert assert_ok(full).size == (3000, 2000)
    # Shorter side less than twice min_side: no reduction is possible.
    assert assert_ok(load_image(path, min_side=1500)).size == (3000, 2000)


@pytest.mark.parametrize("size", [(3000, 2000), (2001, 257), (1024, 1024), (999, 4000)])
@pytest.mark.parametrize("min_side", [1, 100, 224, 256, 333])
def test_draft_keeps_shorter_side(tmp_path: Path, size: tuple[int, int], min_side: int) -> None:
    path = tmp_path / "x.jpg"
    Image.new("L", size, 90).save(path)
    result = load_image(path, min_side=min_side)
    img = assert_ok(result)
    assert (result.width, result.height) == size
    assert min(img.size) >= min(min_side, min(size))


def test_draft_with_orientation_reports_rotated_original_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "big-rotated.jpg"
    halves(3000, 2000).save(path, exif=exif)
    result = load_image(path, min_side=256)
    img = assert_ok(result)
    assert (result.width, result.height) == (2000, 3000)
    assert img.size == (500, 750)
    assert close_to(img.getpixel((250, 100)), RED) and close_to(img.getpixel((250, 650)), BLUE)


def test_draft_applies_to_mpo_jpegs(tmp_path: Path) -> None:
    path = tmp_path / "camera.jpg"  # a JPEG with a multi-picture index, as many cameras write
    first, second = Image.new("RGB", (3000, 2000), RED), Image.new("RGB", (3000, 2000), BLUE)
    first.save(path, "MPO", save_all=True, append_images=[second])
    result = load_image(path, min_side=256)
    img = assert_ok(result)
    assert img.size == (750, 500) and (result.width, result.height) == (3000, 2000)
    assert close_to(img.getpixel((10, 10)), RED)


def test_min_side_ignored_for_non_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 800)).save(path)
    assert assert_ok(load_image(path, min_side=100)).size == (1200, 800)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        load_image(b"x", min_side=0)
    with pytest.raises(ValueError):
        load_image(b"x", max_pixels=0)
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# --- formats and sources -----------------------------------------------------------


def test_heic_round_trip(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    register_format_plugins()
    register_format_plugins()  # idempotent
    path = tmp_path / "photo.heic"
    try:
        halves(64, 48).save(path, format="HEIF", quality=95)
    except Exception as exc:  # noqa: BLE001 - an encoder-less build can only read
        pytest.skip(f"pillow_heif {pillow_heif.__version__} cannot write HEIC here: {exc}")
    result = load_image(path)
    img = assert_ok(result)
    assert img.size == (64, 48) and (result.width, result.height) == (64, 48)
    assert close_to(img.getpixel((8, 24)), RED) and close_to(img.getpixel((56, 24)), BLUE)


def test_avif_round_trip(tmp_path: Path) -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF codec")
    path = tmp_path / "photo.avif"
    halves(64, 48).save(path, quality=90)
    img = assert_ok(load_image(path))
    assert img.size == (64, 48)
    assert close_to(img.getpixel((8, 24)), RED) and close_to(img.getpixel((56, 24)), BLUE)


def test_bytes_and_file_object_sources(tmp_path: Path) -> None:
    buf = io.BytesIO()
    halves().save(buf, "PNG")
    data = buf.getvalue()
    for source in (data, bytearray(data), io.BytesIO(data)):
        assert assert_ok(load_image(source)).getpixel((0, 0)) == RED

    class Pipe(io.RawIOBase):
        """A non-seekable stream, like a socket or stdin."""

        def __init__(self, payload: bytes) -> None:
            self._inner = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self._inner.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert assert_ok(load_image(io.BufferedReader(Pipe(data)))).size == (64, 32)

    path = tmp_path / "a.png"
    path.write_bytes(data)
    with open(path, "rb") as f:
        assert load_image(f).ok
        assert not f.closed  # the caller's file stays the caller's to close


def test_result_is_detached_and_files_closed(tmp_path: Path) -> None:
    paths = []
    for i, (name, kwargs) in enumerate([("a.png", {}), ("b.jpg", {}), ("c.gif", {"save_all": True})]):
        p = tmp_path / name
        Image.new("RGB", (8, 8), RED).save(p, **kwargs)
        paths.append(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [load_image(p).image for p in paths]
        for p in paths:
            p.unlink()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    for img in images:
        assert img is not None and getattr(img, "fp", None) is None
        img.load()
        assert close_to(img.getpixel((1, 1)), RED, tol=8)


# --- real files --------------------------------------------------------------------


@pytest.mark.skipif(not SAMPLE_PHOTOS.is_dir(), reason="shared/datasets/sample-photos is not next to this checkout")
def test_sample_photos_decode_or_give_a_reason() -> None:
    files = sorted(p for p in SAMPLE_PHOTOS.rglob("*") if p.is_file() and p.suffix.lower() != ".md")
    assert files
    decoded, failed = [], []
    for path in files:
        result = load_image(path, min_side=224)
        if result.ok:
            assert result.image is not None and result.image.mode == "RGB"
            assert min(result.image.size) >= min(224, result.width, result.height)
            decoded.append(path)
        else:
            assert result.error
            failed.append((path.relative_to(SAMPLE_PHOTOS), result.error))
    print(f"\nsample-photos: {len(decoded)} decoded, {len(failed)} failed")
    for rel, reason in failed:
        print(f"  {rel}: {reason}")
    # Every format here has a decoder (JPEG XL through pillow-jxl-plugin).
    assert not failed, failed


def test_bomb_refused_by_pillow_quotes_the_callers_limit() -> None:
    # 200 MP is above Pillow's own error threshold (178,956,970): Image.open refuses it before our
    # check, and the reason must still name the limit the caller set (a server's 40 MP).
    result = load_image(png_header_only(20000, 10000), max_pixels=40_000_000)
    assert_failed(result, "too large: 200000000 pixels exceeds the 40000000-pixel limit")
    assert "178956970" not in (result.error or "")
    # Without a limit of its own, the caller's default is Pillow's ceiling, quoted as such.
    assert_failed(load_image(png_header_only(20000, 10000)), "exceeds the 178956970-pixel limit")


def test_no_decompression_bomb_warning_on_stderr_for_90_to_179_megapixels(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "panorama.png"
    path.write_bytes(png_header_only(15000, 10000))  # 150 MP: Pillow warns above 89.5 MP
    code = (
        "import sys; from retrieval.loading import load_image; "
        f"r = load_image({str(path)!r}); print(r.error); "
        f"r = load_image({str(path)!r}, max_pixels=40_000_000); print(r.error)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == "too large: 15000x10000 pixels exceeds the 40000000-pixel limit"
    assert lines[0] and "too large" not in lines[0]  # within the default limit: decoded (and found damaged)
