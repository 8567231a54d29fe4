"""Merging Parquet embedding shards into an index, exactly as a local run writes it.

Both ``mmsearch merge`` (shards made elsewhere) and the Ray engine (shards made
by its workers) end here, and both go through :func:`indexer.apply_outcomes`
(a video with all its frames in one transaction),
the local indexer's own writer: rows are committed in listing order (so item
ids match a local run), one sqlite transaction per ``commit_every`` rows (a
crash keeps every committed batch), failed files are reported like a local
run's, and the FAISS file is rewritten once at the end.

Every shard is validated (readable, our format, one model, the index's model)
before the first write, so a missing, damaged or foreign shard leaves an
existing index exactly as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import catalog
from .errors import IndexLockedError, MMSearchError
from .indexer import (
    FileOutcome,
    IndexReport,
    ProgressFn,
    SkipFn,
    UpdatePlan,
    apply_outcomes,
    finish_unchanged,
)
from .shards import Shard, check_model, open_shards, table_outcomes
from .store import MANIFEST, IndexStore
from .video_index import VideoOutcome

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_COMMIT_EVERY = 256  # rows per sqlite transaction: vectors are ready, so larger than an encoder batch


def merge_tables(
    store: IndexStore,
    plan: UpdatePlan,
    tables: Iterable["pa.Table"],
    *,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    reencode: Callable[[FileOutcome], FileOutcome] | None = None,
    reencode_video: Callable[[VideoOutcome], VideoOutcome] | None = None,
    on_progress: ProgressFn | None = None,
) -> IndexReport:
    """Apply shard tables (in merge order, rows of ``plan.todo`` only) to ``store``; the caller holds the lock.

    The Ray engine calls this with tables as its workers finish them; ``reencode``
    embeds a file whose content twin changed during the run (see ``apply_outcomes``).
    """
    batches = (chunk for table in tables for chunk in _chunks(table_outcomes(table), commit_every))
    return apply_outcomes(
        store, plan, batches, commit_every=commit_every, reencode=reencode, reencode_video=reencode_video,
        on_progress=on_progress,
    )


def merge_shards(
    store: IndexStore,
    shards: Sequence[Shard],
    *,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    on_progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
) -> IndexReport:
    """Merge validated shards (see :func:`shards.open_shards`) into ``store``; the caller holds the writer lock.

    The incremental rules are a local run's: a row whose file the index already
    has with the same size and mtime is left alone, a changed one updates its
    item (same id), a new one is added. When several rows name the same file,
    the last one in merge order wins. Nothing is removed: shards say what
    exists, not what was deleted (``mmsearch prune`` drops vanished files).
    """
    if not shards:
        raise MMSearchError("no shards to merge")
    check_model(shards[0].model, store.manifest)
    store.remove_temp_files()  # the lock is ours: any temp file is left from an interrupted run
    plan = UpdatePlan(
        todo=[], gone=[], known=store.file_states(), report=IndexReport(), started=time.perf_counter(), on_skip=on_skip
    )
    selected = _select_rows(shards, plan)
    total = sum(_files_in(shards[i], rows) for i, rows in selected.items())
    if total == 0:
        return finish_unchanged(store, plan)
    cache = _vectors_at_risk(store, shards, selected, plan)

    def tables() -> Iterator[list["FileOutcome | VideoOutcome"]]:
        for i, shard in enumerate(shards):
            rows = selected.get(i)
            if rows:
                outcomes = table_outcomes(shard.read().take(rows))
                yield from _chunks(outcomes, commit_every)

    return apply_outcomes(
        store, plan, tables(), total=total, commit_every=commit_every, vector_for_hash=cache.get,
        on_progress=on_progress,
    )


def _select_rows(shards: Sequence[Shard], plan: UpdatePlan) -> dict[int, list[int]]:
    """shard index -> row positions to apply: the last row per file, unless the index already has that file as is.

    A video's frame rows go with its row (they follow it, with its id).
    """
    last: dict[str, tuple[int, int]] = {}
    for i, shard in enumerate(shards):
        kinds = _kinds(shard)
        for j, key in enumerate(shard.rows.column("path").to_pylist()):
            if kinds[j] != "frame":
                last[key] = (i, j)
    chosen: dict[int, list[int]] = {}
    for i, shard in enumerate(shards):
        sizes = shard.rows.column("size").to_pylist()
        mtimes = shard.rows.column("mtime_ns").to_pylist()
        ids = shard.rows.column("id").to_pylist()
        kinds = _kinds(shard)
        for j, key in enumerate(shard.rows.column("path").to_pylist()):
            if kinds[j] == "frame" or last[key] != (i, j):
                continue
            old = plan.known.get(key)
            if old is not None and old[1] == sizes[j] and old[2] == mtimes[j]:
                if old[4] == "failed":
                    plan.report.failed += 1  # as a local run: still undecodable, not retried
                else:
                    plan.report.unchanged += 1
                continue
            rows = chosen.setdefault(i, [])
            rows.append(j)
            k = j + 1
            while k < len(kinds) and kinds[k] == "frame" and ids[k] == ids[j]:
                rows.append(k)
                k += 1
    return chosen


def _kinds(shard: Shard) -> list[str | None]:
    if "kind" in shard.rows.column_names:
        return shard.rows.column("kind").to_pylist()
    return [None] * shard.rows.num_rows  # a format-1 shard: images only


def _files_in(shard: Shard, rows: list[int]) -> int:
    kinds = _kinds(shard)
    return sum(1 for j in rows if kinds[j] != "frame")


def _vectors_at_risk(
    store: IndexStore, shards: Sequence[Shard], selected: dict[int, list[int]], plan: UpdatePlan
) -> dict[str, np.ndarray]:
    """Vectors that ``reused`` rows will ask for but that rows merged earlier may overwrite first.

    A reused row has no vector of its own: it names an indexed file with the same
    content. If that file is itself updated by this merge (new content), its old
    vector would be gone by then; a local run re-encodes, a merge has no model,
    so those few vectors are read before anything is written.
    """
    wanted: set[str] = set()
    overwritten: set[str] = set()
    for i, rows in selected.items():
        table = shards[i].rows.take(rows)
        for key, digest, reused in zip(
            table.column("path").to_pylist(), table.column("hash").to_pylist(), table.column("reused").to_pylist()
        ):
            if reused and digest:
                wanted.add(digest)
            old = plan.known.get(key)
            if old is not None and old[3]:
                overwritten.add(old[3])
    cache: dict[str, np.ndarray] = {}
    for digest in wanted & overwritten:
        vector = store.vector_for_hash(digest)
        if vector is not None:
            cache[digest] = vector
    return cache


def _chunks(items: list["FileOutcome | VideoOutcome"], size: int) -> Iterator[list["FileOutcome | VideoOutcome"]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


# -- the library entry point behind `mmsearch merge` ---------------------------------------


@dataclass(frozen=True)
class MergeResult:
    """What ``merge_into_index`` did: the report, the index's item count, and whether it was created."""

    report: IndexReport
    items: int
    created: bool
    shards: int
    model: str


