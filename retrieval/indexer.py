"""Bringing an index up to date with folders on disk, and with files of texts.

Only what changed is embedded: new files, and files whose size or mtime
changed. Files that disappeared from the scanned folders are removed. A file
whose content is already indexed (renamed, moved or copied) gets the stored
vector instead of a fresh encode.

Crash safety: every encoder batch is committed as one sqlite transaction as
soon as it is encoded, so a run killed at any moment keeps every finished
batch and the next run re-encodes at most the batch that was in flight. The
FAISS file is rewritten once, at the end; until then readers rebuild it from
the committed vectors (see store.py).

Capture metadata (time, camera, lens, GPS; see :mod:`retrieval.photo_meta`) is
read from each file's bytes as it is embedded, and places are named for GPS
positions once per committed batch. A file reused by content takes its twin's
metadata. Items indexed without metadata (by an older mmsearch, or by an engine
that does not read it) get it from their files at the end of the next run over
their folder, in batches of transactions, without re-encoding (the back-fill).

Videos (see :mod:`retrieval.video_index`) are listed with the images and
embedded after them, each video committed whole with its frames in one
transaction; ``videos=False`` (``--no-video``) leaves them out, and leaves
the videos already indexed as they are.

Safety against a vanished drive: a folder that now holds no image at all while
the index has items from it (an unmounted disk, a NAS that is offline) is an
error, not a reason to drop those items; ``maintenance.remove_paths`` drops them on purpose.
"""

from __future__ import annotations

import os
import time
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from .config import IMAGE_EXTENSIONS
from .embed import Embedded, ImagePipeline
from .errors import SourceError
from .photo_meta import META_VERSION, PhotoMeta
from .photo_store import backfill_metadata, photo_columns, twin_photo_columns, with_places
from .sources import FileEntry, Skipped, iter_files
from .store import IndexStore, NewItem
from .urls import is_url, url_reader
from .video_embed import VideoPipeline
from .video_files import VIDEO_EXTENSIONS, is_video_path
from .video_index import VideoOutcome, VideoWriter, video_outcome_of

if TYPE_CHECKING:
    import numpy as np

    from .encoder import Encoder
    from .video import FrameSampling

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
    metadata_read: int = 0  # items given their capture metadata by the back-fill (no re-encoding)
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run's failures
    videos: int = 0  # videos sampled and embedded (also counted in encoded)
    frames: int = 0  # their frames
    video_seconds: float = 0.0  # the duration of those videos
    partial: list[tuple[str, str]] = field(default_factory=list)  # (path, why): videos indexed up to a damage
    video_decode_seconds: float = 0.0  # sampling videos, summed over the decoding threads (local engine)
    video_model_seconds: float = 0.0  # the model on their frames

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "added": self.added, "updated": self.updated, "removed": self.removed,
            "unchanged": self.unchanged, "reused": self.reused, "failed": self.failed,
            "encoded": self.encoded, "metadata_read": self.metadata_read, "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }
        if self.videos or self.partial:
            data.update(videos=self.videos, frames=self.frames, video_seconds=round(self.video_seconds, 3),
                        video_decode_seconds=round(self.video_decode_seconds, 3),
                        video_model_seconds=round(self.video_model_seconds, 3),
                        partial=[{"path": p, "reason": r} for p, r in self.partial])
        return data


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


@dataclass
class UpdatePlan:
    """What one index run has to do, decided from the listing before anything is embedded.

    Every engine (this module's local pipeline, the Ray engine) plans the same
    way and applies its outcomes with :func:`apply_outcomes`, so ids, skips and
    incremental rules are those of a local run whichever engine embedded.
    """

    todo: list[FileEntry]  # new or changed files, in listing order
    gone: list[int]  # ids of items whose files left the scanned folders; removed last
    known: dict[str, tuple]  # key -> (id, size, mtime_ns, hash, status) before the run
    report: IndexReport  # so far: unchanged, still-failed and the walk's skips
    started: float  # perf_counter() when the run began
    on_skip: SkipFn | None = None
    roots: list[str] = field(default_factory=list)  # the scanned roots, as item keys
    walk_skips: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) the walk could not take
    # Files whose items lack capture metadata (or have it from an older reader): read at the end of
    # the run. None: this run does not back-fill (a merge of shards, whose files may be elsewhere).
    backfill: list[FileEntry] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.todo and not self.gone

    def known_hashes(self) -> set[str]:
        """Content hashes of items with a vector: a file with one of these is not encoded again."""
        return {h for (_, _, _, h, status) in self.known.values() if h and status == "ok"}

    def skip(self, path: str, reason: str) -> None:
        self.report.failed += 1
        self.report.skipped.append((path, reason))
        if self.on_skip:
            self.on_skip(path, reason)


