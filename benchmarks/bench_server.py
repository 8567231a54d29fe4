"""Load check of ``mmsearch serve``: N concurrent clients, a fixed number of requests, loopback only.

Builds a throw-away index of generated pictures with the tiny test model,
starts ``mmsearch serve`` on 127.0.0.1 in a subprocess, then runs ROUNDS
rounds of REQUESTS requests from CLIENTS threads (a mix of text search,
combined search, image upload, more-like-this, thumbnails, item lookups) and
prints latency percentiles, errors and the server's resident memory after
each round (steady memory = no growth from round to round).

Then the burst of issue 15 (2): BURST_UPLOADS clients upload at once a forged
JPEG of a few KB whose header claims 6000x6000 pixels, and a text search is
sent while they are being handled; BURSTS times. It passes when the server's
peak resident memory (sampled every 5 ms) stays within 1 GiB of its idle
memory and the text searches during the bursts answer within 2x their idle
p95 (measured just before, with the same kind of query, each a new text). Ends with one
JSON line; the exit status is 1 on errors or a failed burst.

    .venv/bin/python benchmarks/bench_server.py --clients 8 --requests 400 --rounds 3
    .venv/bin/python benchmarks/bench_server.py --rounds 0 --burst-uploads 16 --bursts 40   # the burst alone
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, machine, print_table  # noqa: E402

HOST = "127.0.0.1"  # loopback only, by design
WORDS = ["red", "blue", "a dog", "beach at sunset", "striped shirt", "mountains", "a cup of coffee", "city at night"]
KINDS = ("text", "combined", "image", "similar", "thumbnail", "item")


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = [x, y, x + rng.randrange(10, 60), y + rng.randrange(10, 60)]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def build_index(root: Path, images: int) -> None:
    import retrieval

    photos = root / "photos"
    photos.mkdir(parents=True)
    for i in range(images):
        picture(i).save(photos / f"p{i:05d}.jpg", quality=90)
    with retrieval.create_index("bench", model="mmsearch-tiny", root=root / "indexes") as index:
        index.add_folder(photos)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    """``mmsearch serve`` on the bench index, in a subprocess; returns once it answers."""
    cmd = [sys.executable, "-c", "from retrieval.cli import main; main()", "serve", "--index", "bench",
           "--index-dir", str(root / "indexes"), "--host", HOST, "--port", str(port)]
    env = {**os.environ, "MMSEARCH_TOKEN": ""}
    log = open(root / "server.log", "w+")  # a file, not a pipe: a chatty server must never block on it
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited:\n{log.read()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


def one_request(client: httpx.Client, kind: str, rng: random.Random, n_items: int, upload: bytes) -> httpx.Response:
    item = rng.randrange(1, n_items + 1)
    if kind == "text":
        return client.get("/api/search", params={"q": rng.choice(WORDS), "k": 24})
    if kind == "combined":
        terms = [{"text": rng.choice(WORDS)}, {"item": item, "weight": 0.5},
                 {"text": rng.choice(WORDS), "weight": -0.5}]
        return client.post("/api/search", json={"terms": terms, "k": 24})
    if kind == "image":
        return client.post("/api/search/image", files={"image": ("q.jpg", upload, "image/jpeg")}, data={"k": "24"})
    if kind == "similar":
        return client.get(f"/api/items/{item}/similar", params={"k": 24})
    if kind == "thumbnail":
        return client.get(f"/api/items/{item}/thumbnail")
    return client.get(f"/api/items/{item}")


def run_round(base: str, clients: int, requests: int, n_items: int, seed: int) -> dict[str, list[float]]:
    """``requests`` requests spread over ``clients`` threads; latencies (ms) per kind, errors under 'errors'."""
    buf = io.BytesIO()
    picture(10_000 + seed).save(buf, format="JPEG", quality=90)
    upload = buf.getvalue()
    results: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        share = requests // clients + (1 if w < requests % clients else 0)
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(share):
                kind = KINDS[(w + i) % len(KINDS)]
                started = time.perf_counter()
                try:
                    response = one_request(client, kind, rng, n_items, upload)
                    ok = response.status_code == 200
                    detail = f"{kind}: {response.status_code} {response.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{kind}: {type(exc).__name__}: {exc}"
                elapsed = (time.perf_counter() - started) * 1e3
                with lock:
                    results[kind].append(elapsed)
                    if not ok:
                        errors.append(detail)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    results["errors"] = errors  # type: ignore[assignment]
    return results


def forged_jpeg(width: int = 6000, height: int = 6000) -> bytes:
    """A few-KB JPEG whose frame header claims ``width`` x ``height`` (its data is for 64x64 pixels)."""
    buf = io.BytesIO()
    picture(7, (64, 64)).save(buf, format="JPEG", quality=80)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def text_latencies(client: httpx.Client, n: int, start: int) -> list[float]:
    """Latencies (ms) of ``n`` text searches, each a new query (no cache hit)."""
    out = []
    for i in range(start, start + n):
        out.append(timed_text_search(client, i))
    return out


def timed_text_search(client: httpx.Client, i: int) -> float:
    started = time.perf_counter()
    response = client.get("/api/search", params={"q": f"{WORDS[i % len(WORDS)]} {i}", "k": 24})
    if response.status_code != 200:
        raise SystemExit(f"text search failed during the burst check: {response.status_code} {response.text}")
    return (time.perf_counter() - started) * 1e3


def upload_clients(base: str, uploads: int, bursts: int, forged: bytes, go: Any, replies: Any) -> None:
    """In a process of its own: ``uploads`` threads, each sends the forged JPEG once per burst."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def upload(w: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(bursts):
                go.wait()
                try:
                    code = client.post("/api/search/image", files={"image": (f"forged{w}.jpg", forged, "image/jpeg")},
                                       data={"k": "24"}).status_code
                except httpx.HTTPError:
                    code = 0
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1
                go.wait()  # the burst is over when every upload has its answer

    workers = [threading.Thread(target=upload, args=(w,)) for w in range(uploads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    replies.put(statuses)


def run_burst(base: str, pid: int, uploads: int, bursts: int, idle_queries: int) -> dict:
    """Idle text-search p95 and memory; then ``bursts`` times: ``uploads`` forged JPEGs at once, and a text search.

    The uploads come from another process, as they would from other people's
    machines: in this one they would hold the timing client's GIL and bill their
    own HTTP work to the text search.
    """
    forged = forged_jpeg()
    with httpx.Client(base_url=base, timeout=60) as client:
        text_latencies(client, 8, 0)  # warm-up
        idle = text_latencies(client, idle_queries, 1_000)
    idle_rss = rss_kib(pid)
    done = threading.Event()
    peak = [idle_rss]
    context = multiprocessing.get_context("spawn")
    go = context.Barrier(uploads + 1)
    replies = context.Queue()
    burst_ms: list[float] = []

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.005)

    server_cpu_before = cpu_seconds(pid)
    clients = context.Process(target=upload_clients, args=(base, uploads, bursts, forged, go, replies))
    clients.start()
    sampler = threading.Thread(target=sample)
    sampler.start()
    during = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for b in range(bursts):
            go.wait()  # the uploads leave now
            started = time.perf_counter()
            time.sleep(0.005)  # the search arrives while they are being read and decoded
            during.append(timed_text_search(client, 100_000 + b))
            go.wait()
            burst_ms.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.1)
    server_cpu, clients_cpu = cpu_seconds(pid) - server_cpu_before, cpu_seconds(clients.pid)
    statuses: dict[int, int] = replies.get(timeout=120)
    clients.join()
    done.set()
    sampler.join()
    idle_p95, during_p95 = pct(idle, 95), pct(during, 95)
    growth_mib = (peak[0] - idle_rss) / 1024
    return {
        "uploads": uploads, "bursts": bursts, "forged_bytes": len(forged), "statuses": statuses,
        "burst_p50_ms": round(pct(burst_ms, 50), 1), "burst_max_ms": round(max(burst_ms), 1),
        "idle_text_p50_ms": round(pct(idle, 50), 2), "idle_text_p95_ms": round(idle_p95, 2),
        "burst_text_p50_ms": round(pct(during, 50), 2), "burst_text_p95_ms": round(during_p95, 2),
        "idle_rss_mib": round(idle_rss / 1024, 1), "peak_rss_mib": round(peak[0] / 1024, 1),
        "rss_growth_mib": round(growth_mib, 1),
        # CPU time per burst: the server's, and the upload clients' (on this machine too, unlike in real use)
        "server_cpu_ms_per_burst": round(server_cpu / bursts * 1e3, 1),
        "clients_cpu_ms_per_burst": round(clients_cpu / bursts * 1e3, 1),
        "memory_ok": growth_mib <= 1024, "latency_ok": during_p95 <= 2 * idle_p95,
        "errors": sum(n for code, n in statuses.items() if code not in (200, 415, 503)),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # open_clip warns that the tiny test model has random weights
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="pictures in the generated index")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=600, help="requests per round (all clients together)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (memory is read after each)")
    parser.add_argument("--burst-uploads", type=int, default=16, help="clients sending forged uploads (0: no burst)")
    parser.add_argument("--bursts", type=int, default=40, help="bursts (one text search timed during each)")
    parser.add_argument("--idle-queries", type=int, default=100, help="text searches timed before the burst")
    parser.add_argument("--json", help="also write the JSON summary to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-server-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_index(root, args.images)
        port = free_port()
        base = f"http://{HOST}:{port}"
        server = start_server(root, port)
        try:
            setup_s = time.perf_counter() - t0
            run_round(base, 2, 24, args.images, seed=0)  # warm-up: model caches, first thumbnails
            rss = [rss_kib(server.pid)]
            rounds = []
            for r in range(args.rounds):
                started = time.perf_counter()
                res = run_round(base, args.clients, args.requests, args.images, seed=r + 1)
                wall = time.perf_counter() - started
                rss.append(rss_kib(server.pid))
                rounds.append((res, wall))
            burst = (run_burst(base, server.pid, args.burst_uploads, args.bursts, args.idle_queries)
                     if args.burst_uploads > 0 else None)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()

    all_lat = [v for res, _ in rounds for k in KINDS for v in res[k]]
    errors = [e for res, _ in rounds for e in res["errors"]]
    summary: dict = {"benchmark": "server", "machine": machine(), "images": args.images}
    if rounds:
        total_wall = sum(w for _, w in rounds)
        per_kind = {k: [v for res, _ in rounds for v in res[k]] for k in KINDS}
        rows = [[k, len(lat), pct(lat, 50), pct(lat, 95), max(lat)] for k, lat in per_kind.items()]
        rows.append(["all", len(all_lat), pct(all_lat, 50), pct(all_lat, 95), max(all_lat)])
        print_table(
            f"mmsearch serve load check: {args.images} images (mmsearch-tiny), {args.clients} clients, "
            f"{args.rounds} x {args.requests} requests on {HOST} (setup {setup_s:.1f}s)",
            ["request", "n", "p50 ms", "p95 ms", "max ms"], rows,
        )
        print(f"\nthroughput: {len(all_lat) / total_wall:.0f} requests/s; errors: {len(errors)}"
              + (f" (first: {errors[0]})" if errors else ""))
        print("server RSS MiB after warm-up, then after each round: " + " -> ".join(f"{v / 1024:.0f}" for v in rss))
        summary.update({
            "clients": args.clients, "requests_per_round": args.requests, "rounds": args.rounds,
            "p50_ms": round(pct(all_lat, 50), 2), "p95_ms": round(pct(all_lat, 95), 2),
            "per_kind": {k: {"n": len(lat), "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2)}
                         for k, lat in per_kind.items()},
            "requests_per_s": round(len(all_lat) / total_wall, 1), "errors": len(errors),
            "rss_mib": [round(v / 1024, 1) for v in rss],
        })
    if burst is not None:
        print_table(
            f"burst: {burst['uploads']} forged {burst['forged_bytes']}-byte JPEGs (header: 6000x6000) uploaded at "
            f"once, {burst['bursts']} times, a text search during each",
            ["", "idle", "during the burst", "limit", "ok"],
            [["text p95 ms", burst["idle_text_p95_ms"], burst["burst_text_p95_ms"],
              f"<= {2 * burst['idle_text_p95_ms']:.1f}", burst["latency_ok"]],
             ["text p50 ms", burst["idle_text_p50_ms"], burst["burst_text_p50_ms"], "", ""],
             ["server RSS MiB", burst["idle_rss_mib"], burst["peak_rss_mib"],
              f"<= {burst['idle_rss_mib'] + 1024:.0f}", burst["memory_ok"]]],
        )
        print(f"\nupload replies: {dict(sorted(burst['statuses'].items()))}; a burst took "
              f"{burst['burst_p50_ms']:.0f} ms (p50), {burst['burst_max_ms']:.0f} ms (max); CPU per burst: "
              f"server {burst['server_cpu_ms_per_burst']:.0f} ms, upload clients {burst['clients_cpu_ms_per_burst']:.0f} ms")
        summary["burst"] = burst
    emit_json(summary, args.json)
    if errors or (burst is not None and (burst["errors"] or not burst["memory_ok"] or not burst["latency_ok"])):
        sys.exit(1)


if __name__ == "__main__":
    main()
