"""Capture time, camera, lens and GPS read from photos' EXIF/XMP/IPTC, in every format, robust to junk."""

from __future__ import annotations

import io
import struct
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from retrieval.errors import InvalidQueryError
from retrieval.loading import register_format_plugins
from retrieval.photo_meta import (
    PhotoMeta,
    camera_matches,
    metadata_from_image,
    normalise_camera,
    read_photo_metadata,
)
from retrieval.photo_time import parse_datetime_text, parse_time_bound
from retrieval.xmp import MAX_XMP_BYTES, NS, parse_xmp

from .conftest import SAMPLE_PHOTOS

register_format_plugins()


def sample_root() -> Path:
    """The shared sample photos beside the checkout (a git worktree sits one level deeper)."""
    if SAMPLE_PHOTOS.is_dir():
        return SAMPLE_PHOTOS
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "datasets" / "sample-photos"
        if candidate.is_dir():
            return candidate
    return SAMPLE_PHOTOS

# (name, lat, lon): several continents, both hemispheres on both axes.
CITIES = [
    ("Sydney", -33.8688, 151.2093),
    ("Rio de Janeiro", -22.9068, -43.1729),
    ("San Francisco", 37.7749, -122.4194),
    ("Munich", 48.1374, 11.5755),
    ("Nairobi", -1.2864, 36.8172),
    ("Tokyo", 35.6762, 139.6503),
    ("Ushuaia", -54.8019, -68.3030),
]


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 4)
    return float(degrees), float(minutes), seconds


def make_exif(
    *,
    make: str | None = None,
    model: str | None = None,
    lens: str | None = None,
    original: str | None = None,
    offset: str | None = None,
    subsec: str | None = None,
    digitized: str | None = None,
    changed: str | None = None,
    gps: tuple[float, float] | None = None,
    altitude: float | None = None,
    gps_time: tuple[str, tuple[float, float, float]] | None = None,
) -> Image.Exif:
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if changed is not None:
        exif[0x0132] = changed
    sub = exif.get_ifd(0x8769)
    for tag, value in ((0x9003, original), (0x9011, offset), (0x9291, subsec), (0x9004, digitized), (0xA434, lens)):
        if value is not None:
            sub[tag] = value
    if gps is not None or gps_time is not None:
        g = exif.get_ifd(0x8825)
        if gps is not None:
            lat, lon = gps
            g[1], g[2] = ("N" if lat >= 0 else "S"), _dms(lat)
            g[3], g[4] = ("E" if lon >= 0 else "W"), _dms(lon)
        if altitude is not None:
            g[5], g[6] = (b"\x01" if altitude < 0 else b"\x00"), abs(altitude)
        if gps_time is not None:
            g[29], g[7] = gps_time
    return exif


def encode(fmt: str, exif: Image.Exif | None = None, *, xmp: bytes | None = None, size=(64, 48)) -> bytes:
    img = Image.new("RGB", size, (120, 80, 40))
    buf = io.BytesIO()
    kwargs = {}
    if exif is not None:
        kwargs["exif"] = exif.tobytes()
    if xmp is not None:
        kwargs["xmp"] = xmp
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def meta_of(data: bytes, mtime_ns: int | None = None) -> PhotoMeta:
    with Image.open(io.BytesIO(data)) as img:
        return metadata_from_image(img, mtime_ns=mtime_ns)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------- capture time


def test_original_time_with_offset_is_exact():
    meta = meta_of(encode("JPEG", make_exif(original="2021:07:04 18:30:05", offset="+02:00", subsec="25")))
    assert meta.taken_at == "2021-07-04T18:30:05.250000+02:00"
    assert meta.taken_ts == pytest.approx(utc(2021, 7, 4, 16, 30, 5) + 0.25)
    assert (meta.time_source, meta.utc_offset_min, meta.offset_source) == ("exif-original", 120, "exif")
    assert meta.local_ts == pytest.approx(utc(2021, 7, 4, 18, 30, 5) + 0.25)


def test_time_without_offset_reads_the_wall_clock_as_utc_and_says_the_offset_is_unknown():
    meta = meta_of(encode("JPEG", make_exif(original="2019:12:31 23:59:59")))
    assert meta.taken_at == "2019-12-31T23:59:59"
    assert meta.utc_offset_min is None and meta.offset_source is None
    assert meta.taken_ts == utc(2019, 12, 31, 23, 59, 59) == meta.local_ts


