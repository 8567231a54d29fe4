"""Video indexing speed: decoding and frame sampling per strategy, and (optionally) the model on the frames.

    .venv/bin/python benchmarks/bench_video.py                       # 60 s 1080p30 H.264, generated once
    .venv/bin/python benchmarks/bench_video.py --model ViT-B-32-256  # + the image tower on the sampled frames
    .venv/bin/python benchmarks/bench_video.py --size 320x180 --seconds 6 --intervals 1,4   # quick check
    .venv/bin/python benchmarks/bench_video.py --index-model ViT-B-32 --strategies ""   # indexing throughput only

What it measures, all in one process so the ratios hold on a busy machine:

* per test video (phone-like: a keyframe every second; exported: x264's
  default of one every ~8 s) and per sampling interval, each strategy of
  ``retrieval.video.sample_frames``: seconds of video per second of wall
  time, frames kept per minute of video, frames decoded; the fastest is
  marked. Where ``seek`` overtakes ``keyframes`` is the crossover that
  ``SEEK_MIN_JUMP_S`` in retrieval/video.py should follow.
* the naive loop (decode every frame, convert the ones at sample times with
  ``frame.to_image()`` then resize in PIL), and one frame's conversion both
  ways: libswscale straight to the small size versus full-size PIL.
* with ``--model``: the image tower (random weights, the real model's
  shapes) on the kept frames, so the table says what dominates per minute of
  video, decoding or the model.
* with ``--index-model``: ``mmsearch index`` itself (``indexer.update_index``
  with the default sampling) over ``--index-videos`` distinct test videos:
  seconds of video indexed per second, frames embedded per minute of video,
  and where the time went (sampling, summed over the decoding threads, versus
  the model). ``mmsearch-tiny`` makes the model nearly free: decoding alone.

Test videos are textured, moving, noisy 1080p scenes with cuts (from the
sample photos when present), encoded at phone bitrates, cached by name under
``--cache`` and reused.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_PHOTOS, emit_json, machine, print_table  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "mmsearch-bench" / "videos"
STRATEGIES = ("sequential", "keyframes", "seek", "auto")


# -- test videos --------------------------------------------------------------------------


def _source_pictures(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Large textured pictures to pan over: the sample photos when present, else smooth random blobs."""
    from PIL import Image, ImageDraw, ImageFilter, ImageOps

    width, height = size
    big = (int(width * 1.5), int(height * 1.5))
    pictures: list[np.ndarray] = []
    photos = sorted(SAMPLE_PHOTOS.rglob("*.jpg")) if SAMPLE_PHOTOS.is_dir() else []
    rng = np.random.default_rng(7)
    for i in range(count):
        if photos:
            with Image.open(photos[i % len(photos)]) as im:
                img = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), big)
        else:
            img = Image.new("RGB", (300, 200), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(30):
                x, y, r = int(rng.integers(300)), int(rng.integers(200)), int(rng.integers(5, 60))
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            img = img.filter(ImageFilter.GaussianBlur(2)).resize(big, Image.BICUBIC)
        pictures.append(np.asarray(img))
    return pictures


def make_test_video(path: Path, size: tuple[int, int], seconds: float, fps: int, gop_seconds: float) -> Path:
    """A camera-like H.264 video: slow pans over textured pictures, a cut every 6 s, sensor noise.

    Written once per name; a half-written file never survives (temp name, then rename).
    """
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    frames = int(seconds * fps)
    scene_frames = 6 * fps
    pictures = _source_pictures(size, max(1, -(-frames // scene_frames)))
    rng = np.random.default_rng(11)
    noise = [rng.normal(0, 4, (height, width, 3)).astype(np.int16) for _ in range(4)]
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    # Phones record 1080p30 at ~15-20 Mbit/s; x264's "veryfast" keeps generation quick.
    options = {"preset": "veryfast", "x264-params": f"keyint={int(gop_seconds * fps)}:min-keyint=1",
               "b": str(int(16e6 * width * height / (1920 * 1080)))}
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            picture = pictures[i // scene_frames]
            phase = (i % scene_frames) / scene_frames
            x0 = int(phase * (picture.shape[1] - width))
            y0 = int(0.5 * phase * (picture.shape[0] - height))
            crop = picture[y0:y0 + height, x0:x0 + width].astype(np.int16) + noise[i % 4]
            frame = av.VideoFrame.from_ndarray(np.clip(crop, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


# -- measurements ---------------------------------------------------------------------------


def run_strategy(path: Path, interval: float, strategy: str, min_side: int, threads: int) -> dict[str, Any]:
    from retrieval.video import FrameSampling, sample_frames

    # The cap is lifted so that the interval alone sets the sampling density under test.
    sampling = FrameSampling(interval=interval, max_frames=100_000, strategy=strategy, min_side=min_side,
                             threads=threads)
    t0 = time.perf_counter()
    with sample_frames(path, sampling) as frames:
        kept = [f.image for f in frames]
        chosen, decoded = frames.strategy, frames.decoded_frames
    return {"seconds": time.perf_counter() - t0, "kept": kept, "decoded": decoded, "chosen": chosen}


def run_naive(path: Path, interval: float, min_side: int) -> dict[str, Any]:
    """Decode every frame; at each interval, frame.to_image() at full size, then PIL resize."""
    import av
    from PIL import Image

    t0 = time.perf_counter()
    kept, decoded, due = [], 0, 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        for frame in container.decode(stream):
            decoded += 1
            if frame.time is not None and frame.time + 1e-6 >= due:
                img = frame.to_image()
                scale = min_side / min(img.size)
                kept.append(img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR))
                due += interval
    return {"seconds": time.perf_counter() - t0, "kept": kept, "decoded": decoded, "chosen": "naive"}


def conversion_ms(path: Path, min_side: int, repeats: int = 20) -> dict[str, float]:
    """One decoded frame to a small RGB picture: libswscale at the target size vs to_image + PIL resize."""
    import av
    from PIL import Image

    from retrieval.video_pixels import FrameConverter, Orientation

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    converter = FrameConverter(min_side, None, Orientation())
    converter.image(frame)  # set-up of the scaler is not what is measured
    t0 = time.perf_counter()
    for _ in range(repeats):
        converter.image(frame)
    swscale = (time.perf_counter() - t0) / repeats * 1000
    t0 = time.perf_counter()
    for _ in range(repeats):
        img = frame.to_image()
        scale = min_side / min(img.size)
        img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    pil = (time.perf_counter() - t0) / repeats * 1000
    t0 = time.perf_counter()
    for _ in range(repeats):
        converter.signature(frame)
    signature = (time.perf_counter() - t0) / repeats * 1000
    return {"swscale_ms": swscale, "to_image_and_resize_ms": pil, "signature_ms": signature}


def model_seconds_per_frame(spec: str, images: list[Any], batch: int = 32) -> float:
    from retrieval.encoder import load_encoder

    encoder = load_encoder(spec)
    images = (images * (-(-64 // len(images))))[:max(64, len(images))]  # enough frames for a stable figure
    encoder.encode_images(images[:batch])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(images), batch):
        encoder.encode_images(images[start:start + batch])
    return (time.perf_counter() - t0) / max(1, len(images))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1920x1080", help="video size WxH [1920x1080]")
    ap.add_argument("--seconds", type=float, default=60.0, help="video length [60]")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gops", default="1,8.33", help="keyframe spacings in seconds, one video each [1,8.33]")
    ap.add_argument("--intervals", default="0.5,1,2,4,8,15,30", help="sampling intervals in seconds")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--min-side", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="decoder threads (0: FFmpeg decides)")
    ap.add_argument("--no-naive", action="store_true", help="skip the decode-everything + PIL baseline")
    ap.add_argument("--model", help="also time this model's image tower on the kept frames (e.g. ViT-B-32-256)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where generated videos are kept")
    ap.add_argument("--index-model", help="also index the test videos with this model (e.g. ViT-B-32, random weights)")
    ap.add_argument("--index-videos", type=int, default=4, help="distinct videos per indexing run [4]")
    ap.add_argument("--index-gop", type=float, default=1.0, help="keyframe spacing of those videos, seconds [1]")
    ap.add_argument("--batch-size", type=int, default=32, help="frames per encoder batch when indexing [32]")
    ap.add_argument("--workers", type=int, default=0, help="video decoding threads when indexing (0: default)")
    ap.add_argument("--json", help="also write the JSON result to this file")
    args = ap.parse_args(argv)

    width, height = (int(v) for v in args.size.lower().split("x"))
    intervals = [float(v) for v in args.intervals.split(",") if v]
    strategies = [s for s in args.strategies.split(",") if s]
    result: dict[str, Any] = {"machine": machine(), "size": args.size, "seconds": args.seconds, "fps": args.fps,
                              "min_side": args.min_side, "videos": {}}
    sample_images: list[Any] = []
    for gop in (float(v) for v in args.gops.split(",") if v and strategies):
        name = f"pan_{width}x{height}_{args.seconds:g}s_{args.fps}fps_gop{gop:g}s.mp4"
        t0 = time.perf_counter()
        path = make_test_video(args.cache / name, (width, height), args.seconds, args.fps, gop)
        made = time.perf_counter() - t0
        runs: dict[str, Any] = {"file": str(path), "bytes": path.stat().st_size, "generated_s": made, "runs": []}
        rows = []
        for interval in intervals:
            measured = []
            for strategy in strategies:
                measured.append((strategy, run_strategy(path, interval, strategy, args.min_side, args.threads)))
            if not args.no_naive:
                measured.append(("naive", run_naive(path, interval, args.min_side)))
            best = min(m["seconds"] for _, m in measured)
            for strategy, m in measured:
                if not sample_images and m["kept"]:
                    sample_images = m["kept"]
                per_min = len(m["kept"]) * 60.0 / args.seconds
                row = {"interval_s": interval, "strategy": strategy, "chose": m["chosen"], "wall_s": m["seconds"],
                       "video_s_per_s": args.seconds / m["seconds"], "kept_per_min": per_min,
                       "decoded": m["decoded"]}
                runs["runs"].append(row)
                rows.append([interval, strategy + ("" if m["chosen"] in (strategy, "naive") else f" -> {m['chosen']}"),
                             row["video_s_per_s"], per_min, m["decoded"], "*" if m["seconds"] == best else ""])
            sample_images = max(sample_images, *(m["kept"] for _, m in measured), key=len)
        print_table(f"{name} ({runs['bytes'] / 1e6:.1f} MB)",
                    ["interval s", "strategy", "video s / s", "kept / min", "decoded", "fastest"], rows)
        runs["conversion"] = conversion_ms(path, args.min_side)
        c = runs["conversion"]
        print(f"one frame -> {args.min_side}px RGB: libswscale {c['swscale_ms']:.2f} ms, "
              f"to_image + PIL resize {c['to_image_and_resize_ms']:.2f} ms; signature {c['signature_ms']:.2f} ms")
        result["videos"][name] = runs
    if args.model and sample_images:
        per_frame = model_seconds_per_frame(args.model, sample_images)
        result["model"] = {"spec": args.model, "seconds_per_frame": per_frame, "frames": len(sample_images)}
        rows = []
        for name, runs in result["videos"].items():
            for row in runs["runs"]:
                if row["strategy"] != "auto":
                    continue
                decode_per_min = 60.0 / row["video_s_per_s"]
                model_per_min = row["kept_per_min"] * per_frame
                rows.append([name.split("_gop")[1][:-4], row["interval_s"], row["kept_per_min"], decode_per_min,
                             model_per_min, "decode" if decode_per_min > model_per_min else "model"])
                row["model_s_per_min"] = model_per_min
        print_table(f"seconds per minute of video, auto strategy, model {args.model} ({per_frame * 1000:.1f} ms/frame)",
                    ["gop", "interval s", "frames / min", "decode s", "model s", "dominates"], rows)
    if args.index_model:
        result["index"] = index_throughput(args, (width, height))
    emit_json(result, args.json)
    return result


def index_throughput(args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    """``update_index`` over distinct generated videos: video seconds per second, frames per minute, decode vs model."""
    import os

    from retrieval.encoder import load_encoder
    from retrieval.indexer import update_index
    from retrieval.store import IndexStore

    width, height = size
    videos = []
    for i in range(args.index_videos):
        seconds = args.seconds + i  # a second more each: distinct files (the same bytes would be reused)
        name = f"pan_{width}x{height}_{seconds:g}s_{args.fps}fps_gop{args.index_gop:g}s.mp4"
        videos.append(make_test_video(args.cache / name, size, seconds, args.fps, args.index_gop))
    encoder = load_encoder(args.index_model)
    from PIL import Image

    encoder.encode_images([Image.new("RGB", (64, 64))] * 2)  # first-call set-up (threads, kernels) is not indexing
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-index-") as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for video in videos:
            os.symlink(video, folder / video.name)
        store = IndexStore.create(Path(tmp) / "index", name="bench", model=encoder.spec,
                                  fingerprint=encoder.fingerprint, dim=encoder.dim)
        try:
            with store.writer_lock():
                t0 = time.perf_counter()
                report = update_index(store, encoder, [folder], batch_size=args.batch_size, workers=args.workers,
                                      read_metadata=True)
                wall = time.perf_counter() - t0
        finally:
            store.close()
    video_s = report.video_seconds
    out = {
        "model": args.index_model, "videos": report.videos, "video_seconds": video_s, "frames": report.frames,
        "wall_s": wall, "video_s_per_s": video_s / wall if wall else 0.0,
        "frames_per_min": report.frames * 60.0 / video_s if video_s else 0.0,
        "decode_s": report.video_decode_seconds, "model_s": report.video_model_seconds,
        "failed": report.failed, "batch_size": args.batch_size, "workers": args.workers,
        "gop_s": args.index_gop,
    }
    out["dominates"] = "decode" if out["decode_s"] > out["model_s"] else "model"
    print_table(f"mmsearch index: {report.videos} videos {width}x{height}, {video_s:.0f} s of video, "
                f"model {args.index_model}",
                ["video s / s", "frames / min", "wall s", "decode s (threads)", "model s", "dominates"],
                [[out["video_s_per_s"], out["frames_per_min"], wall, out["decode_s"], out["model_s"],
                  out["dominates"]]])
    return out


if __name__ == "__main__":
    main()
