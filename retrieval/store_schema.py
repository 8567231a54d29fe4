"""items.sqlite's schema: its tables, the columns of an item, path text, and migrations.

Part of the store (with :mod:`retrieval.store`, the only modules that speak
SQL). Schema 2 (this one) adds to schema 1:

- ``meta`` rows ``model``, ``fingerprint`` and ``dim``: the model that made
  the vectors, written with the first transaction, so an index whose
  manifest.json is lost or damaged can be rebuilt from items.sqlite alone;
- per item, the file's identity when it was indexed (``dev``, ``inode``,
  ``real_path``: the server serves a file only while it is still that file),
  the capture metadata of photos (time, camera, GPS, place), and
  ``parent_id``/``time`` for frames of videos (kinds ``video`` and ``frame``);
- ``skips``: files and folders the last walk could not take, with why
  (``mmsearch info --failed`` lists them beside the files that failed to decode).

Paths are stored as text. A file name that is not valid UTF-8 (old archives,
zips from other systems) reaches Python with its bad bytes as lone surrogates
(``os.fsdecode``), which sqlite cannot store; :func:`to_db` maps those to
private-use characters and :func:`from_db` maps them back, so the real bytes
of the path survive the round trip.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

# Schema migrations: MIGRATIONS[v] upgrades items.sqlite from schema v to v + 1
# inside one transaction with foreign keys off (a table rebuild must not cascade
# into the vectors). It must be idempotent: a crash before the manifest is
# rewritten runs it again. An index older than the oldest key here is refused.
Migration = Callable[[sqlite3.Connection], None]

PAGE_SIZE = 16384  # sqlite page size of new indexes

# Every column of an item, in the order ItemRow takes them.
ITEM_COLUMNS: tuple[str, ...] = (
    "id", "kind", "key", "path", "text", "size", "mtime_ns", "hash", "width", "height", "status", "error", "meta",
    "dev", "inode", "real_path", "parent_id", "time",
    "taken_at", "taken_ts", "local_ts", "time_source", "utc_offset_min", "camera_make", "camera_model", "lens",
    "gps_lat", "gps_lon", "gps_alt", "place_city", "place_region", "place_country", "place_cc", "meta_version",
)
PATH_COLUMNS = frozenset({"key", "path", "real_path"})  # text that may hold a non-UTF-8 file name
SCHEMA1_COLUMNS: tuple[str, ...] = ITEM_COLUMNS[:13] + ("indexed_at",)

_ITEMS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id        INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('image', 'text', 'video', 'frame')),
    key       TEXT NOT NULL UNIQUE,      -- images/videos: absolute path; frames: path#t=SECONDS; texts: source#id
    path      TEXT,                      -- images, videos and frames: absolute path of the file
    text      TEXT,                      -- texts: the text itself
    size      INTEGER,
    mtime_ns  INTEGER,
    hash      TEXT,                      -- content hash (blake2b-128) for rename/copy detection
    width     INTEGER,
    height    INTEGER,
    status    TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error     TEXT,
    meta      TEXT,                      -- JSON for extra fields
    indexed_at REAL NOT NULL,
    dev       INTEGER,                   -- st_dev / st_ino / resolved path of the file when it was indexed
    inode     INTEGER,
    real_path TEXT,
    parent_id INTEGER REFERENCES {name}(id) ON DELETE CASCADE,  -- frames: their video
    time      REAL,                      -- frames: seconds into the video
    taken_at  TEXT,                      -- capture time as recorded (ISO 8601, offset when known)
    taken_ts  REAL,                      -- capture time, POSIX seconds
    local_ts  REAL,                      -- capture wall-clock time read as UTC (what date filters compare)
    time_source TEXT,                    -- exif-original, xmp, ..., file-mtime
    utc_offset_min INTEGER,
    camera_make TEXT,
    camera_model TEXT,
    lens      TEXT,
    gps_lat   REAL,
    gps_lon   REAL,
    gps_alt   REAL,
    place_city TEXT,
    place_region TEXT,
    place_country TEXT,
    place_cc  TEXT,
    meta_version INTEGER                 -- which metadata reader filled the columns above (NULL: not read yet)
)"""

SCHEMA_SQL = _ITEMS_TABLE.format(name="items") + """;
CREATE INDEX IF NOT EXISTS items_hash ON items(hash);
CREATE INDEX IF NOT EXISTS items_parent ON items(parent_id);
CREATE TABLE IF NOT EXISTS vectors (
    id  INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE,
    vec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS skips (path TEXT PRIMARY KEY, reason TEXT NOT NULL, seen_at REAL NOT NULL);
"""


def _schema1_to_2(db: sqlite3.Connection) -> None:
    """Rebuild ``items`` with the schema-2 columns and kinds; vectors keep their ids (no re-encoding)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    if "real_path" not in columns:  # not done yet (a crash after the commit runs this again)
        db.execute(_ITEMS_TABLE.format(name="items_v2"))
        listed = ", ".join(SCHEMA1_COLUMNS)
        db.execute(f"INSERT INTO items_v2 ({listed}) SELECT {listed} FROM items")
        db.execute("DROP TABLE items")
        db.execute("ALTER TABLE items_v2 RENAME TO items")
    db.execute("CREATE INDEX IF NOT EXISTS items_hash ON items(hash)")
    db.execute("CREATE INDEX IF NOT EXISTS items_parent ON items(parent_id)")
    db.execute("CREATE TABLE IF NOT EXISTS skips (path TEXT PRIMARY KEY, reason TEXT NOT NULL, seen_at REAL NOT NULL)")


MIGRATIONS: dict[int, Migration] = {1: _schema1_to_2}


# -- paths as text ----------------------------------------------------------------------

_SURROGATE_BASE = 0xDC00  # os.fsdecode turns an undecodable byte b (>= 0x80) into chr(0xDC00 + b)
_PRIVATE_BASE = 0xF0000  # ... which is stored as chr(0xF0000 + b), a private-use character


def to_db(text: str | None) -> str | None:
    """A path as sqlite stores it: undecodable bytes (lone surrogates) become private-use characters."""
    if text is None or text.isascii():
        return text
    return "".join(
        chr(_PRIVATE_BASE + ord(c) - _SURROGATE_BASE) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text
    )


def from_db(text: str | None) -> str | None:
    """The inverse of :func:`to_db`: the path as the operating system names it."""
    if text is None or text.isascii():
        return text
    return "".join(
        chr(_SURROGATE_BASE + ord(c) - _PRIVATE_BASE) if _PRIVATE_BASE + 0x80 <= ord(c) <= _PRIVATE_BASE + 0xFF else c
        for c in text
    )


def is_ambiguous_path(text: str) -> bool:
    """A valid-UTF-8 name holding the private-use characters :func:`to_db` uses (it could not round-trip)."""
    return not text.isascii() and any(_PRIVATE_BASE + 0x80 <= ord(c) <= _PRIVATE_BASE + 0xFF for c in text)
