"""ANN benchmark: every index kind and `auto` on CLIP-like vectors, beside autofaiss; and a 10M run on disk.

Data (``retrieval.synthetic_vectors``): CLIP-like vectors by default (a cone,
a power-law spectrum, 200 Zipf-sized concepts: IVF needs ~16x the probes the
old clustered set needs), and the old easy clustered set as a second column.

For each row: the index the policy builds (through the product's own
``ann_lifecycle.build``: streamed from the vectors, tuned on held-out queries
drawn from them), build+tune time, RAM (estimate) and disk (index.faiss, lists
file, re-rank copy), what the tuner measured, then on 1,000 image queries (new
draws, not in the index) and 1,000 caption-like queries (the tuner's text model
with another seed): recall@10 against exact search, and single-query latency
p50/p95 of search + re-rank. Re-ranking runs as in the product: the float16
copy beside index.faiss chooses the top 10, whose scores are then read from
float32 vectors in a sqlite ``vectors`` table like items.sqlite's (at 10M, from
the float32 file instead: the table would take 25 GB more disk). IVF-PQ rows
also show what the re-rank reads cost and the recall of each way of reading
them: every candidate as float32 from sqlite, the float16 copy alone, the copy
with the top 10 re-scored (what ships), an int8 copy alone.

Everything slow is cached under --cache (default .cache/bench_ann, git-ignored):
the generated vectors (``.npy``, written once chunk by chunk; 20 GB at 10M x
512), the queries and their exact top-10, the sqlite table, the built indexes,
and every finished row (``results.jsonl``): a rerun skips what is done
(``--fresh`` starts over).

autofaiss rows run in a subprocess: this interpreter when it imports autofaiss,
else ``--autofaiss-python``; otherwise they are skipped with the reason printed.
autofaiss 2.18 needs numpy<2 (``pip install autofaiss`` would replace this venv's
numpy 2) and crashes with faiss 1.15, so it gets its own venv:
    python3 -m venv /tmp/venv-autofaiss
    /tmp/venv-autofaiss/bin/pip install autofaiss "faiss-cpu==1.7.4" "numpy<2" "pyarrow<16"

``--on-disk`` is the past-memory run (meant for 10M vectors, 20 GB of them):
CLIP-like data only, IVF with its full-vector lists in a file on disk and
``auto`` (IVF-PQ codes + the memory-mapped float16 copy), each reporting build
time, disk, resident memory (anonymous and file-backed, after the queries, and
the peak while building) beside recall and latency.

Timings start from a warm page cache: the index's files (and the sqlite table)
are read once before the queries (``warm_files``).

Every row records the 1-minute load average when it was measured: figures taken
on a busy machine say so. The full runs (docs/scaling.md has the tables):
    python benchmarks/bench_ann.py --n 1000000 --autofaiss-python /tmp/venv-autofaiss/bin/python
    python benchmarks/bench_ann.py --on-disk --n 10000000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import REPO, emit_json, machine, percentiles, print_table

from retrieval.ann import AnnConfig, VectorIndex, exact_search
from retrieval.ann_lifecycle import build, make_policy, plan
from retrieval.ann_policy import DEFAULT_MAX_MEMORY, estimate_memory
from retrieval.ann_tuning import _text_like
from retrieval.search import rerank, rerank_candidates
from retrieval.synthetic_vectors import ClipLikeModel, clustered_unit_vectors
from retrieval.vector_copy import COPY_FILE, ArrayVectors, VectorCopy

K = 10
KINDS = "ivf,ivfpq,hnsw,auto,auto-eighth"  # flat (exact) is another choice: ~0.4 s a query at 1M
DISK_KINDS = "ivf-disk,auto"  # past memory: full vectors in lists on disk; IVF-PQ + memory-mapped float16 copy

AUTOFAISS_SCRIPT = r"""
import json, sys, time, numpy as np
from autofaiss import build_index
base = np.load(sys.argv[1], mmap_mode="r"); queries = np.load(sys.argv[2]); budget = sys.argv[3]; out = sys.argv[4]
t = time.perf_counter()
index, infos = build_index(embeddings=np.ascontiguousarray(base), save_on_disk=False, max_index_memory_usage=budget,
                           current_memory_available="8G", metric_type="ip", min_nearest_neighbors_to_retrieve=10,
                           verbose=40)