def test_offset_is_derived_from_gps_time_when_they_agree():
    # 11:04:22 on the camera, the GPS fix at 16:04:21 UTC: the camera was on UTC-5 (as the sample iPhone photo).
    exif = make_exif(original="2019:03:21 11:04:22", gps=(41.22, -96.07), gps_time=("2019:03:21", (16.0, 4.0, 21.0)))
    meta = meta_of(encode("JPEG", exif))
    assert (meta.utc_offset_min, meta.offset_source) == (-300, "gps")
    assert meta.taken_at == "2019-03-21T11:04:22-05:00"


def test_a_stale_gps_fix_gives_no_offset():
    exif = make_exif(original="2019:03:21 11:04:22", gps=(41.22, -96.07), gps_time=("2019:03:21", (16.0, 11.0, 0.0)))
    assert meta_of(encode("JPEG", exif)).utc_offset_min is None


@pytest.mark.parametrize(
    ("exif", "xmp", "source", "wall"),
    [
        (make_exif(digitized="2020:05:05 10:00:00", changed="2024:01:01 00:00:00"), None, "exif-digitized",
         "2020-05-05T10:00:00"),
        (make_exif(changed="2018:02:03 04:05:06"), None, "exif-datetime", "2018-02-03T04:05:06"),
        # A capture date in XMP beats EXIF's "file changed" time (an editor's save).
        (make_exif(changed="2023:09:27 14:32:53"), (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
         b'"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:photoshop='
         b'"http://ns.adobe.com/photoshop/1.0/" photoshop:DateCreated="1985-07-14T09:10:00+01:00"/></rdf:RDF>'
         b'</x:xmpmeta>'), "xmp", "1985-07-14T09:10:00+01:00"),
    ],
)
def test_capture_time_sources_in_order(exif, xmp, source, wall):
    meta = meta_of(encode("JPEG", exif, xmp=xmp))
    assert (meta.time_source, meta.taken_at) == (source, wall)


@pytest.mark.parametrize(
    "bad", ["0000:00:00 00:00:00", "    :  :     :  :  ", "", "2023:13:45 25:00:00", "2005:00:00 00:00:00",
            "\x00\x00\x00\x00", "garbage", "1200:01:01 00:00:00"],
)
def test_malformed_dates_fall_through_to_the_next_source(bad):
    meta = meta_of(encode("JPEG", make_exif(original=bad, digitized="2011:11:11 11:11:11")))
    assert (meta.time_source, meta.taken_at) == ("exif-digitized", "2011-11-11T11:11:11")


def test_no_date_anywhere_falls_back_to_the_file_time_marked_as_such():
    mtime_ns = 1_700_000_000_123_456_789
    meta = meta_of(encode("JPEG", make_exif(original="0000:00:00 00:00:00")), mtime_ns=mtime_ns)
    assert meta.time_source == "file-mtime" and meta.offset_source == "local-clock"
    assert meta.taken_ts == pytest.approx(mtime_ns / 1e9)
    assert datetime.fromisoformat(meta.taken_at).timestamp() == pytest.approx(mtime_ns / 1e9)
    assert meta_of(encode("JPEG")).taken_ts is None  # and nothing without a file time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021:07:04 18:30:05", datetime(2021, 7, 4, 18, 30, 5)),
        ("2023-09-27T14:32:53+02:00", datetime(2023, 9, 27, 14, 32, 53)),  # ISO in a DateTime tag (seen in samples)
        ("2021:07:04 18:30", datetime(2021, 7, 4, 18, 30)),
        ("2021/07/04 18:30:05\x00", datetime(2021, 7, 4, 18, 30, 5)),
        ("2021:02:30 10:00:00", None),
        ("2021:07:04 18:30:60", datetime(2021, 7, 4, 18, 30, 59)),
    ],
)
def test_datetime_text_forms(text, expected):
    stamp = parse_datetime_text(text)
    assert (stamp.wall.replace(microsecond=0) if stamp else None) == expected


