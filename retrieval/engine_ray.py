"""The Ray engine: decode and embed in a pool of Ray actors, merge the shards like a local run.

The driver (this process) lists the files and plans the run with the local
indexer's own rules (:func:`indexer.plan_update`), so only new or changed
files are sent out. Ray Data feeds them, a few hundred per task, to a pool of
actors (``map_batches`` with a callable class) that each load the model once
and run the local :class:`embed.ImagePipeline` and :class:`video_embed.VideoPipeline`
(same decoding, same sampling, same preprocessing, so the same vectors; a
video whole, with all its frames, in one task). Each task's result comes back as one
Arrow table, is written as a Parquet shard (:mod:`retrieval.shards`) and is
merged at once by :func:`merge.merge_tables`. Results arrive in listing order
(``preserve_order``), so item ids are a local run's, and a run killed half way
keeps every merged shard: the next run embeds only the rest.

A bad file is a row with an error, never an exception. An actor that dies (a
node lost, the OOM killer) is restarted and its task retried by Ray
(``max_restarts`` / ``max_task_retries``): the batch is redone, not lost.

Ray is optional (``pip install 'mmsearch[ray]'``) and imported inside the
functions here only.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .errors import EngineError, MissingDependencyError, MMSearchError, ModelMismatchError
from .indexer import (
    FileOutcome,
    IndexReport,
    ProgressFn,
    SkipFn,
    entry_of,
    finish_unchanged,
    outcome_of,
    pipeline_encode_one,
    plan_update,
    split_videos,
)
from .merge import merge_tables
from .shards import ShardModel, ShardWriter, outcomes_table, shard_schema
from .sources import FileEntry
from .urls import is_url

if TYPE_CHECKING:
    import pyarrow as pa

    from .store import IndexStore
    from .video import FrameSampling
    from .video_index import VideoOutcome

INSTALL_HINT = "pip install 'mmsearch[ray]'"
# An actor that keeps dying on the same batch (a file that crashes the decoder,
# a node that keeps running out of memory) fails the run after this many
# restarts instead of looping for ever; a one-off loss is simply redone.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
MAX_FILES_PER_TASK = 256  # files per Ray task = rows per shard; bounds what a retry redoes


@dataclass(frozen=True)
class RayCfg:
    """How the Ray engine runs.

    ``address``: a running cluster (``ray start --head`` prints it; ``auto``
    finds a local one); None starts a private one on this machine, or uses
    ``$RAY_ADDRESS``. ``num_workers``: embedding actors (each loads the model
    once); None: one per ``cpus_per_worker`` CPUs of the cluster.
    ``shards_dir``: keep the Parquet shards there (a folder or a URL);
    None writes them to a temporary folder removed after the merge.
    """

    address: str | None = None
    num_workers: int | None = None
    cpus_per_worker: int | None = None
    batch_size: int = 32
    files_per_task: int | None = None
    shards_dir: str | None = None
    device: str = "cpu"
    precision: str = "fp32"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a clear error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"the Ray engine needs Ray Data, which is not installed: {INSTALL_HINT} "
            "(or leave out --engine ray to index on this machine)"
        ) from exc
    return ray


def update_index_ray(
    store: "IndexStore",
    roots: Sequence[str | os.PathLike[str]],
    cfg: RayCfg,
    *,
    exclude: Sequence[str] = (),
    on_progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
    videos: bool = True,
    sampling: "FrameSampling | None" = None,
) -> IndexReport:
    """Embed what changed under ``roots`` on a Ray cluster and merge it into ``store``; the caller holds the lock.

    Same result as :func:`indexer.update_index` (same items, ids, vectors,
    skipped files); only where the encoder runs differs. Videos are sampled
    and embedded by the workers too, each whole in one task (so in one shard).
    """
    ray = require_ray()  # before any work: a missing extra is the first thing to hear about
    store.remove_temp_files()
    plan = plan_update(store, roots, exclude=exclude, on_skip=on_skip, videos=videos)
    if plan.is_empty:
        return finish_unchanged(store, plan)
    images, clips = split_videos(plan.todo)
    plan.todo = images + clips  # a local run's order: images, then videos
    m = store.manifest
    model = ShardModel(m.model, m.fingerprint, m.dim)
    own_dir = cfg.shards_dir is None
    shards_dir = tempfile.mkdtemp(prefix="mmsearch-shards-") if own_dir else str(cfg.shards_dir)
    writer = ShardWriter(shards_dir, model)
    started_ray = _connect(ray, cfg.address)
    try:
        with _ray_prints_to_stderr():
            tables = _embed(ray, plan.todo, model, writer.run, cfg, plan.known_hashes(), sampling)
            written = (writer.write_table(t) for t in tables)
            return merge_tables(store, plan, written, reencode=_local_reencoder(model, cfg),
                                reencode_video=_local_video_reencoder(model, cfg, sampling), on_progress=on_progress)
    except MMSearchError:
        raise
    except Exception as exc:  # Ray reports a failed task or actor in its own types
        raise _explain(exc) from exc
    finally:
        if started_ray:
            ray.shutdown()
        if own_dir:
            shutil.rmtree(shards_dir, ignore_errors=True)


def embed_to_shards_ray(
    entries: Sequence[FileEntry], model: ShardModel, writer: ShardWriter, cfg: RayCfg,
    sampling: "FrameSampling | None" = None,
) -> Iterator["pa.Table"]:
    """Embed ``entries`` on Ray and write them as shards with ``writer``; yields each table written."""
    ray = require_ray()
    started_ray = _connect(ray, cfg.address)
    try:
        with _ray_prints_to_stderr():
            for table in _embed(ray, list(entries), model, writer.run, cfg, frozenset(), sampling):
                yield writer.write_table(table)
    except MMSearchError:
        raise
    except Exception as exc:
        raise _explain(exc) from exc
    finally:
        if started_ray:
            ray.shutdown()


# -- the pipeline ---------------------------------------------------------------------


def _embed(
    ray: Any, todo: list[FileEntry], model: ShardModel, run: str, cfg: RayCfg, known_hashes: set[str] | frozenset[str],
    sampling: "FrameSampling | None" = None,
) -> Iterator["pa.Table"]:
    """Shard tables of ``todo`` in listing order, embedded by a pool of actors."""
    from ray.data import DataContext

    workers, cpus = _pool_size(ray, cfg)
    per_task = cfg.files_per_task or max(8, min(MAX_FILES_PER_TASK, math.ceil(len(todo) / (4 * workers))))
    items = [{"id": i, "path": str(e.path), "size": e.size, "mtime_ns": e.mtime_ns} for i, e in enumerate(todo)]
    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    # Results in input order: shards merge as they come and item ids are a local run's.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the CLI draws its own progress bar from the merge
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # per-run chatter; --verbose keeps it
        data_log.setLevel(logging.ERROR)
    try:
        blocks = max(1, math.ceil(len(items) / per_task))
        workers = min(workers, blocks)  # no actor (and no model load) without a batch to take
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            dataset = dataset.map_batches(
                EmbedWorker,
                batch_size=per_task,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus,
                num_gpus=1 if _wants_gpu(ray, cfg.device) else None,
                fn_constructor_kwargs={
                    "model": model.model, "fingerprint": model.fingerprint, "dim": model.dim, "run": run,
                    "device": cfg.device, "precision": cfg.precision, "threads": cpus,
                    "batch_size": cfg.batch_size, "known_hashes": frozenset(known_hashes), "sampling": sampling,
                },
                **_retry_args(dataset.map_batches),
            )
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if table.num_rows:
                yield table
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        data_log.setLevel(saved_level)


def _retry_args(map_batches: Callable[..., Any]) -> dict[str, int]:
    """Bounded actor restarts and task retries, where this Ray still takes them.

    Ray Data defaults both to -1 (retry for ever); a batch that kills its actor
    every time would then never end the run. Ray deprecates passing them to
    ``map_batches`` (removal announced for 2.64); without them Ray's defaults apply.
    """
    accepts = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(map_batches).parameters.values())
    return {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_TASK_RETRIES} if accepts else {}


class EmbedWorker:
    """A Ray actor's job: load the model once, then turn batches of file rows into shard rows.

    Runs the local pipeline (:class:`embed.ImagePipeline`), so decoding,
    reduced-size JPEG reads, preprocessing and bad-file reasons are a local
    run's. Checks that the model it loaded is the index's (same fingerprint).
    """

    def __init__(
        self, *, model: str, fingerprint: str, dim: int, run: str, device: str, precision: str, threads: int,
        batch_size: int, known_hashes: frozenset[str], sampling: "FrameSampling | None" = None,
    ) -> None:
        from .embed import ImagePipeline
        from .encoder import load_encoder
        from .urls import url_reader
        from .video_embed import VideoPipeline

        encoder = load_encoder(model, device=device, precision=precision, threads=threads)
        if encoder.fingerprint != fingerprint or encoder.dim != dim:
            raise ModelMismatchError(
                f"a Ray worker loaded model {model!r} with fingerprint {encoder.fingerprint}, but the index "
                f"expects {fingerprint}: the worker nodes have other weights for this spec (check their caches)"
            )
        self.schema = shard_schema(ShardModel(model, fingerprint, dim), run)
        # Decoding threads: half the CPUs this actor holds, as the local pipeline does per process.
        self.pipeline = ImagePipeline(
            encoder, batch_size=batch_size, workers=max(1, threads // 2), known_hashes=known_hashes, read=url_reader()
        )
        self.videos = VideoPipeline(encoder, batch_size=batch_size, workers=max(1, threads // 2),
                                    sampling=sampling, known_hashes=known_hashes)

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        from .video_index import video_outcome_of

        ids = batch.column("id").to_pylist()
        entries = [
            FileEntry(p if is_url(p) else Path(p), s, t)  # type: ignore[arg-type]
            for p, s, t in zip(
                batch.column("path").to_pylist(), batch.column("size").to_pylist(), batch.column("mtime_ns").to_pylist()
            )
        ]
        images, clips = split_videos(entries)
        by_key: dict[str, Any] = {}
        for chunk in self.pipeline.run(images):
            by_key.update((str(e.entry.path), outcome_of(e, key=str(e.entry.path))) for e in chunk)
        for video in self.videos.run(clips):  # a whole video per row set: its row and all its frames
            by_key[str(video.entry.path)] = video_outcome_of(video, key=str(video.entry.path))
        return outcomes_table(ids, [by_key[str(e.path)] for e in entries], self.schema)


# -- cluster plumbing ---------------------------------------------------------------


@contextmanager
def _ray_prints_to_stderr() -> Iterator[None]:
    """Send what Ray prints during a run to stderr.

    Ray's driver prints cluster events (e.g. "(raylet) A worker died ...", when
    an actor is lost and its batch retried) to stdout, where they would corrupt
    ``--json`` output; results are on stdout, diagnostics on stderr.
    """
    with redirect_stdout(sys.stderr):
        yield


def _connect(ray: Any, address: str | None) -> bool:
    """Join (or start) a cluster unless this process already has one; returns whether we started it."""
    if ray.is_initialized():
        return False
    shown = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
    hint = "start one with 'ray start --head', or leave out --address to run on this machine"
    _check_reachable(address or os.environ.get("RAY_ADDRESS"), hint)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"cannot start or reach the Ray cluster ({shown}): {exc} ({hint})") from exc
    return True


def _check_reachable(address: str | None, hint: str) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    if not address or address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} ({hint})") from exc


def _pool_size(ray: Any, cfg: RayCfg) -> tuple[int, int]:
    """(actors, CPUs per actor): what the cluster has room for."""
    total = max(1, int(ray.cluster_resources().get("CPU", 1)))
    largest = max(
        [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [total]
    ) or total
    if cfg.num_workers is not None and cfg.num_workers < 1:
        raise MMSearchError(f"--num-workers must be at least 1, got {cfg.num_workers}")
    if cfg.cpus_per_worker:
        cpus = cfg.cpus_per_worker
    elif cfg.num_workers:
        cpus = max(1, total // cfg.num_workers)
    else:
        cpus = min(2, total)  # two torch threads per actor: near-linear on CPUs, and models stay few
    cpus = min(cpus, largest)  # an actor lives on one node
    workers = cfg.num_workers or max(1, total // cpus)
    if _wants_gpu(ray, cfg.device):
        # One GPU per actor: more actors than GPUs would wait for one forever.
        workers = min(workers, max(1, int(ray.cluster_resources().get("GPU", 0))))
    return workers, cpus


def _local_reencoder(model: ShardModel, cfg: RayCfg) -> Callable[[FileOutcome], FileOutcome]:
    """Embed one file here, for the rare file whose content twin changed during the run (as a local run does)."""
    pipeline: list[Any] = []

    def reencode(out: FileOutcome) -> FileOutcome:
        if not pipeline:
            from .embed import ImagePipeline
            from .encoder import load_encoder
            from .urls import url_reader

            encoder = load_encoder(model.model, device=cfg.device, precision=cfg.precision)
            pipeline.append(ImagePipeline(encoder, batch_size=1, read=url_reader()))
        return outcome_of(pipeline_encode_one(pipeline[0], entry_of(out)), key=out.key)

    return reencode


def _local_video_reencoder(
    model: ShardModel, cfg: RayCfg, sampling: "FrameSampling | None"
) -> Callable[["VideoOutcome"], "VideoOutcome"]:
    """Sample one video here, for the rare video whose content twin changed during the run."""
    pipeline: list[Any] = []

    def reencode(out: "VideoOutcome") -> "VideoOutcome":
        from .video_index import video_outcome_of

        if not pipeline:
            from .encoder import load_encoder
            from .video_embed import VideoPipeline

            encoder = load_encoder(model.model, device=cfg.device, precision=cfg.precision)
            pipeline.append(VideoPipeline(encoder, batch_size=cfg.batch_size, sampling=sampling))
        return video_outcome_of(pipeline[0].embed_one(entry_of(out)), key=out.key)

    return reencode


def _explain(exc: BaseException) -> MMSearchError:
    """Our own error if a worker raised one (Ray wraps it), else a one-line account of what Ray reported."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Ray re-raises a worker's exception as a class deriving from both RayTaskError and
        # the original; only the original (defined in this package) has the plain message.
        if isinstance(current, MMSearchError) and type(current).__module__.startswith(__package__ or "retrieval"):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    return EngineError(
        f"the Ray run failed: {reason[:300]}; the index keeps every shard merged so far, "
        "and running the same command again embeds only the rest"
    )


def _wants_gpu(ray: Any, device: str) -> bool:
    """Whether each actor asks Ray for a GPU: ``cuda``, or ``auto`` on a cluster that has GPUs."""
    if device.startswith("cuda"):
        return True
    return device == "auto" and float(ray.cluster_resources().get("GPU", 0)) > 0
