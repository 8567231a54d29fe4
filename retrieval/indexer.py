"""Bringing an index up to date with folders on disk.

Only what changed is embedded: new files, and files whose size or mtime
changed. Files that disappeared from the scanned folders are removed. A file
whose content is already indexed (renamed, moved or copied) gets the stored
vector instead of a fresh encode. Work is committed in chunks, so an
interrupted run keeps what it finished and the next run resumes.
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
    commit_every: int = 256,
    max_pixels: int = 178_956_970,
    on_progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
) -> IndexReport:
    """Embed what changed under ``roots`` into ``store``; the caller holds the writer lock."""
    started = time.perf_counter()
    report = IndexReport()

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
    gone = [v[0] for k, v in known.items() if k not in seen and _under(k, abs_roots)]
    if not entries and not gone and report.failed == 0:
        shown = ", ".join(abs_roots)
        raise SourceError(f"no image files found in {shown} (looked for: {', '.join(sorted(IMAGE_EXTENSIONS))})")

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
        if added:
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
    store.save_vector_index(index)
    report.seconds = time.perf_counter() - started
    return report


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
