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

import fcntl
import os
import shutil
import tempfile
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .config import SCHEMA_VERSION
from .errors import (
    IndexCorruptError,
    IndexExistsError,
    IndexNotFoundError,
    MMSearchError,
    SchemaVersionError,
)
from .manifest import (  # Manifest and MANIFEST are part of this module's public names too
    MANIFEST,
    TEMP_SUFFIX,
    Manifest,
    describe_write_error,
    older_schema_error,
    read_manifest,
    write_json_atomic,
)

from .store_schema import (  # noqa: F401 - MIGRATIONS and Migration are this module's names too (tests patch them)
    ITEM_COLUMNS,
    MIGRATIONS,
    PAGE_SIZE,
    PATH_COLUMNS,
    SCHEMA_SQL,
    Migration,
    from_db,
    to_db,
)

from .store_checks import IntegrityMixin
from .store_db import _is_damage, _Connection, write_transaction, writer_lock  # noqa: F401 - this module's names too
from .store_photos import PhotoMetadataMixin
from .store_rows import (  # noqa: F401 - the row types and file names are this module's public names too
    _ITEM_SELECT,
    _PATH_POSITIONS,
    FAISS_FILE,
    ITEMS_DB,
    LOCK_FILE,
    PHOTO_COLUMNS,
    READ_LOCK_FILE,
    ItemRow,
    ModelRecord,
    NewItem,
    PhotoStats,
)
from .store_vectors import (  # noqa: F401 - this module's names too
    StoredVectors,
    VectorIndexMixin,
    ann_count_agrees,
    ann_files_vouched,
    faiss_file_vouched,
)
from .store_videos import VideoRowsMixin

# Columns an upsert writes (all but id), and the NewItem field each one takes.
_WRITE_COLUMNS: tuple[str, ...] = tuple(c for c in ITEM_COLUMNS if c not in ("id", "status")) + ("status", "indexed_at")


