"""Kill ``mmsearch index`` with SIGKILL at chosen moments, then check what is left.

Test-and-benchmark code only: the kill points are injected from the outside
(an external SIGKILL once sqlite shows N committed generations) or by wrapping
library functions in the child process before it runs the real CLI, so the
production code has no test hooks.

The parent process imports the library but never runs a torch op, so it can
fork one child per run cheaply (no ~5 s interpreter + torch start-up each).
Run as ``python -m tests.crash_harness SPEC.json`` to get one JSON result per
scenario on stdout; ``benchmarks/bench_reliability.py`` imports it directly.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Kill points: (kind, n)
#   external     SIGKILL from the parent once sqlite shows n more commits (so: while batch n+1 is in flight)
#   encode       SIGKILL inside the n-th encoder call (a batch half done)
#   pre_commit   SIGKILL when the n-th COMMIT statement is about to run (rows written, not committed)
#   post_commit  SIGKILL right after the n-th commit returned (before the FAISS index is updated)
#   faiss_save   SIGKILL just before index.faiss.tmp replaces index.faiss (a temp file is left)
#   manifest     SIGKILL after index.faiss was replaced, before the manifest vouching for it is
#   none         no kill (a clean run)
KINDS = ("external", "encode", "pre_commit", "post_commit", "faiss_save", "manifest", "none")

TINY_MODEL = "mmsearch-tiny"


@dataclass
class RunResult:
    kind: str
    n: int
    killed: bool = False
    committed_before_kill: int = 0  # items the parent saw committed just before the kill
    items_after_kill: int = 0
    lost: int = 0  # items seen committed before the kill but missing after it
    duplicated: int = 0  # keys stored twice, or FAISS entries beyond the stored vectors
    verify_ok_after_kill: bool = False
    verify_problems: list[str] = field(default_factory=list)
    query_ok_after_kill: bool = False
    encoded_before_kill: int = 0
    encoded_on_resume: int = 0
    wasted: int = 0  # encodes done twice: before the kill and again on resume
    resume_exit: int | None = None
    resume_report: dict[str, Any] = field(default_factory=dict)
    final_items: int = 0
    final_failed: int = 0
    verify_ok_final: bool = False
    ann_current_final: bool = False
    concurrent_queries: int = 0
    concurrent_query_errors: list[str] = field(default_factory=list)
    crash: str | None = None  # a Python traceback / unexpected exit in a child = a crash


# -- images -------------------------------------------------------------------------


def make_small_images(folder: Path, count: int, size: tuple[int, int] = (48, 48), start: int = 0) -> list[Path]:
    """``count`` distinct small PNG/JPEG files, fast to write (about 0.3 ms each)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        rng = random.Random(i)
        img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
        x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + size[0] // 3, y + size[1] // 3))
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        path = sub / (f"img{i:06d}.png" if i % 2 else f"img{i:06d}.jpg")
        img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path, compress_level=1)
        paths.append(path)
    return paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds only a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def make_hostile_files(folder: Path, good: Path) -> dict[str, str]:
    """Files that must each be a reported skip (name -> what it is); ``good`` is a valid JPEG to damage."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def put(name: str, data: bytes, what: str) -> None:
        (folder / name).write_bytes(data)
        made[name] = what

    raw = good.read_bytes()
    put("zero.jpg", b"", "zero-byte file")
    put("truncated.jpg", raw[: len(raw) // 3], "truncated JPEG")
    put("text.png", b"this is not a picture\n" * 10, "text with an image extension")
    put("page.jpg", b"<!DOCTYPE html><html><body>404</body></html>", "HTML saved as .jpg")
    put("doc.webp", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "PDF with an image extension")
    put("bomb.png", png_header_only(40_000, 40_000), "decompression bomb (1.6 G pixels declared)")
    put("giant.png", png_header_only(1_000_000, 300), "giant dimensions (300 M pixels declared)")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    put("cut.jpg", buf.getvalue()[:-200], "JPEG cut before its end marker")
    put("random.jpg", random.Random(5).randbytes(4096), "random bytes")
    (folder / "loop").symlink_to(".", target_is_directory=True)
    made["loop"] = "symlink loop"
    (folder / "dangling.jpg").symlink_to(folder / "no-such-file.jpg")
    made["dangling.jpg"] = "broken symlink"
    os.mkfifo(folder / "fifo.jpg")
    made["fifo.jpg"] = "FIFO named like an image"
    # A non-UTF-8 name is no skip any more: it is indexed under its real bytes (the harness counts it as an item).
    bad_name = os.fsdecode(os.fsencode(str(folder)) + b"/bad-\xff\xfe.jpg")
    Path(bad_name).write_bytes(raw)
    locked = folder / "locked.jpg"
    locked.write_bytes(raw)
    locked.chmod(0)
    made["locked.jpg"] = "unreadable permissions (readable anyway when run as root)"
    return made


# -- the child: the real CLI, with an optional kill point ---------------------------------


def _install_kill_point(kind: str, n: int, count_file: str) -> None:
    """Wrap library functions in THIS (child) process so it SIGKILLs itself at the chosen moment."""
    from retrieval import ann, encoder, store

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    calls = {"encode": 0, "commit": 0, "sql_commit": 0}
    fd = os.open(count_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    original_encode = encoder.Encoder.encode_pixels

    def encode_pixels(self, pixels):  # type: ignore[no-untyped-def]
        calls["encode"] += 1
        if kind == "encode" and calls["encode"] == n:
            die()
        out = original_encode(self, pixels)
        os.write(fd, f"{len(out)}\n".encode())  # counted once finished: a kill mid-encode wastes nothing stored
        return out

    encoder.Encoder.encode_pixels = encode_pixels  # type: ignore[method-assign]

    original_commit = store.IndexStore.commit

    def commit(self, upserts, deletes):  # type: ignore[no-untyped-def]
        db = self.connect()

        def trace(sql: str) -> None:
            if sql.strip().upper() == "COMMIT":
                calls["sql_commit"] += 1
                if kind == "pre_commit" and calls["sql_commit"] == n:
                    die()

        db.set_trace_callback(trace)
        try:
            result = original_commit(self, upserts, deletes)
        finally:
            db.set_trace_callback(None)
        calls["commit"] += 1
        if kind == "post_commit" and calls["commit"] == n:
            die()
        return result

    store.IndexStore.commit = commit  # type: ignore[method-assign]

    real_replace = os.replace

    def replace(src, dst, **kw):  # type: ignore[no-untyped-def]
        name = os.path.basename(os.fspath(dst))
        if kind == "faiss_save" and name == store.FAISS_FILE:
            die()
        if kind == "manifest" and name == store.MANIFEST and os.path.exists(
            os.path.join(os.path.dirname(os.fspath(dst)), store.FAISS_FILE)
        ):
            die()
        return real_replace(src, dst, **kw)

    os.replace = replace  # type: ignore[assignment]
    ann.os.replace = replace  # type: ignore[attr-defined]


def _child_index(index_root: str, folders: list[str], batch_size: int, kind: str, n: int, count_file: str,
                 out_file: str | None, extra: list[str]) -> None:
    """Runs in the forked child: the real CLI, in-process, then _exit with its code."""
    code = 1
    try:
        os.environ["MMSEARCH_INDEX_DIR"] = index_root
        import faiss
        import torch

        torch.set_num_threads(1)  # OpenMP pools and fork do not mix: one thread in the child
        faiss.omp_set_num_threads(1)
        _install_kill_point(kind, n, count_file)
        if out_file:
            fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
        err = os.open(count_file + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(err, 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
        from retrieval.cli import app

        args = ["index", *folders, "--model", TINY_MODEL, "--batch-size", str(batch_size), "--workers", "1",
                "-q", "--json", *extra]
        try:
            code = int(app(args, prog_name="mmsearch", standalone_mode=False) or 0)
        except SystemExit as exc:
            code = int(exc.code or 0)
        except BaseException as exc:  # noqa: BLE001 - reported as a crash by the parent
            import traceback

            traceback.print_exc()
            code = 1 if getattr(exc, "exit_code", None) is None else int(exc.exit_code)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def preload() -> None:
    """Import everything a child needs, once, in the parent (imports only: no torch op runs here)."""
    import faiss  # noqa: F401
    import open_clip  # noqa: F401
    import torch  # noqa: F401

    import retrieval.api  # noqa: F401
    import retrieval.cli  # noqa: F401
    import retrieval.embed  # noqa: F401
    import retrieval.encoder  # noqa: F401
    import retrieval.integrity  # noqa: F401


def spawn_index(index_root: Path, folders: list[Path], batch_size: int, kind: str = "none", n: int = 0,
                count_file: Path | None = None, out_file: Path | None = None, extra: list[str] = ()) -> int:
    count_file = count_file or index_root.parent / "encoded.count"
    pid = os.fork()
    if pid == 0:
        _child_index(str(index_root), [str(f) for f in folders], batch_size, kind, n, str(count_file),
                     str(out_file) if out_file else None, list(extra))
    return pid


# -- the parent: observe, kill, check -------------------------------------------------------


def _db_ro(index_dir: Path) -> sqlite3.Connection | None:
    path = index_dir / "items.sqlite"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None)
        db.execute("SELECT 1 FROM meta LIMIT 1")
        return db
    except sqlite3.Error:
        return None


def committed_state(index_dir: Path) -> tuple[int, set[str]]:
    """(generation, keys) from one read transaction of items.sqlite, or (0, set()) when not there yet."""
    db = _db_ro(index_dir)
    if db is None:
        return 0, set()
    try:
        db.execute("BEGIN")
        row = db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        keys = {r[0] for r in db.execute("SELECT key FROM items")}
        db.execute("COMMIT")
        return (int(row[0]) if row else 0), keys
    except sqlite3.Error:
        return 0, set()
    finally:
        db.close()


def _count(count_file: Path) -> int:
    if not count_file.is_file():
        return 0
    return sum(int(x) for x in count_file.read_text().split())


def _check_snapshot_query(index_dir: Path, name: str) -> str | None:
    """Open the index as a reader and check that its FAISS view is one committed state; None if fine."""
    import numpy as np

    from retrieval.search import search_vector
    from retrieval.store import IndexStore

    try:
        store = IndexStore.open(index_dir, name=name)
    except Exception as exc:  # noqa: BLE001 - before the manifest exists there is nothing to query
        return None if "no index named" in str(exc) else f"open: {exc}"
    try:
        with store.snapshot() as db:
            index = store.load_vector_index()
            count = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            if index.ntotal != count:
                return f"FAISS view has {index.ntotal} vectors, its snapshot {count}"
            if count:
                hits = search_vector(store, index, np.random.default_rng(0).normal(size=store.manifest.dim), k=5)
                if len(hits) != min(5, count) or len({h.id for h in hits}) != len(hits):
                    return f"query returned {len(hits)} hits from {count} vectors"
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        store.close()


def inspect_index(index_dir: Path, name: str = "default") -> dict[str, Any]:
    """Verify report, duplicate count and a query, for an index at rest."""
    from retrieval.integrity import verify_index
    from retrieval.store import IndexStore

    out: dict[str, Any] = {"exists": (index_dir / "manifest.json").is_file()}
    if not out["exists"]:
        return out
    store = IndexStore.open(index_dir, name=name)
    try:
        report = verify_index(store, check_files=False)
        db = store.connect()
        n, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM items").fetchone()
        index = store.load_vector_index()
        vectors = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        out.update(
            verify_ok=report.ok, problems=report.problems, ann_current=report.ann_current,
            items=n, duplicated=(n - distinct) + max(0, index.ntotal - vectors),
            failed=db.execute("SELECT COUNT(*) FROM items WHERE status='failed'").fetchone()[0],
            keys={r[0] for r in db.execute("SELECT key FROM items")},
            query_error=_check_snapshot_query(index_dir, name),
        )
    finally:
        store.close()
    return out


def run_scenario(workdir: Path, folders: list[Path], kind: str, n: int, *, batch_size: int = 4,
                 query_while_running: bool = False, timeout: float = 120.0,
                 warm_folders: list[Path] | None = None) -> RunResult:
    """One kill of an index run, then the checks, then a resumed run to completion.

    The index is fresh, or first built cleanly from ``warm_folders`` so that the
    kill hits an incremental run.
    """
    import shutil

    result = RunResult(kind=kind, n=n)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    root = workdir / "indexes"
    index_dir = root / "default"
    count_file = workdir / "encoded.count"
    if warm_folders:
        _, status = os.waitpid(spawn_index(root, warm_folders, batch_size, count_file=workdir / "warm.count",
                                           out_file=workdir / "warm.json"), 0)
        if os.waitstatus_to_exitcode(status) != 0:
            result.crash = "warm-up run failed: " + _tail(workdir / "warm.count")
            return result
    base_generation, _ = committed_state(index_dir)
    pid = spawn_index(root, folders, batch_size, kind, n, count_file=count_file, out_file=workdir / "run1.json")
    last_keys: set[str] = set()
    next_query = 0.0
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        generation, keys = committed_state(index_dir)
        last_keys = keys or last_keys
        if kind == "external" and generation >= base_generation + n:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        if query_while_running and time.monotonic() >= next_query:
            next_query = time.monotonic() + 0.02
            problem = _check_snapshot_query(index_dir, "default")
            result.concurrent_queries += 1
            if problem:
                result.concurrent_query_errors.append(problem)
        time.sleep(0.002)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        result.crash = "timeout"
        return result
    assert status is not None
    result.killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not result.killed and os.waitstatus_to_exitcode(status) != 0:
        result.crash = f"first run exited {os.waitstatus_to_exitcode(status)}: " + _tail(count_file)
    result.encoded_before_kill = _count(count_file)
    after = inspect_index(index_dir)
    # What the parent last saw committed must all still be there (and more, for kills it could not see).
    result.committed_before_kill = len(last_keys)
    if after.get("exists"):
        result.items_after_kill = after["items"]
        result.lost = len(last_keys - after["keys"])
        result.duplicated = after["duplicated"]
        result.verify_ok_after_kill = after["verify_ok"]
        result.verify_problems = list(after["problems"])
        result.query_ok_after_kill = after["query_error"] is None
        if after["query_error"]:
            result.verify_problems.append("query: " + after["query_error"])
    else:
        result.verify_ok_after_kill = result.query_ok_after_kill = True  # killed before the index existed
    # Resume.
    count_file.unlink(missing_ok=True)
    out_file = workdir / "run2.json"
    pid = spawn_index(root, folders, batch_size, "none", 0, count_file=count_file, out_file=out_file)
    _, status = os.waitpid(pid, 0)
    result.resume_exit = os.waitstatus_to_exitcode(status)
    result.encoded_on_resume = _count(count_file)
    try:
        result.resume_report = json.loads(out_file.read_text())
    except ValueError:
        result.crash = result.crash or f"resumed run exited {result.resume_exit}: " + _tail(count_file)
    final = inspect_index(index_dir)
    if final.get("exists"):
        result.final_items = final["items"]
        result.final_failed = final["failed"]
        result.lost += len(after.get("keys", set()) - final["keys"])
        result.duplicated += final["duplicated"]
        result.verify_ok_final = final["verify_ok"] and final["query_error"] is None
        result.ann_current_final = final["ann_current"]
    # Work done twice = encodes before the kill + encodes on resume - images that needed one.
    ok_final = result.final_items - result.final_failed
    result.wasted = max(0, result.encoded_before_kill + result.encoded_on_resume - ok_final)
    return result


def _tail(count_file: Path) -> str:
    err = Path(str(count_file) + ".stderr")
    return err.read_text(errors="replace")[-800:] if err.is_file() else ""


def main(argv: list[str]) -> int:
    """``python -m tests.crash_harness SPEC.json``: run the scenarios in SPEC, print results as JSON lines."""
    spec = json.loads(Path(argv[0]).read_text())
    preload()
    work = Path(spec["workdir"])
    folders = [Path(f) for f in spec["folders"]]
    for i, (kind, n) in enumerate(spec["scenarios"]):
        res = run_scenario(work / f"run{i:03d}", folders, kind, n, batch_size=spec.get("batch_size", 4),
                           query_while_running=spec.get("query_while_running", False))
        print(json.dumps(asdict(res)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
