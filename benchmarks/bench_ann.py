"""ANN benchmark: every index kind and `auto` on 1M CLIP-like 512-d vectors, beside autofaiss.

For each kind: build time (incl. training), memory (serialized size and our
estimate), tuning to the target recall on a sample of stored vectors, then on
1,000 held-out queries: recall@10 against exact search and single-query
latency p50/p95 (re-ranking from stored vectors included where the index
uses it, read from a real sqlite vectors table as the product does), and the
time to open the saved index memory-mapped.

The vectors come from ``retrieval.synthetic_vectors.clustered_unit_vectors``:
a cone around a shared mean direction, Zipf-sized clusters and an
anisotropic spectrum, like CLIP embeddings (random pairs cos ~0.46).

autofaiss needs numpy<2 (our venv has numpy 2), so it runs in its own venv:
    python3 -m venv /tmp/venv-autofaiss && /tmp/venv-autofaiss/bin/pip install autofaiss "pyarrow<16"
    python benchmarks/bench_ann.py --autofaiss-python /tmp/venv-autofaiss/bin/python
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import emit_json, machine, percentiles, print_table

from retrieval.ann import VectorIndex
from retrieval.ann_lifecycle import build, make_policy
from retrieval.ann_policy import DEFAULT_MAX_MEMORY, estimate_memory, exact_topk, recall_at_k
from retrieval.search import rerank
from retrieval.synthetic_vectors import clustered_unit_vectors

AUTOFAISS_SCRIPT = r"""
import json, sys, time, numpy as np
from autofaiss import build_index
base = np.load(sys.argv[1]); queries = np.load(sys.argv[2]); truth = np.load(sys.argv[3]); budget = sys.argv[4]
t = time.perf_counter()
index, infos = build_index(embeddings=base, save_on_disk=False, max_index_memory_usage=budget,
                           current_memory_available="8G", metric_type="ip", min_nearest_neighbors_to_retrieve=10,
                           verbose=40)
build_s = time.perf_counter() - t
lat, found = [], []
for q in queries:
    t = time.perf_counter(); _, ids = index.search(q[None, :], 10); lat.append(time.perf_counter() - t)
    found.append(ids[0])
found = np.stack(found)
recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
import faiss
size = len(faiss.serialize_index(index))
print(json.dumps({"kind": "autofaiss", "factory": infos.get("index_key"), "build_s": build_s, "bytes": size,
                  "recall@10": recall, "p50_ms": 1000 * float(np.percentile(lat, 50)),
                  "p95_ms": 1000 * float(np.percentile(lat, 95)), "params": infos.get("index_param")}))
"""


def make_vector_table(path: Path, ids: np.ndarray, vectors: np.ndarray) -> sqlite3.Connection:
    """A sqlite ``vectors`` table like items.sqlite's, for re-ranking the way the product does."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL)")
    with db:
        for start in range(0, len(ids), 50_000):
            db.executemany(
                "INSERT INTO vectors VALUES (?, ?)",
                ((int(i), v.tobytes()) for i, v in zip(ids[start : start + 50_000], vectors[start : start + 50_000])),
            )
    return db


_BUILT: dict[str, tuple] = {}


