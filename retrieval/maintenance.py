"""Removing items on purpose: ``remove`` (files or folders named by the user) and ``prune`` (files gone).

The files themselves are never touched. Both run under the writer lock (the
caller holds it), commit in chunks (each one sqlite transaction, so an
interrupted removal keeps what it finished) and update the ANN index in step.
Checking and repairing an index is :mod:`retrieval.integrity`'s job.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .store import IndexStore
from .urls import is_url


def remove_paths(store: IndexStore, paths: Sequence[str | os.PathLike[str]], *, chunk: int = 1000) -> dict[str, int]:
    """Drop the image items at ``paths`` (files, or everything inside folders); the caller holds the writer lock.

    Paths are made absolute but not resolved (items are keyed that way) and
    need not exist any more. Returns path -> number of items removed.
    """
    wanted = [os.path.abspath(os.fspath(p)) for p in paths]
    found = store.ids_under(wanted)
    ids = sorted({i for group in found.values() for i in group})
    _delete_ids(store, ids, chunk)
    return {p: len(found[p]) for p in wanted}


def prune_missing(store: IndexStore, *, chunk: int = 1000) -> list[str]:
    """Drop every image item whose file no longer exists, wherever it was; the caller holds the writer lock."""
    # URL items are not checked here (that would need the network); only local files are.
    gone = [
        (key, v[0]) for key, v in sorted(store.file_states().items()) if not is_url(key) and not os.path.exists(key)
    ]
    _delete_ids(store, [i for _, i in gone], chunk)
    return [k for k, _ in gone]


def _delete_ids(store: IndexStore, ids: list[int], chunk: int) -> None:
    if not ids:
        return
    index = store.load_vector_index(persist=False)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        _, dropped = store.commit([], part)
        index.remove(np.asarray(dropped, dtype=np.int64))
    store.save_vector_index(store.refresh_vector_index(index))
