"""An index directory: manifest, sqlite items + vectors, FAISS index, writer lock.

Layout (see indexes/README.md)::

    <root>/<name>/manifest.json   what made the index (model spec + fingerprint, dim, ...)
    <root>/<name>/items.sqlite    items and their vectors; the source of truth
    <root>/<name>/index.faiss     the ANN index, a cache rebuilt from items.sqlite when stale
    <root>/<name>/write.lock      flock'd (exclusive) by the single writer for a whole run
    <root>/<name>/read.lock       flock'd shared by a reader loading index.faiss, exclusive by
                                  the writer while it replaces index.faiss + manifest.json

Consistency: every batch of changes is one sqlite transaction that also bumps
``generation``. The FAISS file records the generation it was built from (in
the manifest); a reader that finds them different rebuilds the FAISS index
from the stored vectors, reading the generation and the vectors in one read
transaction (a consistent snapshot). So a crash at any moment leaves the last
committed state, never a half-written one, and a query during an index run
sees one committed state.

A directory the process cannot write to is opened read-only: queries work,
nothing (not even the FAISS cache) is written, and writing raises a clear error.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .config import SCHEMA_VERSION
from .errors import (
    IndexCorruptError,
    IndexExistsError,
    IndexLockedError,
    IndexNotFoundError,
    MMSearchError,
    SchemaVersionError,
)

if TYPE_CHECKING:
    from .ann import VectorIndex  # faiss loads only when vectors are needed: 'info' stays light

MANIFEST = "manifest.json"
ITEMS_DB = "items.sqlite"
FAISS_FILE = "index.faiss"
LOCK_FILE = "write.lock"
READ_LOCK_FILE = "read.lock"
TEMP_SUFFIX = ".tmp"  # atomic writes go through <name>.<random>.tmp, then os.replace

# Schema migrations: MIGRATIONS[v] upgrades items.sqlite from schema v to v + 1
# inside one transaction (it must be idempotent: a crash before the manifest is
# rewritten runs it again). An index older than the oldest key here is refused.
Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: dict[int, Migration] = {}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id        INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    key       TEXT NOT NULL UNIQUE,      -- images: absolute path; texts: source-qualified id
    path      TEXT,                      -- images: absolute path
    text      TEXT,                      -- texts: the text itself
    size      INTEGER,
    mtime_ns  INTEGER,
    hash      TEXT,                      -- content hash (blake2b-128) for rename/copy detection
    width     INTEGER,
    height    INTEGER,
    status    TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error     TEXT,
    meta      TEXT,                      -- JSON for extra fields
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_hash ON items(hash);
CREATE TABLE IF NOT EXISTS vectors (
    id  INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE,
    vec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Manifest:
    """What an index is: written as manifest.json, atomically."""

    name: str
    model: str
    fingerprint: str
    dim: int
    schema_version: int = SCHEMA_VERSION
    metric: str = "inner_product"
    ann: dict[str, Any] = field(default_factory=lambda: {"type": "flat", "generation": 0})
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ItemRow:
    """One stored item, as a search hit or a listing needs it."""

    id: int
    kind: str
    key: str
    path: str | None
    text: str | None
    size: int | None
    mtime_ns: int | None
    hash: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None
    meta: str | None


@dataclass(frozen=True)
class NewItem:
    """An item to write; ``vector`` is None for a failed one."""

    kind: str
    key: str
    path: str | None = None
    text: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    hash: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    meta: str | None = None
    vector: np.ndarray | None = None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable across power loss (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_message(exc: BaseException) -> str:
    """A one-line reason for a failed write, with what to do when the disk is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free some space and run again"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{exc.strerror or exc}: the index directory is read-only"
    text = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
    if "disk is full" in text or "database or disk is full" in text:
        return "the disk is full: free some space and run again"
    if "readonly" in text:
        return f"{text}: the index directory is read-only"
    return text


def _schema_refusal(name: str, version: object) -> SchemaVersionError:
    return SchemaVersionError(
        f"index {name!r} was written by an older mmsearch (schema {version}) that this one cannot upgrade: "
        f"re-create it with 'mmsearch drop {name}' then 'mmsearch index FOLDER --index {name}'"
    )


