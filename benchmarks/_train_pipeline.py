"""``bench_train.py --pipeline``: the training input pipeline of issue 23, measured beside the loop it replaced.

Three measurements, each in one run so that ratios hold on a busy machine:

1. **Input pipeline alone** (no model): samples/s preparing ViT-B-32's 224 px
   batches from 3000x2000 JPEGs, with nothing cached (every picture decoded, as in the
   first epoch over a dataset larger than the cache): today's loop (full decode in the
   training thread, 256 px thumbnail, transform; what ``PairDataset`` did before), and
   the new ``PairLoader`` with 1, 2 and N decode threads (reduced-size decoding).
2. **Training samples/s of ViT-B-32 at 224 px**, the same steps fed by today's loop
   and by the new pipeline (which prepares the next batches while the model runs).
3. **Peak memory of an epoch** (``fit``, one epoch, a two-layer 224 px model, as the issue
   measured) over generated pairs (12k and 100k by default: distinct 800x600 JPEGs,
   hard-linked so that 100k pairs need only ``--distinct`` files on disk), each run in a
   fresh process: peak RSS with the default ``--cache-mb`` and with a small one.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from _common import REPO, make_photo_folder

TINY_224 = {  # "a tiny two-layer model at 224 px" (issue 23's measurement)
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
WORDS = ("red", "green", "blue", "old", "small", "large", "dog", "cat", "house", "tree", "car", "beach", "river",
         "mountain", "street", "city", "portrait", "sunset", "winter", "garden")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_pairs(folder: Path, photos: Path, n_pairs: int, seed: int = 0) -> Path:
    """``captions.csv`` of ``n_pairs`` distinct image paths (hard links to the photos in ``photos``)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "captions.csv"
    if csv_path.is_file() and sum(1 for _ in csv_path.open()) == n_pairs + 1:
        return csv_path
    sources = sorted(photos.glob("*.jpg"))
    rng = random.Random(seed)
    (folder / "img").mkdir(exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i in range(n_pairs):
            link = folder / "img" / f"{i:06d}.jpg"
            if not link.exists():
                try:
                    os.link(sources[i % len(sources)], link)
                except OSError:  # another file system: a symlink does as well
                    link.symlink_to(sources[i % len(sources)].resolve())
            writer.writerow([f"img/{i:06d}.jpg", " ".join(rng.sample(WORDS, 4)) + f" {i}"])
    return csv_path


# -- today's loop, kept here to be measured against ----------------------------------------------


def legacy_batches(items: Sequence[Any], transform: Any, tokenizer: Any, batch: int, cache_side: int = 256,
                   seed: int = 0) -> Iterator[tuple[Any, Any]]:
    """The loop before issue 23 (``PairDataset.batch``): decode in the training thread at full size, keep a
    ``cache_side`` thumbnail (here: never hit, as in a first epoch), transform, collate."""
    import torch

    from retrieval.loading import load_image

    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    for b in range(len(order) // batch):
        pixels = []
        for i in order[b * batch:(b + 1) * batch]:
            img = load_image(items[i].image_path).image
            img.thumbnail((cache_side, cache_side))
            pixels.append(transform(img))
        captions = [rng.choice(items[i].captions) for i in order[b * batch:(b + 1) * batch]]
        yield torch.stack(pixels), tokenizer(captions)


def _new_batches(items: Sequence[Any], tm: Any, batch: int, workers: int, augment: bool = False) -> Any:
    from retrieval.train.pipeline import PairLoader, epoch_order
    from retrieval.train.pixels import ImagePrep, PixelCache

    prep = ImagePrep(tm.model, tm.preprocess_train, augment)
    loader = PairLoader(items, prep, tm.tokenizer, PixelCache(0), seed=0, workers=workers)
    return loader, loader.batches(epoch_order(items, 0, 0), 0, batch)


def pipeline_rates(items: Sequence[Any], tm: Any, batch: int, worker_counts: Sequence[int]) -> list[dict[str, Any]]:
    """Samples/s of preparing batches (no model), today's loop and the new pipeline with each worker count."""
    rows = []
    t0 = time.perf_counter()
    n = 0
    for pixels, _ in legacy_batches(items, tm.preprocess_train, tm.tokenizer, batch):
        n += len(pixels)
    rows.append({"pipeline": "today's loop (full decode in the training thread)", "workers": 0,
                 "samples_per_s": n / (time.perf_counter() - t0), "load_avg_1m": os.getloadavg()[0]})
    _log(f"  today's loop: {rows[-1]['samples_per_s']:.1f} samples/s")
    for workers in worker_counts:
        loader, batches = _new_batches(items, tm, batch, workers)
        t0, n = time.perf_counter(), 0
        for b in batches:
            pixels = loader.prep.to_pixels(b.pixels)  # the float conversion the training thread does
            n += len(pixels)
        loader.close()
        rows.append({"pipeline": "PairLoader (reduced-size decode, uint8)", "workers": workers,
                     "samples_per_s": n / (time.perf_counter() - t0), "load_avg_1m": os.getloadavg()[0]})
        _log(f"  PairLoader, {workers} worker(s): {rows[-1]['samples_per_s']:.1f} samples/s")
    return rows


def training_rates(items: Sequence[Any], arch: str, batch: int, steps: int, workers: int,
                   device: str) -> list[dict[str, Any]]:
    """ViT-B-32 training steps fed by today's loop and by the new pipeline, same model, same steps."""
    import torch

    from retrieval.train.distributed import create_loss
    from retrieval.train.models import create_from_scratch, param_groups
    from retrieval.train.steps import accumulate

    tm = create_from_scratch(arch, seed=0, augment=False)
    dev = torch.device(device)
    model = tm.model.to(dev).train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-5)
    loss_fn = create_loss("clip")
    rows = []

    def run(batches: Iterator[tuple[Any, Any]], label: str, w: int) -> None:
        done, t0 = 0, 0.0
        for k in range(steps + 1):
            if k == 1:  # the first step pays for warm-up (allocations, kernels, thread start): not timed
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            pixels, tokens = next(batches)  # timed: waiting for data is what the pipelines differ in
            optimizer.zero_grad(set_to_none=True)
            accumulate(model, loss_fn, "clip", [(pixels, tokens)], 1, dev)
            optimizer.step()
            done += len(pixels) if k >= 1 else 0
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rows.append({"training": label, "workers": w, "steps": steps,
                     "samples_per_s": done / max(time.perf_counter() - t0, 1e-9), "load_avg_1m": os.getloadavg()[0]})
        _log(f"  {label}: {rows[-1]['samples_per_s']:.1f} samples/s")

    run(((p.to(dev), t) for p, t in legacy_batches(items, tm.preprocess_train, tm.tokenizer, batch)),
        "today's loop", 0)
    loader, batches = _new_batches(items, tm, batch, workers)
    run(((loader.prep.to_pixels(b.pixels, dev), b.tokens) for b in batches), "PairLoader", workers)
    loader.close()
    return rows


def _status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc/self/status.

    Not ``getrusage``'s ``ru_maxrss``: across fork+exec Linux carries the parent's peak
    into the child's, so a child of a large parent would report the parent's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_child(csv_path: str, cache_mb: float | None, workers: int | None, out: str) -> None:
    """Runs in a fresh process: one epoch of ``fit`` with the two-layer 224 px model; prints peak RSS (JSON)."""
    import open_clip

    cfg_dir = Path(out) / "cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "bench-tiny-224.json").write_text(json.dumps(TINY_224))
    open_clip.add_model_config(cfg_dir)
    from retrieval.train import TrainCfg, fit, read_pairs

    data = read_pairs(csv_path)
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    result = fit(data, Path(out) / "model", TrainCfg(
        arch="bench-tiny-224", epochs=1, batch_size=64, augment=False, cache_mb=cache_mb, workers=workers,
        overwrite=True, device="cpu", max_val_items=500, checkpoint_minutes=None), progress=None)
    peak = _status_bytes("VmHWM")
    print(json.dumps({"pairs": len(data.items), "cache_mb": cache_mb, "peak_rss_bytes": peak,
                      "rss_before_fit_bytes": base, "cache_bytes": result.cache_bytes,
                      "cached_items": result.cached_items, "seconds": time.perf_counter() - t0,
                      "samples_per_s": result.samples_per_s, "workers": result.decode_workers}))


def peak_memory(csv_path: Path, cache_mb: float | None, workers: int | None, work: Path,
                timeout_s: float | None) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--memory-child", str(csv_path),
           "--out", str(work)]
    if cache_mb is not None:
        cmd += ["--cache-mb", str(cache_mb)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout_s} s"}
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_pipeline(args: Any) -> dict[str, Any]:
    """The whole ``--pipeline`` benchmark; returns its JSON summary (tables printed on stdout)."""
    import torch

    from retrieval.train import read_pairs
    from retrieval.train.models import create_from_scratch
    from retrieval.train.pixels import default_cache_mb

    out: Path = args.out
    cpus = len(os.sched_getaffinity(0))
    photos = make_photo_folder(out / "photos-3000x2000", args.photos)
    pairs_csv = write_pairs(out / f"pairs-{args.photos}", photos, args.photos)
    items = read_pairs(pairs_csv).items
    tm = create_from_scratch("ViT-B-32", seed=0, augment=False)
    summary: dict[str, Any] = {"cpus": cpus, "torch_threads": torch.get_num_threads(), "photos": args.photos,
                               "load_avg": os.getloadavg()}
    _log(f"input pipeline alone, {len(items)} photos of 3000x2000, 224 px batches of {args.batch}")
    workers = sorted({1, 2, cpus})
    summary["pipeline"] = pipeline_rates(items, tm, args.batch, workers)
    _print_rates(summary["pipeline"], "pipeline", "input pipeline (no model)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.train_steps:
        _log(f"training ViT-B-32 at 224 px on {device}, {args.train_steps} timed steps of {args.batch}")
        summary["training"] = training_rates(items, "ViT-B-32", args.batch, args.train_steps,
                                             workers=args.workers or max(1, cpus // 2 if device == "cpu" else cpus - 1),
                                             device=device)
        print()
        _print_rates(summary["training"], "training", f"ViT-B-32 training on {device}")
    summary["memory"] = []
    pair_counts = [int(x) for x in args.pairs.split(",") if x.strip()]
    memory_photos = make_photo_folder(out / "photos-800x600", args.distinct, size=(800, 600)) if pair_counts else out
    for n in pair_counts:
        csv_path = write_pairs(out / f"memory-pairs-{n}", memory_photos, n)
        for cache_mb in (None, args.small_cache_mb):
            _log(f"peak memory: one epoch over {n} pairs, --cache-mb {cache_mb or 'default'}")
            row = peak_memory(csv_path, cache_mb, args.workers or None, out / f"memory-run-{n}-{cache_mb}",
                              args.memory_timeout or None)
            row.update({"pairs": n, "cache_mb": cache_mb if cache_mb is not None else default_cache_mb()})
            summary["memory"].append(row)
    if not pair_counts:
        return summary
    print("\n| pairs | --cache-mb | peak RSS MiB | RSS before fit MiB | cache MiB | cached pictures | cache within "
          "budget | peak within 3 GiB | epoch s |\n|---|---|---|---|---|---|---|---|---|")
    for r in summary["memory"]:
        if "error" in r:
            print(f"| {r['pairs']} | {r['cache_mb']} | error: {r['error'][-200:]!r} | | | | | | |")
            continue
        mib = 2**20
        r["cache_within_budget"] = r["cache_bytes"] <= r["cache_mb"] * mib
        r["peak_within_3gib"] = r["peak_rss_bytes"] <= 3 * 2**30
        print(f"| {r['pairs']} | {r['cache_mb']:.0f} | {r['peak_rss_bytes'] / mib:.0f} | "
              f"{r['rss_before_fit_bytes'] / mib:.0f} | {r['cache_bytes'] / mib:.0f} | {r['cached_items']} | "
              f"{'yes' if r['cache_within_budget'] else 'NO'} | {'yes' if r['peak_within_3gib'] else 'NO'} | "
              f"{r['seconds']:.0f} |")
    return summary


def _print_rates(rows: list[dict[str, Any]], key: str, title: str) -> None:
    """A table of samples/s, each row beside today's loop (the first row) and the load average it ran at."""
    base = rows[0]["samples_per_s"]
    print(f"| {title} | decode threads | samples/s | x today's loop | load avg (1 min) |\n|---|---|---|---|---|")
    for r in rows:
        r["vs_today"] = r["samples_per_s"] / max(base, 1e-9)
        print(f"| {r[key]} | {r['workers']} | {r['samples_per_s']:.3g} | {r['vs_today']:.2f} | "
              f"{r['load_avg_1m']:.1f} |")