@dataclass(frozen=True)
class FileOutcome:
    """One file's result as the store takes it, whichever engine produced it.

    ``reused``: the file's content is already indexed; its vector is looked up
    by ``hash`` in the store instead of being encoded (``vector`` is None).
    """

    key: str
    size: int | None
    mtime_ns: int | None
    hash: str | None
    vector: "np.ndarray | None"
    width: int = 0
    height: int = 0
    error: str | None = None
    reused: bool = False
    dev: int | None = None  # the file's identity when it was read (see sources.FileEntry)
    inode: int | None = None
    real_path: str | None = None
    photo: PhotoMeta | None = None  # capture metadata (None: not read; a reused file takes its twin's)


def root_key(root: str | os.PathLike[str]) -> str:
    """How a root is matched against item keys: an absolute path, or a URL as given."""
    text = os.fspath(root)
    return text.rstrip("/") if is_url(text) else os.path.abspath(text)


def media_extensions(videos: bool = True) -> frozenset[str]:
    """The file extensions an index run takes: images, and videos unless ``videos`` is False."""
    return IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS


def list_files(
    roots: Sequence[str | os.PathLike[str]], *, exclude: Sequence[str] = (),
    on_skip: Callable[[Skipped], None] | None = None, videos: bool = True,
) -> list[FileEntry]:
    """The image (and video) files under ``roots``: local folders walked by :func:`sources.iter_files`, then URL roots."""
    keys = [root_key(r) for r in roots]
    local = [r for r in keys if not is_url(r)]
    remote = [r for r in keys if is_url(r)]
    extensions = media_extensions(videos)
    listed = list(iter_files(local, extensions=extensions, exclude=exclude, on_skip=on_skip)) if local else []
    if remote:
        from .urls import iter_url_files

        listed += iter_url_files(remote, extensions=extensions, exclude=exclude)
    return listed


def plan_update(
    store: IndexStore,
    roots: Sequence[str | os.PathLike[str]],
    *,
    exclude: Sequence[str] = (),
    on_skip: SkipFn | None = None,
    read_metadata: bool = True,
    videos: bool = True,
) -> UpdatePlan:
    """List ``roots`` and compare with the index: what to embed, what to drop, whose metadata to read.

    Local folders are walked with :func:`sources.iter_files`, URL roots
    (``s3://...``) listed through fsspec (:mod:`retrieval.urls`); item keys are
    absolute paths and URLs. Unchanged files whose items have no capture
    metadata yet (``read_metadata``) go to ``plan.backfill``. Raises
    ``SourceError`` when there is nothing at all to index, or when a root that
    used to hold items is now empty (an unmounted drive). ``videos=False``
    lists no video, and keeps the videos already indexed as they are.
    """
    plan = UpdatePlan(todo=[], gone=[], known={}, report=IndexReport(), started=time.perf_counter(), on_skip=on_skip,
                      backfill=[] if read_metadata else None)

    def walk_skip(s: Skipped) -> None:
        plan.walk_skips.append((s.path, s.reason))
        plan.skip(s.path, s.reason)

    abs_roots = [root_key(r) for r in roots]
    plan.roots = abs_roots
    listed = list_files(abs_roots, exclude=exclude, on_skip=walk_skip, videos=videos)
    plan.known = known = store.file_states()
    if not videos:  # not looked at this time: neither changed nor gone
        known = {k: v for k, v in known.items() if not is_video_path(k)}
    unread = store.read_failures()  # a timeout or a permission since fixed: worth another try
    backlog = store.metadata_backlog(META_VERSION) if read_metadata else set()
    seen: set[str] = set()
    for entry in listed:
        key = str(entry.path)
        seen.add(key)
        old = known.get(key)
        if old is not None and old[1] == entry.size and old[2] == entry.mtime_ns and key not in unread:
            if old[4] == "failed":
                plan.report.failed += 1  # still undecodable; not retried until the file changes
            else:
                plan.report.unchanged += 1
                if key in backlog and plan.backfill is not None:
                    plan.backfill.append(entry)
            continue
        plan.todo.append(entry)
    report = plan.report
    # A folder that could not be listed this time (permissions, a flaky share), or a file
    # that could not be read, keeps its items: absence of evidence is not evidence of deletion.
    unlisted = [p for p, reason in report.skipped if "cannot list folder" in reason]
    unreadable = {p for p, reason in report.skipped if reason.startswith(("permission denied", "cannot read"))}
    plan.gone = [
        v[0] for k, v in known.items()
        if k not in seen and k not in unreadable and _under(k, abs_roots) and not (unlisted and _under(k, unlisted))
    ]
    if not listed and not plan.gone and report.failed == 0:
        shown = ", ".join(abs_roots)
        looked = ", ".join(sorted(media_extensions(videos)))
        raise SourceError(f"no image{' or video' if videos else ''} files found in {shown} (looked for: {looked})")
    _refuse_vanished_roots(abs_roots, listed, report.skipped, known)
    return plan


