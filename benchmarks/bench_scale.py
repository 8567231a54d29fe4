"""Scaling out: the local engine against the Ray engine on one machine, same photos, same model.

    .venv/bin/python benchmarks/bench_scale.py                       # 64 generated 3000x2000 JPEGs, ViT-B-32-256
    .venv/bin/python benchmarks/bench_scale.py --model mmsearch-tiny --count 32   # quick

What it measures, in one process so the ratios hold on a busy machine:

* local engine: ``Index.add_folder`` (decoding threads + one model), images/s;
* Ray engine: ``Index.add_folder(engine="ray")`` on a private local cluster
  with one CPU per actor, images/s with the cluster start counted ("cold") and
  on the already-started cluster ("warm", actors and models still start per
  run); the ratio to local is Ray's overhead on one machine (below 1: slower);
* vectors: cosine of each file's Ray vector to its local one (same ids too);
* merging: rows/s of ``mmsearch merge`` (the single writer every engine ends
  in) on synthetic Parquet shards, and the bytes per item of ``items.sqlite``
  (vector + metadata + sqlite overhead) and of a flat ``index.faiss``, scaled
  to a million items.

On one machine Ray can only add overhead (process start, a model per actor,
Arrow transfers); what it buys is more machines. Multi-node runs are not
measured here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, machine, make_photo_folder, print_table  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_PHOTOS = Path(tempfile.gettempdir()) / "mmsearch-bench" / "photos-3000x2000"


def index_run(root: Path, name: str, encoder: Any, files: list[Path], engine: str, **ray_kw: Any) -> dict[str, Any]:
    """Index ``files`` into a fresh index; returns seconds, images/s and path -> vector."""
    import retrieval
    from retrieval.engine_ray import RayCfg

    folder = root / f"{name}-files"
    folder.mkdir()
    for p in files:  # a folder of exactly these files (links: no copying of ~1 MB photos)
        (folder / p.name).symlink_to(p)
    with retrieval.create_index(name, root=root, encoder=encoder, precision=encoder.precision) as idx:
        t0 = time.perf_counter()
        report = idx.add_folder(folder, engine=engine, ray=RayCfg(**ray_kw) if engine == "ray" else None)
        seconds = time.perf_counter() - t0
        ids, vecs = idx.store.all_vectors()
        rows = idx.store.items_by_id([int(i) for i in ids])
        vectors = {Path(rows[int(i)].key).name: (int(i), v) for i, v in zip(ids, vecs)}
    return {"seconds": seconds, "encoded": report.encoded, "images_per_s": report.encoded / seconds,
            "failed": report.failed, "vectors": vectors}


def merge_and_storage(dim: int, n: int, root: Path) -> dict[str, float]:
    """Merge ``n`` synthetic rows (photo-like paths) from Parquet shards into a new index; rate and bytes per item."""
    from retrieval.indexer import FileOutcome
    from retrieval.merge import merge_into_index
    from retrieval.shards import ShardModel, ShardWriter
    from retrieval.store import FAISS_FILE, ITEMS_DB

    rng = np.random.default_rng(0)
    writer = ShardWriter(root / "synthetic-shards", ShardModel("synthetic", "0" * 16, dim))
    per_shard = 10_000
    for start in range(0, n, per_shard):
        m = min(per_shard, n - start)
        vecs = rng.standard_normal((m, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        outcomes = [
            FileOutcome(key=f"/home/user/Pictures/2024/{(start + j) // 500:04d}/IMG_{start + j:07d}.jpg",
                        size=3_000_000 + j, mtime_ns=1_700_000_000_000_000_000 + j,
                        hash=f"{int(rng.integers(1 << 62)):032x}", vector=vecs[j], width=4000, height=3000)
            for j in range(m)
        ]
        writer.write(list(range(start, start + m)), outcomes)
    t0 = time.perf_counter()
    merged = merge_into_index("storage", [root / "synthetic-shards"], root=root, ann="flat")
    seconds = time.perf_counter() - t0
    import sqlite3

    db = sqlite3.connect(root / "storage" / ITEMS_DB)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count the rows in the main file, not in the WAL
    db.close()
    sqlite_bytes = (root / "storage" / ITEMS_DB).stat().st_size
    faiss_bytes = (root / "storage" / FAISS_FILE).stat().st_size
    per_row = sqlite_bytes / n
    # The driver of an index run holds the index's file states (key, size, mtime, hash) while it plans.
    import tracemalloc

    from retrieval.store import IndexStore

    store = IndexStore.open(root / "storage", name="storage")
    tracemalloc.start()
    states = store.file_states()
    plan_bytes = tracemalloc.get_traced_memory()[0] / len(states)
    tracemalloc.stop()
    store.close()
    return {"items": merged.items, "dim": dim, "merge_seconds": seconds, "merge_rows_per_s": n / seconds,
            "driver_plan_bytes_per_item": plan_bytes,
            "sqlite_bytes_per_item": per_row, "vector_bytes": 4 * dim,
            "sqlite_overhead_per_item": per_row - 4 * dim, "faiss_flat_bytes_per_item": faiss_bytes / n,
            "sqlite_gb_per_million": per_row * 1e6 / 1e9, "faiss_flat_gb_per_million": faiss_bytes / n * 1e6 / 1e9}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32-256", help="architecture (random weights) [ViT-B-32-256]")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of generated photos (made once)")
    ap.add_argument("--count", type=int, default=64, help="generated photos to index [64]")
    ap.add_argument("--precision", default="fp32", help="image-tower precision, both engines [fp32]")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray cluster")
    ap.add_argument("--num-workers", type=int, default=None, help="Ray actors [one per CPU]")
    ap.add_argument("--storage-items", type=int, default=20_000, help="synthetic items for the storage measure")
    ap.add_argument("--json", help="also write the JSON result to this file")
    args = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # "model initialised randomly" is the point here
    import ray

    from retrieval.encoder import load_encoder

    photos = make_photo_folder(args.photos, args.count)
    files = sorted(photos.glob("photo_*.jpg"))[: args.count]
    encoder = load_encoder(args.model, precision=args.precision)
    workers = args.num_workers or args.cpus
    result: dict[str, Any] = {"machine": machine(), "model": args.model, "precision": args.precision,
                              "photos": len(files), "photo_size": "3000x2000", "ray_cpus": args.cpus,
                              "ray_workers": workers, "ray_version": ray.__version__}
    root = Path(tempfile.mkdtemp(prefix="mmsearch-bench-scale-"))
    try:
        local = index_run(root, "local", encoder, files, "local")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - t0
        try:
            cold = index_run(root, "ray-cold", encoder, files, "ray", num_workers=workers)
            warm = index_run(root, "ray-warm", encoder, files, "ray", num_workers=workers)
        finally:
            ray.shutdown()
        names = sorted(local["vectors"])
        same_ids = all(local["vectors"][n][0] == warm["vectors"][n][0] for n in names) and sorted(warm["vectors"]) == names
        cos = np.array([float(np.dot(local["vectors"][n][1], warm["vectors"][n][1])) for n in names])
        cold_ips = cold["encoded"] / (cold["seconds"] + ray_start)
        rows = [
            ["local engine", local["seconds"], local["images_per_s"], 1.0],
            [f"ray, {workers} actors, cold (cluster start {ray_start:.1f}s counted)", cold["seconds"] + ray_start,
             cold_ips, cold_ips / local["images_per_s"]],
            [f"ray, {workers} actors, warm cluster", warm["seconds"], warm["images_per_s"],
             warm["images_per_s"] / local["images_per_s"]],
        ]
        print_table(f"Indexing {len(files)} JPEGs of 3000x2000, {args.model} {args.precision}, {os.cpu_count()} cores",
                    ["engine", "seconds", "images/s", "x local"], rows)
        print(f"\nvectors ray vs local: same ids {same_ids}, cosine mean {cos.mean():.6f}, min {cos.min():.6f}")
        result["local"] = {k: v for k, v in local.items() if k != "vectors"}
        result["ray_cold"] = {**{k: v for k, v in cold.items() if k != "vectors"}, "cluster_start_s": ray_start,
                              "images_per_s_with_start": cold_ips, "ratio_to_local": cold_ips / local["images_per_s"]}
        result["ray_warm"] = {**{k: v for k, v in warm.items() if k != "vectors"},
                              "ratio_to_local": warm["images_per_s"] / local["images_per_s"]}
        result["ray_overhead"] = {"cold_ratio": cold_ips / local["images_per_s"],
                                  "warm_ratio": warm["images_per_s"] / local["images_per_s"]}
        result["vectors"] = {"same_ids": same_ids, "cos_mean": float(cos.mean()), "cos_min": float(cos.min())}

        storage = merge_and_storage(encoder.dim, args.storage_items, root)
        result["storage"] = storage
        print_table(f"Merging {storage['items']} synthetic {storage['dim']}-d rows from Parquet shards (flat index)",
                    ["what", "value", "per million items"],
                    [["merge rate (rows/s, sqlite + FAISS)", storage["merge_rows_per_s"],
                      f"{1e6 / storage['merge_rows_per_s'] / 60:.1f} min"],
                     ["items.sqlite bytes/item (vector + row + sqlite)", storage["sqlite_bytes_per_item"],
                      f"{storage['sqlite_gb_per_million']:.2f} GB"],
                     ["  of which the float32 vector", float(storage["vector_bytes"]),
                      f"{storage['vector_bytes'] / 1e3:.2f} GB"],
                     ["  of which row + sqlite overhead", storage["sqlite_overhead_per_item"],
                      f"{storage['sqlite_overhead_per_item'] / 1e3:.2f} GB"],
                     ["index.faiss bytes/item (flat)", storage["faiss_flat_bytes_per_item"],
                      f"{storage['faiss_flat_gb_per_million']:.2f} GB"],
                     ["driver RAM/item while planning (file states)", storage["driver_plan_bytes_per_item"],
                      f"{storage['driver_plan_bytes_per_item'] / 1e3:.2f} GB"]])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
