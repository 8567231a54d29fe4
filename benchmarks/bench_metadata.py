"""Cost of reading photo metadata: per image beside its decode, per format, and an index run with and without it.

Indexing already opens every file from its bytes in memory and decodes it
(reduced-size for JPEG, as ``retrieval.embed`` does); metadata extraction
(``retrieval.photo_meta.metadata_from_image``) runs on that opened image. The
extra cost per image is therefore the metadata call alone, shown beside the
decode (``retrieval.loading.load_image`` with the model's 224-pixel side)
and as a share of it. The decode is only part of indexing (the model costs
several times more), so the share of indexing time is smaller still: the
issue's budget is 5 % of indexing.

Photos are made in memory at camera sizes with phone-like EXIF (time,
offset, camera, lens, GPS) and an XMP packet; when the shared sample photos
are present they are measured too.

The second table is the issue's budget itself (metadata must not slow
indexing by more than 5 %): ``mmsearch index`` (``indexer.update_index``) of
the same folder of camera-sized JPEGs with phone EXIF and GPS, into a fresh
index each time, with metadata (read from the bytes in memory, places named
per committed batch) and without (``read_metadata=False``), alternating, after
one warm-up run of each (the model and the gazetteer load once per process;
the gazetteer's first load is shown on its own line). Both the median and the
fastest of ``--rounds`` runs are shown: on a shared machine the spread between
runs is far larger than the metadata's cost, and the fastest run is the one
least disturbed. Use the real model size: with a tiny test model there is
almost nothing to compare the metadata with.

    python benchmarks/bench_metadata.py                 # 12 photos per format; 64 photos, ViT-B-32-256
    python benchmarks/bench_metadata.py --count 2 --scale 0.25 --index-count 8 --model mmsearch-tiny  # a quick check
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import SAMPLE_PHOTOS, emit_json, machine, print_table
from PIL import Image, ImageDraw, ImageFilter

from retrieval.loading import load_image, register_format_plugins
from retrieval.photo_meta import metadata_from_image

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
    b' photoshop:DateCreated="2022-08-14T19:45:12.250-03:00" xmp:CreateDate="2022-08-14T19:45:12.250-03:00"'
    b' xmp:CreatorTool="17.1"/></rdf:RDF></x:xmpmeta>'
)


def phone_exif(i: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Apple", "iPhone 14 Pro", "17.1"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = f"2022:08:{1 + i % 28:02d} 19:45:12"
    sub[0x9011], sub[0x9291] = "-03:00", "250"
    sub[0xA434] = "iPhone 14 Pro back triple camera 6.86mm f/1.78"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "S", (22.0, 54.0, 24.5), "W", (43.0, 10.0, 22.4)
    gps[5], gps[6] = b"\x00", 12.5
    gps[29], gps[7] = "2022:08:14", (22.0, 45.0, 11.0)
    return exif


def scene(i: int, size: tuple[int, int]) -> Image.Image:
    """A smooth, photo-like picture with some noise (so sizes and decode costs are camera-like)."""
    small = Image.new("RGB", (160, 120), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    draw = ImageDraw.Draw(small)
    for k in range(30):
        x, y, r = (k * 53 + i * 7) % 160, (k * 31 + i * 11) % 120, 5 + (k * 13) % 30
        draw.ellipse([x - r, y - r, x + r, y + r], fill=((k * 40 + i) % 256, (k * 70) % 256, (k * 20 + 90) % 256))
    img = small.filter(ImageFilter.GaussianBlur(4)).resize(size, Image.BICUBIC)
    return Image.blend(img, Image.effect_noise(size, 20).convert("RGB"), 0.06)


def encode(img: Image.Image, fmt: str, i: int) -> bytes:
    buf = io.BytesIO()
    kwargs: dict[str, object] = {"exif": phone_exif(i).tobytes()}
    if fmt in ("JPEG", "WEBP", "HEIF"):
        kwargs["xmp"] = XMP
    if fmt in ("JPEG", "WEBP", "HEIF", "AVIF"):
        kwargs["quality"] = 85
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def measure(data: bytes, repeat: int) -> tuple[float, float, float]:
    """(open s, metadata s, decode s): medians over ``repeat`` runs."""
    opens, metas, decodes = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with Image.open(io.BytesIO(data)) as img:
            t1 = time.perf_counter()
            metadata_from_image(img, mtime_ns=1_700_000_000_000_000_000)
            t2 = time.perf_counter()
        opens.append(t1 - t0)
        metas.append(t2 - t1)
        t0 = time.perf_counter()
        loaded = load_image(io.BytesIO(data), min_side=224)
        decodes.append(time.perf_counter() - t0)
        if not loaded.ok:
            raise SystemExit(f"decode failed: {loaded.error}")
    return statistics.median(opens), statistics.median(metas), statistics.median(decodes)


def photo_folder(count: int, size: tuple[int, int]) -> Path:
    """``count`` camera-like JPEGs with phone EXIF and GPS, made once per size (reused by later runs)."""
    folder = Path(tempfile.gettempdir()) / "mmsearch-bench" / f"exif-photos-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(encode(scene(i, size), "JPEG", i))
            tmp.replace(path)
    return folder


def index_seconds(encoder: object, folder: Path, count: int, read_metadata: bool) -> tuple[float, int, int]:
    """One ``update_index`` of ``count`` photos into a fresh index -> (seconds, images encoded, with a place)."""
    import retrieval
    from retrieval.indexer import update_index

    files = sorted(folder.glob("photo_*.jpg"))[:count]
    root = Path(tempfile.mkdtemp(prefix="mmsearch-bench-meta-"))
    try:
        with retrieval.create_index("bench", root=root, encoder=encoder) as idx:  # type: ignore[arg-type]
            with idx.store.writer_lock():
                report = update_index(idx.store, encoder, files, read_metadata=read_metadata)  # type: ignore[arg-type]
            placed = idx.store.photo_stats().with_place
        return report.seconds, report.encoded, placed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def index_overhead(args: argparse.Namespace, size: tuple[int, int]) -> dict[str, object]:
    """The index run with and without metadata, alternating; prints its table."""
    from retrieval.encoder import load_encoder
    from retrieval.places import places_of

    folder = photo_folder(args.index_count, size)
    encoder = load_encoder(args.model)
    t0 = time.perf_counter()
    places_of([-22.9], [-43.2])  # the gazetteer's positions: loaded once per process, on the first GPS photo
    gazetteer_s = time.perf_counter() - t0
    index_seconds(encoder, folder, args.index_count, True)  # warm-up: page cache, model, thread pools
    index_seconds(encoder, folder, args.index_count, False)
    runs: dict[bool, list[float]] = {True: [], False: []}
    placed = 0
    for _ in range(args.rounds):
        for with_meta in (True, False):
            seconds, encoded, places = index_seconds(encoder, folder, args.index_count, with_meta)
            if encoded != args.index_count:
                raise SystemExit(f"only {encoded} of {args.index_count} photos were encoded")
            runs[with_meta].append(seconds)
            placed = max(placed, places)
    n = args.index_count
    rows, summary = [], {}
    for stat, pick in (("median", statistics.median), ("fastest", min)):
        with_s, without_s = pick(runs[True]), pick(runs[False])
        overhead = with_s / without_s - 1
        summary[stat] = {"with_s": with_s, "without_s": without_s, "overhead": overhead}
        rows.append([stat, without_s, with_s, 1000 * without_s / n, 1000 * with_s / n, f"{100 * overhead:+.2f} %"])
    print_table(
        f"Indexing {n} photos {size[0]}x{size[1]} with phone EXIF + GPS, model {args.model}, {args.rounds} alternating "
        f"runs each (places named: {placed}; the gazetteer's first load, once per process: {gazetteer_s:.2f} s)",
        ["of the runs", "without s", "with s", "without ms/image", "with ms/image", "overhead"],
        rows,
    )
    return {"photos": n, "model": args.model, "with_s": runs[True], "without_s": runs[False], **summary,
            "gazetteer_load_s": gazetteer_s, "within_budget": summary["fastest"]["overhead"] <= 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12, help="photos per format")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="photo size as a fraction of 4032x3024")
    parser.add_argument("--index-count", type=int, default=64, help="photos per index run (0: skip the index runs)")
    parser.add_argument("--rounds", type=int, default=3, help="index runs with and without metadata, alternating")
    parser.add_argument("--model", default="ViT-B-32-256", help="model of the index runs (random weights)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    register_format_plugins()
    size = (max(64, int(4032 * args.scale)), max(48, int(3024 * args.scale)))
    rows, results = [], {}
    formats = ["JPEG", "HEIF", "AVIF", "WEBP", "PNG", "TIFF"]
    for fmt in formats:
        samples = []
        for i in range(args.count):
            try:
                data = encode(scene(i, size), fmt, i)
            except (OSError, KeyError, ValueError) as exc:  # a codec this Pillow lacks
                print(f"{fmt}: skipped ({exc})")
                break
            samples.append(measure(data, args.repeat))
        if samples:
            results[fmt] = _row(fmt, samples, rows)
    if SAMPLE_PHOTOS.is_dir():
        samples = []
        for path in sorted(p for p in SAMPLE_PHOTOS.rglob("*") if p.is_file() and p.suffix.lower() != ".md"):
            data = Path(path).read_bytes()
            if load_image(io.BytesIO(data), min_side=224).ok:
                samples.append(measure(data, args.repeat))
        if samples:
            results["sample-photos"] = _row("sample photos (all formats)", samples, rows)
    print_table(
        f"Metadata extraction vs decoding, per image ({size[0]}x{size[1]} generated photos, median of "
        f"{args.repeat} runs each)",
        ["format", "images", "open ms", "metadata ms", "decode ms", "metadata / decode"],
        rows,
    )
    indexing = index_overhead(args, size) if args.index_count > 0 else None
    emit_json({"benchmark": "metadata", "machine": machine(), "args": vars(args), "results": results,
               "indexing": indexing}, args.json)


def _row(name: str, samples: list[tuple[float, float, float]], rows: list[list[object]]) -> dict[str, float]:
    open_s = statistics.median(s[0] for s in samples)
    meta_s = statistics.median(s[1] for s in samples)
    decode_s = statistics.median(s[2] for s in samples)
    share = sum(s[1] for s in samples) / max(1e-12, sum(s[2] for s in samples))
    rows.append([name, len(samples), open_s * 1000, meta_s * 1000, decode_s * 1000, f"{100 * share:.2f} %"])
    return {"images": len(samples), "open_ms": open_s * 1000, "metadata_ms": meta_s * 1000,
            "decode_ms": decode_s * 1000, "metadata_share_of_decode": share}


if __name__ == "__main__":
    main()
