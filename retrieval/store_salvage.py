"""Salvaging a damaged items.sqlite: copy every row that can still be read into a new file.

Part of the store (it speaks SQL). When sqlite reports the file damaged (a
truncated file, overwritten pages), ``mmsearch repair --salvage`` reads the
``items``, ``vectors``, ``meta`` and ``skips`` tables row range by row range;
a range that fails to read is split in halves until the unreadable rows are
isolated, so only the rows on damaged pages are lost. The copy replaces the
damaged file atomically, and the damaged file is kept beside it
(``items.sqlite.damaged-<time>``) for the user to inspect or delete.
A normal repair then runs on the copy: items whose vector was lost are dropped
(their files are re-encoded by the next index run), vectors whose item was
lost are dropped as strays. A vector whose row survived is never dropped
unless it disagrees with the model.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import IndexCorruptError
from .store_schema import ITEM_COLUMNS, SCHEMA1_COLUMNS, SCHEMA_SQL

_CHUNK = 512  # rows per read before splitting on errors


@dataclass
class SalvageReport:
    """What a salvage copied and what it could not read."""

    items: int = 0
    vectors: int = 0
    unreadable_ranges: int = 0  # id ranges (single rows at the finest) that failed to read
    kept_as: str = ""  # where the damaged file now is

    def as_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


def _readable_copy(damaged: Path, copy: Path) -> None:
    """Copy the damaged file so sqlite will read what is left of it.

    A truncated file ends mid-page and its header still counts the pages it
    had; sqlite then refuses even the schema. The copy is padded to whole
    pages and its header's page count set to what the file holds.
    """
    data = bytearray(damaged.read_bytes())
    if len(data) >= 100 and data[:16] == b"SQLite format 3\x00":
        page = int.from_bytes(data[16:18], "big")
        page = 65536 if page == 1 else page
        if page >= 512:
            data += bytes((-len(data)) % page)
            data[28:32] = (len(data) // page).to_bytes(4, "big")
    copy.write_bytes(bytes(data))


def _open_damaged(path: Path) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro&immutable=1"
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    db.execute("PRAGMA query_only=ON")
    return db


def _max_id(db: sqlite3.Connection, table: str) -> int:
    """The largest rowid sqlite reports (0 when even that cannot be read: the copy then probes)."""
    try:
        row = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()
        return int(row[0] or 0)
    except sqlite3.DatabaseError:
        return 0


# Ranges of _CHUNK ids in a row, past the largest id sqlite reports (or could not), that yield no row at
# all: the rest of the table is gone (a truncated file). Ids are dense, so a real gap this wide is unlikely.
_GIVE_UP_AFTER = 16


def _copy_rows(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, columns: tuple[str, ...],
               report: SalvageReport) -> int:
    """Copy ``table``'s readable rows; a range that fails is halved until single unreadable rows remain."""
    listed = ", ".join(columns)
    insert = f"INSERT OR IGNORE INTO {table} ({listed}) VALUES ({','.join('?' * len(columns))})"
    select = f"SELECT {listed} FROM {table} WHERE rowid >= ? AND rowid < ?"
    copied = 0

    point = f"SELECT {listed} FROM {table} WHERE rowid = ?"

    def read(low: int, high: int) -> list[tuple] | None:
        try:
            if high - low == 1:
                # A point lookup: a one-id range scan would step onto the next (damaged) row to end.
                return src.execute(point, (low,)).fetchall()
            return src.execute(select, (low, high)).fetchall()
        except sqlite3.DatabaseError:
            return None

    def salvage_range(low: int, high: int) -> int:
        """Rows of [low, high) that can be read, halving failed ranges; returns how many were copied."""
        count = 0
        stack = [(low, high)]
        while stack:
            a, b = stack.pop()
            rows = read(a, b)
            if rows is None:
                if b - a <= 1:
                    report.unreadable_ranges += 1
                    continue
                mid = (a + b) // 2
                stack.extend([(mid, b), (a, mid)])
                continue
            if rows:
                dst.executemany(insert, rows)
                count += len(rows)
        return count

    top = _max_id(src, table)
    low, empty_failures = 0, 0
    while True:
        high = low + _CHUNK
        rows = read(low, high)
        if rows is None:
            got = salvage_range(low, high)
            copied += got
            empty_failures = 0 if got else empty_failures + 1
            if empty_failures >= _GIVE_UP_AFTER and low > top:
                break
            low = high
            continue
        empty_failures = 0
        if rows:
            dst.executemany(insert, rows)
            copied += len(rows)
            low = high
            continue
        # Nothing in this range: jump to the next id that exists (ids can be sparse).
        try:
            nxt = src.execute(f"SELECT min(rowid) FROM {table} WHERE rowid >= ?", (high,)).fetchone()[0]
        except sqlite3.DatabaseError:
            nxt = high  # cannot tell: go on range by range
        if nxt is None:
            break
        low = int(nxt)
    return copied


def salvage(directory: Path, items_db: str) -> SalvageReport:
    """Copy the readable rows of ``directory/items_db`` into a new file that replaces it; the caller holds the lock."""
    damaged = directory / items_db
    report = SalvageReport()
    readable = directory / f"{items_db}.salvage-source.tmp"
    try:
        _readable_copy(damaged, readable)
        src = _open_damaged(readable)
        columns = {row[1] for row in src.execute("PRAGMA table_info(items)")}
    except (sqlite3.DatabaseError, OSError) as exc:
        readable.unlink(missing_ok=True)
        raise IndexCorruptError(
            f"{damaged} cannot be read at all ({exc}): nothing to salvage; 'mmsearch drop {directory.name}' "
            "and index the folders again"
        ) from exc
    item_columns = ITEM_COLUMNS + ("indexed_at",) if "real_path" in columns else SCHEMA1_COLUMNS
    fresh = directory / f"{items_db}.salvage.tmp"
    fresh.unlink(missing_ok=True)
    dst = sqlite3.connect(fresh, isolation_level=None)
    try:
        dst.execute("PRAGMA page_size=16384")
        dst.executescript(SCHEMA_SQL)
        dst.execute("BEGIN")
        report.items = _copy_rows(src, dst, "items", item_columns, report)
        report.vectors = _copy_rows(src, dst, "vectors", ("id", "vec"), report)
        for table, cols in (("meta", ("key", "value")), ("skips", ("path", "reason", "seen_at"))):
            try:
                _copy_rows(src, dst, table, cols, report)
            except sqlite3.DatabaseError:
                report.unreadable_ranges += 1  # a missing or unreadable small table: start it empty
        # The stored state changed: readers must not trust index.faiss built from the old one.
        dst.execute("INSERT INTO meta (key, value) VALUES ('generation', '1') "
                    "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
        dst.execute("COMMIT")
    except BaseException:
        dst.close()
        src.close()
        fresh.unlink(missing_ok=True)
        readable.unlink(missing_ok=True)
        raise
    dst.close()
    src.close()
    readable.unlink(missing_ok=True)
    kept = directory / f"{items_db}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(damaged, kept)
    for suffix in ("-wal", "-shm"):
        Path(str(damaged) + suffix).unlink(missing_ok=True)
    os.replace(fresh, damaged)
    report.kept_as = str(kept)
    return report
