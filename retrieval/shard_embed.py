"""Embedding files straight into Parquet shards, with no index: ``mmsearch embed``.

The first half of the clip-retrieval workflow: embed on whatever machines
hold the pictures (locally, or on a Ray cluster), ship the shards, and build
the index with ``mmsearch merge`` (:mod:`retrieval.merge`). The vectors are
those of a local ``mmsearch index`` run: same pipeline, same model.
"""

from __future__ import annotations

import os
import time
from itertools import chain
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from .errors import SourceError
from .indexer import ProgressFn, SkipFn, list_files, outcome_of, split_videos
from .shards import ShardModel, ShardWriter
from .sources import Skipped
from .urls import is_url, url_reader

if TYPE_CHECKING:
    from .engine_ray import RayCfg
    from .video import FrameSampling

DEFAULT_ROWS_PER_SHARD = 10_000  # ~20 MB of 512-d vectors per file


@dataclass
class EmbedResult:
    """What ``embed_to_shards`` wrote."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    embedded: int = 0
    failed: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    model: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "shards": self.files, "rows": self.rows, "embedded": self.embedded, "failed": self.failed,
            "seconds": round(self.seconds, 3), "model": self.model,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def embed_to_shards(
    roots: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    model: str,
    engine: str = "local",
    ray: "RayCfg | None" = None,
    exclude: Sequence[str] = (),
    batch_size: int = 32,
    workers: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    on_progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
    videos: bool = True,
    sampling: "FrameSampling | None" = None,
) -> EmbedResult:
    """Embed every image and video under ``roots`` into Parquet shards in ``output`` (a folder or a URL).

    Images come first, then videos (a local index run's order); each video
    is one row and a row per sampled frame, always in one shard.
    """
    from .encoder import load_encoder

    started = time.perf_counter()
    result = EmbedResult()

    def skip(path: str, reason: str) -> None:
        result.failed += 1
        result.skipped.append((path, reason))
        if on_skip:
            on_skip(path, reason)

    def walk_skip(s: Skipped) -> None:
        skip(s.path, s.reason)

    for root in roots:
        if not is_url(os.fspath(root)) and not os.path.exists(root):
            raise SourceError(f"no such file or directory: {os.fspath(root)}")
    images, clips = split_videos(list_files(roots, exclude=exclude, on_skip=walk_skip, videos=videos))
    entries = images + clips
    if not entries:
        raise SourceError(f"no image{' or video' if videos else ''} files found in "
                          f"{', '.join(os.fspath(r) for r in roots)}")
    if engine == "ray":
        from dataclasses import replace

        from .engine_ray import RayCfg, require_ray

        require_ray()
        ray = replace(ray or RayCfg(), batch_size=batch_size, device=device, precision=precision)
    # Loaded here for the spec + fingerprint the shards record (the Ray workers load their own).
    encoder = load_encoder(model, device=device, precision=precision, threads=threads)
    shard_model = ShardModel(encoder.spec, encoder.fingerprint, encoder.dim)
    result.model = encoder.spec
    writer = ShardWriter(output, shard_model)
    done = 0
    if on_progress:
        on_progress(0, len(entries))

    def account(table: object) -> None:
        nonlocal done
        errors = table.column("error").to_pylist()  # type: ignore[attr-defined]
        names = table.column_names  # type: ignore[attr-defined]
        kinds = table.column("kind").to_pylist() if "kind" in names else [None] * len(errors)  # type: ignore[attr-defined]
        files = 0
        for key, error, kind in zip(table.column("path").to_pylist(), errors, kinds):  # type: ignore[attr-defined]
            if kind == "frame":
                continue  # a part of its video, counted with it
            files += 1
            if error is not None:
                skip(key, error)
            else:
                result.embedded += 1
        result.rows += len(errors)
        done += files
        if on_progress:
            on_progress(done, len(entries))

    if engine == "ray":
        from .engine_ray import embed_to_shards_ray

        del encoder  # the driver only needed its fingerprint
        for table in embed_to_shards_ray(entries, shard_model, writer, ray, sampling):  # type: ignore[arg-type]
            account(table)
    else:
        from .embed import ImagePipeline
        from .video_embed import VideoPipeline
        from .video_index import video_outcome_of

        pipeline = ImagePipeline(encoder, batch_size=batch_size, workers=workers, read=url_reader())
        video_pipeline = VideoPipeline(encoder, batch_size=batch_size, workers=workers, sampling=sampling)
        ids: list[int] = []
        pending: list = []
        rows = 0
        outcomes = chain(
            (outcome_of(out) for batch in pipeline.run(images) for out in batch),
            (video_outcome_of(video) for video in video_pipeline.run(clips)),
        )
        for out in outcomes:
            ids.append(len(ids))
            pending.append(out)
            rows += 1 + len(getattr(out, "frames", ()))  # a video's frames always go in its shard
            if rows >= rows_per_shard:
                account(writer.write(ids[-len(pending):], pending))
                pending, rows = [], 0
        if pending:
            account(writer.write(ids[-len(pending):], pending))
    result.files = list(writer.files)
    result.seconds = time.perf_counter() - started
    return result