def finish_unchanged(store: IndexStore, plan: UpdatePlan) -> IndexReport:
    """Nothing changed: no encoder call; heal a stale FAISS file, note the walk's skips, back-fill metadata."""
    store.replace_skips(plan.roots, plan.walk_skips)
    if not store.vector_index_is_current():
        store.load_vector_index(persist=True)
    plan.report.metadata_read = backfill_metadata(store, plan)
    plan.report.seconds = time.perf_counter() - plan.started
    return plan.report


def apply_outcomes(
    store: IndexStore,
    plan: UpdatePlan,
    batches: Iterable[list["FileOutcome | VideoOutcome"]],
    *,
    total: int | None = None,
    commit_every: int = 32,
    reencode: Callable[[FileOutcome], FileOutcome] | None = None,
    reencode_video: Callable[[VideoOutcome], VideoOutcome] | None = None,
    vector_for_hash: Callable[[str], "np.ndarray | None"] | None = None,
    on_progress: ProgressFn | None = None,
) -> IndexReport:
    """Write embedded files into ``store`` in the order given, then drop ``plan.gone``; the caller holds the lock.

    One sqlite transaction per ``commit_every`` items (a crash keeps every
    committed batch), the ANN index updated in step, and the FAISS file
    rewritten once at the end. A ``reused`` outcome takes the stored vector of
    its content twin; if that twin changed meanwhile, ``vector_for_hash`` (a
    cache taken before the run) or ``reencode`` supplies it, else the file is
    reported as failed with what to do. A reused outcome also takes its twin's
    capture metadata; an item written without metadata is read by the
    back-fill at the end (when the plan back-fills). A :class:`VideoOutcome`
    is committed on its own, whole with its frames (:class:`video_index.VideoWriter`),
    after the images before it; ``reencode_video`` samples one whose twin vanished.
    """
    report = plan.report
    total = len(plan.todo) if total is None else total
    index = store.load_vector_index(persist=False)
    pending: list[NewItem] = []
    done = 0
    if on_progress:
        on_progress(0, total)

    def flush(deletes: list[int]) -> None:
        pending[:] = with_places(pending)
        added, dropped = store.commit(pending, deletes)
        index.remove(_ids(dropped))
        if added and index.is_trained:  # an untrained IVF index is built at the end of the run
            ids = _ids(added)
            vecs = [it.vector for it in pending if it.vector is not None]
            index.add(ids, _stack(vecs, store.manifest.dim))
        pending.clear()

    videos = VideoWriter(store, plan, index, reencode=reencode_video)
    for batch in batches:
        for out in batch:
            if isinstance(out, VideoOutcome):
                if pending:
                    flush([])  # ids in listing order: the images before it first
                videos.write(out)
                continue
            key = out.key
            is_update = key in plan.known
            vector, width, height, error = out.vector, out.width, out.height, out.error
            photo = photo_columns(out.photo)
            if out.reused and out.hash:
                photo = twin_photo_columns(store, out.hash, out.mtime_ns)
                vector = store.vector_for_hash(out.hash)
                if vector is None and vector_for_hash is not None:
                    vector = vector_for_hash(out.hash)
                if vector is not None:
                    report.reused += 1
                elif reencode is not None:  # the twin vanished meanwhile: fall back to encoding it
                    out = reencode(out)
                    vector, width, height, error = out.vector, out.width, out.height, out.error
                    photo = photo_columns(out.photo)
                else:
                    # A READ_ERROR_PREFIXES reason: the next 'mmsearch index' of its folder encodes it.
                    error = ("no vector yet: the shard reused an indexed file with the same content, which is gone; "
                             "the next 'mmsearch index' of its folder encodes it")
            if vector is None:
                plan.skip(key, error or "unknown error")
            elif is_update:
                report.updated += 1
            else:
                report.added += 1
            if vector is not None and not out.reused:
                report.encoded += 1
            if vector is not None and not photo and plan.backfill is not None:
                plan.backfill.append(entry_of(out))  # embedded elsewhere (Ray), or a twin not read yet
            pending.append(
                NewItem(
                    kind="image", key=key, path=key, size=out.size, mtime_ns=out.mtime_ns,
                    hash=out.hash, width=width or None, height=height or None,
                    error=None if vector is not None else (error or "unknown error"), vector=vector,
                    dev=out.dev, inode=out.inode, real_path=out.real_path, **photo,
                )
            )
        done += len(batch)
        if on_progress:
            on_progress(done, total)
        if len(pending) >= commit_every:
            flush([])
    # Removals last: a file that moved was matched by content above before its old row goes.
    report.removed = len(plan.gone)
    flush(plan.gone)
    store.replace_skips(plan.roots, plan.walk_skips)
    store.save_vector_index(store.refresh_vector_index(index))
    # After the vectors are saved: the index is whole and searchable while metadata is read.
    report.metadata_read = backfill_metadata(store, plan)
    report.seconds = time.perf_counter() - plan.started
    return report


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
    read_metadata: bool = True,
    videos: bool = True,
    sampling: "FrameSampling | None" = None,
) -> IndexReport:
    """Embed what changed under ``roots`` into ``store``; the caller holds the writer lock.

    ``commit_every`` (items per transaction) defaults to one commit per encoder
    batch: a crash then costs at most one batch of encoding. ``read_metadata=False``
    stores no capture metadata and back-fills none (benchmarks measure its cost
    with it; a later run with it back-fills what this one left out).
    ``videos=False`` leaves videos out (and the indexed ones as they are);
    ``sampling`` says which frames of a video are embedded (default: see
    :class:`retrieval.video.FrameSampling`).
    """
    if commit_every is None:
        commit_every = batch_size
    store.remove_temp_files()  # the lock is ours: any temp file is left from an interrupted run
    plan = plan_update(store, roots, exclude=exclude, on_skip=on_skip, read_metadata=read_metadata, videos=videos)
    if plan.is_empty:
        return finish_unchanged(store, plan)
    images, clips = split_videos(plan.todo)
    known = plan.known_hashes()
    pipeline = ImagePipeline(
        encoder, batch_size=batch_size, workers=workers, max_pixels=max_pixels, known_hashes=known,
        read=url_reader() if any(is_url(str(e.path)) for e in images) else None, read_metadata=read_metadata,
    )
    video_pipeline = VideoPipeline(encoder, batch_size=batch_size, workers=workers, sampling=sampling,
                                   known_hashes=known)

    def reencode(out: FileOutcome) -> FileOutcome:
        return outcome_of(pipeline_encode_one(pipeline, entry_of(out)))

    def reencode_video(out: VideoOutcome) -> VideoOutcome:
        return video_outcome_of(video_pipeline.embed_one(entry_of(out)), key=out.key)  # type: ignore[arg-type]

    batches = chain(
        ([outcome_of(e) for e in batch] for batch in pipeline.run(images)),
        ([video_outcome_of(v)] for v in video_pipeline.run(clips)),
    )
    report = apply_outcomes(
        store, plan, batches, commit_every=commit_every, reencode=reencode, reencode_video=reencode_video,
        on_progress=on_progress,
    )
    report.video_decode_seconds = video_pipeline.stats.decode_seconds
    report.video_model_seconds = video_pipeline.stats.encode_seconds
    return report


