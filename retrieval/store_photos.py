"""The capture-metadata half of :class:`retrieval.store.IndexStore` (what retrieval.photo_store reads and writes)."""

from __future__ import annotations

from typing import Any

from .store_db import write_transaction
from .store_rows import PHOTO_COLUMNS, PhotoStats
from .store_schema import from_db, to_db


class PhotoMetadataMixin:
    """Capture time, camera and place per item; mixed into IndexStore (uses its connection and write transactions)."""

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