def test_time_bounds_are_the_start_of_the_named_period_and_bad_ones_name_the_value():
    assert parse_time_bound("2023-06-01") == utc(2023, 6, 1)
    assert parse_time_bound("2023") == utc(2023, 1, 1)
    assert parse_time_bound("2023-06") == utc(2023, 6, 1)
    assert parse_time_bound("2023-06-01T12:30") == utc(2023, 6, 1, 12, 30)
    for bad in ("2023-13-01", "yesterday", "2023-06-01+02:00", ""):
        with pytest.raises(InvalidQueryError, match="bad date"):
            parse_time_bound(bad)


# ---------------------------------------------------------------- camera


@pytest.mark.parametrize(
    ("make", "model", "expected"),
    [
        ("Apple", "iPhone 12 Pro", ("Apple", "iPhone 12 Pro")),
        ("NIKON CORPORATION", "NIKON D750", ("Nikon", "D750")),
        ("Canon", "Canon EOS R5", ("Canon", "EOS R5")),
        ("PENTAX Corporation ", "PENTAX K10D        ", ("Pentax", "K10D")),
        ("samsung", "SM-G991B", ("Samsung", "SM-G991B")),
        ("EASTMAN KODAK COMPANY", "KODAK EASYSHARE C813 ZOOM DIGITAL CAMERA",
         ("Kodak", "EASYSHARE C813 ZOOM DIGITAL CAMERA")),
        ("FUJIFILM\x00", "FinePix S3Pro\x00", ("Fujifilm", "FinePix S3Pro")),
        ("Canon", "Canon", ("Canon", "Canon")),  # nothing left after the make: keep the model
        ("  ", "\x00\x00", (None, None)),
        (b"SONY\x00\x00junk", b"ILCE-7M3", ("Sony", "ILCE-7M3")),
    ],
)
def test_camera_names_are_normalised(make, model, expected):
    assert normalise_camera(make, model) == expected


def test_camera_matching_is_by_words_case_insensitive():
    assert camera_matches("iphone", "Apple", "iPhone 12 Pro")
    assert camera_matches("apple 12", "Apple", "iPhone 12 Pro")
    assert not camera_matches("iphone 13", "Apple", "iPhone 12 Pro")
    assert not camera_matches("", "Apple", "iPhone 12 Pro")


# ---------------------------------------------------------------- GPS


@pytest.mark.parametrize(("name", "lat", "lon"), CITIES, ids=[c[0] for c in CITIES])
def test_gps_positions_of_cities_read_back_with_their_hemispheres(name, lat, lon):
    meta = meta_of(encode("JPEG", make_exif(gps=(lat, lon), altitude=35.5)))
    assert meta.gps_lat == pytest.approx(lat, abs=1e-6)
    assert meta.gps_lon == pytest.approx(lon, abs=1e-6)
    assert meta.gps_alt == pytest.approx(35.5)
    assert meta.has_gps


def test_altitude_below_sea_level():
    meta = meta_of(encode("JPEG", make_exif(gps=(31.5, 35.5), altitude=-430.0)))  # the Dead Sea shore
    assert meta.gps_alt == pytest.approx(-430.0)


@pytest.mark.parametrize(
    "gps",
    [
        {1: "N", 2: (IFDRational(0, 0), IFDRational(0, 0), IFDRational(0, 0)), 3: "E", 4: (1.0, 2.0, 3.0)},
        {1: "\x00", 2: (48.0, 8.0, 14.7), 3: "\x00", 4: (11.0, 34.0, 31.8)},  # refs blank (sample empty_gps.jpg)
        {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (11.0, 0.0, 0.0)},  # off the map
        {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)},  # "null island": no fix
        {1: "Q", 2: (48.0, 8.0, 14.7), 3: "E", 4: (11.0, 34.0, 31.8)},
    ],
)
def test_unusable_gps_gives_no_position(gps):
    exif = make_exif(original="2020:01:01 00:00:00")
    ifd = exif.get_ifd(0x8825)
    ifd.update(gps)
    meta = meta_of(encode("JPEG", exif))
    assert (meta.gps_lat, meta.gps_lon) == (None, None)
    assert meta.taken_at == "2020-01-01T00:00:00"  # the rest is still read


