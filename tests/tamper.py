"""Tampering with every file of an index, and what must hold afterwards (issue 14).

Shared by tests/test_tamper.py (a sample, fast) and benchmarks/bench_reliability.py
(every tampering). Each tampering damages a healthy index in one way; then

- every command that reads it either works (with exact results) or fails with one
  ``error:`` line that names ``mmsearch repair``, never a traceback;
- ``mmsearch repair`` (``--salvage`` when items.sqlite itself is damaged) brings it
  back to a state ``verify`` accepts, and keeps every vector that still agrees
  with the model: each vector left is byte-identical to the one the index held,
  and a vector is missing only if its row could not be read any more.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

MANIFEST = "manifest.json"
ITEMS_DB = "items.sqlite"
FAISS_FILE = "index.faiss"


def build_index(root: Path, n_items: int, seed: int = 0, name: str = "default") -> dict[int, bytes]:
    """An index of ``n_items`` items with random 32-d unit vectors (tiny model), written through the store.

    Returns id -> stored vector bytes (the ground truth). The items' files do not
    exist: tampering is about the index, not the photos.
    """
    from retrieval import create_index
    from retrieval.store import NewItem

    from .conftest import TINY_MODEL

    rng = np.random.default_rng(seed)
    index = create_index(name, model=TINY_MODEL, root=root)
    try:
        items = []
        for i in range(n_items):
            v = rng.standard_normal(index.store.manifest.dim).astype(np.float32)
            v /= np.linalg.norm(v)
            items.append(NewItem(kind="image", key=f"/photos/p{i:06d}.jpg", path=f"/photos/p{i:06d}.jpg",
                                 size=100 + i, mtime_ns=i, hash=f"h{i}", vector=v))
        with index.store.writer_lock():
            for start in range(0, len(items), 500):
                index.store.commit(items[start:start + 500], [])
            index.store.save_vector_index(index.store.rebuild_vector_index())
    finally:
        index.close()
    return read_vectors(root / name)


def read_vectors(directory: Path) -> dict[int, bytes]:
    db = sqlite3.connect(directory / ITEMS_DB)
    try:
        return dict(db.execute("SELECT id, vec FROM vectors"))
    finally:
        db.close()


@dataclass(frozen=True)
class Tampering:
    name: str
    target: str  # which file
    apply: Callable[[Path, random.Random], None]
    salvage: bool = False  # repair needs --salvage (items.sqlite itself damaged)
    may_lose_rows: bool = False  # rows on damaged pages cannot come back


def _set_field(key: str, value: object) -> Callable[[Path, random.Random], None]:
    def apply(directory: Path, _: random.Random) -> None:
        data = json.loads((directory / MANIFEST).read_text())
        data[key] = value
        (directory / MANIFEST).write_text(json.dumps(data))
    return apply


def _write(target: str, content: bytes | None) -> Callable[[Path, random.Random], None]:
    def apply(directory: Path, _: random.Random) -> None:
        if content is None:
            (directory / target).unlink()
        else:
            (directory / target).write_bytes(content)
    return apply


def _truncate(target: str, fraction: float) -> Callable[[Path, random.Random], None]:
    def apply(directory: Path, _: random.Random) -> None:
        path = directory / target
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return apply


def _garble_page(page_from_end: bool, zero: bool) -> Callable[[Path, random.Random], None]:
    """Overwrite one 16 KiB page of items.sqlite (not the first: the header) with garbage or zeros."""
    def apply(directory: Path, rng: random.Random) -> None:
        path = directory / ITEMS_DB
        data = bytearray(path.read_bytes())
        page = 16384
        pages = len(data) // page
        which = pages - 2 if page_from_end else max(1, pages // 2)
        start = which * page
        data[start : start + page] = bytes(page) if zero else rng.randbytes(page)
        path.write_bytes(bytes(data))
    return apply


def _bad_vector(kind: str) -> Callable[[Path, random.Random], None]:
    def apply(directory: Path, _: random.Random) -> None:
        db = sqlite3.connect(directory / ITEMS_DB)
        item_id = db.execute("SELECT min(id) FROM vectors").fetchone()[0]
        blob = b"\x00" * 64 if kind == "short" else np.full(32, np.nan, dtype=np.float32).tobytes()
        db.execute("UPDATE vectors SET vec=? WHERE id=?", (blob, item_id))
        db.commit()
        db.close()
    return apply


def _swap_faiss(other: Path) -> Callable[[Path, random.Random], None]:
    def apply(directory: Path, _: random.Random) -> None:
        shutil.copyfile(other / FAISS_FILE, directory / FAISS_FILE)
    return apply


def tamperings(other_index: Path) -> list[Tampering]:
    """Every tampering tried; ``other_index`` is another healthy index (same model, other vectors)."""
    out: list[Tampering] = []
    for key, values in {
        "name": [7], "model": [None, 5, ""], "fingerprint": [None, 3, ""], "dim": [0, -1, "32", 1.5, True, 10**9, 64],
        "schema_version": ["2", None], "metric": ["l2"], "counts": ["x"], "created_at": ["x", None],
        "ann": ["x", [], {"search": "x"}, {"type": 7}, {"policy": {"ann": "bogus"}},
                {"policy": {"max_memory": "4GiB"}}, {"generation": "x"}],
    }.items():
        out += [Tampering(f"manifest {key}={value!r}", MANIFEST, _set_field(key, value)) for value in values]
    for what, content in [("deleted", None), ("empty", b""), ("null", b"null"), ("a list", b"[]"),
                          ("truncated", None), ("binary", bytes(range(256)))]:
        apply = _truncate(MANIFEST, 0.5) if what == "truncated" else _write(MANIFEST, content)
        out.append(Tampering(f"manifest {what}", MANIFEST, apply))
    out += [
        Tampering("index.faiss deleted", FAISS_FILE, _write(FAISS_FILE, None)),
        Tampering("index.faiss truncated", FAISS_FILE, _truncate(FAISS_FILE, 0.5)),
        Tampering("index.faiss random bytes", FAISS_FILE, _write(FAISS_FILE, random.Random(1).randbytes(4096))),
        Tampering("index.faiss empty", FAISS_FILE, _write(FAISS_FILE, b"")),
        Tampering("index.faiss of another index", FAISS_FILE, _swap_faiss(other_index)),
        Tampering("a vector of the wrong size", ITEMS_DB, _bad_vector("short")),
        Tampering("a vector of NaNs", ITEMS_DB, _bad_vector("nan")),
        Tampering("items.sqlite truncated to 90%", ITEMS_DB, _truncate(ITEMS_DB, 0.9), salvage=True,
                  may_lose_rows=True),
        Tampering("items.sqlite truncated to 50%", ITEMS_DB, _truncate(ITEMS_DB, 0.5), salvage=True,
                  may_lose_rows=True),
        Tampering("items.sqlite page in the middle garbled", ITEMS_DB, _garble_page(False, False), salvage=True,
                  may_lose_rows=True),
        Tampering("items.sqlite page near the end zeroed", ITEMS_DB, _garble_page(True, True), salvage=True,
                  may_lose_rows=True),
        Tampering("items.sqlite -wal of garbage", ITEMS_DB + "-wal", _write(ITEMS_DB + "-wal", b"\x37" * 5000)),
    ]
    return out


@dataclass
class Outcome:
    name: str
    tracebacks: list[str] = field(default_factory=list)  # commands that printed a traceback (or crashed)
    unclear: list[str] = field(default_factory=list)  # failed without one error line naming repair
    repaired: bool = False
    verify_ok: bool = False
    vectors_before: int = 0
    vectors_after: int = 0
    changed_vectors: int = 0  # kept but not byte-identical: must be 0
    lost_vectors: int = 0  # missing after repair
    lost_allowed: bool = False  # rows on damaged pages may be gone
    lost_but_readable: int = 0  # missing although the damaged file still held both its item and vector: must be 0
    wrong_results: list[str] = field(default_factory=list)  # commands that answered, but not the exact answer


def run_cli(args: list[str]) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from retrieval.cli import app

    result = CliRunner().invoke(app, args)
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text += "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stdout, result.stderr + text


def try_one(tampering: Tampering, root: Path, truth: dict[int, bytes], rng: random.Random) -> Outcome:
    """Apply one tampering to a copy at ``root/default``; check the commands, repair, and the vectors."""
    directory = root / "default"
    tampering.apply(directory, rng)
    outcome = Outcome(tampering.name, vectors_before=len(truth), lost_allowed=tampering.may_lose_rows)
    base = ["--index-dir", str(root)]
    wrong_bad_vector = tampering.name.startswith("a vector of")
    probe = min(truth)
    expected = _exact_neighbours(truth, probe, 5)
    for command in (["query", "red"], ["info"], ["similar", str(probe), "-k", "5", "--json"], ["list"], ["verify"]):
        code, out, err = run_cli(command + base)
        if code == 0 and command[0] == "similar" and not wrong_bad_vector:
            got = [hit["id"] for hit in json.loads(out)]
            if got != expected:
                outcome.wrong_results.append(f"similar: {got} instead of {expected}")
        if "Traceback" in err:
            outcome.tracebacks.append(" ".join(command))
        elif code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            named = "repair" in last or (command[0] == "verify")  # verify's own report lists problems
            if not last.startswith("error:") or not named:
                if not (command[0] == "similar" and wrong_bad_vector):
                    outcome.unclear.append(f"{' '.join(command)}: {last}")
    repair = ["repair"] + (["--salvage"] if tampering.salvage else []) + base
    code, _, err = run_cli(repair)
    if "Traceback" in err:
        outcome.tracebacks.append("repair")
    outcome.repaired = code == 0
    code, _, err = run_cli(["verify", "--no-files"] + base)
    if "Traceback" in err:
        outcome.tracebacks.append("verify after repair")
    outcome.verify_ok = code == 0
    after = read_vectors(directory) if (directory / ITEMS_DB).exists() else {}
    outcome.vectors_after = len(after)
    outcome.changed_vectors = sum(1 for i, v in after.items() if truth.get(i) != v)
    # A vector that no longer agrees with the model (wrong size, NaN) is the one repair may drop.
    disagreeing = 1 if wrong_bad_vector else 0
    lost = set(truth) - set(after)
    outcome.lost_vectors = len(lost) - disagreeing
    if tampering.salvage and lost:
        outcome.lost_but_readable = _still_readable(directory, {i: truth[i] for i in lost})
    return outcome


def _exact_neighbours(truth: dict[int, bytes], item_id: int, k: int) -> list[int]:
    ids = sorted(truth)
    vectors = np.stack([np.frombuffer(truth[i], dtype=np.float32) for i in ids])
    scores = vectors @ np.frombuffer(truth[item_id], dtype=np.float32)
    order = [ids[i] for i in np.argsort(-scores, kind="stable") if ids[i] != item_id]
    return order[:k]


def _still_readable(directory: Path, ids: dict[int, bytes]) -> int:
    """How many of ``ids`` the damaged file (kept by the salvage) still holds intact: an ok item and its true vector."""
    kept = sorted(directory.glob(ITEMS_DB + ".damaged-*"))
    if not kept:
        return len(ids)
    data = bytearray(kept[-1].read_bytes())  # padded to whole pages, so sqlite reads what is left (as salvage does)
    page = int.from_bytes(data[16:18], "big") or 65536
    data += bytes((-len(data)) % page)
    data[28:32] = (len(data) // page).to_bytes(4, "big")
    probe = directory / "probe.sqlite"
    probe.write_bytes(bytes(data))
    db = sqlite3.connect(f"file:{probe}?mode=ro&immutable=1", uri=True)
    readable = 0
    for item_id in ids:
        try:
            vec = db.execute("SELECT vec FROM vectors WHERE id=?", (item_id,)).fetchone()
            item = db.execute("SELECT status FROM items WHERE id=?", (item_id,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        readable += int(vec is not None and vec[0] == ids[item_id] and item is not None and item[0] == "ok")
    db.close()
    probe.unlink()
    return readable