def measure(kind_label: str, policy: dict, ids, base, queries, truth, db, workdir: Path) -> dict:
    dim = base.shape[1]
    from retrieval.ann_lifecycle import plan

    planned = plan(policy, len(ids), dim)
    plan_key = (planned.factory, policy["target_recall"])
    if plan_key in _BUILT:  # e.g. auto = ivf at this size: measured once, reported under both names
        index, total_s = _BUILT[plan_key]
    else:
        t = time.perf_counter()
        index = build(policy, dim, ids, base)
        total_s = time.perf_counter() - t
        _BUILT.clear()  # keep one built index in memory at a time (1M x 512 flat = 2 GB)
        _BUILT[plan_key] = (index, total_s)
    cfg = index.config
    rule = planned.rule  # a shared build keeps the rule that this policy itself would give
    path = workdir / f"{kind_label}.faiss"
    index.save(path)
    size = path.stat().st_size
    t = time.perf_counter()
    VectorIndex.load(path, dim, cfg, mmap=True)
    open_ms = 1000 * (time.perf_counter() - t)
    depth = int(cfg.search.get("rerank", 1))

    def fetch(wanted: np.ndarray) -> np.ndarray:  # what IndexStore.vectors_of does: read the rows from sqlite
        marks = ",".join("?" * len(wanted))
        rows = dict(db.execute(f"SELECT id, vec FROM vectors WHERE id IN ({marks})", [int(i) for i in wanted]))
        return np.stack([np.frombuffer(rows[int(i)], dtype=np.float32) for i in wanted])

    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        scores, cand = index.search(q[None, :], 10 * depth)
        if not cfg.exact_scores or not index.supports_remove:
            _, cand_ids = rerank(q, cand[0], fetch)
            top = cand_ids[:10]
        else:
            top = cand[0][:10]
        lat.append(time.perf_counter() - t)
        found.append(np.pad(top, (0, 10 - len(top)), constant_values=-1))
    recall = recall_at_k(np.stack(found), truth)
    p = percentiles(lat)
    row = {
        "kind": kind_label, "type": cfg.type, "factory": cfg.factory, "rule": rule, "search": cfg.search,
        "build_and_tune_s": round(total_s, 1), "bytes": size,
        "estimate_bytes": estimate_memory(cfg, len(ids), dim), "tuned_recall": cfg.measured_recall,
        "recall@10": round(recall, 4), "p50_ms": round(p["p50_ms"], 3), "p95_ms": round(p["p95_ms"], 3),
        "open_mmap_ms": round(open_ms, 2),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kinds", default="flat,ivf,ivfpq,hnsw,auto,auto-eighth")
    ap.add_argument("--autofaiss-python", default=None, help="python of a venv with autofaiss (see the docstring)")
    ap.add_argument("--autofaiss-budgets", default="default,eighth", help="which budgets autofaiss runs with")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    t = time.perf_counter()
    data = clustered_unit_vectors(args.n + args.queries, args.dim, seed=7)
    base, queries = data[: args.n], data[args.n :]
    ids = np.arange(args.n, dtype=np.int64)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    truth = exact_topk(queries, ids, base, 10)
    truth_s = time.perf_counter() - t
    flat_bytes = args.n * args.dim * 4
    print(f"data: {args.n} x {args.dim} in {gen_s:.0f}s; exact top-10 of {args.queries} queries in {truth_s:.1f}s", file=sys.stderr)

    rows = []
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-ann-") as tmp:
        workdir = Path(tmp)
        db = make_vector_table(workdir / "vectors.sqlite", ids, base)
        budgets = {"auto": DEFAULT_MAX_MEMORY, "auto-eighth": flat_bytes // 8}
        for kind in [k for k in args.kinds.split(",") if k]:
            if kind in budgets:
                target = 0.95 if kind == "auto" else 0.90
                policy = make_policy("auto", budgets[kind], target)
            else:
                policy = make_policy(kind, DEFAULT_MAX_MEMORY if kind != "ivfpq" else flat_bytes // 8, 0.95)
            rows.append({**measure(kind, policy, ids, base, queries, truth, db, workdir), "budget": policy["max_memory"]})
        if args.autofaiss_python:
            np.save(workdir / "base.npy", base)
            np.save(workdir / "queries.npy", queries)
            np.save(workdir / "truth.npy", truth)
            runs = {"default": ("autofaiss", DEFAULT_MAX_MEMORY), "eighth": ("autofaiss-eighth", flat_bytes // 8)}
            for label, budget in (runs[b] for b in args.autofaiss_budgets.split(",")):
                t = time.perf_counter()
                out = subprocess.run(
                    [args.autofaiss_python, "-c", AUTOFAISS_SCRIPT, str(workdir / "base.npy"), str(workdir / "queries.npy"),
                     str(workdir / "truth.npy"), f"{budget // 2**20}M"],
                    capture_output=True, text=True,
                )
                if out.returncode != 0:
                    print(f"{label} failed (exit {out.returncode}): {out.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(kind=label, budget=budget, build_and_tune_s=round(row.pop("build_s"), 1))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    print_table(
        f"ANN on {args.n:,} x {args.dim} clustered unit vectors, {args.queries} held-out queries, recall@10 vs exact",
        ["kind", "index", "budget", "size", "build+tune s", "recall@10", "p50 ms", "p95 ms", "open mmap ms", "search"],
        [
            [r["kind"], r.get("factory"), f"{r['budget'] / 2**20:.0f} MiB", f"{r['bytes'] / 2**20:.0f} MiB",
             r["build_and_tune_s"], r["recall@10"], r["p50_ms"], r["p95_ms"], r.get("open_mmap_ms", ""),
             r.get("search") or r.get("params")]
            for r in rows
        ],
    )
    emit_json({"benchmark": "ann", "machine": machine(), "n": args.n, "dim": args.dim, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