def test_gps_from_xmp_when_exif_has_none():
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/"><exif:GPSLatitude>33,52.128S</exif:GPSLatitude>'
        b"<exif:GPSLongitude>151,12.558E</exif:GPSLongitude><exif:GPSAltitude>1500/100</exif:GPSAltitude>"
        b"<exif:GPSAltitudeRef>0</exif:GPSAltitudeRef></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    meta = meta_of(encode("JPEG", xmp=xmp))
    assert meta.gps_lat == pytest.approx(-(33 + 52.128 / 60))
    assert meta.gps_lon == pytest.approx(151 + 12.558 / 60)
    assert meta.gps_alt == pytest.approx(15.0)


# ---------------------------------------------------------------- formats


PHONE = {
    "make": "Apple", "model": "iPhone 12 Pro", "lens": "iPhone 12 Pro back triple camera 4.2mm f/1.6",
    "original": "2022:08:14 19:45:12", "offset": "-03:00", "gps": (-22.9068, -43.1729), "altitude": 12.0,
}


def _png_with_late_exif(exif: Image.Exif) -> bytes:
    """A PNG whose eXIf chunk comes after the image data (legal; Pillow reads it only while decoding)."""
    data = encode("PNG")
    iend = data.rindex(b"IEND") - 4
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\x00\x00") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    return data[:iend] + chunk + data[iend:]


def _png_with_itxt_xmp(xmp: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF", "JXL", "PNG-late"])
def test_the_same_metadata_from_every_format_without_decoding_pixels(fmt):
    exif = make_exif(**PHONE)
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    if fmt == "JXL":
        pytest.importorskip("pillow_jxl")
    data = _png_with_late_exif(exif) if fmt == "PNG-late" else encode(fmt, exif)
    with Image.open(io.BytesIO(data)) as img:
        img.load = lambda: pytest.fail(f"{fmt}: reading metadata decoded the pixels")  # type: ignore[method-assign]
        meta = metadata_from_image(img, mtime_ns=None)
    assert meta.taken_at == "2022-08-14T19:45:12-03:00"
    assert (meta.camera_make, meta.camera_model) == ("Apple", "iPhone 12 Pro")
    assert meta.lens == PHONE["lens"]
    assert (meta.gps_lat, meta.gps_lon, meta.gps_alt) == (pytest.approx(-22.9068, abs=1e-6),
                                                          pytest.approx(-43.1729, abs=1e-6), pytest.approx(12.0))


def test_jpeg_xl_metadata_comes_from_its_boxes_without_decoding(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("pillow_jxl")
    exif = make_exif(**PHONE)
    plugin_written = encode("JXL", exif)  # raw TIFF in the Exif box, as pillow-jxl-plugin writes it
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
    box = (0).to_bytes(4, "big") + tiff  # the standard form: the TIFF header offset first
    standard = (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + struct.pack(">I4s", 8 + len(box), b"Exif") + box
                + struct.pack(">I4s", 12, b"jxlc") + b"\xff\x0a\x00\x00")
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the JPEG XL plugin decodes in Image.open"))
    for data in (plugin_written, standard):
        meta = read_photo_metadata(data)
        assert meta.taken_at == "2022-08-14T19:45:12-03:00" and meta.camera_model == "iPhone 12 Pro"
        assert meta.gps_lat == pytest.approx(-22.9068, abs=1e-6)
    bare = read_photo_metadata(b"\xff\x0a" + bytes(64), mtime_ns=1_700_000_000_000_000_000)
    assert bare.time_source == "file-mtime"


def test_png_xmp_in_itxt():
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreateDate="2016-04-01T08:00:00Z"/>'
           b"</rdf:RDF></x:xmpmeta>")
    meta = meta_of(_png_with_itxt_xmp(xmp))
    assert (meta.time_source, meta.taken_at) == ("xmp", "2016-04-01T08:00:00+00:00")


def test_heic_written_by_pillow_heif_with_exif():
    pytest.importorskip("pillow_heif")
    exif = make_exif(make="samsung", model="SM-S906U", original="2024:01:12 21:38:53", offset="-08:00",
                     gps=(-33.8688, 151.2093))
    meta = read_photo_metadata(encode("HEIF", exif))
    assert meta.taken_ts == utc(2024, 1, 13, 5, 38, 53)
    assert (meta.camera_make, meta.camera_model) == ("Samsung", "SM-S906U")
    assert meta.gps_lat == pytest.approx(-33.8688, abs=1e-6)


# ---------------------------------------------------------------- junk


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own warning on the broken header
@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\x00\x00\xff\xff",
     encode("JPEG", make_exif(**PHONE))[:200], bytes(range(256)) * 40],
    ids=["empty", "text", "broken-exif-header", "truncated-jpeg", "noise"],
)
def test_bad_files_never_raise(data):
    meta = read_photo_metadata(data, mtime_ns=1_600_000_000_000_000_000)
    assert meta.taken_ts is not None  # at least the file time
    assert isinstance(meta.as_dict(), dict)


