"""Videos in an index: one ``video`` item per file, one ``frame`` item (with a vector) per sampled moment.

The video item is keyed by its path, like an image, and holds the file's
size, time, fingerprint and identity, its displayed size, capture time, place
and camera (the photo columns), and in ``meta`` what the video is (duration,
codec, rotation, HDR; how it was sampled; ``truncated`` and ``problems`` for
a damaged file). It has no vector of its own. Each frame item is keyed
``PATH#t=SECONDS``, has the video's path, ``parent_id`` (its video) and
``time``, and one vector.

A video is one unit of work: :meth:`VideoWriter.write` commits the video and
all its frames in one sqlite transaction (:meth:`store.IndexStore.commit_video`),
so a run killed during a long video loses that video's work and nothing
else, and never leaves half a video. A changed video is sampled again and
replaces its frames (same video id); a renamed or copied one (same
fingerprint) takes its twin's frames without decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .photo_meta import META_VERSION, PhotoMeta, file_time_meta
from .photo_store import photo_columns, with_places
from .store import PHOTO_COLUMNS, IndexStore, NewItem
from .video_files import frame_key

if TYPE_CHECKING:
    from .ann import VectorIndex
    from .indexer import UpdatePlan
    from .video_embed import EmbeddedVideo

__all__ = ["VideoOutcome", "VideoWriter", "video_outcome_of"]


@dataclass(frozen=True)
class VideoOutcome:
    """One video file's result as the store takes it, whichever engine produced it.

    ``frames`` are (seconds, why kept, vector), in time order. ``reused``: the
    file's content is already indexed; its frames are copied from the video
    with fingerprint ``hash`` (``frames`` is empty).
    """

    key: str
    size: int | None
    mtime_ns: int | None
    hash: str | None
    frames: tuple[tuple[float, str, np.ndarray], ...] = ()
    width: int = 0
    height: int = 0
    error: str | None = None
    reused: bool = False
    dev: int | None = None
    inode: int | None = None
    real_path: str | None = None
    photo: PhotoMeta | None = None
    info: dict[str, Any] = field(default_factory=dict)


def video_outcome_of(video: "EmbeddedVideo", key: str | None = None) -> VideoOutcome:
    """An :class:`~retrieval.video_embed.EmbeddedVideo` (the video pipeline's result) as the store takes it."""
    entry = video.entry
    return VideoOutcome(
        key=str(entry.path) if key is None else key, size=entry.size, mtime_ns=entry.mtime_ns, hash=video.hash,
        frames=tuple((f.time, f.reason, f.vector) for f in video.frames), width=video.width, height=video.height,
        error=video.error, reused=video.reused, dev=entry.dev, inode=entry.inode, real_path=entry.real_path,
        photo=video.photo, info=dict(video.info),
    )


class VideoWriter:
    """Writes video outcomes into a store during one index run (the caller holds the writer lock).

    ``index`` is the run's ANN index, updated in step with each commit.
    ``reencode`` samples a file again when the twin it was to be copied from
    vanished meanwhile (None: the file is reported with a reason that makes
    the next run encode it).
    """

    def __init__(self, store: IndexStore, plan: "UpdatePlan", index: "VectorIndex",
                 reencode: Callable[[VideoOutcome], VideoOutcome] | None = None) -> None:
        self.store = store
        self.plan = plan
        self.index = index
        self.reencode = reencode

    def write(self, out: VideoOutcome) -> None:
        """Commit one video with all its frames (one transaction), and count it in the plan's report."""
        report = self.plan.report
        is_update = out.key in self.plan.known
        columns: dict[str, Any] = photo_columns(out.photo)
        meta: str | None = json.dumps(out.info, ensure_ascii=False) if out.info else None
        frames = list(out.frames)
        width, height, error = out.width, out.height, out.error
        copied = False
        if out.reused and out.hash:
            twin = self.store.video_twin(out.hash)
            if twin is not None:
                frames, meta = self._twin_frames(twin.id), twin.meta
                width, height = twin.width or 0, twin.height or 0
                columns = self._twin_columns(twin, out.mtime_ns)
                copied = True
                report.reused += 1
            elif self.reencode is not None:  # the twin vanished meanwhile: sample this file after all
                out = self.reencode(out)
                return self.write(out) if not out.reused else self._fail(out, is_update, "unknown error")
            else:
                # A READ_ERROR_PREFIXES reason: the next 'mmsearch index' of its folder samples it.
                error = ("no vector yet: the shard reused an indexed video with the same content, which is gone; "
                         "the next 'mmsearch index' of its folder samples it")
        if not frames:
            return self._fail(out, is_update, error or "no frame could be embedded")
        video = NewItem(
            kind="video", key=out.key, path=out.key, size=out.size, mtime_ns=out.mtime_ns, hash=out.hash,
            width=width or None, height=height or None, meta=meta, dev=out.dev, inode=out.inode,
            real_path=out.real_path, ok_without_vector=True, **columns,
        )
        video = with_places([video])[0]
        items = [NewItem(kind="frame", key=frame_key(out.key, t), path=out.key, time=t, vector=v,
                         meta=json.dumps({"reason": reason}) if reason else None)
                 for t, reason, v in frames]
        self._commit(video, items)
        if is_update:
            report.updated += 1
        else:
            report.added += 1
        if not copied:
            report.encoded += 1
            report.videos += 1
            report.frames += len(items)
            report.video_seconds += float(out.info.get("duration") or 0.0)
        if out.info.get("truncated") or out.info.get("stopped_early"):
            problems = out.info.get("problems") or ["the file ends early"]
            report.partial.append((out.key, "; ".join(problems[:3])))

    def _fail(self, out: VideoOutcome, is_update: bool, error: str) -> None:
        self.plan.skip(out.key, error)
        video = NewItem(kind="video", key=out.key, path=out.key, size=out.size, mtime_ns=out.mtime_ns,
                        hash=out.hash, error=error, dev=out.dev, inode=out.inode, real_path=out.real_path)
        self._commit(video, [])

    def _commit(self, video: NewItem, frames: list[NewItem]) -> None:
        added, dropped = self.store.commit_video(video, frames)
        self.index.remove(np.asarray(dropped, dtype=np.int64))
        if added and self.index.is_trained:  # an untrained IVF index is built at the end of the run
            vectors = np.stack([f.vector for f in frames]).astype(np.float32)  # type: ignore[misc]
            self.index.add(np.asarray(added, dtype=np.int64), vectors)

    def _twin_frames(self, video_id: int) -> list[tuple[float, str, np.ndarray]]:
        listed = self.store.frames_of(video_id)
        vectors = self.store.vectors_of([i for i, _ in listed])
        reasons = {i: _reason(r.meta) for i, r in self.store.items_by_id([i for i, _ in listed]).items()}
        return [(t, reasons.get(i, ""), vectors[n]) for n, (i, t) in enumerate(listed)]

    @staticmethod
    def _twin_columns(twin: Any, mtime_ns: int | None) -> dict[str, Any]:
        """The twin's capture columns; a time the twin took from its own file time is the copy's own file time."""
        columns = {c: getattr(twin, c) for c in PHOTO_COLUMNS}
        if twin.meta_version is None:
            return {}
        if columns.get("time_source") == "file-mtime":
            own = file_time_meta(PhotoMeta(), mtime_ns)
            columns.update(taken_at=own.taken_at, taken_ts=own.taken_ts, local_ts=own.local_ts,
                           time_source=own.time_source, utc_offset_min=own.utc_offset_min)
        columns["meta_version"] = META_VERSION
        return columns


def _reason(meta: str | None) -> str:
    try:
        data = json.loads(meta) if meta else {}
    except ValueError:
        return ""
    return str(data.get("reason", "")) if isinstance(data, dict) else ""
