"""Indexing speed: `mmsearch index` end to end versus a naive loop, same model, same run.

    .venv/bin/python benchmarks/bench_index.py                 # 200 generated 3000x2000 JPEGs
    .venv/bin/python benchmarks/bench_index.py --count 64 --precisions fp32 --no-ablations  # quick

What it measures, all in one process so the ratios hold on a busy machine:

* naive baseline (what rclip does): for each batch, open + convert + open_clip
  preprocess each file sequentially, then encode the batch.
* `mmsearch index` (``Index.add_folder``: walking, hashing, decoding in worker
  threads with reduced-size JPEG decoding, batched preprocessing, encoding,
  sqlite + FAISS writes) per image-tower precision; images/s, the ratio to the
  naive loop and the cosine of each file's vector to the naive one.
* ablations of the pipeline at fp32: full-size decoding, a 2x-input draft,
  one decoding worker, and worker threads versus worker processes.
* the model alone: images/s and achieved GFLOP/s beside a plain matmul's.
* the same comparison on ../shared/datasets/sample-photos when present.

The model has random weights (no network here): shapes and FLOPs, hence
speed, are those of the real model; cosines are measured on random weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_PHOTOS, emit_json, machine, make_photo_folder, print_table  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_PHOTOS = Path(tempfile.gettempdir()) / "mmsearch-bench" / "photos-3000x2000"


# -- the naive baseline ---------------------------------------------------------------


def naive_index(encoder: Any, paths: Sequence[Path], batch_size: int) -> tuple[float, dict[str, np.ndarray]]:
    """rclip's loop: sequential open/convert/preprocess, then encode the batch; fp32, no overlap."""
    import torch
    from PIL import Image, ImageOps

    model, preprocess = encoder.model, encoder.preprocess
    vectors: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        chunk, pixels = [], []
        for p in paths[start:start + batch_size]:
            try:
                with Image.open(p) as im:
                    img = ImageOps.exif_transpose(im).convert("RGB")  # same orientation as the indexer
            except Exception:  # noqa: BLE001 - a bad file is skipped, as rclip does
                continue
            chunk.append(str(p))
            pixels.append(preprocess(img))
        if not pixels:
            continue
        with torch.no_grad():
            feats = model.encode_image(torch.stack(pixels))
            feats = feats / feats.norm(dim=-1, keepdim=True)
        for key, vec in zip(chunk, feats.numpy()):
            vectors[key] = vec
    return time.perf_counter() - t0, vectors


# -- mmsearch index, end to end ---------------------------------------------------------


def mmsearch_index(encoder: Any, folder: Path, batch_size: int, workers: int = 0, min_side: int | None = None,
                   files: Sequence[Path] | None = None) -> tuple[float, int, dict[str, np.ndarray]]:
    """``Index.add_folder`` into a fresh index; returns (seconds, images encoded, path -> vector)."""
    import retrieval
    from retrieval import embed
    from retrieval.embed import content_hash

    root = Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    saved = embed.default_min_side
    if min_side is not None:
        embed.default_min_side = lambda _enc: min_side  # an ablation knob, not a user setting
    try:
        with retrieval.create_index("bench", root=root, encoder=encoder) as idx:
            report = idx.add_folder(files if files is not None else folder, batch_size=batch_size,
                                    workers=workers)
            vectors = {}
            for p in files if files is not None else sorted(folder.rglob("*")):
                if p.is_file():
                    vec = idx.store.vector_for_hash(content_hash(p.read_bytes()))
                    if vec is not None:
                        vectors[str(p)] = vec
        return report.seconds, report.encoded, vectors
    finally:
        embed.default_min_side = saved
        shutil.rmtree(root, ignore_errors=True)


# -- worker threads versus worker processes (the pipeline core, same loop for both) ---------


def _decode_to_array(path: str, min_side: int, pil_steps: list[Any]) -> np.ndarray | None:
    from retrieval.loading import load_image

    loaded = load_image(path, min_side=min_side)
    if loaded.image is None:
        return None
    img = loaded.image
    for step in pil_steps:
        img = step(img)
    return np.asarray(img.convert("RGB"))