build_s = time.perf_counter() - t
import faiss
faiss.omp_set_num_threads(1)  # one query at a time, one thread, as mmsearch answers
lat, found = [], []
for q in queries:
    t = time.perf_counter(); _, ids = index.search(q[None, :], 10); lat.append(time.perf_counter() - t)
    found.append(ids[0])
np.save(out, np.stack(found))
print(json.dumps({"factory": infos.get("index_key"), "build_s": build_s, "bytes": len(faiss.serialize_index(index)),
                  "lat": lat, "params": infos.get("index_param")}))
"""


# -- data, cached -------------------------------------------------------------------


class Dataset:
    """Base vectors (memory-mapped), held-out image and caption-like queries, and their exact top-10."""

    def __init__(self, cache: Path, data: str, n: int, dim: int, n_queries: int) -> None:
        self.name = f"{data}-{n}x{dim}"
        self.folder = cache / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data, self.n, self.dim = data, n, dim
        self.base = self._cached_base()
        self.ids = np.arange(n, dtype=np.int64)
        self.source = ArrayVectors(self.ids, self.base)
        self.queries = self._cached(f"queries-{n_queries}.npy", lambda: self._make_queries(n_queries))
        truth_ids = self._cached(f"truth-{n_queries}.npy",
                                 lambda: exact_search(self.queries, self.source, K)[1])
        self.truth = truth_ids
        self.kinds = np.array(["image"] * n_queries + ["text"] * n_queries)

    def _cached_base(self) -> np.ndarray:
        path = self.folder / "base.npy"
        if not path.exists():
            t = time.perf_counter()
            tmp = self.folder / "base.npy.partial"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.n, self.dim))
            if self.data == "clip":
                ClipLikeModel.create(self.dim, seed=7).sample(self.n, seed=8, out=out)
            else:
                if self.n > 2_000_000:
                    raise SystemExit("the easy set is made in memory: use --data clip past 2M vectors")
                out[:] = clustered_unit_vectors(self.n, self.dim, seed=7)
            out.flush()
            del out
            os.replace(tmp, path)
            log(f"{self.name}: generated in {time.perf_counter() - t:.0f}s -> {path}")
        return np.load(path, mmap_mode="r")

    def _make_queries(self, n_queries: int) -> np.ndarray:
        if self.data == "clip":
            image = ClipLikeModel.create(self.dim, seed=7).sample(n_queries, seed=9)  # new draws: not in the index
        else:  # the generator's stream continued past the base: same clusters, new draws
            image = clustered_unit_vectors(self.n + n_queries, self.dim, seed=7)[self.n :]
        rng = np.random.default_rng(10)
        picks = np.sort(rng.choice(self.n, size=n_queries + 1024, replace=False))
        sampled = np.asarray(self.base[picks], dtype=np.float32)[rng.permutation(len(picks))]
        text = _text_like(sampled[:n_queries], sampled[n_queries:], rng)  # the tuner's caption model, another seed
        return np.concatenate([image, text]).astype(np.float32)

    def _cached(self, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.folder / name
        if not path.exists():
            t = time.perf_counter()
            np.save(self.folder / (name + ".partial.npy"), make())
            os.replace(self.folder / (name + ".partial.npy"), path)
            log(f"{self.name}: {name} in {time.perf_counter() - t:.0f}s")
        return np.load(path)

    def sqlite_fetch(self, use_sqlite: bool) -> Callable[[np.ndarray], np.ndarray]:
        """What ``IndexStore.vectors_of`` does: float32 rows from a sqlite table (or the .npy past --sqlite-max)."""
        if not use_sqlite:
            return self.source.fetch
        path = self.folder / "vectors.sqlite"
        if not path.exists():
            t = time.perf_counter()
            tmp = self.folder / "vectors.sqlite.partial"
            tmp.unlink(missing_ok=True)
            db = sqlite3.connect(tmp)
            db.execute("PRAGMA page_size=16384")  # as new indexes have
            db.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL)")
            with db:
                for ids, vecs in self.source.chunks(50_000):
                    db.executemany("INSERT INTO vectors VALUES (?, ?)",
                                   ((int(i), v.tobytes()) for i, v in zip(ids, vecs)))
            db.close()
            os.replace(tmp, path)
            log(f"{self.name}: sqlite vectors table in {time.perf_counter() - t:.0f}s")
        db = sqlite3.connect(path, check_same_thread=False)
        dim = self.dim

        def fetch(wanted: np.ndarray) -> np.ndarray:
            out = np.zeros((len(wanted), dim), dtype=np.float32)
            where = {int(i): p for p, i in enumerate(wanted)}
            keys = list(where)
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                for item_id, blob in db.execute(f"SELECT id, vec FROM vectors WHERE id IN ({','.join('?' * len(chunk))})",
                                                chunk):
                    out[where[item_id]] = np.frombuffer(blob, dtype=np.float32)
            return out

        return fetch


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_avg() -> float:
    """The 1-minute load average: beside every figure, so a busy machine's numbers are recognisable."""
    return round(os.getloadavg()[0], 2)