def split_videos(entries: Sequence[FileEntry]) -> tuple[list[FileEntry], list[FileEntry]]:
    """(images, videos) of a listing, each in listing order: a run embeds the images first, then the videos."""
    images = [e for e in entries if not is_video_path(str(e.path))]
    videos = [e for e in entries if is_video_path(str(e.path))]
    return images, videos


def update_texts(
    store: IndexStore,
    encoder: "Encoder",
    path: str | os.PathLike[str],
    *,
    field: str | None = None,
    id_field: str | None = None,
    batch_size: int = 64,
    on_skip: SkipFn | None = None,
) -> IndexReport:
    """Index the texts of a TXT/CSV/JSONL file (see :func:`sources.read_text_records`); the caller holds the lock.

    Texts are keyed ``text:<absolute file>#<record id>``: a re-run embeds only
    new or changed texts (by content hash) and removes texts that left the
    file. One sqlite transaction per encoder batch, as for folders.
    """
    import json

    import numpy as np

    from .embed import content_hash
    from .sources import read_text_records

    started = time.perf_counter()
    report = IndexReport()

    def skipped(s: Skipped) -> None:
        report.failed += 1
        report.skipped.append((s.path, s.reason))
        if on_skip:
            on_skip(s.path, s.reason)

    source = os.path.abspath(os.fspath(path))
    records = {r.id: r for r in read_text_records(source, field=field, id_field=id_field, on_skip=skipped)}
    if not records:
        raise SourceError(f"no texts found in {source}")
    prefix = f"text:{source}#"
    old = store.text_items(prefix)
    todo = []
    for rid, rec in records.items():
        digest = content_hash(rec.text.encode("utf-8"))
        prev = old.get(prefix + rid)
        if prev is not None and prev[1] == digest:
            report.unchanged += 1
        else:
            todo.append((rid, rec, digest, prev is not None))
    index = store.load_vector_index()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        vectors = encoder.encode_texts([rec.text for _, rec, _, _ in chunk])
        items = [
            NewItem(
                kind="text", key=prefix + rid, path=None, text=rec.text, hash=digest,
                meta=json.dumps({"source": source, "id": rid, **rec.meta}, ensure_ascii=False, default=str),
                vector=vectors[i],
            )
            for i, (rid, rec, digest, _) in enumerate(chunk)
        ]
        added, dropped = store.commit(items, [])
        index.remove(np.asarray(dropped, dtype=np.int64))
        index.add(np.asarray(added, dtype=np.int64), vectors)
        report.encoded += len(chunk)
        report.updated += sum(1 for c in chunk if c[3])
        report.added += sum(1 for c in chunk if not c[3])
    gone = [item_id for key, (item_id, _) in old.items() if key[len(prefix):] not in records]
    if gone:
        store.commit([], gone)
        index.remove(np.asarray(gone, dtype=np.int64))
    report.removed = len(gone)
    store.save_vector_index(index)
    report.seconds = time.perf_counter() - started
    return report


def entry_of(out: "FileOutcome | VideoOutcome") -> FileEntry:
    """The file an outcome is about, as the pipeline reads it (a URL stays a string)."""
    location: Path | str = out.key if is_url(out.key) else Path(out.key)
    return FileEntry(location, out.size or 0, out.mtime_ns or 0, out.dev, out.inode, out.real_path)  # type: ignore[arg-type]


def outcome_of(out: Embedded, key: str | None = None) -> FileOutcome:
    """An :class:`Embedded` (the local pipeline's result) as the store takes it."""
    entry = out.entry
    return FileOutcome(
        key=str(entry.path) if key is None else key, size=entry.size, mtime_ns=entry.mtime_ns,
        hash=out.hash, vector=out.vector, width=out.width, height=out.height, error=out.error, reused=out.reused,
        dev=entry.dev, inode=entry.inode, real_path=entry.real_path, photo=out.photo,
    )


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
                f"{root} holds no image files (nor videos) now, but the index has {held} items from it; "
                "if it is a drive that is not mounted, mount it and run again; "
                f"to drop those items, run 'mmsearch remove {root}'"
            )


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
