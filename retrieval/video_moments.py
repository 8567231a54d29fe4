"""A video hit at its best moment: every frame of the video scored exactly, its best moments listed.

:func:`retrieval.search.search_vector` finds a video through whichever of its
frames the ANN index returns first and answers it once; this module then
scores all of that video's frames from their stored vectors (at most a few
hundred per video), so the moment is the best one even under an approximate
index, and lists the video's best moments (``Hit.moments``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .search import Filters, Hit
    from .store import IndexStore

__all__ = ["MOMENTS", "with_moments"]

MOMENTS = 5  # moments a video hit lists (its best first)


def with_moments(store: "IndexStore", query: np.ndarray, hits: list[Hit], filters: Filters | None = None,
                 limit: int = MOMENTS) -> list[Hit]:
    """Video hits at their best moment, scored exactly over all their frames, with their best ``limit`` moments.

    The candidates name a video by whichever of its frames the ANN index
    found first; every frame of the video is scored here from its stored
    vector (at most a few hundred per video), so the moment is the best one
    even under an approximate index, and ``moments`` lists the video's best.
    Hits are put back in score order (a video's exact best may rank it higher).
    """
    video_ids = [h.id for h in hits if h.kind == "video"]
    if not video_ids:
        return hits
    frames = store.frames_of_videos(video_ids)
    floor = filters.min_score if filters is not None else None
    out = []
    for hit in hits:
        listed = frames.get(hit.id) if hit.kind == "video" else None
        if not listed:
            out.append(hit)
            continue
        scores = store.vectors_of([i for i, _ in listed]) @ query
        order = np.argsort(-scores, kind="stable")
        moments = [{"time": listed[j][1], "score": round(float(scores[j]), 6), "frame": listed[j][0]}
                   for j in order[:limit] if floor is None or scores[j] >= floor]
        best = int(order[0])
        if float(scores[best]) < hit.score:  # the frame found scores more than all: keep what was found
            out.append(replace(hit, moments=moments or None))
            continue
        out.append(replace(hit, score=float(scores[best]), time=listed[best][1], frame=listed[best][0],
                           moments=moments))
    out.sort(key=lambda h: -h.score)
    return [replace(h, rank=i + 1) for i, h in enumerate(out)]
