"""Removing items on purpose: ``remove`` (files or folders named by the user) and ``prune`` (files gone).

The files themselves are never touched. Both run under the writer lock (the
caller holds it), commit in chunks (each one sqlite transaction, so an
interrupted removal keeps what it finished) and update the ANN index in step.
Checking and repairing an index is :mod:`retrieval.integrity`'s job.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from .sources import file_is_gone
from .store import IndexStore
from .urls import is_url


Plan = Callable[[list[str]], None]  # sees the keys (paths) of the items about to go


def remove_paths(
    store: IndexStore, paths: Sequence[str | os.PathLike[str]], *, chunk: int = 1000, dry_run: bool = False,
    on_plan: Plan | None = None,
) -> dict[str, int]:
    """Drop the image items at ``paths`` (files, or everything inside folders); the caller holds the writer lock.

    Paths are made absolute but not resolved (items are keyed that way) and
    need not exist any more. ``on_plan`` sees what will go before anything
    changes; ``dry_run`` stops there. Returns path -> number of items (to be) removed.
    """
    wanted = [os.path.abspath(os.fspath(p)) for p in paths]
    found = store.ids_under(wanted)
    ids = sorted({i for group in found.values() for i in group})
    if on_plan is not None:
        rows = store.items_by_id(ids)
        on_plan(sorted(rows[i].key for i in ids if i in rows))
    if not dry_run:
        _delete_ids(store, ids, chunk)
    return {p: len(found[p]) for p in wanted}


def prune_missing(
    store: IndexStore, *, chunk: int = 1000, dry_run: bool = False, on_plan: Plan | None = None
) -> list[str]:
    """Drop every image item whose file no longer exists, wherever it was; the caller holds the writer lock."""
    # URL items are not checked here (that would need the network); only local files are.
    # A file that cannot be checked (permission denied, an I/O error) is not gone: its item stays.
    gone = [
        (key, v[0]) for key, v in sorted(store.file_states().items()) if not is_url(key) and file_is_gone(key)
    ]
    if on_plan is not None:
        on_plan([k for k, _ in gone])
    if not dry_run:
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