class IndexStore(PhotoMetadataMixin, IntegrityMixin, VideoRowsMixin, VectorIndexMixin):
    """One index directory. Open with :meth:`create` or :meth:`open`.

    ``readonly`` stores (a directory this process cannot write to) answer
    queries from the last committed state and never write anything.
    """

    def __init__(self, directory: Path, manifest: Manifest, *, readonly: bool = False) -> None:
        self.directory = directory
        self.manifest = manifest
        self.readonly = readonly
        self.manifest_problems: list[str] = []  # set by open(recover=True): what is wrong with manifest.json
        self._db: sqlite3.Connection | None = None

    @property
    def name(self) -> str:
        """The index's name: its folder's (a copied or renamed folder is known by its new name)."""
        return self.directory.name

    # -- opening ----------------------------------------------------------------

    @staticmethod
    def check_creatable(directory: Path, name: str) -> None:
        """Raise unless a new index can be made at ``directory`` (cheap: callers check before loading a model)."""
        if (directory / MANIFEST).exists():
            raise IndexExistsError(f"index {name!r} already exists at {directory}")
        if (directory / ITEMS_DB).exists():
            # A folder with items but no manifest: an index whose manifest was lost. Creating
            # over it would mix another model's vectors with these (or reuse them as unchanged).
            raise IndexCorruptError(
                f"index {name!r} at {directory} has items but no manifest.json: run 'mmsearch repair --index {name}' "
                f"to rebuild the manifest from items.sqlite, or 'mmsearch drop {name}' to start again"
            )

    @classmethod
    def create(cls, directory: Path, *, name: str, model: str, fingerprint: str, dim: int) -> "IndexStore":
        """Make a new, empty index folder, atomically: readers see no index, or a whole one.

        The folder is built under a temporary name (items.sqlite with the model
        recorded, then manifest.json) and renamed into place; if another
        process made the index meanwhile, ``IndexExistsError``.
        """
        cls.check_creatable(directory, name)
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=f".{directory.name}.creating-", dir=directory.parent))
        except OSError as exc:
            raise MMSearchError(f"cannot create index directory {directory}: {exc.strerror or exc}") from exc
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(building, 0o777 & ~umask)  # mkdtemp makes it private; an index is as readable as its parent
            store = cls(building, Manifest(name=name, model=model, fingerprint=fingerprint, dim=dim))
            store._db = store._connect_writable(create=True)
            store.record_model(ModelRecord(model, fingerprint, dim))
            store.manifest.updated_at = time.time()
            write_json_atomic(building / MANIFEST, asdict(store.manifest))
            store.close()  # sqlite's files must not move while open
            try:
                os.rename(building, directory)  # replaces an empty folder, fails on a full one
            except OSError as exc:
                if directory.is_dir() and any(directory.iterdir()):
                    raise IndexExistsError(f"index {name!r} was just created by another process") from exc
                raise
        except OSError as exc:
            raise MMSearchError(f"cannot write to index directory {directory}: {describe_write_error(exc)}") from exc
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)
        store.directory = directory
        return store

    @classmethod
    def open(
        cls, directory: Path, *, name: str, readonly: bool | None = None, recover: bool = False
    ) -> "IndexStore":
        """Open an existing index; ``readonly=None`` picks read-only when the directory is not writable.

        An index written by an older schema is migrated forward (under the
        writer lock) or refused with what to do; a newer one is refused. A
        missing or damaged manifest.json, or one that disagrees with the model
        items.sqlite records, raises ``IndexCorruptError`` naming ``mmsearch
        repair``; with ``recover`` the store opens anyway (``manifest_problems``
        says what is wrong) so that verify can report it and repair can fix it.
        """
        path = directory / MANIFEST
        if not path.is_file() and not (directory / ITEMS_DB).is_file():
            raise IndexNotFoundError(
                f"no index named {name!r} in {directory.parent} (create it with 'mmsearch index FOLDER --index {name}')"
            )
        if not (directory / ITEMS_DB).is_file():
            raise IndexCorruptError(
                f"index {name!r} has no {ITEMS_DB} (its items and vectors): nothing to repair; "
                f"'mmsearch drop {name}' removes the folder, then 'mmsearch index FOLDER --index {name}' starts again"
            )
        problems: list[str] = []
        manifest: Manifest | None = None
        version: int | None = None
        if not path.is_file():
            problems.append(f"{MANIFEST} is missing")
        else:
            try:
                data = read_manifest(path)
                version = data.get("schema_version")
                if isinstance(version, bool) or not isinstance(version, int):
                    version = None
                    raise IndexCorruptError(f"{MANIFEST} field 'schema_version' is {data['schema_version']!r}, "
                                            "not a schema number")
                if version > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"index {name!r} was written by a newer mmsearch (schema {version}, this one reads "
                        f"{SCHEMA_VERSION}): upgrade mmsearch to use it"
                    )
                manifest = Manifest.from_dict(data)
            except IndexCorruptError as exc:
                problems.append(str(exc))
        if problems and not recover:
            raise IndexCorruptError(
                f"index {name!r}: {problems[0]}: run 'mmsearch repair --index {name}' "
                "(it rebuilds the manifest from items.sqlite; nothing is re-encoded)"
            )
        if readonly is None:
            readonly = not os.access(directory, os.W_OK)
        store = cls(directory, manifest or Manifest(name=name, model="", fingerprint="", dim=0), readonly=readonly)
        store.manifest_problems = problems
        if version is None:
            version = store._schema_of_db()
        if version < SCHEMA_VERSION:
            store._migrate(version)
        if manifest is None:
            recorded = store.recorded_model()
            if recorded is not None:  # what a rebuilt manifest would say
                store.manifest.model, store.manifest.fingerprint, store.manifest.dim = (
                    recorded.model, recorded.fingerprint, recorded.dim)
            return store
        mismatch = store.model_mismatch()
        if mismatch:
            if not recover:
                store.close()
                raise IndexCorruptError(
                    f"index {name!r}: {mismatch}: run 'mmsearch repair --index {name}' "
                    "(the model items.sqlite records wins; no vector is dropped)"
                )
            store.manifest_problems.append(mismatch)
        return store

    def _schema_of_db(self) -> int:
        """The schema items.sqlite itself is in (when no manifest says), from its columns."""
        columns = {row[1] for row in self.connect().execute("PRAGMA table_info(items)")}
        return SCHEMA_VERSION if "real_path" in columns else 1

    def _migrate(self, version: int) -> None:
        name = self.name
        if any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
            raise older_schema_error(name, version)
        if self.readonly:
            raise SchemaVersionError(
                f"index {name!r} uses schema {version} and needs upgrading to {SCHEMA_VERSION}, but its directory "
                f"{self.directory} is read-only: open it once with write access (e.g. 'mmsearch verify --index {name}')"
            )
        with self.writer_lock():
            current = version
            if (self.directory / MANIFEST).is_file():
                try:
                    current = int(read_manifest(self.directory / MANIFEST).get("schema_version", version))
                except (IndexCorruptError, TypeError, ValueError):
                    current = version
            db = self.connect()
            # A migration may rebuild a table: with foreign keys on, dropping the old items table
            # would cascade into the vectors. They are checked again before each commit.
            db.execute("PRAGMA foreign_keys=OFF")
            try:
                for v in range(current, SCHEMA_VERSION):
                    with write_transaction(db, lambda why: f"could not upgrade index {name!r} from schema {v}: "
                                                           f"{why}; it is unchanged"):
                        MIGRATIONS[v](db)
                        if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                            raise IndexCorruptError(f"upgrading index {name!r} from schema {v} broke its references")
            finally:
                db.execute("PRAGMA foreign_keys=ON")
            if self.recorded_model() is None and self.manifest.fingerprint:
                self._record_model_from_manifest()
            self.manifest.schema_version = SCHEMA_VERSION
            if (self.directory / MANIFEST).is_file() and not self.manifest_problems:
                self.write_manifest()

    def _damaged(self, exc: sqlite3.DatabaseError) -> IndexCorruptError:
        return IndexCorruptError(
            f"items.sqlite of index {self.name!r} is damaged ({exc}): 'mmsearch repair --index {self.name} --salvage' "
            "copies every readable item and vector into a new file"
        )

    def connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect_readonly() if self.readonly else self._connect_writable()
        return self._db

    def _connect_writable(self, create: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / ITEMS_DB, timeout=60, isolation_level=None, factory=_Connection)
        db.damaged = self._damaged  # type: ignore[attr-defined]
        try:
            # WAL: readers see the last committed state while a writer works.
            # synchronous=NORMAL: a commit is not fsync'd until checkpoint, so a
            # power cut may lose the last commits but never corrupts; kill -9 loses nothing.
            # 16 KiB pages, set before the first table exists (a no-op on an existing file): a
            # 512-d vector row is ~2 KiB, so 4 KiB pages hold one row and waste half the file.
            if create:
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            if create:
                db.executescript(SCHEMA_SQL)
            else:
                db.execute("SELECT value FROM meta WHERE key='generation'").fetchall()  # a damaged file fails here
        except sqlite3.DatabaseError as exc:
            db.close()
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                # The file or its directory refused writes: answer queries anyway.
                self.readonly = True
                return self._connect_readonly()
            raise IndexCorruptError(
                f"cannot open {self.directory / ITEMS_DB}: {exc}: 'mmsearch repair --index {self.name} --salvage' "
                "copies every readable item and vector into a new file"
            ) from exc
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open items.sqlite without writing a byte.

        With no -wal file (the last writer closed cleanly) the file is opened
        ``immutable``: nothing, not even a -shm file, is created. With one (a
        writer was killed, or is running), sqlite must read it through -shm; if
        the directory forbids creating that, fall back to ``immutable`` and the
        last checkpointed state.
        """
        db_path = (self.directory / ITEMS_DB).absolute()
        uri = "file:" + urllib.parse.quote(str(db_path)) + "?mode=ro"
        wal = Path(str(db_path) + "-wal")
        suffixes = ("", "&immutable=1") if wal.exists() else ("&immutable=1",)
        last: sqlite3.Error | None = None
        for suffix in suffixes:
            try:
                db = sqlite3.connect(uri + suffix, uri=True, timeout=60, isolation_level=None, factory=_Connection)
                db.damaged = self._damaged  # type: ignore[attr-defined]
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                db.execute("PRAGMA query_only=ON")
                db.execute("SELECT value FROM meta WHERE key='generation'").fetchall()
                return db
            except sqlite3.Error as exc:
                db.close()
                last = exc
        raise IndexCorruptError(
            f"cannot open {self.directory / ITEMS_DB} read-only: {last}: 'mmsearch repair --index {self.name} "
            "--salvage' (with write access) copies every readable item and vector into a new file"
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        db = self.connect()
        if db.in_transaction:
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    def _require_writable(self) -> None:
        if self.readonly:
            raise MMSearchError(
                f"index {self.name!r} is read-only here ({self.directory} is not writable): "
                "queries work, but changing it needs write access"
            )

    # -- manifest ---------------------------------------------------------------

    def write_manifest(self) -> None:
        self._require_writable()
        self.manifest.updated_at = time.time()
        write_json_atomic(self.directory / MANIFEST, asdict(self.manifest))

    def reload_manifest(self) -> Manifest:
        """Re-read manifest.json (another process may have rewritten it) and return it.

        A store opened to recover a damaged manifest keeps the one it made up.
        """
        if self.manifest_problems:
            return self.manifest
        try:
            fresh = Manifest.from_dict(read_manifest(self.directory / MANIFEST))
        except IndexCorruptError as exc:
            raise IndexCorruptError(f"index {self.name!r}: {exc}: run 'mmsearch repair --index {self.name}'") from exc
        self.manifest.ann, self.manifest.counts, self.manifest.updated_at = fresh.ann, fresh.counts, fresh.updated_at
        return self.manifest

    # -- the model items.sqlite records ----------------------------------------

    def recorded_model(self) -> ModelRecord | None:
        """The model items.sqlite says made its vectors (None in an index from before schema 2 not yet repaired)."""
        rows = dict(self.connect().execute("SELECT key, value FROM meta WHERE key IN ('model', 'fingerprint', 'dim')"))
        try:
            record = ModelRecord(str(rows["model"]), str(rows["fingerprint"]), int(rows["dim"]))
        except (KeyError, ValueError):
            return None
        return record if record.model and record.fingerprint and record.dim > 0 else None

    def record_model(self, record: ModelRecord) -> None:
        """Write the model's spec, fingerprint and dimension into items.sqlite (one transaction)."""
        self._require_writable()
        failure = lambda why: f"could not record the model of index {self.name!r}: {why}"  # noqa: E731
        with write_transaction(self.connect(), failure) as db:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [("model", record.model), ("fingerprint", record.fingerprint), ("dim", str(record.dim))],
            )

    def stored_vector_dims(self) -> dict[int, int]:
        """Dimension -> how many stored vectors have it (a healthy index has one key)."""
        rows = self.connect().execute("SELECT length(vec) / 4, COUNT(*) FROM vectors GROUP BY length(vec)")
        return {int(dim): int(n) for dim, n in rows}

    def _record_model_from_manifest(self) -> None:
        """Schema-1 indexes: trust the manifest's model when the stored vectors agree with its dimension."""
        dims = self.stored_vector_dims()
        m = self.manifest
        if isinstance(m.dim, int) and m.dim > 0 and set(dims) <= {m.dim}:
            self.record_model(ModelRecord(m.model, m.fingerprint, m.dim))

    def model_mismatch(self) -> str | None:
        """How manifest.json and items.sqlite disagree about the model, or None."""
        recorded = self.recorded_model()
        m = self.manifest
        if recorded is None:
            return None
        if (m.model, m.fingerprint, m.dim) != (recorded.model, recorded.fingerprint, recorded.dim):
            return (
                f"manifest.json says model {m.model!r} (fingerprint {m.fingerprint}, {m.dim}-d) but items.sqlite "
                f"was written by {recorded.model!r} (fingerprint {recorded.fingerprint}, {recorded.dim}-d)"
            )
        return None

    @property
    def generation(self) -> int:
        row = self.connect().execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- locks ------------------------------------------------------------------

    @contextmanager
    def writer_lock(self, *, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the single-writer lock; ``wait=False`` fails at once if it is taken."""
        self._require_writable()
        with writer_lock(self.directory, wait=wait, on_wait=on_wait):
            yield

    @contextmanager
    def _read_lock(self, *, exclusive: bool) -> Iterator[None]:
        """Guards index.faiss + the manifest that vouches for it against a half-seen replace."""
        path = self.directory / READ_LOCK_FILE
        try:
            fh = open(path, "r") if (self.readonly or path.exists()) else open(path, "a+")
        except OSError:
            if exclusive:
                raise
            yield  # read-only directory without a lock file: no writer can replace files here
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fh.close()

    def remove_temp_files(self) -> list[str]:
        """Delete what interrupted atomic writes left behind; only the writer may call this."""
        removed = []
        for p in self.directory.glob("*" + TEMP_SUFFIX):
            try:
                p.unlink()
                removed.append(p.name)
            except FileNotFoundError:
                pass
        return removed

    # -- reading items ----------------------------------------------------------

    def file_states(self) -> dict[str, tuple[int, int | None, int | None, str | None, str]]:
        """key -> (id, size, mtime_ns, hash, status) for every file item (images and videos)."""
        rows = self.connect().execute(
            "SELECT key, id, size, mtime_ns, hash, status FROM items WHERE kind IN ('image', 'video')"
        )
        return {from_db(r[0]): (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def read_failures(self) -> set[str]:
        """Keys of file items that failed because they could not be read (not because of their content)."""
        from .config import READ_ERROR_PREFIXES

        where = " OR ".join("error LIKE ?" for _ in READ_ERROR_PREFIXES)
        rows = self.connect().execute(
            f"SELECT key FROM items WHERE kind IN ('image', 'video') AND status='failed' AND ({where})",
            [prefix + "%" for prefix in READ_ERROR_PREFIXES],
        )
        return {from_db(r[0]) for r in rows}

    def items_by_id(self, ids: list[int]) -> dict[int, ItemRow]:
        if not ids:
            return {}
        out: dict[int, ItemRow] = {}
        db = self.connect()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in db.execute(f"{_ITEM_SELECT} WHERE id IN ({marks})", chunk):
                out[row[0]] = ItemRow.from_db(row)
        return out

    def item_by_key(self, key: str) -> ItemRow | None:
        row = self.connect().execute(f"{_ITEM_SELECT} WHERE key=?", (to_db(key),)).fetchone()
        return ItemRow.from_db(row) if row else None

    def ids_under(self, paths: list[str]) -> dict[str, list[int]]:
        """path -> ids of the image items at that path or inside that folder."""
        db = self.connect()
        out: dict[str, list[int]] = {}
        for path in paths:
            key, prefix = to_db(path), to_db(path.rstrip(os.sep) + os.sep)
            rows = db.execute(
                "SELECT id FROM items WHERE kind IN ('image', 'video') AND (key=? OR substr(key, 1, ?)=?)",
                (key, len(prefix), prefix),
            )
            out[path] = [r[0] for r in rows]
        return out

    def vector_for_hash(self, content_hash: str) -> np.ndarray | None:
        row = self.connect().execute(
            "SELECT v.vec FROM items i JOIN vectors v ON v.id = i.id WHERE i.hash=? AND i.status='ok' LIMIT 1",
            (content_hash,),
        ).fetchone()
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def vector(self, item_id: int) -> np.ndarray | None:
        row = self.connect().execute("SELECT vec FROM vectors WHERE id=?", (item_id,)).fetchone()
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def vectors_of(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored vectors for ``ids``, one row per id in the order given (zeros for ids that are gone)."""
        wanted = [int(i) for i in ids]
        dim = self.manifest.dim
        out = np.zeros((len(wanted), dim), dtype=np.float32)
        where: dict[int, list[int]] = {}
        for pos, item_id in enumerate(wanted):
            where.setdefault(item_id, []).append(pos)
        db = self.connect()
        unique = list(where)
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for item_id, blob in db.execute(f"SELECT id, vec FROM vectors WHERE id IN ({marks})", chunk):
                if len(blob) == 4 * dim:  # a damaged row scores as gone; 'mmsearch verify' reports it
                    out[where[item_id]] = np.frombuffer(blob, dtype=np.float32)
        return out

    def text_items(self, key_prefix: str) -> dict[str, tuple[int, str | None]]:
        """key -> (id, content hash) of the text items whose key starts with ``key_prefix``."""
        rows = self.connect().execute(
            "SELECT key, id, hash FROM items WHERE kind='text' AND substr(key, 1, ?) = ?",
            (len(to_db(key_prefix)), to_db(key_prefix)),
        )
        return {from_db(key): (item_id, digest) for key, item_id, digest in rows}

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, vectors float32 (n, dim)) of every embedded item, from one snapshot."""
        dim = self.manifest.dim
        with self.snapshot() as db:
            n = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            ids = np.empty(n, dtype=np.int64)
            vecs = np.empty((n, dim), dtype=np.float32)
            filled = 0
            for item_id, blob in db.execute("SELECT id, vec FROM vectors ORDER BY id"):
                if len(blob) != 4 * dim:
                    raise IndexCorruptError(
                        f"index {self.name!r}: the stored vector of item {item_id} has "
                        f"{len(blob) // 4} dimensions, not {dim}; run 'mmsearch repair'"
                    )
                ids[filled] = item_id
                vecs[filled] = np.frombuffer(blob, dtype=np.float32)
                filled += 1
        return ids[:filled], vecs[:filled]

    def has_kind(self, kind: str) -> bool:
        """Whether the index holds at least one searchable item of this kind."""
        row = self.connect().execute(
            "SELECT EXISTS(SELECT 1 FROM items WHERE kind=? AND status='ok')", (kind,)).fetchone()
        return bool(row[0])

    def counts(self) -> dict[str, int]:
        db = self.connect()
        rows = db.execute("SELECT kind, status, COUNT(*) FROM items GROUP BY kind, status").fetchall()
        counts = {"images": 0, "texts": 0, "videos": 0, "frames": 0, "failed": 0}
        plural = {"image": "images", "text": "texts", "video": "videos", "frame": "frames"}
        for kind, status, n in rows:
            if status == "failed":
                counts["failed"] += n
            else:
                counts[plural.get(kind, "texts")] += n
        # Frames are parts of their videos, not items of their own.
        counts["items"] = counts["images"] + counts["texts"] + counts["videos"]
        return counts

    def image_rows(self) -> list[ItemRow]:
        """Every searchable image item, by id (duplicate grouping reads them all at once)."""
        return [ItemRow.from_db(r) for r in self.connect().execute(
            f"{_ITEM_SELECT} WHERE kind='image' AND status='ok' ORDER BY id")]

    def replace_skips(self, roots: list[str], skips: list[tuple[str, str]]) -> None:
        """Record what the last walk of ``roots`` could not take (replacing what an earlier walk of them noted)."""
        if self.readonly:
            return
        failure = lambda why: f"could not note the skipped files of index {self.name!r}: {why}"  # noqa: E731
        now = time.time()
        with write_transaction(self.connect(), failure) as db:
            for root in roots:
                prefix = to_db(root.rstrip(os.sep) + os.sep)
                db.execute("DELETE FROM skips WHERE path = ? OR substr(path, 1, ?) = ?",
                           (to_db(root), len(prefix), prefix))
            db.executemany(
                "INSERT INTO skips (path, reason, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET reason = excluded.reason, seen_at = excluded.seen_at",
                [(to_db(path), reason, now) for path, reason in skips],
            )

    def skipped_files(self) -> list[tuple[str, str]]:
        """(path, reason) of what the walks could not take (unreadable files, loops, FIFOs, ...)."""
        return [(from_db(r[0]), r[1]) for r in self.connect().execute("SELECT path, reason FROM skips ORDER BY path")]

    def failed_items(self) -> list[tuple[str, str]]:
        return [
            (from_db(r[0]), r[1] or "")
            for r in self.connect().execute("SELECT key, error FROM items WHERE status='failed' ORDER BY key")
        ]

    # -- writing ----------------------------------------------------------------

    def commit(self, upserts: list[NewItem], deletes: list[int]) -> tuple[list[int], list[int]]:
        """Write one batch of changes as a single transaction (nothing at all if there are none).

        Returns (ids written with a vector, ids whose old vector must leave the
        ANN index), so the caller can update the FAISS index in step. Deleting
        a video deletes its frames too (and names them among the ids to drop).
        On any failure (a full disk included) the transaction is rolled back:
        the index stays exactly as it was after the previous commit.
        """
        if not upserts and not deletes:
            return [], []
        self._require_writable()
        db = self.connect()
        now = time.time()
        added: list[int] = []
        dropped: list[int] = []
        with write_transaction(db, self._commit_failure):
            dropped += self._delete_items(db, deletes)
            for it in upserts:
                item_id, replaced = self._upsert(db, it, now)
                if replaced:
                    dropped.append(item_id)
                if it.vector is not None:
                    self._insert_vector(db, item_id, it.vector)
                    added.append(item_id)
            self.bump_generation(db)
        return added, dropped

    def _commit_failure(self, why: str) -> str:
        return f"could not write to index {self.name!r}: {why} (the index keeps everything committed before this)"

    @staticmethod
    def _delete_items(db: sqlite3.Connection, ids: Sequence[int]) -> list[int]:
        """Inside a write transaction: delete items (a video with its frames) -> every id deleted."""
        gone: list[int] = []
        for item_id in ids:
            # The foreign key would cascade to the frames too; they are named so FAISS can drop them.
            frames = [r[0] for r in db.execute("SELECT id FROM items WHERE parent_id=?", (item_id,))]
            for frame_id in frames:
                db.execute("DELETE FROM vectors WHERE id=?", (frame_id,))
                db.execute("DELETE FROM items WHERE id=?", (frame_id,))
            db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
            db.execute("DELETE FROM items WHERE id=?", (item_id,))
            gone += [item_id, *frames]
        return gone

    @staticmethod
    def _upsert(db: sqlite3.Connection, it: NewItem, now: float) -> tuple[int, bool]:
        """Inside a write transaction: insert or update the row of ``it.key`` -> (id, whether it existed).

        An existing row keeps its id and loses its vector (the caller writes the new one).
        """
        status = "ok" if it.vector is not None or it.ok_without_vector else "failed"
        old = db.execute("SELECT id FROM items WHERE key=?", (to_db(it.key),)).fetchone()
        values = tuple(
            status if c == "status" else now if c == "indexed_at"
            else to_db(getattr(it, c)) if c in PATH_COLUMNS else getattr(it, c)
            for c in _WRITE_COLUMNS
        )
        if old:
            item_id = old[0]
            assignments = ", ".join(f"{c}=?" for c in _WRITE_COLUMNS)
            db.execute(f"UPDATE items SET {assignments} WHERE id=?", (*values, item_id))
            db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
            return item_id, True
        marks = ",".join("?" * len(_WRITE_COLUMNS))
        cur = db.execute(f"INSERT INTO items ({', '.join(_WRITE_COLUMNS)}) VALUES ({marks})", values)
        return int(cur.lastrowid), False

    def _insert_vector(self, db: sqlite3.Connection, item_id: int, vector: np.ndarray) -> None:
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.manifest.dim:
            raise IndexCorruptError(
                f"refusing to store a {vec.shape[0]}-d vector in {self.manifest.dim}-d index {self.name!r}"
            )
        db.execute("INSERT INTO vectors (id, vec) VALUES (?, ?)", (item_id, vec.tobytes()))

    @staticmethod
    def bump_generation(db: sqlite3.Connection) -> None:
        """Inside a write transaction: mark the stored state as changed (readers then rebuild FAISS)."""
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
