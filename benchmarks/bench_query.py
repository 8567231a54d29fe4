"""Query latency on a 100k-vector index: warm (in process) and cold (`mmsearch query`).

    .venv/bin/python benchmarks/bench_query.py
    .venv/bin/python benchmarks/bench_query.py --vectors 20000 --queries 20   # quick

* warm text->image and image->image latency, p50/p95, through ``Index.search_text``
  / ``Index.search_image`` (tokenise, encode, FAISS, sqlite rows), with the
  parts timed separately; the LRU cache hit;
* the text encoder with and without skipping the padding (same vectors);
* cold `mmsearch query` wall time, process start to results, on the torch path and
  on the torch-free path (the text tower exported to numpy, retrieval.text_light),
  and each path's phases timed in a fresh process; whether `--help`, `list` and `info` import torch.

The index holds random unit vectors (plus a few real files for image queries)
under the random-weight model: the work per query is that of a real index.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, machine, make_photo_folder, percentiles, print_table  # noqa: E402

import numpy as np  # noqa: E402

QUERIES = [
    "a dog", "sunset over the sea", "two people hiking in the mountains", "red car", "birthday cake with candles",
    "a cat sleeping on a sofa", "snow", "city skyline at night", "handwritten notes on paper", "a bowl of ramen",
    "children playing football in a park", "old stone bridge", "flowers", "a boat on a lake at dawn",
    "receipt", "close-up of a bee on a yellow flower", "my passport", "wedding", "mountain lake with reflections",
    "a plate of pasta with tomato sauce and basil", "whiteboard with diagrams", "beach", "a black and white portrait",
    "train station", "fireworks", "a screenshot of a chat", "forest path in autumn", "desert", "skiing", "a map",
]
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "mmsearch-bench" / "query-root"
PHOTOS = Path(tempfile.gettempdir()) / "mmsearch-bench" / "photos-3000x2000"


def build_index(root: Path, model: str, n: int, photos: list[Path]) -> None:
    """An index of ``n`` random unit vectors plus the given photos (made once, reused)."""
    import retrieval
    from retrieval.store import NewItem

    name = f"q{n}"
    if (root / name / "manifest.json").is_file():
        return
    with retrieval.create_index(name, model=model, root=root) as idx:
        dim = idx.encoder.dim
        idx.add_folder(photos, batch_size=16)
        rng = np.random.default_rng(0)
        with idx.store.writer_lock():
            for start in range(0, n, 20_000):
                m = min(20_000, n - start)
                vecs = rng.standard_normal((m, dim)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                items = [NewItem(kind="image", key=f"/synthetic/{start + i:07d}.jpg", path=f"/synthetic/{start + i:07d}.jpg",
                                 size=1, mtime_ns=1, hash=f"h{start + i}", vector=vecs[i]) for i in range(m)]
                idx.store.commit(items, [])
            idx.store.load_vector_index(persist=True)


def warm(root: Path, name: str, photos: list[Path], n_queries: int, precision: str,
         threads: int | None = None) -> dict[str, Any]:
    import retrieval
    import torch
    from retrieval.encoder import load_encoder

    saved = torch.get_num_threads()
    try:
        enc = load_encoder(retrieval.open_index(name, root=root).model, precision=precision, threads=threads)
        return _warm(root, name, photos, n_queries, enc)
    finally:
        torch.set_num_threads(saved)


def _distinct_queries(n: int) -> list[str]:
    """n texts, none asked before in the run (so the LRU cache never answers)."""
    return [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}") for i in range(n)]


def _time_text_queries(idx: Any, queries: list[str]) -> dict[str, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        idx.search_text(q, 10)
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def _warm(root: Path, name: str, photos: list[Path], n_queries: int, enc: Any) -> dict[str, Any]:
    import retrieval

    out: dict[str, Any] = {}
    with retrieval.open_index(name, root=root, encoder=enc) as idx:
        idx.search_text("warm up")  # loads FAISS and sqlite once
        queries = _distinct_queries(n_queries)
        out["text_to_image"] = _time_text_queries(idx, queries)
        t_cached = []
        for q in queries[:10]:
            t0 = time.perf_counter()
            idx.search_text(q, 10)
            t_cached.append(time.perf_counter() - t0)
        out["text_to_image_cached"] = percentiles(t_cached)
        t_img = []
        idx.search_image(photos[0])
        for p in photos[: max(5, n_queries // 3)]:
            t0 = time.perf_counter()
            idx.search_image(p, 10)
            t_img.append(time.perf_counter() - t0)
        out["image_to_image"] = percentiles(t_img)
        # Where a text query's time goes.
        vec = idx.embed_text("a dog")
        vindex = idx._vector_index()
        parts: dict[str, list[float]] = {"tokenise": [], "text encoder": [], "faiss search": [], "search_vector": []}
        for q in queries[:15]:
            t0 = time.perf_counter()
            tok = enc.tokenizer([q])
            t1 = time.perf_counter()
            enc.encode_texts([q])
            t2 = time.perf_counter()
            vindex.search(vec[None, :], 10)
            t3 = time.perf_counter()
            idx.search_vector(vec, 10)
            t4 = time.perf_counter()
            del tok
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(dt)
        out["text_parts_p50_ms"] = {k: percentiles(v)["p50_ms"] for k, v in parts.items()}
        # Image query parts: decode (reduced-size for big JPEGs) + image tower.
        from retrieval.loading import load_image

        dec, encs = [], []
        for p in photos[:5]:
            t0 = time.perf_counter()
            img = load_image(p, min_side=enc.image_size).image
            t1 = time.perf_counter()
            enc.encode_images([img])
            encs.append(time.perf_counter() - t1)
            dec.append(t1 - t0)
        out["image_parts_p50_ms"] = {"decode": percentiles(dec)["p50_ms"], "image encoder": percentiles(encs)["p50_ms"]}
    return out


def text_cosines(model: str, precisions: list[str]) -> dict[str, float]:
    """Mean cosine of each precision's text vectors to fp32's (bf16 lowers the text tower too)."""
    from retrieval.encoder import load_encoder

    reference = load_encoder(model).encode_texts(QUERIES)
    return {p: float(np.mean(np.sum(load_encoder(model, precision=p).encode_texts(QUERIES) * reference, axis=1)))
            for p in precisions}


def warm_light(root: Path, name: str, n_queries: int) -> dict[str, Any]:
    """Warm text->image latency when text is embedded by the torch-free export (what the CLI uses)."""
    import retrieval
    from retrieval.encoder import load_encoder
    from retrieval.text_export import ensure_export

    with retrieval.open_index(name, root=root) as idx:
        if not ensure_export(load_encoder(idx.model), root):
            return {}
    with retrieval.open_index(name, root=root) as idx:
        assert idx.queries.text_path == "torch-free export"
        idx.search_text("warm up")
        return {"text_to_image": _time_text_queries(idx, _distinct_queries(n_queries))}


def text_padding_speedup(model: str, threads: int, reps: int = 3) -> dict[str, Any]:
    import torch

    from retrieval.encoder import load_encoder

    saved = torch.get_num_threads()
    try:
        return _text_padding_speedup(load_encoder(model, threads=threads), reps)
    finally:
        torch.set_num_threads(saved)


def _text_padding_speedup(enc: Any, reps: int) -> dict[str, Any]:
    full, fast, worst = [], [], 0.0
    for q in QUERIES:
        tok = enc.tokenizer([q])
        a = enc.encode_tokens_full(tok)
        b = enc.encode_texts([q])
        worst = max(worst, float(np.abs(a - b).max()))
        full.append(min(_time(lambda: enc.encode_tokens_full(tok)) for _ in range(reps)))
        fast.append(min(_time(lambda: enc.encode_texts([q])) for _ in range(reps)))
    lengths = [int((enc.tokenizer([q])[0] != 0).sum()) for q in QUERIES]
    f, s = percentiles(full)["p50_ms"], percentiles(fast)["p50_ms"]
    ctx = int(enc.tokenizer(["x"]).shape[1])
    return {"full_p50_ms": f, "skip_padding_p50_ms": s, "speedup": f / s, "max_abs_diff": worst,
            "mean_tokens": float(np.mean(lengths)), "context_length": ctx}


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


PHASES = r"""
import sys, time
t = [time.perf_counter()]
def mark(): t.append(time.perf_counter())
import retrieval.cli; mark()
import numpy, faiss; mark()
import torch; mark()
import open_clip; mark()
import retrieval
idx = retrieval.open_index(sys.argv[1], root=sys.argv[2]); idx._vector_index(); mark()
from retrieval.encoder import load_encoder
enc = load_encoder(idx.model); mark()
idx._encoder = enc
hits = idx.search_text("a dog on a beach", 10); mark()
torch.set_num_threads(1)
hits = idx.search_text("a cat on a sofa", 10); mark()
names = ["import retrieval.cli (typer)", "import numpy + faiss", "import torch", "import open_clip",
         "open index + load FAISS/sqlite", "create model (+ weights)", "first text query (default threads)",
         "a second text query, 1 thread"]
