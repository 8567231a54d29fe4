"""The video half of :class:`retrieval.store.IndexStore`: a 'video' row and its 'frame' rows."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from .store_db import write_transaction
from .store_rows import _ITEM_SELECT, ItemRow, NewItem


class VideoRowsMixin:
    """A video (no vector) and its frames (one vector each), written and read together; mixed into IndexStore."""

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
