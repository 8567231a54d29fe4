"""Fault injection and re-index cost for `mmsearch index` (issue 5).

Part 1 - many random kill -9 points: each run indexes a folder of small images
plus the hostile-file set into a fresh index (half of the runs first index a
part of it cleanly, so the kill hits an incremental run), is SIGKILLed at a
random point (from outside once N commits are visible, inside an encoder call,
just before or after a sqlite COMMIT, while index.faiss or the manifest is
replaced), is checked (verify, a query, no lost or duplicated items), then
resumed to completion and checked again.

Part 2 - re-indexing an unchanged folder of N small images (default 10,000):
the time against the first indexing, and the encoder calls (must be 0).

Part 3 - the tamper suite (issue 14, tests/tamper.py): every index file
damaged in each of its ways (manifest fields of wrong types, a lost or
garbled manifest, index.faiss lost/truncated/foreign, bad vectors, items.sqlite
truncated or with a garbled page, a garbage -wal), on an index of
--tamper-items items: tracebacks (must be 0), commands that failed without one
error line naming repair (must be 0), repairs that did not bring the index
back, vectors changed (must be 0) and vectors lost that could be kept (a lost
vector whose item and vector the damaged file still held intact: must be 0).

    .venv/bin/python benchmarks/bench_reliability.py                 # 40 runs + 10k images + the tamper suite
    .venv/bin/python benchmarks/bench_reliability.py --runs 200 --images 0 --tamper-items 0

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.crash_harness import (  # noqa: E402 - after the path set-up
    KINDS, inspect_index, make_hostile_files, make_small_images, preload, run_scenario, spawn_index,
)


def fault_injection(work: Path, runs: int, images: int, batch: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    photos = work / "photos"
    paths = make_small_images(photos, images)
    hostile = make_hostile_files(work / "hostile", paths[0])
    extra = work / "extra"
    make_small_images(extra, images // 2, start=images)
    folders = [photos, work / "hostile", extra]
    batches = -(-(images + images // 2) // batch)

    # The reference: one clean run, to know how many failed items a complete index holds.
    ref = work / "reference"
    ref.mkdir(parents=True)
    os.waitpid(spawn_index(ref / "indexes", folders, batch, count_file=ref / "count", out_file=ref / "out.json"), 0)
    expected = inspect_index(ref / "indexes" / "default")
    expected_items, expected_failed = expected["items"], expected["failed"]

    totals = {"runs": 0, "kills": 0, "hostile_files_tried": 0, "crashes": 0, "lost": 0, "duplicated": 0,
              "corrupt_after_kill": 0, "corrupt_final": 0, "wrong_final_items": 0, "max_reencoded": 0,
              "queries_during_runs": 0, "query_errors": 0}
    by_kind: dict[str, int] = {}
    started = time.perf_counter()
    for i in range(runs):
        kind = rng.choice([k for k in KINDS if k != "none"])
        warm = [photos, work / "hostile"] if i % 2 else None
        todo = batches if warm is None else -(-(images // 2) // batch)  # encoder batches the killed run has
        n = {"external": rng.randint(0, todo - 1), "encode": rng.randint(1, todo),
             "pre_commit": rng.randint(1, todo), "post_commit": rng.randint(1, todo)}.get(kind, 0)
        r = run_scenario(work / "runs" / f"{i:04d}", folders, kind, n, batch_size=batch,
                         query_while_running=True, warm_folders=warm)
        by_kind[kind] = by_kind.get(kind, 0) + 1
        totals["runs"] += 1
        totals["kills"] += int(r.killed)
        totals["hostile_files_tried"] += len(hostile)
        totals["crashes"] += int(r.crash is not None or r.resume_exit != 0)
        totals["lost"] += r.lost
        totals["duplicated"] += r.duplicated
        totals["corrupt_after_kill"] += int(not (r.verify_ok_after_kill and r.query_ok_after_kill))
        totals["corrupt_final"] += int(not (r.verify_ok_final and r.ann_current_final))
        totals["wrong_final_items"] += int((r.final_items, r.final_failed) != (expected_items, expected_failed))
        totals["max_reencoded"] = max(totals["max_reencoded"], r.wasted)
        totals["queries_during_runs"] += r.concurrent_queries
        totals["query_errors"] += len(r.concurrent_query_errors)
        if r.crash or r.lost or r.duplicated or not r.verify_ok_final or r.verify_problems:
            print(f"  run {i} {kind}:{n}: crash={r.crash} lost={r.lost} dup={r.duplicated} "
                  f"problems={r.verify_problems}", file=sys.stderr)
        shutil.rmtree(work / "runs" / f"{i:04d}", ignore_errors=True)
    totals.update(seconds=round(time.perf_counter() - started, 1), batch_size=batch,
                  images_per_run=images + images // 2, hostile_set=len(hostile),
                  expected_items=expected_items, expected_failed=expected_failed, kill_kinds=by_kind)
    return totals


def reindex_cost(work: Path, images: int) -> dict[str, object]:
    folder = work / "10k"
    t0 = time.perf_counter()
    make_small_images(folder, images)
    made = time.perf_counter() - t0
    env = {**os.environ, "MMSEARCH_INDEX_DIR": str(work / "10k-indexes")}
    cmd = [sys.executable, "-m", "retrieval.cli", "index", str(folder), "-q", "--json"]

    def timed(extra: list[str]) -> tuple[dict, float]:
        t = time.perf_counter()
        out = subprocess.run(cmd + extra, env=env, cwd=REPO, capture_output=True, text=True, check=True)
        return json.loads(out.stdout), time.perf_counter() - t

    first, first_wall = timed(["--model", "mmsearch-tiny"])
    second, second_wall = timed([])
    return {
        "images": images, "generate_seconds": round(made, 1),
        "first_seconds": first["seconds"], "first_wall_seconds": round(first_wall, 2),
        "first_encoded": first["encoded"],
        "reindex_seconds": second["seconds"], "reindex_wall_seconds": round(second_wall, 2),
        "reindex_encoded": second["encoded"], "reindex_unchanged": second["unchanged"],
        "fraction": round(second["seconds"] / first["seconds"], 4) if first["seconds"] else None,
        "fraction_wall": round(second_wall / first_wall, 4),
    }


def tamper_suite(work: Path, items: int, seed: int) -> dict[str, object]:
    from tests.tamper import build_index, tamperings, try_one

    truth = build_index(work / "pristine", items, seed=seed)
    build_index(work / "other", items, seed=seed + 1)
    rows = []
    started = time.perf_counter()
    for i, tampering in enumerate(tamperings(work / "other" / "default")):
        root = work / f"t{i:03d}"
        shutil.copytree(work / "pristine", root)
        o = try_one(tampering, root, truth, random.Random(seed + i))
        rows.append(o)
        shutil.rmtree(root, ignore_errors=True)
    recoverable_lost = sum(o.lost_but_readable if o.lost_allowed else max(o.lost_vectors, 0) for o in rows)
    return {
        "items": items, "tamperings": len(rows), "tracebacks": sum(len(o.tracebacks) for o in rows),
        "unclear_messages": sum(len(o.unclear) for o in rows),
        "wrong_answers": sum(len(o.wrong_results) for o in rows),
        "not_repaired": [o.name for o in rows if not (o.repaired and o.verify_ok)],
        "vectors_changed": sum(o.changed_vectors for o in rows),
        "vectors_lost_that_could_be_kept": recoverable_lost,
        "vectors_lost_on_damaged_pages": sum(o.lost_vectors for o in rows if o.lost_allowed),
        "seconds": round(time.perf_counter() - started, 1),
        "per_tampering": [{"name": o.name, "lost": o.lost_vectors, "tracebacks": o.tracebacks, "unclear": o.unclear,
                           "repaired": o.repaired and o.verify_ok} for o in rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="random kill runs")
    parser.add_argument("--run-images", type=int, default=60, help="good images per kill run (plus half again)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=10_000, help="images for the re-index cost (0 to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tamper-items", type=int, default=3000, help="items in the tamper suite's index (0 to skip)")
    args = parser.parse_args()
    preload()
    work = Path(tempfile.mkdtemp(prefix="mmsearch-bench-reliability-"))
    result: dict[str, object] = {}
    try:
        if args.runs:
            f = fault_injection(work / "faults", args.runs, args.run_images, args.batch, args.seed)
            result["fault_injection"] = f
            print(f"fault injection: {f['runs']} runs, {f['kills']} kills, {f['hostile_files_tried']} hostile files "
                  f"tried, {f['crashes']} crashes, {f['lost']} lost, {f['duplicated']} duplicated, "
                  f"{f['corrupt_after_kill'] + f['corrupt_final']} corrupt indexes; at most {f['max_reencoded']} "
                  f"images re-encoded per resume (batch {f['batch_size']}); {f['queries_during_runs']} queries "
                  f"during runs, {f['query_errors']} inconsistent; {f['seconds']} s")
        if args.images:
            r = reindex_cost(work, args.images)
            result["reindex"] = r
            print(f"re-index of {r['images']} unchanged images: {r['reindex_seconds']} s vs {r['first_seconds']} s "
                  f"first time = {r['fraction']:.2%} (wall incl. start-up {r['reindex_wall_seconds']} s vs "
                  f"{r['first_wall_seconds']} s = {r['fraction_wall']:.1%}), {r['reindex_encoded']} encoded")
        if args.tamper_items:
            t = tamper_suite(work / "tamper", args.tamper_items, args.seed)
            result["tamper"] = t
            print(f"tamper suite: {t['tamperings']} tamperings of a {t['items']}-item index, {t['tracebacks']} "
                  f"tracebacks, {t['unclear_messages']} unclear messages, {t['wrong_answers']} wrong answers, "
                  f"{len(t['not_repaired'])} not repaired, "
                  f"{t['vectors_changed']} vectors changed, {t['vectors_lost_that_could_be_kept']} vectors lost that "
                  f"could be kept ({t['vectors_lost_on_damaged_pages']} lost with their damaged pages); {t['seconds']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