def test_a_truncated_jpeg_still_gives_its_exif():
    data = encode("JPEG", make_exif(**PHONE), size=(640, 480))
    meta = read_photo_metadata(data[: len(data) // 2])
    assert meta.taken_at == "2022-08-14T19:45:12-03:00" and meta.has_gps


def test_read_photo_metadata_from_a_path_uses_the_file_time(tmp_path: Path):
    path = tmp_path / "plain.png"
    path.write_bytes(encode("PNG"))
    meta = read_photo_metadata(path)
    assert meta.time_source == "file-mtime"
    assert meta.taken_ts == pytest.approx(path.stat().st_mtime_ns / 1e9)
    assert read_photo_metadata(tmp_path / "missing.jpg").taken_ts is None


# ---------------------------------------------------------------- XMP safety


def test_xmp_with_a_doctype_or_entities_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreateDate="&lol2;"/></rdf:RDF>'
            b"</x:xmpmeta>")
    assert parse_xmp(bomb) == {}
    external = bomb.replace(b'<!ENTITY lol "lol">', b'<!ENTITY lol SYSTEM "file:///etc/passwd">')
    assert parse_xmp(external) == {}


def test_xmp_oversized_truncated_or_odd():
    good = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Make="Canon">'
            b"<tiff:Model><rdf:Alt><rdf:li>EOS R5</rdf:li><rdf:li>ignored</rdf:li></rdf:Alt></tiff:Model>"
            b"</rdf:Description></rdf:RDF></x:xmpmeta>")
    props = parse_xmp(b"\x00garbage before" + good + b"\x00" * 100)
    assert props[(NS["tiff"], "Make")] == "Canon" and props[(NS["tiff"], "Model")] == "EOS R5"
    assert parse_xmp(good[:-40])[(NS["tiff"], "Make")] == "Canon"  # truncated: what came before is kept
    assert parse_xmp(good + b" " * MAX_XMP_BYTES) == {}
    assert parse_xmp(b"<<<>>>") == {} and parse_xmp(None) == {} and parse_xmp(12) == {}  # type: ignore[arg-type]


# ---------------------------------------------------------------- the real sample photos


def _sample(rel: str) -> Path:
    path = sample_root() / rel
    if not path.is_file():
        pytest.skip(f"sample photo {rel} not present")
    return path


