"""sqlite and lock plumbing of an index store: connections that report damage, write transactions, the writer lock."""

from __future__ import annotations

import fcntl
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import (
    IndexCorruptError,
    IndexLockedError,
    MMSearchError,
)
from .manifest import (
    describe_write_error,
)
from .store_rows import LOCK_FILE


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
