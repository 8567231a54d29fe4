"""Bringing an index up to date with folders on disk.

Only what changed is embedded: new files, and files whose size or mtime
changed. Files that disappeared from the scanned folders are removed. A file
whose content is already indexed (renamed, moved or copied) gets the stored
vector instead of a fresh encode.

Crash safety: every encoder batch is committed as one sqlite transaction as
soon as it is encoded, so a run killed at any moment keeps every finished
batch and the next run re-encodes at most the batch that was in flight. The
FAISS file is rewritten once, at the end; until then readers rebuild it from
the committed vectors (see store.py).

Safety against a vanished drive: a folder that now holds no image at all while
the index has items from it (an unmounted disk, a NAS that is offline) is an
error, not a reason to drop those items; ``remove_paths`` drops them on purpose.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .config import IMAGE_EXTENSIONS
from .embed import Embedded, ImagePipeline
from .errors import SourceError
from .sources import FileEntry, Skipped, iter_files
from .store import IndexStore, NewItem

if TYPE_CHECKING:
    from .encoder import Encoder

ProgressFn = Callable[[int, int], None]  # (files done, files to embed)
SkipFn = Callable[[str, str], None]  # (path, reason)


@dataclass
class IndexReport:
    """What one ``add_folder`` run did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    reused: int = 0
    failed: int = 0
    encoded: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run's failures

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added, "updated": self.updated, "removed": self.removed,
            "unchanged": self.unchanged, "reused": self.reused, "failed": self.failed,
            "encoded": self.encoded, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def update_index(
    store: IndexStore,
    encoder: "Encoder",
    roots: Sequence[str | os.PathLike[str]],
    *,
    exclude: Sequence[str] = (),
    batch_size: int = 32,
    workers: int = 0,
    commit_every: int | None = None,
    max_pixels: int = 178_956_970,
    on_progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
) -> IndexReport:
    """Embed what changed under ``roots`` into ``store``; the caller holds the writer lock.

    ``commit_every`` (items per transaction) defaults to one commit per encoder
    batch: a crash then costs at most one batch of encoding.
    """
    started = time.perf_counter()
    report = IndexReport()
    if commit_every is None:
        commit_every = batch_size
    store.remove_temp_files()  # the lock is ours: any temp file is left from an interrupted run

    def skip(path: str, reason: str) -> None:
        report.failed += 1
        report.skipped.append((path, reason))
        if on_skip:
            on_skip(path, reason)

    def walk_skip(s: Skipped) -> None:
        skip(s.path, s.reason)

    abs_roots = [os.path.abspath(os.fspath(r)) for r in roots]
    entries = list(iter_files(abs_roots, exclude=exclude, on_skip=walk_skip))
    known = store.file_states()
    seen: set[str] = set()
    todo: list[FileEntry] = []
    for entry in entries:
        key = str(entry.path)
        seen.add(key)
        old = known.get(key)
        if old is not None and old[1] == entry.size and old[2] == entry.mtime_ns:
            if old[4] == "failed":
                report.failed += 1  # still undecodable; not retried until the file changes
            else:
                report.unchanged += 1
            continue
        todo.append(entry)
    # A folder that could not be listed this time (permissions, a flaky share)
    # keeps its items: absence of evidence is not evidence of deletion.
    unlisted = [p for p, reason in report.skipped if "cannot list folder" in reason]
    gone = [
        v[0] for k, v in known.items()
        if k not in seen and _under(k, abs_roots) and not (unlisted and _under(k, unlisted))
    ]
    if not entries and not gone and report.failed == 0:
        shown = ", ".join(abs_roots)
        raise SourceError(f"no image files found in {shown} (looked for: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    _refuse_vanished_roots(abs_roots, entries, report.skipped, known)
    if not todo and not gone:
        # Nothing changed: no transaction, no encoder call; only heal a stale FAISS file.
        if not store.vector_index_is_current():
            store.load_vector_index(persist=True)
        report.seconds = time.perf_counter() - started
        return report

    index = store.load_vector_index(persist=False)
    known_hashes = {h for (_, _, _, h, status) in known.values() if h and status == "ok"}
    pipeline = ImagePipeline(
        encoder, batch_size=batch_size, workers=workers, max_pixels=max_pixels, known_hashes=known_hashes
    )
    pending: list[NewItem] = []
    done = 0
    if on_progress:
        on_progress(0, len(todo))

    def flush(deletes: list[int]) -> None:
        added, dropped = store.commit(pending, deletes)
        index.remove(_ids(dropped))
        if added and index.is_trained:  # an untrained IVF index is built at the end of the run
            ids = _ids(added)
            vecs = [it.vector for it in pending if it.vector is not None]
            index.add(ids, _stack(vecs, store.manifest.dim))
        pending.clear()

    for batch in pipeline.run(todo):
        for out in batch:
            key = str(out.entry.path)
            is_update = key in known
            vector, width, height = out.vector, out.width, out.height
            if out.reused and out.hash:
                vector = store.vector_for_hash(out.hash)
                if vector is None:  # the twin vanished meanwhile: fall back to encoding it
                    out = pipeline_encode_one(pipeline, out.entry)
                    vector, width, height = out.vector, out.width, out.height
                else:
                    report.reused += 1
            if vector is None:
                skip(key, out.error or "unknown error")
            elif is_update:
                report.updated += 1
            else:
                report.added += 1
            if vector is not None and not out.reused:
                report.encoded += 1
            pending.append(
                NewItem(
                    kind="image", key=key, path=key, size=out.entry.size, mtime_ns=out.entry.mtime_ns,
                    hash=out.hash, width=width or None, height=height or None,
                    error=None if vector is not None else (out.error or "unknown error"), vector=vector,
                )
            )
        done += len(batch)
        if on_progress:
            on_progress(done, len(todo))
        if len(pending) >= commit_every:
            flush([])
    # Removals last: a file that moved was matched by content above before its old row goes.
    report.removed = len(gone)
    flush(gone)
    store.save_vector_index(store.refresh_vector_index(index))
    report.seconds = time.perf_counter() - started
    return report


def _refuse_vanished_roots(
    roots: Sequence[str], entries: list[FileEntry], skipped: list[tuple[str, str]], known: dict[str, tuple]
) -> None:
    """A root folder with no files left but items in the index is far likelier unmounted than emptied."""
    for root in roots:
        if not os.path.isdir(root):
            continue
        if any(_under(str(e.path), [root]) for e in entries) or any(_under(p, [root]) for p, _ in skipped):
            continue
        held = sum(1 for k in known if _under(k, [root]))
        if held:
            raise SourceError(
                f"{root} holds no image files now, but the index has {held} items from it; "
                "if it is a drive that is not mounted, mount it and run again; "
                f"to drop those items, run 'mmsearch remove {root}'"
            )


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
    gone = [(key, v[0]) for key, v in sorted(store.file_states().items()) if not os.path.exists(key)]
    _delete_ids(store, [i for _, i in gone], chunk)
    return [k for k, _ in gone]


def _delete_ids(store: IndexStore, ids: list[int], chunk: int) -> None:
    if not ids:
        return
    index = store.load_vector_index(persist=False)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        _, dropped = store.commit([], part)
        index.remove(_ids(dropped))
    store.save_vector_index(store.refresh_vector_index(index))


def pipeline_encode_one(pipeline: ImagePipeline, entry: FileEntry) -> Embedded:
    saved, pipeline.known_hashes = pipeline.known_hashes, ()
    try:
        return next(iter(pipeline.run([entry])))[0]
    finally:
        pipeline.known_hashes = saved


def _ids(values: list[int]):
    import numpy as np

    return np.asarray(values, dtype=np.int64)


def _stack(vectors: list, dim: int):
    import numpy as np

    return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), dtype=np.float32)