# Checked against exiftool 12.57 (`exiftool -a -G1 -time:all -gps:all -Make -Model -LensModel -Lens`).
SAMPLES = {
    "formats/heic/IMG_2682.heic": {
        "wall": "2019-03-21T11:04:22.348000", "offset": -300, "source": "exif-original", "make": "Apple", "model": "iPhone 7",
        "lens": "iPhone 7 back camera 3.99mm f/1.8", "gps": (41.2203, -96.071625, 351.27)},
    "formats/motionphoto/samsung-one-ui-6.heic": {
        "wall": "2024-01-12T21:38:53.853000", "offset": -480, "source": "exif-original", "make": "Samsung", "model": "SM-S906U"},
    "albums/nature/tanners_ridge.jpg": {
        "wall": "2023-09-25T08:33:30.880000", "offset": None, "source": "exif-original", "make": "Nikon", "model": "D750",
        "lens": "17.0-35.0 mm f/2.8"},
    "albums/nature/cyclamen_persicum.jpg": {
        "wall": "2007-12-06T14:33:18", "offset": 540, "source": "exif-original", "make": "Fujifilm", "model": "FinePix S3Pro"},
    "formats/webp/denali.webp": {
        "wall": "2010-08-13T21:00:01.850000", "offset": None, "source": "exif-original", "make": "Canon", "model": "EOS 7D",
        "lens": "EF28-80mm f/3.5-5.6 USM"},
    "metadata/dates/date-priority-test.jpg": {"wall": "2023-02-02T02:00:00", "offset": None, "source": "exif-original"},
    "metadata/dates/datetimeoriginal-gps.jpg": {
        "wall": "2025-12-01T11:30:00", "offset": None, "source": "exif-original", "gps": (39.0, -108.0, None)},
    "metadata/dates/gps-datetime.jpg": {
        "wall": "2023-11-15T12:30:00", "offset": 0, "source": "gps", "gps": (37.7749, -122.4194, None)},
    "metadata/gps-position/empty_gps.jpg": {
        "wall": "2025-06-01T16:59:26.023460", "offset": None, "source": "exif-original", "make": "Motorola",
        "model": "moto g(9) plus", "gps": (None, None, None)},
    "metadata/tags/picasa.jpg": {
        "wall": "2010-02-13T14:55:31", "offset": None, "source": "exif-original", "make": "Canon", "model": "PowerShot SD1100 IS"},
}


@pytest.mark.parametrize("rel", sorted(SAMPLES))
def test_sample_photos_read_right(rel):
    expected = SAMPLES[rel]
    meta = read_photo_metadata(_sample(rel))
    wall = datetime.fromisoformat(meta.taken_at).replace(tzinfo=None).isoformat()
    assert wall == expected["wall"]
    assert meta.utc_offset_min == expected["offset"]
    assert meta.time_source == expected["source"]
    for key in ("make", "model", "lens"):
        if key in expected:
            assert getattr(meta, "camera_" + key if key != "lens" else "lens") == expected[key]
    if "gps" in expected:
        lat, lon, alt = expected["gps"]
        assert meta.gps_lat == (pytest.approx(lat, abs=1e-6) if lat is not None else None)
        assert meta.gps_lon == (pytest.approx(lon, abs=1e-6) if lon is not None else None)
        assert meta.gps_alt == (pytest.approx(alt, abs=0.01) if alt is not None else None)


def test_sample_without_gps_time_offset_uses_the_gps_fix():
    # XMP photoshop:DateCreated 15:15:44.31 (no offset), GPS fix 21:15:33.519 UTC: the instant must agree
    # with the fix. (IPTC claims -04:00, which would put the shot two hours before its own GPS fix.)
    meta = read_photo_metadata(_sample("metadata/gps-position/thompson-springs.jpg"))
    assert meta.time_source == "xmp" and meta.offset_source == "gps"
    assert datetime.fromisoformat(meta.taken_at).replace(tzinfo=None) == datetime(2022, 1, 10, 15, 15, 44, 310000)
    assert abs(meta.taken_ts - utc(2022, 1, 10, 21, 15, 33)) < 60
    assert (meta.gps_lat, meta.gps_lon) == (pytest.approx(39.115), pytest.approx(-108.4009683))


def test_sample_iphone_instant_agrees_with_its_gps_fix():
    meta = read_photo_metadata(_sample("formats/heic/IMG_2682.heic"))
    assert abs(meta.taken_ts - (utc(2019, 3, 21, 16, 4, 21) + 0.01)) < 2


def test_sample_without_any_date_falls_back_to_the_file_time():
    path = _sample("metadata/dates/time-created.jpg")  # IPTC TimeCreated without a date
    meta = read_photo_metadata(path)
    assert meta.time_source == "file-mtime"
    assert (meta.camera_make, meta.camera_model) == ("Canon", "EOS R5")
    assert meta.taken_ts == pytest.approx(path.stat().st_mtime_ns / 1e9)


def test_utc_instant_of_an_offset_time():
    meta = meta_of(encode("JPEG", make_exif(original="2000:01:01 00:30:00", offset="+05:30")))
    assert datetime.fromtimestamp(meta.taken_ts, timezone.utc) == datetime(1999, 12, 31, 19, 0, tzinfo=timezone.utc)
    assert meta.local_ts - meta.taken_ts == timedelta(hours=5, minutes=30).total_seconds()