def core_loop(encoder: Any, paths: Sequence[Path], batch_size: int, pool: Executor) -> float:
    """Decode in ``pool`` (bounded look-ahead), encode batches in this thread; returns seconds."""
    from collections import deque

    pil_steps = encoder._split.pil_steps
    t0 = time.perf_counter()
    pending: deque = deque()
    batch: list[np.ndarray] = []
    todo = iter(paths)
    while True:
        while len(pending) < 2 * batch_size:
            p = next(todo, None)
            if p is None:
                break
            pending.append(pool.submit(_decode_to_array, str(p), encoder.image_size, pil_steps))
        if not pending:
            break
        arr = pending.popleft().result()
        if arr is not None:
            batch.append(arr)
        if len(batch) == batch_size or (not pending and batch):
            encoder.encode_pixels(encoder.pixels_from_prepared(batch))
            batch = []
    return time.perf_counter() - t0


# -- the model alone --------------------------------------------------------------------


def model_flops_per_image(encoder: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, encoder.image_size, encoder.image_size)
    # The fused multi-head-attention kernel hides its matmuls from the counter: count the plain path.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            encoder.model.encode_image(x.to(encoder._image_dtype))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return float(counter.get_total_flops())


def matmul_gflops(dtype_name: str, n: int = 2048, reps: int = 4) -> float:
    import torch

    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype_name])
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def model_images_per_second(encoder: Any, batch_size: int, reps: int = 2) -> float:
    import torch

    x = torch.randn(batch_size, 3, encoder.image_size, encoder.image_size)
    encoder.encode_pixels(x[:2])
    return batch_size / min(_time(lambda: encoder.encode_pixels(x)) for _ in range(reps))


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cosines(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float, int]:
    keys = sorted(set(a) & set(b))
    if not keys:
        return float("nan"), float("nan"), 0
    cos = np.sum(np.stack([a[k] for k in keys]) * np.stack([b[k] for k in keys]), axis=1)
    return float(cos.mean()), float(cos.min()), len(keys)


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32-256", help="architecture (random weights) [ViT-B-32-256]")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of generated photos (made once)")
    ap.add_argument("--count", type=int, default=200, help="generated photos to index [200]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precisions", default="fp32,bf16,int8", help="image-tower precisions to run")
    ap.add_argument("--ablation-count", type=int, default=64, help="photos used by each ablation [64]")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--no-sample", action="store_true", help="skip ../shared/datasets/sample-photos")
    ap.add_argument("--json", help="also write the JSON result to this file")
    args = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # "model initialised randomly" is the point here
    from retrieval.encoder import load_encoder
    from retrieval.loading import register_format_plugins

    register_format_plugins()  # both loops can open HEIC alike
    photos = make_photo_folder(args.photos, args.count)
    files = sorted(photos.glob("photo_*.jpg"))[: args.count]
    folder = photos
    if len(files) < len(list(photos.glob("photo_*.jpg"))):
        folder = None  # index exactly these files
    precisions = [p for p in args.precisions.split(",") if p]
    encoders = {p: load_encoder(args.model, precision=p) for p in precisions}
    fp32 = encoders.get("fp32") or load_encoder(args.model)
    result: dict[str, Any] = {"machine": machine(), "model": args.model, "photos": len(files),
                              "photo_size": "3000x2000", "batch_size": args.batch_size}

    # The model alone, and the hardware's matmul, side by side.
    flops = model_flops_per_image(fp32)
    hw = {"fp32": matmul_gflops("fp32"), "bf16": matmul_gflops("bf16")}
    model_rows, model_json = [], {}
    for p, enc in encoders.items():
        ips = model_images_per_second(enc, args.batch_size)
        peak = hw["bf16" if p == "bf16" else "fp32"]
        model_json[p] = {"images_per_s": ips, "gflops": ips * flops / 1e9, "matmul_gflops": peak}
        share = "n/a (int8 kernels)" if p == "int8" else f"{100 * ips * flops / 1e9 / peak:.0f}%"
        model_rows.append([p, ips, ips * flops / 1e9, peak if p != "int8" else "-", share])
    result["model_only"] = {"gflop_per_image": flops / 1e9, **model_json}
    print_table(f"Model alone ({args.model}, {flops / 1e9:.1f} GFLOP/image, batch {args.batch_size})",
                ["precision", "images/s", "model GFLOP/s", "matmul GFLOP/s (same dtype)", "of matmul"], model_rows)

    # Naive versus mmsearch index, same files, same run.
    naive_s, naive_vecs = naive_index(fp32, files, args.batch_size)
    naive_ips = len(naive_vecs) / naive_s
    rows = [["naive loop (fp32, sequential)", naive_ips, 1.0, 1.0, 1.0]]
    runs: dict[str, Any] = {"naive": {"images_per_s": naive_ips, "seconds": naive_s}}
    for p, enc in encoders.items():
        secs, n, vecs = mmsearch_index(enc, folder or photos, args.batch_size,
                                       files=None if folder else files)
        mean, low, _ = cosines(naive_vecs, vecs)
        ips = n / secs
        runs[f"mmsearch_{p}"] = {"images_per_s": ips, "ratio": ips / naive_ips, "cos_mean": mean, "cos_min": low}
        rows.append([f"mmsearch index ({p})", ips, ips / naive_ips, mean, low])
    result["index"] = runs
    print_table(f"Indexing {len(files)} JPEGs of 3000x2000 (end to end, images/s)",
                ["run", "images/s", "x naive", "cos mean", "cos min"], rows)

    if not args.no_ablations:
        sub = files[: args.ablation_count]
        base_s, base_vecs = naive_index(fp32, sub, args.batch_size)
        base_ips = len(base_vecs) / base_s
        abl_rows = [["naive loop", base_ips, 1.0, 1.0]]
        abl: dict[str, Any] = {"naive": base_ips}
        size = fp32.image_size
        import torch

        threads = torch.get_num_threads()
        variants: list[tuple[str, Any, dict[str, Any], int]] = [
            (f"default: draft >= {size}px, threads", fp32, {}, threads),
            ("full-size decode", fp32, {"min_side": 0}, threads),
            (f"draft >= {2 * size}px (2x input)", fp32, {"min_side": 2 * size}, threads),
            ("1 decoding worker", fp32, {"workers": 1}, threads),
            ("1 torch thread", fp32, {}, 1),
        ]
        if "bf16" in encoders:
            variants += [("bf16", encoders["bf16"], {}, threads), ("bf16, 1 torch thread", encoders["bf16"], {}, 1)]
        for label, enc, kw, n_threads in variants:
            torch.set_num_threads(n_threads)
            try:
                secs, n, vecs = mmsearch_index(enc, photos, args.batch_size, files=sub, **kw)
            finally:
                torch.set_num_threads(threads)
            mean, _, _ = cosines(base_vecs, vecs)
            abl[label] = {"images_per_s": n / secs, "cos_mean": mean}
            abl_rows.append([label, n / secs, n / secs / base_ips, mean])
        workers = os.cpu_count() or 2
        with ThreadPoolExecutor(workers) as pool:
            t_threads = core_loop(fp32, sub, args.batch_size, pool)
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            pool.submit(int).result()  # start-up is not decoding time
            t_procs = core_loop(fp32, sub, args.batch_size, pool)
        for label, secs in [("core loop, worker threads", t_threads), ("core loop, worker processes", t_procs)]:
            abl[label] = {"images_per_s": len(sub) / secs}
            abl_rows.append([label, len(sub) / secs, len(sub) / secs / base_ips, "-"])
        result["ablations"] = abl
        print_table(f"Pipeline ablations, fp32 unless named ({len(sub)} photos, {threads} torch threads unless named)", ["variant", "images/s", "x naive", "cos mean"],
                    abl_rows)

    if not args.no_sample and SAMPLE_PHOTOS.is_dir():
        sample = sorted(p for p in SAMPLE_PHOTOS.rglob("*") if p.is_file() and p.suffix.lower() != ".md")
        s_naive, v_naive = naive_index(fp32, sample, args.batch_size)
        srows = [["naive loop (fp32)", len(v_naive) / s_naive, 1.0, 1.0, len(v_naive)]]
        sjson: dict[str, Any] = {"files": len(sample), "naive_images_per_s": len(v_naive) / s_naive}
        for p, enc in encoders.items():
            secs, n, vecs = mmsearch_index(enc, SAMPLE_PHOTOS, args.batch_size)
            mean, _, k = cosines(v_naive, vecs)
            srows.append([f"mmsearch index ({p})", n / secs, (n / secs) / (len(v_naive) / s_naive), mean, n])
            sjson[p] = {"images_per_s": n / secs, "cos_mean": mean, "encoded": n}
        result["sample_photos"] = sjson
        print_table(f"sample-photos ({len(sample)} files, mixed sizes and formats)",
                    ["run", "images/s", "x naive", "cos mean", "encoded"], srows)

    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
