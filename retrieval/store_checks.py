"""The integrity half of :class:`retrieval.store.IndexStore`: what retrieval.integrity checks and repairs."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Iterator

from .errors import (
    IndexCorruptError,
)
from .manifest import (
    MANIFEST,
    Manifest,
    ann_problem,
    read_manifest,
)
from .store_db import write_transaction
from .store_rows import ModelRecord
from .store_schema import from_db


class IntegrityMixin:
    """sqlite checks, untrusted rows and their removal, a manifest written anew; mixed into IndexStore."""

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