for n, a, b in zip(names, t, t[1:]): print(f"{n}\t{(b - a) * 1000:.0f}")
"""


LIGHT_PHASES = r"""
import sys, time
t = [time.perf_counter()]
def mark(): t.append(time.perf_counter())
import retrieval.cli; mark()
import numpy, faiss; mark()
import retrieval
idx = retrieval.open_index(sys.argv[1], root=sys.argv[2]); idx._vector_index(); mark()
enc = idx.queries._text_encoder(); mark()
vec = enc.encode_texts(["a dog on a beach"])[0]; mark()
hits = idx.search_vector(vec, 10); mark()
names = ["import retrieval.cli (typer)", "import numpy + faiss", "open index + load FAISS/sqlite",
         "open the text-tower export (tokenizer, mmap)", "tokenise + encode the text (numpy)", "search + rows"]
for n, a, b in zip(names, t, t[1:]): print(f"{n}\t{(b - a) * 1000:.0f}")
print(f"torch imported\t{'torch' in sys.modules}")
print(f"encoder\t{type(enc).__name__}")
"""


def _phases(script: str, name: str, root: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", script, name, str(root)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    parts: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if "\t" in line:
            k, v = line.split("\t")
            try:
                parts[k] = float(v)
            except ValueError:
                parts[k] = v
    return parts


def _cold_walls(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"mmsearch query failed: {done.stderr.strip()}")
    return walls


def cold(root: Path, name: str, runs: int) -> dict[str, Any]:
    """Cold `mmsearch query`: the torch path, then the torch-free one (retrieval.text_light), side by side."""
    exe = Path(sys.executable).with_name("mmsearch")
    cmd = [str(exe), "query", "a dog on a beach", "--index", name, "--index-dir", str(root), "--paths"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    torch_env = {**env, "MMSEARCH_LIGHT_TEXT": "0"}
    import shutil

    shutil.rmtree(root / ".cache" / "text", ignore_errors=True)  # measure the first-query export too
    torch_walls = _cold_walls(cmd, torch_env, runs)
    first = _cold_walls(cmd, env, 1)  # loads torch (no export yet) and writes the export
    light_walls = _cold_walls(cmd, env, runs)
    same = subprocess.run(cmd, capture_output=True, text=True, env=env).stdout == \
        subprocess.run(cmd, capture_output=True, text=True, env=torch_env).stdout
    parts = _phases(PHASES, name, root, torch_env)
    light_parts = _phases(LIGHT_PHASES, name, root, env)
    light = {}
    for args in (["--help"], ["list", "--index-dir", str(root)], ["info", "--index", name, "--index-dir", str(root)]):
        code = ("import sys\nfrom typer.testing import CliRunner\nfrom retrieval.cli import app\n"
                f"r = CliRunner().invoke(app, {args!r})\nprint(r.exit_code, 'torch' in sys.modules)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
        t0 = time.perf_counter()
        subprocess.run([str(exe), *args], capture_output=True, env=env)
        light[" ".join(args[:1])] = {"imports_torch": res.stdout.split()[-1:] == ["True"],
                                     "wall_ms": (time.perf_counter() - t0) * 1000}
    return {"wall_s": min(light_walls), "wall_runs_s": light_walls, "torch_wall_s": min(torch_walls),
            "torch_wall_runs_s": torch_walls, "first_query_with_export_s": first[0],
            "same_results_light_vs_torch": same, "phases_ms": parts, "light_phases_ms": light_parts,
            "light_commands": light}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32-256", help="architecture (random weights) [ViT-B-32-256]")
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--precisions", default="fp32,bf16", help="image-tower precisions for the warm runs")
    ap.add_argument("--cold-runs", type=int, default=2)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the bench index is kept between runs")
    ap.add_argument("--json", help="also write the JSON result to this file")
    args = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)
    photos = sorted(make_photo_folder(PHOTOS, 20).glob("photo_*.jpg"))[:20]
    build_index(args.root, args.model, args.vectors, photos)
    name = f"q{args.vectors}"
    result: dict[str, Any] = {"model": args.model, "vectors": args.vectors}

    rows = []
    import torch

    default_threads = torch.get_num_threads()
    for p in [x for x in args.precisions.split(",") if x]:
        for threads in sorted({default_threads, 1}, reverse=True):
            w = warm(args.root, name, photos, args.queries, p, threads)
            result[f"warm_{p}_{threads}t"] = w
            tag = f"{p}, {threads} thread{'s' if threads > 1 else ''}"
            rows.append([f"text -> image ({tag})", w["text_to_image"]["p50_ms"], w["text_to_image"]["p95_ms"]])
            rows.append([f"text -> image, cached text ({tag})", w["text_to_image_cached"]["p50_ms"],
                         w["text_to_image_cached"]["p95_ms"]])
            rows.append([f"image -> image, 3000x2000 JPEG ({tag})", w["image_to_image"]["p50_ms"],
                         w["image_to_image"]["p95_ms"]])
    result["text_cosine_to_fp32"] = text_cosines(args.model, [x for x in args.precisions.split(",") if x])
    wl = warm_light(args.root, name, args.queries)
    if wl:
        result["warm_light_text"] = wl
        rows.append(["text -> image (torch-free text path, numpy)", wl["text_to_image"]["p50_ms"],
                     wl["text_to_image"]["p95_ms"]])
    result["machine"] = machine()
    print("text vectors, mean cosine to fp32: " + ", ".join(f"{k} {v:.5f}" for k, v in result["text_cosine_to_fp32"].items()))
    print_table(f"Warm query latency, {args.vectors} vectors, k=10 (ms)", ["query", "p50", "p95"], rows)
    first = result[f"warm_{args.precisions.split(',')[0]}_1t"]
    print_table("Where a warm query's time goes (p50, ms, 1 thread)", ["part", "ms"],
                [[k, v] for k, v in {**first["text_parts_p50_ms"], **first["image_parts_p50_ms"]}.items()])

    pad_rows = []
    for threads in sorted({default_threads, 1}):
        pad = text_padding_speedup(args.model, threads)
        result[f"text_padding_{threads}t"] = pad
        pad_rows += [
            [f"full context ({pad['context_length']} tokens), {threads} thread(s)", pad["full_p50_ms"], 1.0],
            [f"up to end-of-text (mean {pad['mean_tokens']:.1f} tokens), {threads} thread(s)",
             pad["skip_padding_p50_ms"], pad["speedup"]],
        ]
    print_table("Text encoder, one query (ms, p50 over 30 queries)", ["path", "ms", "speed-up"], pad_rows)
    print(f"max |difference| between the two paths' vectors: {pad['max_abs_diff']:.2e}")

    c = cold(args.root, name, args.cold_runs)
    result["cold"] = c
    print_table("Cold `mmsearch query` (process start to results, best of runs)", ["path", "seconds", "x torch path"], [
        ["torch path (MMSEARCH_LIGHT_TEXT=0)", c["torch_wall_s"], 1.0],
        ["first query: torch path + writing the text-tower export", c["first_query_with_export_s"],
         c["first_query_with_export_s"] / c["torch_wall_s"]],
        ["torch-free path (text-tower export, numpy)", c["wall_s"], c["wall_s"] / c["torch_wall_s"]],
    ])
    print(f"same results on both paths: {c['same_results_light_vs_torch']}")
    print_table("Where the torch path's cold query goes (ms)", ["phase", "ms"],
                [[k, v] for k, v in c["phases_ms"].items()])
    print_table("Where the torch-free cold query goes (ms)", ["phase", "ms"],
                [[k, v] for k, v in c["light_phases_ms"].items()])
    print_table("Light commands", ["command", "imports torch", "wall ms"],
                [[k, v["imports_torch"], v["wall_ms"]] for k, v in c["light_commands"].items()])
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