class IndexStore:
    """One index directory. Open with :meth:`create` or :meth:`open`."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest
        self._db: sqlite3.Connection | None = None

    # -- opening ----------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, name: str, model: str, fingerprint: str, dim: int) -> "IndexStore":
        if (directory / MANIFEST).exists():
            raise IndexExistsError(f"index {name!r} already exists at {directory}")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MMSearchError(f"cannot create index directory {directory}: {exc.strerror or exc}") from exc
        store = cls(directory, Manifest(name=name, model=model, fingerprint=fingerprint, dim=dim))
        store.connect()  # creates the tables
        try:
            store.write_manifest()
        except OSError as exc:
            raise MMSearchError(f"cannot write to index directory {directory}: {exc.strerror or exc}") from exc
        return store

    @classmethod
    def open(cls, directory: Path, *, name: str) -> "IndexStore":
        path = directory / MANIFEST
        if not path.is_file():
            raise IndexNotFoundError(
                f"no index named {name!r} in {directory.parent} (create it with 'mmsearch index FOLDER --index {name}')"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"index {name!r} was written by a newer mmsearch (schema {version}, this one reads {SCHEMA_VERSION}): "
                "upgrade mmsearch to use it"
            )
        try:
            manifest = Manifest.from_dict(data)
        except TypeError as exc:
            raise IndexCorruptError(f"{path} is missing fields: {exc}") from exc
        if not (directory / ITEMS_DB).is_file():
            raise IndexCorruptError(f"index {name!r} has no {ITEMS_DB}; rebuild it with 'mmsearch index'")
        return cls(directory, manifest)

    def connect(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.directory / ITEMS_DB, timeout=60, isolation_level=None)
            try:
                # WAL: readers see the last committed state while a writer works.
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                db.close()
                raise IndexCorruptError(f"cannot open {self.directory / ITEMS_DB}: {exc}") from exc
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- manifest ---------------------------------------------------------------

    def write_manifest(self) -> None:
        self.manifest.updated_at = time.time()
        _write_json_atomic(self.directory / MANIFEST, asdict(self.manifest))

    @property
    def generation(self) -> int:
        row = self.connect().execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- writer lock ------------------------------------------------------------

    @contextmanager
    def writer_lock(self, *, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the single-writer lock; ``wait=False`` fails at once if it is taken."""
        try:
            fh = open(self.directory / LOCK_FILE, "a+")
        except OSError as exc:
            raise MMSearchError(f"cannot write to index directory {self.directory}: {exc.strerror or exc}") from exc
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise IndexLockedError(
                        f"index {self.manifest.name!r} is being written by another process; try again later"
                    ) from None
                if on_wait:
                    on_wait()
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            fh.close()  # releases the lock

    # -- reading items ----------------------------------------------------------

    def file_states(self) -> dict[str, tuple[int, int | None, int | None, str | None, str]]:
        """key -> (id, size, mtime_ns, hash, status) for every image item."""
        rows = self.connect().execute(
            "SELECT key, id, size, mtime_ns, hash, status FROM items WHERE kind='image'"
        )
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def items_by_id(self, ids: list[int]) -> dict[int, ItemRow]:
        if not ids:
            return {}
        out: dict[int, ItemRow] = {}
        db = self.connect()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(
                "SELECT id, kind, key, path, text, size, mtime_ns, hash, width, height, status, error, meta "
                f"FROM items WHERE id IN ({marks})",
                chunk,
            ):
                out[row[0]] = ItemRow(*row)
        return out

    def item_by_key(self, key: str) -> ItemRow | None:
        row = self.connect().execute(
            "SELECT id, kind, key, path, text, size, mtime_ns, hash, width, height, status, error, meta "
            "FROM items WHERE key=?",
            (key,),
        ).fetchone()
        return ItemRow(*row) if row else None

    def vector_for_hash(self, content_hash: str) -> np.ndarray | None:
        row = self.connect().execute(
            "SELECT v.vec FROM items i JOIN vectors v ON v.id = i.id WHERE i.hash=? AND i.status='ok' LIMIT 1",
            (content_hash,),
        ).fetchone()
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def vector(self, item_id: int) -> np.ndarray | None:
        row = self.connect().execute("SELECT vec FROM vectors WHERE id=?", (item_id,)).fetchone()
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, vectors float32 (n, dim)) of every embedded item."""
        db = self.connect()
        n = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        ids = np.empty(n, dtype=np.int64)
        vecs = np.empty((n, self.manifest.dim), dtype=np.float32)
        filled = 0
        for item_id, blob in db.execute("SELECT id, vec FROM vectors ORDER BY id"):
            if filled == n:
                break  # rows committed after the count; the next reader sees them
            ids[filled] = item_id
            vecs[filled] = np.frombuffer(blob, dtype=np.float32)
            filled += 1
        return ids[:filled], vecs[:filled]

    def counts(self) -> dict[str, int]:
        db = self.connect()
        rows = db.execute("SELECT kind, status, COUNT(*) FROM items GROUP BY kind, status").fetchall()
        counts = {"images": 0, "texts": 0, "failed": 0}
        for kind, status, n in rows:
            if status == "failed":
                counts["failed"] += n
            else:
                counts["images" if kind == "image" else "texts"] += n
        counts["items"] = counts["images"] + counts["texts"]
        return counts

    def failed_items(self) -> list[tuple[str, str]]:
        return [
            (r[0], r[1] or "")
            for r in self.connect().execute("SELECT key, error FROM items WHERE status='failed' ORDER BY key")
        ]

    # -- writing ----------------------------------------------------------------

    def commit(self, upserts: list[NewItem], deletes: list[int]) -> tuple[list[int], list[int]]:
        """Write one batch of changes as a single transaction.

        Returns (ids written with a vector, ids whose old vector must leave the
        ANN index), so the caller can update the FAISS index in step.
        """
        db = self.connect()
        now = time.time()
        added: list[int] = []
        dropped: list[int] = list(deletes)
        try:
            db.execute("BEGIN IMMEDIATE")
            for item_id in deletes:
                db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
                db.execute("DELETE FROM items WHERE id=?", (item_id,))
            for it in upserts:
                status = "ok" if it.vector is not None else "failed"
                old = db.execute("SELECT id FROM items WHERE key=?", (it.key,)).fetchone()
                values = (
                    it.kind, it.key, it.path, it.text, it.size, it.mtime_ns, it.hash,
                    it.width, it.height, status, it.error, it.meta, now,
                )
                if old:
                    item_id = old[0]
                    db.execute(
                        "UPDATE items SET kind=?, key=?, path=?, text=?, size=?, mtime_ns=?, hash=?, width=?, "
                        "height=?, status=?, error=?, meta=?, indexed_at=? WHERE id=?",
                        (*values, item_id),
                    )
                    db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
                    dropped.append(item_id)
                else:
                    cur = db.execute(
                        "INSERT INTO items (kind, key, path, text, size, mtime_ns, hash, width, height, status, "
                        "error, meta, indexed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        values,
                    )
                    item_id = int(cur.lastrowid)
                if it.vector is not None:
                    vec = np.ascontiguousarray(it.vector, dtype=np.float32)
                    db.execute("INSERT INTO vectors (id, vec) VALUES (?, ?)", (item_id, vec.tobytes()))
                    added.append(item_id)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('generation', '1') "
                "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise MMSearchError(f"could not write to index {self.manifest.name!r}: {exc}") from exc
            raise
        return added, dropped

    # -- the ANN index ----------------------------------------------------------

    def load_vector_index(self, *, persist: bool = False) -> "VectorIndex":
        """The FAISS index for the last committed state.

        Loaded from index.faiss when that file matches the committed generation;
        otherwise (a crash or a concurrent writer) rebuilt from the stored
        vectors, and written back when ``persist`` (the writer holds the lock).
        """
        from .ann import VectorIndex

        generation = self.generation
        path = self.directory / FAISS_FILE
        if path.is_file() and self.manifest.ann.get("generation") == generation:
            return VectorIndex.load(path, self.manifest.dim)
        ids, vectors = self.all_vectors()
        index = VectorIndex.build(self.manifest.dim, ids, vectors)
        if persist:
            self.save_vector_index(index, generation)
        return index

    def save_vector_index(self, index: "VectorIndex", generation: int | None = None) -> None:
        """Write index.faiss, then the manifest that vouches for it (in that order)."""
        generation = self.generation if generation is None else generation
        try:
            index.save(self.directory / FAISS_FILE)
            self.manifest.ann = {**self.manifest.ann, "type": "flat", "generation": generation}
            self.manifest.counts = self.counts()
            self.write_manifest()
        except OSError as exc:
            raise MMSearchError(
                f"could not write index {self.manifest.name!r} ({exc.strerror or exc}); "
                "the items committed so far are safe and the next run finishes the job"
            ) from exc
