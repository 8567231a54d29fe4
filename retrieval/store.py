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
import logging
import os
import shutil
import tempfile
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

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
from .manifest import (  # Manifest and MANIFEST are part of this module's public names too
    MANIFEST,
    TEMP_SUFFIX,
    Manifest,
    ann_problem,
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

if TYPE_CHECKING:
    from .ann import VectorIndex  # faiss loads only when vectors are needed: 'info' stays light

ITEMS_DB = "items.sqlite"
FAISS_FILE = "index.faiss"
LOCK_FILE = "write.lock"
READ_LOCK_FILE = "read.lock"

_ITEM_SELECT = "SELECT " + ", ".join(ITEM_COLUMNS) + " FROM items"
# An image's capture metadata (see retrieval.photo_store), written by the indexer and the back-fill.
PHOTO_COLUMNS: tuple[str, ...] = ITEM_COLUMNS[ITEM_COLUMNS.index("taken_at"):ITEM_COLUMNS.index("meta_version") + 1]
_PATH_POSITIONS = tuple(i for i, c in enumerate(ITEM_COLUMNS) if c in PATH_COLUMNS)


@dataclass(frozen=True)
class ModelRecord:
    """The model that made an index's vectors: what both manifest.json and items.sqlite record."""

    model: str
    fingerprint: str
    dim: int


@dataclass(frozen=True)
class ItemRow:
    """One stored item, as a search hit or a listing needs it (the columns of store_schema.ITEM_COLUMNS)."""

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
    dev: int | None = None
    inode: int | None = None
    real_path: str | None = None
    parent_id: int | None = None
    time: float | None = None
    taken_at: str | None = None
    taken_ts: float | None = None
    local_ts: float | None = None
    time_source: str | None = None
    utc_offset_min: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None
    place_city: str | None = None
    place_region: str | None = None
    place_country: str | None = None
    place_cc: str | None = None
    meta_version: int | None = None

    @classmethod
    def from_db(cls, values: tuple) -> "ItemRow":
        row = list(values)
        for i in _PATH_POSITIONS:
            row[i] = from_db(row[i])
        return cls(*row)


@dataclass(frozen=True)
class NewItem:
    """An item to write; ``vector`` is None for a failed one (or for a video, whose frames carry the vectors)."""

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
    dev: int | None = None
    inode: int | None = None
    real_path: str | None = None
    parent_id: int | None = None
    time: float | None = None
    taken_at: str | None = None
    taken_ts: float | None = None
    local_ts: float | None = None
    time_source: str | None = None
    utc_offset_min: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None
    place_city: str | None = None
    place_region: str | None = None
    place_country: str | None = None
    place_cc: str | None = None
    meta_version: int | None = None
    ok_without_vector: bool = False  # a video: status ok, its frames hold the vectors


@dataclass(frozen=True)
class PhotoStats:
    """What an index's photos say about themselves, for ``mmsearch info``.

    Counts are of searchable image items. A capture time is one the file's
    metadata gives (EXIF, XMP, IPTC, GPS); ``file_time_only`` items are dated by
    their file's modification time alone. ``first_taken``/``last_taken`` are
    dates (YYYY-MM-DD) on the photos' own clocks. ``cameras`` and ``countries``
    map a name to its number of photos, most first. ``not_read`` photos have no
    metadata yet: the next ``mmsearch index`` of their folder reads it.
    """

    images: int = 0
    with_capture_time: int = 0
    file_time_only: int = 0
    first_taken: str | None = None
    last_taken: str | None = None
    with_gps: int = 0
    with_place: int = 0
    not_read: int = 0
    cameras: dict[str, int] = field(default_factory=dict)
    countries: dict[str, int] = field(default_factory=dict)


# Columns an upsert writes (all but id), and the NewItem field each one takes.
_WRITE_COLUMNS: tuple[str, ...] = tuple(c for c in ITEM_COLUMNS if c not in ("id", "status")) + ("status", "indexed_at")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """sqlite's words for a damaged file (as opposed to a lock, a full disk or a bug of ours)."""
    text = str(exc).lower()
    return type(exc) is sqlite3.DatabaseError or any(
        w in text for w in ("malformed", "not a database", "disk i/o error", "corrupt"))


class _Cursor(sqlite3.Cursor):
    """A cursor whose reads turn sqlite's "file is damaged" into one IndexCorruptError naming the fix."""

    damaged: Callable[[sqlite3.DatabaseError], IndexCorruptError]

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as exc:
            raise (self.damaged(exc) if _is_damage(exc) else exc) from exc

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as exc:
            raise (self.damaged(exc) if _is_damage(exc) else exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as exc:
            raise (self.damaged(exc) if _is_damage(exc) else exc) from exc


class _Connection(sqlite3.Connection):
    """items.sqlite's connection: every read and write reports a damaged file the same way (see _Cursor)."""

    damaged: Callable[[sqlite3.DatabaseError], IndexCorruptError]

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        cursor = self.cursor(_Cursor)
        cursor.damaged = self.damaged  # type: ignore[attr-defined]
        try:
            return cursor.execute(sql, parameters)
        except sqlite3.DatabaseError as exc:
            raise (self.damaged(exc) if _is_damage(exc) else exc) from exc

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().executemany(sql, parameters)
        except sqlite3.DatabaseError as exc:
            raise (self.damaged(exc) if _is_damage(exc) else exc) from exc


@contextmanager
def write_transaction(db: sqlite3.Connection, failure: Callable[[str], str]) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception.

    An sqlite error becomes one ``MMSearchError`` whose message is
    ``failure(why)`` (``why`` says what went wrong in words, e.g. a full disk);
    anything else (a bug, KeyboardInterrupt) propagates after the rollback.
    Either way the database keeps exactly what was committed before.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise MMSearchError(failure(describe_write_error(exc))) from exc
        raise


@contextmanager
def writer_lock(directory: Path, *, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold index ``directory``'s single-writer lock (flock on write.lock); ``wait=False`` fails at once if taken."""
    try:
        fh = open(directory / LOCK_FILE, "a+")
    except OSError as exc:
        raise MMSearchError(f"cannot write to index directory {directory}: {describe_write_error(exc)}") from exc
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise IndexLockedError(
                    f"index {directory.name!r} is being written by another process; "
                    "try again later (or leave out --no-wait to wait for it)"
                ) from None
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()  # releases the lock


class IndexStore:
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

    # -- capture metadata (retrieval.photo_store) ----------------------------------

    def metadata_backlog(self, version: int) -> set[str]:
        """Keys of searchable image items whose metadata was never read, or read by a reader older than ``version``."""
        rows = self.connect().execute(
            "SELECT key FROM items WHERE kind='image' AND status='ok' AND (meta_version IS NULL OR meta_version < ?)",
            (version,),
        )
        return {from_db(r[0]) for r in rows}

    def photo_of_hash(self, content_hash: str, version: int) -> dict[str, Any] | None:
        """The metadata columns of an image item with this content, read by reader ``version`` or newer; or None."""
        listed = ", ".join(PHOTO_COLUMNS)
        row = self.connect().execute(
            f"SELECT {listed} FROM items WHERE hash=? AND kind='image' AND meta_version >= ? LIMIT 1",
            (content_hash, version),
        ).fetchone()
        return dict(zip(PHOTO_COLUMNS, row)) if row else None

    def write_photo_metadata(self, rows: list[tuple[str, dict[str, Any]]]) -> int:
        """Set the metadata columns of image items, by key, in one transaction -> rows changed.

        Columns missing from a row's dict are cleared, so a re-read replaces all
        an older reader wrote. Vectors are untouched, so the generation (and the
        FAISS file) stays as it is.
        """
        if not rows:
            return 0
        self._require_writable()
        assignments = ", ".join(f"{c}=?" for c in PHOTO_COLUMNS)
        failure = (lambda why: f"could not write photo metadata to index {self.name!r}: {why} "  # noqa: E731
                   "(the index keeps everything committed before this)")
        changed = 0
        with write_transaction(self.connect(), failure) as db:
            for key, columns in rows:
                cur = db.execute(
                    f"UPDATE items SET {assignments} WHERE key=? AND kind='image'",
                    (*(columns.get(c) for c in PHOTO_COLUMNS), to_db(key)),
                )
                changed += cur.rowcount
        return changed

    def photo_stats(self) -> PhotoStats:
        """Counts of capture times, positions, places and cameras over the searchable images."""
        from datetime import datetime, timezone

        db = self.connect()
        with self.snapshot():
            (images, dated, file_dated, first, last, gps, placed, unread) = db.execute(
                "SELECT COUNT(*), "
                "SUM(taken_ts IS NOT NULL AND time_source != 'file-mtime'), SUM(time_source = 'file-mtime'), "
                "MIN(CASE WHEN time_source != 'file-mtime' THEN local_ts END), "
                "MAX(CASE WHEN time_source != 'file-mtime' THEN local_ts END), "
                "SUM(gps_lat IS NOT NULL), SUM(place_cc IS NOT NULL), SUM(meta_version IS NULL) "
                "FROM items WHERE kind='image' AND status='ok'"
            ).fetchone()
            cameras: dict[str, int] = {}
            for make, model, n in db.execute(
                "SELECT camera_make, camera_model, COUNT(*) FROM items WHERE kind='image' AND status='ok' "
                "AND (camera_make IS NOT NULL OR camera_model IS NOT NULL) GROUP BY camera_make, camera_model"
            ):
                name = " ".join(p for p in (make, model) if p)
                cameras[name] = cameras.get(name, 0) + n
            countries = dict(db.execute(
                "SELECT place_country, COUNT(*) FROM items WHERE kind='image' AND status='ok' "
                "AND place_country IS NOT NULL GROUP BY place_country"
            ).fetchall())

        def day(ts: float | None) -> str | None:
            if ts is None:
                return None
            try:
                return datetime.fromtimestamp(ts, tz=timezone.utc).date().isoformat()
            except (OverflowError, OSError, ValueError):
                return None

        def most_first(counts: dict[str, int]) -> dict[str, int]:
            return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

        return PhotoStats(
            images=images or 0, with_capture_time=dated or 0, file_time_only=file_dated or 0,
            first_taken=day(first), last_taken=day(last), with_gps=gps or 0, with_place=placed or 0,
            not_read=unread or 0, cameras=most_first(cameras), countries=most_first(countries),
        )

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

    # -- integrity (what retrieval.integrity checks and repairs) ------------------

    def quick_check(self) -> list[str]:
        """sqlite's ``PRAGMA quick_check``: ``["ok"]`` for an undamaged file, else what is wrong."""
        try:
            return [str(r[0]) for r in self.connect().execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]

    def row_counts(self) -> tuple[int, int]:
        """(rows in items, rows in vectors)."""
        db = self.connect()
        return (db.execute("SELECT COUNT(*) FROM items").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    _CONSISTENCY_CHECKS = {
        "items marked ok have no vector": "SELECT COUNT(*) FROM items i LEFT JOIN vectors v ON v.id = i.id "
        "WHERE i.status = 'ok' AND i.kind != 'video' AND v.id IS NULL",
        "videos have a vector of their own": "SELECT COUNT(*) FROM items i JOIN vectors v ON v.id = i.id "
        "WHERE i.kind = 'video'",
        "failed items have a vector": "SELECT COUNT(*) FROM items i JOIN vectors v ON v.id = i.id "
        "WHERE i.status = 'failed'",
        "vectors belong to no item": "SELECT COUNT(*) FROM vectors v LEFT JOIN items i ON i.id = v.id "
        "WHERE i.id IS NULL",
        "image items whose key is not their path": "SELECT COUNT(*) FROM items WHERE kind IN ('image', 'video') "
        "AND (path IS NULL OR path != key)",
        "frames whose parent is not a video": "SELECT COUNT(*) FROM items f LEFT JOIN items v ON v.id = f.parent_id "
        "WHERE f.kind = 'frame' AND (v.id IS NULL OR v.kind != 'video' OR v.status != 'ok')",
        "videos marked ok have no frame": "SELECT COUNT(*) FROM items v WHERE v.kind = 'video' AND v.status = 'ok' "
        "AND NOT EXISTS (SELECT 1 FROM items f WHERE f.parent_id = v.id AND f.kind = 'frame')",
        "items other than frames have a parent": "SELECT COUNT(*) FROM items WHERE kind != 'frame' "
        "AND parent_id IS NOT NULL",
    }

    def inconsistencies(self) -> dict[str, int]:
        """What breaks the items/vectors invariants -> how many rows (only the non-zero ones)."""
        db = self.connect()
        found = {what: db.execute(sql).fetchone()[0] for what, sql in self._CONSISTENCY_CHECKS.items()}
        return {what: n for what, n in found.items() if n}

    def vector_blobs(self) -> Iterator[tuple[int, bytes]]:
        """(id, raw stored bytes) of every vector, by id, undecoded (so damage can be seen)."""
        yield from self.connect().execute("SELECT id, vec FROM vectors ORDER BY id")

    def vector_blob(self, item_id: int) -> bytes | None:
        row = self.connect().execute("SELECT vec FROM vectors WHERE id=?", (item_id,)).fetchone()
        return row[0] if row else None

    def image_keys(self) -> list[str]:
        return [from_db(r[0]) for r in self.connect().execute("SELECT key FROM items WHERE kind IN ('image', 'video')")]

    def untrusted_rows(self, vector_ids: list[int]) -> tuple[list[int], list[int]]:
        """What a repair drops: (item ids, stray vector ids).

        The items of ``vector_ids`` (vectors found bad), ok items without a
        vector, and vectors without an ok item (strays). Videos go whole: a
        frame that cannot be trusted takes its video and the video's other
        frames with it (the next index run samples the video again; a video
        left with a frame missing would count as unchanged), and so do frames
        whose parent is not an indexed video and videos without a frame.
        """
        db = self.connect()
        bad = set(vector_ids)
        items = set()
        for start in range(0, len(vector_ids), 500):
            chunk = vector_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            items |= {r[0] for r in db.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)}
        items |= {r[0] for r in db.execute(
            "SELECT id FROM items WHERE status = 'ok' AND kind != 'video' AND id NOT IN (SELECT id FROM vectors)")}
        items |= {r[0] for r in db.execute(
            "SELECT f.id FROM items f LEFT JOIN items v ON v.id = f.parent_id WHERE f.kind = 'frame' "
            "AND (v.id IS NULL OR v.kind != 'video' OR v.status != 'ok')")}
        items |= {r[0] for r in db.execute(
            "SELECT v.id FROM items v WHERE v.kind = 'video' AND v.status = 'ok' "
            "AND NOT EXISTS (SELECT 1 FROM items f WHERE f.parent_id = v.id AND f.kind = 'frame')")}
        parents = self._parents_of(db, items)
        dropped_parents = set(self.items_by_id(sorted(parents))) if parents else set()
        items |= dropped_parents
        for frames in self.frames_of_videos(sorted(dropped_parents)).values():
            items |= {frame_id for frame_id, _ in frames}
        strays = (bad - items) | {r[0] for r in db.execute(
            "SELECT id FROM vectors WHERE id NOT IN (SELECT id FROM items WHERE status = 'ok' AND kind != 'video')")}
        return sorted(items), sorted(strays - items)

    @staticmethod
    def _parents_of(db: sqlite3.Connection, ids: set[int]) -> set[int]:
        out: set[int] = set()
        listed = sorted(ids)
        for start in range(0, len(listed), 500):
            chunk = listed[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out |= {r[0] for r in db.execute(
                f"SELECT parent_id FROM items WHERE id IN ({marks}) AND parent_id IS NOT NULL", chunk)}
        return out

    def count_untrusted(self, vector_ids: list[int]) -> tuple[int, int]:
        items, strays = self.untrusted_rows(vector_ids)
        return len(items), len(strays)

    def describe_untrusted(self, vector_ids: list[int]) -> list[str]:
        """What a repair would drop, in words: each item's path or text key, and stray vectors by id."""
        items, strays = self.untrusted_rows(vector_ids)
        rows = self.items_by_id(items)
        whole = {i for i in items if i in rows and rows[i].kind == "video"}
        # A video dropped whole is named once, not once per frame.
        shown = [i for i in items if not (i in rows and rows[i].parent_id in whole)]
        return [rows[i].key if i in rows else f"item {i}" for i in shown] + [f"stray vector {i}" for i in strays]

    def drop_untrusted(self, vector_ids: list[int], failure: Callable[[str], str]) -> tuple[int, int]:
        """Delete what :meth:`untrusted_rows` names, in one transaction -> (items dropped, stray vectors dropped)."""
        self._require_writable()
        items, strays = self.untrusted_rows(vector_ids)
        if not items and not strays:
            return 0, 0
        with write_transaction(self.connect(), failure) as db:
            for item_id in items:
                db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
                db.execute("DELETE FROM items WHERE id=?", (item_id,))
            for item_id in strays:
                db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
            self.bump_generation(db)
        return len(items), len(strays)

    def rebuild_manifest(self, model: ModelRecord) -> None:
        """Write manifest.json anew for ``model``, keeping what the old one said of the ANN policy when readable."""
        self._require_writable()
        old = self.manifest
        ann: dict[str, Any] = {}
        if not self.manifest_problems or (self.directory / MANIFEST).is_file():
            try:
                ann = {"policy": dict((read_manifest(self.directory / MANIFEST).get("ann") or {}).get("policy") or {})}
                if ann_problem(ann):
                    ann = {}
            except (IndexCorruptError, AttributeError, TypeError):
                ann = {}
        self.manifest = Manifest(
            name=self.name, model=model.model, fingerprint=model.fingerprint, dim=model.dim,
            ann={**ann, "generation": -1}, created_at=old.created_at if old.created_at else time.time(),
        )
        self.manifest_problems = []
        self.write_manifest()

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

    # -- videos: a 'video' row (no vector) and its 'frame' rows (one vector each) ---------

    def commit_video(self, video: NewItem, frames: Sequence[NewItem], deletes: Sequence[int] = ()
                     ) -> tuple[list[int], list[int]]:
        """Write one video and all its frames as a single transaction, replacing the frames it had.

        ``frames`` get the video's id as ``parent_id``; a failed video (no
        frames) keeps no frame. ``deletes`` are removed in the same
        transaction. Returns (frame ids written, ids whose vectors must leave
        the ANN index), as :meth:`commit` does; a crash keeps the video whole
        or as it was before.
        """
        self._require_writable()
        db = self.connect()
        now = time.time()
        added: list[int] = []
        with write_transaction(db, self._commit_failure):
            dropped = self._delete_items(db, deletes)
            video_id, replaced = self._upsert(db, replace(video, vector=None), now)
            if replaced:
                old = [r[0] for r in db.execute("SELECT id FROM items WHERE parent_id=?", (video_id,))]
                dropped += self._delete_items(db, old) + [video_id]
            for frame in frames:
                if frame.vector is None:
                    raise ValueError("a frame item needs a vector")
                frame_id, replaced = self._upsert(db, replace(frame, kind="frame", parent_id=video_id), now)
                if replaced:  # a frame key left by something else (it cannot be another video's)
                    dropped.append(frame_id)
                self._insert_vector(db, frame_id, frame.vector)
                added.append(frame_id)
            self.bump_generation(db)
        return added, dropped

    def frames_of(self, video_id: int) -> list[tuple[int, float]]:
        """(frame id, seconds) of a video's frames, in time order."""
        rows = self.connect().execute(
            "SELECT id, time FROM items WHERE parent_id=? AND kind='frame' ORDER BY time, id", (video_id,))
        return [(int(i), float(t or 0.0)) for i, t in rows]

    def frames_of_videos(self, video_ids: Sequence[int]) -> dict[int, list[tuple[int, float]]]:
        """video id -> (frame id, seconds) of its frames in time order, for several videos at once."""
        out: dict[int, list[tuple[int, float]]] = {}
        db = self.connect()
        unique = list(dict.fromkeys(int(v) for v in video_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for parent, frame_id, t in db.execute(
                f"SELECT parent_id, id, time FROM items WHERE kind='frame' AND parent_id IN ({marks}) "
                "ORDER BY parent_id, time, id", chunk):
                out.setdefault(int(parent), []).append((int(frame_id), float(t or 0.0)))
        return out

    def video_twin(self, fingerprint: str) -> ItemRow | None:
        """An indexed video with this content fingerprint and at least one frame (for a renamed or copied file)."""
        row = self.connect().execute(
            f"{_ITEM_SELECT} WHERE hash=? AND kind='video' AND status='ok' "
            "AND EXISTS (SELECT 1 FROM items f WHERE f.parent_id = items.id) ORDER BY id LIMIT 1",
            (fingerprint,),
        ).fetchone()
        return ItemRow.from_db(row) if row else None

    @staticmethod
    def bump_generation(db: sqlite3.Connection) -> None:
        """Inside a write transaction: mark the stored state as changed (readers then rebuild FAISS)."""
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    # -- the ANN index ----------------------------------------------------------

    def vector_index_is_current(self) -> bool:
        """Whether index.faiss (per the manifest on disk) was built from the committed generation."""
        try:
            ann = read_manifest(self.directory / MANIFEST).get("ann", {})
        except IndexCorruptError:
            return False
        return ann_files_vouched(self.directory, ann) and ann.get("generation") == self.generation

    def stored_vectors(self) -> "StoredVectors":
        """The stored vectors as a :class:`~retrieval.vector_copy.VectorSource` (chunks, samples, lookups).

        Use it inside :meth:`snapshot` to read one committed state throughout.
        """
        return StoredVectors(self)

    def load_vector_index(self, *, persist: bool = False, mmap: bool = False) -> "VectorIndex":
        """The FAISS index for the last committed state, with its re-rank copy when it has one.

        Loaded from index.faiss when that file matches the committed generation;
        otherwise (a crash or a concurrent writer) rebuilt from the stored
        vectors, and written back when ``persist`` (the writer holds the lock).
        The generation, the file check and the vectors come from one snapshot;
        the rebuild reads the vectors in chunks, never all at once. A re-rank
        copy that is missing or not vouched for is left out: queries then
        re-rank from items.sqlite, and the next save writes it again.
        """
        from .ann import AnnConfig, VectorIndex

        path = self.directory / FAISS_FILE
        with self.snapshot() as db:
            with self._read_lock(exclusive=False):
                generation = self.generation
                ann = self.reload_manifest().ann
                if ann_files_vouched(self.directory, ann) and ann.get("generation") == generation:
                    # mmap (readers): the codes stay in the page cache, shared between processes.
                    try:
                        index = VectorIndex.load(path, self.manifest.dim, AnnConfig.from_dict(ann), mmap=mmap)
                    except IndexCorruptError as exc:
                        # index.faiss is a cache of the stored vectors: a damaged one is rebuilt, not fatal.
                        logging.getLogger(__name__).warning(
                            "%s; rebuilding it from the stored vectors ('mmsearch repair --index %s' rewrites it)",
                            exc, self.name)
                    else:
                        count = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
                        if ann_count_agrees(index, count):
                            index.copy = self._vouched_copy(ann, index)
                            return index
            # Outside the read lock (a writer may publish meanwhile), inside the snapshot (one state).
            # A reader builds in the temp folder and lets go of the files at once (its mappings stay).
            private = self.readonly or mmap
            index = self._build_vector_index(Path(tempfile.gettempdir()) if private else self.directory)
        if private:
            index.discard()
        elif persist:
            self.save_vector_index(index, generation)
        return index

    def _vouched_copy(self, ann: dict[str, Any], index: "VectorIndex") -> Any:
        """The re-rank copy the manifest vouches for (same size and time, same count), or None."""
        from .vector_copy import COPY_FILE, VectorCopy

        recorded = ann.get("copy")
        path = self.directory / COPY_FILE
        if not index.config.copy_dtype or not isinstance(recorded, dict) or not faiss_file_vouched(
                path, {"file": recorded}):
            return None
        try:
            copy = VectorCopy.open(path, self.manifest.dim)
        except IndexCorruptError as exc:
            logging.getLogger(__name__).warning("%s; re-ranking reads items.sqlite until it is rewritten", exc)
            return None
        return copy if len(copy) == recorded.get("count") else None

    def _build_vector_index(self, workdir: Path) -> "VectorIndex":
        from .ann_lifecycle import build, policy_of

        with self.snapshot():
            source = self.stored_vectors()
            return build(policy_of(self.manifest.ann), self.manifest.dim, source, workdir=workdir)

    def rebuild_vector_index(self) -> "VectorIndex":
        """A new ANN index from every stored vector, per the policy (built, then tuned); the writer saves it."""
        return self._build_vector_index(self.directory)

    def refresh_vector_index(self, index: "VectorIndex") -> "VectorIndex":
        """``index``, or a rebuilt one if the policy now wants another kind or size (growth, untrained)."""
        from .ann_lifecycle import needs_refresh, policy_of

        count = self.connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        policy = policy_of(self.manifest.ann)
        if needs_refresh(policy, index, count, self.manifest.dim):
            return self.rebuild_vector_index()
        if index.config.type == "flat":  # nothing to rebuild, but say why for today's size
            from dataclasses import replace

            from .ann_lifecycle import plan

            index.config = replace(index.config, rule=plan(policy, count, self.manifest.dim).rule)
        return index

    def set_ann_policy(self, policy: dict[str, Any]) -> None:
        """Record a new ANN policy; the caller holds the writer lock and saves a rebuilt index."""
        self._require_writable()
        self.manifest.ann = {**self.manifest.ann, "policy": dict(policy)}
        self.write_manifest()

    def save_vector_index(self, index: "VectorIndex", generation: int | None = None) -> None:
        """Write the lists file and the re-rank copy, index.faiss, then the manifest that vouches for them.

        Each file is written atomically and in that order; files of earlier
        indexes (another lists file, a copy the new kind does not keep) go once
        the manifest no longer names them.
        """
        self._require_writable()
        generation = self.generation if generation is None else generation
        try:
            if index.config.copy_dtype and index.copy is None:  # missing or stale when loaded: write it anew
                from .vector_copy import COPY_FILE, VectorCopy

                with self.snapshot():
                    source = self.stored_vectors()
                    index.copy = VectorCopy.write_from(
                        self.directory / f"{COPY_FILE}.{os.getpid()}{TEMP_SUFFIX}", self.manifest.dim, len(source),
                        source.chunks(), dtype=index.config.copy_dtype)
                index.copy.temporary = True
            counts = self.counts()
            with self._read_lock(exclusive=True):
                index.save(self.directory / FAISS_FILE)
                from .ann_lifecycle import policy_of, with_policy

                self.manifest.ann = {
                    **with_policy(index.config, policy_of(self.manifest.ann)),
                    "generation": generation, "ntotal": index.ntotal,
                    # What the manifest vouches for: a file copied over it (another index's) is not it.
                    "file": _file_record(self.directory / FAISS_FILE),
                    **({"copy": {**_file_record(index.copy.path), "count": len(index.copy)}}
                       if index.copy is not None and index.copy.path is not None else {}),
                    **({"lists": {**_file_record(index.lists_file), "name": index.lists_file.name}}
                       if index.lists_file is not None else {}),
                }
                self.manifest.counts = counts
                self.write_manifest()
                self._remove_unnamed_ann_files(index)
        except (OSError, RuntimeError) as exc:  # faiss reports write errors as RuntimeError
            reason = describe_write_error(exc) if isinstance(exc, OSError) else str(exc).splitlines()[0]
            raise MMSearchError(
                f"could not write index {self.name!r} ({reason}); "
                "the items committed so far are safe and the next run finishes the job"
            ) from exc

    def _remove_unnamed_ann_files(self, index: "VectorIndex") -> None:
        """Delete lists files and a re-rank copy the manifest no longer names (readers' mappings stay valid)."""
        from .ann import LISTS_SUFFIX
        from .vector_copy import COPY_FILE

        keep = index.lists_file
        for old in self.directory.glob("index.*" + LISTS_SUFFIX):
            if keep is None or old.resolve() != keep.resolve():
                old.unlink(missing_ok=True)
        if index.copy is None:
            (self.directory / COPY_FILE).unlink(missing_ok=True)


class StoredVectors:
    """The vectors of an index store as a :class:`~retrieval.vector_copy.VectorSource` (what builds and tuning read)."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.dim = store.manifest.dim
        self._count = store.connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def __len__(self) -> int:
        return int(self._count)

    def chunks(self, size: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Blocks of (ids, vectors) in id order (keyset pages: each read starts where the last one ended)."""
        db, dim, last = self.store.connect(), self.dim, None
        while True:
            rows = db.execute(
                "SELECT id, vec FROM vectors WHERE id > ? ORDER BY id LIMIT ?",
                (-(2**63) if last is None else last, size),
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            bad = next((r[0] for r in rows if len(r[1]) != 4 * dim), None)
            if bad is not None:
                raise IndexCorruptError(
                    f"index {self.store.name!r}: the stored vector of item {bad} is not {dim}-d; run 'mmsearch repair'")
            yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            last = int(ids[-1])

    def sample(self, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in self.store.connect().execute("SELECT id FROM vectors ORDER BY id")),
                          dtype=np.int64)
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=min(m, len(ids)), replace=False))
        return ids[pick], self.fetch(ids[pick])

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        return self.store.vectors_of(ids)


def _file_record(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def faiss_file_vouched(path: Path, ann: dict[str, Any]) -> bool:
    """Whether index.faiss is the very file the manifest's ANN entry describes (size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    recorded = ann.get("file")
    if not isinstance(recorded, dict):
        return True  # written before files were recorded: the generation check alone
    return recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns


def ann_files_vouched(directory: Path, ann: dict[str, Any]) -> bool:
    """Whether index.faiss, and the lists file it reads when its lists are on disk, are the ones the manifest names."""
    if not faiss_file_vouched(directory / FAISS_FILE, ann):
        return False
    lists = ann.get("lists")
    if not ann.get("lists_on_disk"):
        return True
    return isinstance(lists, dict) and isinstance(lists.get("name"), str) and faiss_file_vouched(
        directory / Path(lists["name"]).name, {"file": lists})


def ann_count_agrees(index: "VectorIndex", stored: int) -> bool:
    """Whether an ANN index can hold exactly the ``stored`` vectors.

    An index kind that cannot delete (HNSW) keeps removed ids, filtered out at
    query time by their missing rows, so it may hold more.
    """
    if getattr(index, "supports_remove", True):
        return index.ntotal == stored
    return index.ntotal >= stored