def merge_into_index(
    name: str,
    locations: Sequence[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    ann: str | None = None,
    max_memory: str | int | None = None,
    target_recall: float | None = None,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    wait: bool = True,
    on_wait: Callable[[], None] | None = None,
    on_progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
) -> MergeResult:
    """Build or update index ``name`` from Parquet embedding shards (files, folders or URLs).

    A new index takes the shards' model (spec, fingerprint, dimension) without
    loading it; an existing one must have been built by that same model. All
    shards are validated first: a missing or foreign shard, damaged metadata or
    id/path columns, or a model mismatch, raises before anything is written.
    Vectors are read shard by shard while merging, so damage found there stops
    the merge after the batches already committed (each one whole); merging
    again finishes the job.
    """
    from .ann_lifecycle import make_policy

    shards = open_shards(locations)
    model = shards[0].model
    directory = catalog.index_path(name, root)
    created = False
    if (directory / MANIFEST).exists():
        store = IndexStore.open(directory, name=name)
        check_model(model, store.manifest)
    else:
        policy = make_policy(ann, max_memory, target_recall)
        store = IndexStore.create(directory, name=name, model=model.model, fingerprint=model.fingerprint, dim=model.dim)
        store.set_ann_policy(policy)
        created = True
    try:
        with store.writer_lock(wait=wait, on_wait=on_wait):
            if not created and (ann is not None or max_memory is not None or target_recall is not None):
                from .ann_lifecycle import policy_of

                current = policy_of(store.manifest.ann)
                policy = make_policy(ann, max_memory, target_recall, base=current)
                if policy != current:  # as 'mmsearch index --ann': the new policy applies at once
                    store.set_ann_policy(policy)
                    store.save_vector_index(store.rebuild_vector_index())
            report = merge_shards(
                store, shards, commit_every=commit_every, on_progress=on_progress, on_skip=on_skip
            )
        items = store.counts()["items"]
    except BaseException as exc:
        # Locked: another merge created the same index at the same moment and is filling it.
        if created and not isinstance(exc, IndexLockedError) and store.counts()["items"] == 0 \
                and not store.failed_items():
            store.close()
            try:
                catalog.remove_index_folder(name, root)  # don't leave an empty index behind
            except (OSError, MMSearchError):
                pass  # the merge's own error matters more; 'mmsearch drop' removes what is left
        raise
    finally:
        store.close()
    return MergeResult(report=report, items=items, created=created, shards=len(shards), model=model.model)