def memory_status() -> dict[str, int]:
    """This process's resident memory in bytes from /proc: anonymous, file-backed (mmap), and the peak."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: the row just lacks these fields
        pass
    return out


def reset_peak_memory() -> None:
    """Start VmHWM afresh (Linux >= 4.0), so a row's peak is its own build's, not the data generation's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole run so far
        pass


# -- rows ---------------------------------------------------------------------------


def policy_for(kind: str, n: int, dim: int) -> dict[str, Any]:
    flat_bytes = n * dim * 4
    if kind == "auto":
        return make_policy("auto", DEFAULT_MAX_MEMORY, 0.95)
    if kind == "auto-eighth":
        return make_policy("auto", flat_bytes // 8, 0.90)
    if kind == "ivf-disk":  # full vectors in lists on disk: an index larger than its 4 GiB budget (and than RAM at 10M)
        return make_policy("ivf", min(DEFAULT_MAX_MEMORY, flat_bytes // 2), 0.95)
    if kind == "ivfpq":
        return make_policy("ivfpq", flat_bytes // 8, 0.95)
    return make_policy(kind, max(DEFAULT_MAX_MEMORY, 2 * flat_bytes), 0.95)


def reusable(row: dict[str, Any], kind: str, n: int, dim: int) -> bool:
    """Whether a cached row still describes what the policy builds (autofaiss rows always do)."""
    if kind.startswith("autofaiss-"):
        return True
    return row.get("factory") == plan(policy_for(kind, n, dim), n, dim).factory


def index_folder(ds: Dataset, policy: dict[str, Any]) -> Path:
    """Where the index a policy builds is kept: one per plan (auto = ivf at the default budget shares it)."""
    planned = plan(policy, ds.n, ds.dim)
    slug = planned.factory.replace(",", "_") + ("-disk" if planned.lists_on_disk else "")
    return ds.folder / f"index-{slug}-t{policy['target_recall']}"


_FRESH: set[Path] = set()  # folders rebuilt by this run (--fresh rebuilds each once)


def built_index(ds: Dataset, policy: dict[str, Any], fresh: bool) -> tuple[VectorIndex, float, bool]:
    """The index this policy builds over the dataset, saved under the cache (reloaded on a rerun)."""
    folder = index_folder(ds, policy)
    folder.mkdir(exist_ok=True)
    meta = folder / "built.json"
    if meta.exists() and (not fresh or folder in _FRESH):
        info = json.loads(meta.read_text())
        config = AnnConfig.from_dict(info["config"])
        index = VectorIndex.load(folder / "index.faiss", ds.dim, config, mmap=True)
        if config.copy_dtype:
            index.copy = VectorCopy.open(folder / COPY_FILE, ds.dim)
        return index, info["build_and_tune_s"], True
    for old in folder.iterdir():
        old.unlink()
    _FRESH.add(folder)
    t = time.perf_counter()
    index = build(policy, ds.dim, ds.source, workdir=folder)
    seconds = time.perf_counter() - t
    index.save(folder / "index.faiss")
    meta.write_text(json.dumps({"config": index.config.as_dict(), "build_and_tune_s": seconds}))
    index = VectorIndex.load(folder / "index.faiss", ds.dim, index.config, mmap=True)  # as readers open it
    if index.config.copy_dtype:
        index.copy = VectorCopy.open(folder / COPY_FILE, ds.dim)
    return index, seconds, False


def answer(index: VectorIndex, queries: np.ndarray, exact: Callable[[np.ndarray], np.ndarray],
           how: str = "served") -> tuple[np.ndarray, list[float]]:
    """Top-10 ids and the time of each query, one at a time, the way ``search_vector`` answers."""
    cfg = index.config
    depth = int(cfg.search.get("rerank", 1))
    found, lat = [], []
    for q in queries:
        t = time.perf_counter()
        _, cands = index.search(q[None, :], K * depth)
        if how == "served":
            top = rerank_candidates(q, cands[0], index, exact, K)[1] if cfg.reranks else cands[0]
        elif how == "float32":
            top = rerank(q, cands[0], exact)[1]
        elif how == "float16":
            top = rerank(q, cands[0], index.copy.fetch)[1]
        else:  # an int8 copy, kept on the index object by the caller
            top = rerank(q, cands[0], index.int8_copy.fetch)[1]  # type: ignore[attr-defined]
        lat.append(time.perf_counter() - t)
        found.append(np.pad(top[:K], (0, K - len(top[:K])), constant_values=-1))
    return np.stack(found), lat


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def file_bytes(folder: Path) -> int:
    """Bytes the index's files take on disk: allocated blocks, since FAISS's lists file is sparse (grown by doubling)."""
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.name != "built.json")


def warm_files(paths: list[Path]) -> int:
    """Read files once, so timings are of a warm page cache, as on a server that has been answering a while.

    Which row ran before (and whether its build just wrote the files) otherwise decides the timing: the
    same 1M index measured 2.84 ms p50 after another row had read it and 3.72 ms first. Past RAM (10M)
    the files do not all stay cached, and the timing says so. Returns the bytes read.
    """
    total = 0
    for path in paths:
        if path.is_file():
            with open(path, "rb", buffering=0) as fh:
                while chunk := fh.read(16 << 20):
                    total += len(chunk)
    return total


def measure(ds: Dataset, kind: str, fresh: bool, use_sqlite: bool, variants: bool) -> dict[str, Any]:
    policy = policy_for(kind, ds.n, ds.dim)
    planned = plan(policy, ds.n, ds.dim)
    reset_peak_memory()
    index, build_s, cached = built_index(ds, policy, fresh)
    build_peak = memory_status().get("VmHWM", 0)
    folder = index_folder(ds, policy)
    cfg = index.config
    exact = ds.sqlite_fetch(use_sqlite)
    t = time.perf_counter()
    VectorIndex.load(folder / "index.faiss", ds.dim, cfg, mmap=True)
    open_ms = 1000 * (time.perf_counter() - t)
    warmed = warm_files([*folder.iterdir(), ds.folder / "vectors.sqlite"] if use_sqlite else [*folder.iterdir()])
    found, lat = answer(index, ds.queries, exact)
    image, text = ds.kinds == "image", ds.kinds == "text"
    p = percentiles(lat)
    rss = memory_status()
    row: dict[str, Any] = {
        "data": ds.data, "kind": kind, "type": cfg.type, "factory": cfg.factory, "rule": planned.rule,
        "search": cfg.search, "budget": policy["max_memory"], "target": policy["target_recall"],
        "build_and_tune_s": round(build_s, 1), "cached_build": cached,
        "ram_estimate": estimate_memory(cfg, ds.n, ds.dim), "disk_bytes": file_bytes(folder),
        "lists_on_disk": cfg.lists_on_disk, "tuned_recall": cfg.measured_recall, "tuned_held_out": cfg.held_out,
        "shortfall": cfg.shortfall,
        "recall_image": round(recall(found[image], ds.truth[image]), 4),
        "recall_text": round(recall(found[text], ds.truth[text]), 4),
        "p50_ms": round(p["p50_ms"], 3), "p95_ms": round(p["p95_ms"], 3),
        "p50_image_ms": round(percentiles(np.array(lat)[image])["p50_ms"], 3),
        "p50_text_ms": round(percentiles(np.array(lat)[text])["p50_ms"], 3),
        "open_mmap_ms": round(open_ms, 2), "warmed_bytes": warmed,
        "rerank_reads": "sqlite" if use_sqlite else "float32 file",
        "rss_anon_bytes": rss.get("RssAnon"), "rss_file_bytes": rss.get("RssFile"),
        "build_peak_rss_bytes": None if cached else build_peak, "load_avg_1m": load_avg(),
    }
    if variants and cfg.type == "ivfpq" and index.copy is not None:
        index.int8_copy = VectorCopy.from_chunks(ds.dim, ds.source.chunks(), dtype="int8")  # type: ignore[attr-defined]
        for how in ("float32", "float16", "int8"):
            f, l = answer(index, ds.queries, exact, how)
            row[f"recall_{how}_rerank"] = round(recall(f, ds.truth), 4)
            row[f"p50_{how}_rerank_ms"] = round(percentiles(l)["p50_ms"], 3)
        row["recall_served"] = round(recall(found, ds.truth), 4)
    log(json.dumps(row))
    return row


def autofaiss_row(ds: Dataset, label: str, budget: int, python: str) -> dict[str, Any] | None:
    queries = ds.folder / "queries-for-autofaiss.npy"
    np.save(queries, ds.queries)
    out_ids = ds.folder / f"{label}-found.npy"
    t = time.perf_counter()
    run = subprocess.run([python, "-c", AUTOFAISS_SCRIPT, str(ds.folder / "base.npy"), str(queries),
                          f"{budget // 2**20}M", str(out_ids)], capture_output=True, text=True)
    if run.returncode != 0:
        log(f"{label} failed (exit {run.returncode}): {run.stderr[-2000:]}")
        return None
    info = json.loads(run.stdout.strip().splitlines()[-1])
    found = np.load(out_ids)
    image, text = ds.kinds == "image", ds.kinds == "text"
    lat = np.array(info["lat"])
    p = percentiles(lat)
    row = {
        "data": ds.data, "kind": label, "factory": info["factory"], "search": info["params"], "budget": budget,
        "build_and_tune_s": round(info["build_s"], 1), "disk_bytes": info["bytes"],
        "recall_image": round(recall(found[image], ds.truth[image]), 4),
        "recall_text": round(recall(found[text], ds.truth[text]), 4),
        "p50_ms": round(p["p50_ms"], 3), "p95_ms": round(p["p95_ms"], 3), "wall_s": round(time.perf_counter() - t, 1),
        "load_avg_1m": load_avg(),
    }
    log(json.dumps(row))
    return row


# -- main -----------------------------------------------------------------------------


def autofaiss_python(asked: str | None, wanted: bool) -> str | None:
    """The interpreter that runs the autofaiss rows, or None after printing why they are skipped."""
    if not wanted:
        log("autofaiss: skipped (--no-autofaiss)")
        return None
    if asked:
        return asked
    if importlib.util.find_spec("autofaiss") is not None:
        return sys.executable
    log("autofaiss: skipped: not importable here, and `pip install autofaiss` would replace this venv's numpy 2 "
        "with 1.26.4 (autofaiss 2.18 also crashes with faiss 1.15); pass --autofaiss-python with the venv the "
        "docstring describes")
    return None


def mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="image queries, and as many caption-like ones")
    ap.add_argument("--kinds", default=None, help=f"rows, from {KINDS},ivf-disk (default {KINDS}; --on-disk: {DISK_KINDS})")
    ap.add_argument("--data", default=None, help="clip (CLIP-like), easy (the old clustered set); default clip,easy")
    ap.add_argument("--on-disk", action="store_true",
                    help=f"the past-memory run: CLIP-like data, rows {DISK_KINDS}, build/disk/RSS beside recall")
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench_ann")
    ap.add_argument("--fresh", action="store_true", help="rebuild indexes and re-measure rows already in the cache")
    ap.add_argument("--sqlite-max", type=int, default=2_000_000,
                    help="re-rank reads float32 from a sqlite table up to this many vectors, from the .npy above")
    ap.add_argument("--threads", type=int, default=2, help="FAISS threads for building (queries use one)")
    ap.add_argument("--autofaiss-python", default=None, help="python of a venv with autofaiss (see the docstring)")
    ap.add_argument("--autofaiss-budgets", default="default,eighth")
    ap.add_argument("--no-autofaiss", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    kinds = [k for k in (args.kinds or (DISK_KINDS if args.on_disk else KINDS)).split(",") if k]
    datas = [d for d in (args.data or ("clip" if args.on_disk else "clip,easy")).split(",") if d]
    af_python = None if args.on_disk else autofaiss_python(args.autofaiss_python, not args.no_autofaiss)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    log(f"load average at start: {load_avg()} (1 min) on {os.cpu_count()} cores")
    results = args.cache / "results.jsonl"
    done = {} if args.fresh or not results.exists() else {
        (r["n"], r["dim"], r["queries"], r["data"], r["kind"]): r
        for r in map(json.loads, results.read_text().splitlines()) if r
    }
    rows = []
    for data in datas:
        ds = Dataset(args.cache, data, args.n, args.dim, args.queries)
        labels = kinds + ([f"autofaiss-{b}" for b in args.autofaiss_budgets.split(",")] if af_python else [])
        for kind in labels:
            key = (args.n, args.dim, args.queries, data, kind)
            if key in done and not reusable(done[key], kind, args.n, args.dim):
                log(f"{data} {kind}: the policy now builds another index than the cached row's: measured again")
            elif key in done:
                rows.append(done[key])
                log(f"{data} {kind}: from {results}")
                continue
            if kind.startswith("autofaiss-"):
                budget = DEFAULT_MAX_MEMORY if kind.endswith("default") else args.n * args.dim * 4 // 8
                row = autofaiss_row(ds, kind, budget, af_python)
            else:
                small = args.n <= args.sqlite_max  # an int8 copy in memory and a sqlite table: up to 2M
                row = measure(ds, kind, args.fresh, small, variants=small and not args.on_disk)
            if row is None:
                continue
            row.update(n=args.n, dim=args.dim, queries=args.queries)
            with open(results, "a") as fh:
                fh.write(json.dumps(row, default=float) + "\n")
            rows.append(row)

    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m") is not None]
    load_note = f"1-min load average {min(loads)}-{max(loads)} on {os.cpu_count()} cores" if loads else ""
    if args.on_disk:
        print_disk_table(args, rows, load_note)
    else:
        print_main_tables(args, datas, rows, load_note)
    emit_json({"benchmark": "ann", "machine": machine(), "n": args.n, "dim": args.dim, "on_disk": args.on_disk,
               "rows": rows}, args.json)


def print_main_tables(args: argparse.Namespace, datas: list[str], rows: list[dict[str, Any]], load_note: str) -> None:
    """The 1M table: one row per kind on the first data set, the easy set's recall and p50 as a second column."""
    by = {(r["data"], r["kind"]): r for r in rows}
    first = datas[0]
    table = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        r = by.get((first, kind)) or next(v for (d, k), v in by.items() if k == kind)
        easy = by.get(("easy", kind)) if first != "easy" else None
        table.append([
            kind, r.get("factory"), f"{r['budget'] / 2**20:.0f} MiB", mib(r.get("disk_bytes", 0)),
            r.get("build_and_tune_s"), r.get("search"), r.get("tuned_recall", ""),
            r["recall_image"], r["recall_text"], r["p50_ms"], r["p95_ms"],
            "" if easy is None else f"{easy['recall_image']} / {easy['recall_text']} at {easy['p50_ms']} ms",
            "yes" if r.get("shortfall") else "", r.get("load_avg_1m", ""),
        ])
    print_table(
        f"ANN on {args.n:,} x {args.dim} {'CLIP-like' if first == 'clip' else first} vectors, {args.queries} image + "
        f"{args.queries} caption-like held-out queries, recall@10 vs exact, one query at a time; {load_note}",
        ["kind", "index", "budget", "disk", "build+tune s", "search", "tuner (held out)", "recall image",
         "recall text", "p50 ms", "p95 ms", "easy set: recall img / text, p50", "shortfall", "load 1m"],
        table,
    )
    pq = [r for r in rows if "recall_float16_rerank" in r]
    if pq:
        print_table(
            "Re-rank reads (IVF-PQ rows): recall@10 (image and text queries together) and p50 of search + re-rank",
            ["data", "kind", "float32 from sqlite", "float16 copy", "float16, top 10 re-scored from float32 (served)", "int8 copy",
             "load 1m"],
            [[r["data"], r["kind"], f"{r['recall_float32_rerank']} at {r['p50_float32_rerank_ms']} ms",
              f"{r['recall_float16_rerank']} at {r['p50_float16_rerank_ms']} ms",
              f"{r['recall_served']} at {r['p50_ms']} ms", f"{r['recall_int8_rerank']} at {r['p50_int8_rerank_ms']} ms",
              r.get("load_avg_1m", "")]
             for r in pq],
        )


def print_disk_table(args: argparse.Namespace, rows: list[dict[str, Any]], load_note: str) -> None:
    """The past-memory table: build time, disk, resident memory beside recall and latency."""
    print_table(
        f"ANN past memory: {args.n:,} x {args.dim} CLIP-like vectors ({mib(args.n * args.dim * 4)} as float32), "
        f"{args.queries} image + {args.queries} caption-like held-out queries; {load_note}",
        ["kind", "index", "lists on disk", "build+tune s", "disk", "RSS anon", "RSS file (mmap)", "build peak RSS",
         "search", "recall image", "recall text", "p50 ms", "p95 ms", "shortfall", "load 1m"],
        [[r["kind"], r.get("factory"), "yes" if r.get("lists_on_disk") else "", r.get("build_and_tune_s"),
          mib(r.get("disk_bytes")), mib(r.get("rss_anon_bytes")), mib(r.get("rss_file_bytes")),
          mib(r.get("build_peak_rss_bytes")) or "(cached build)", r.get("search"), r["recall_image"],
          r["recall_text"], r["p50_ms"], r["p95_ms"], "yes" if r.get("shortfall") else "", r.get("load_avg_1m", "")]
         for r in rows],
    )


if __name__ == "__main__":
    main()
