"""The Python API, and the only door the CLI and the server use.

:class:`Index` is one named index: it delegates indexing to
:mod:`retrieval.indexer`, query terms to :class:`retrieval.query.QueryEncoder`,
ranking to :mod:`retrieval.search`, removal to :mod:`retrieval.maintenance`
and checks to :mod:`retrieval.integrity`. The module functions open, create,
list and delete indexes (:mod:`retrieval.catalog` knows the folders), and
reach the rest of the engine: Parquet shards (:func:`embed_to_shards`,
:func:`merge_shards`), zero-shot labels (:func:`classify_images`) and the
model catalogue (:func:`list_models`).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from . import catalog
from .config import DEFAULT_INDEX_NAME, DEFAULT_MODEL
from .config import check_model_options
from .errors import (
    ImageDecodeError,
    IndexExistsError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidQueryError,
    ItemNotFoundError,
    MMSearchError,
    ModelMismatchError,
    SourceError,
)
from .image_onnx import read_auto_choices
from .indexer import IndexReport, ProgressFn, SkipFn, update_index, update_texts
from .explanation import DEFAULT_METHOD as EXPLAIN_DEFAULT_METHOD
from .explanation import METHODS as EXPLAIN_METHODS
from .explanation import ExplainedItem
from .query import QueryEncoder, QueryTerm, combine, load_query_model
from .search import Filters, Hit, search_vector
from .store import IndexStore, ItemRow, PhotoStats

if TYPE_CHECKING:
    from PIL import Image

    from .ann import VectorIndex
    from .duplicates import DuplicateGroup
    from .encoder import Encoder
    from .engine_ray import RayCfg
    from .explanation import Explanation
    from .integrity import RepairReport, VerifyReport
    from .merge import MergeResult
    from .originals import VerifiedFiles
    from .shard_embed import EmbedResult
    from .thumbnails import ThumbnailCache
    from .video import FrameSampling
    from .zeroshot import Prediction

PathLike = str | os.PathLike[str]
# What Index.explain takes as a query: a text, one term or several, or a vector.
ExplainQuery = str | QueryTerm | Sequence[QueryTerm] | np.ndarray

__all__ = [
    "DEFAULT_INDEX_NAME", "DEFAULT_MODEL", "EXPLAIN_DEFAULT_METHOD", "EXPLAIN_METHODS", "DropPlan", "ExplainQuery",
    "ExplainedItem", "Index", "IndexInfo", "IndexReport", "ItemRow", "PhotoStats",
    "check_sources", "classify_images", "create_index", "delete_index", "drop_plan", "embed_to_shards",
    "list_indexes", "list_models", "load_model", "merge_shards", "multilingual_models", "open_index",
    "open_or_create_index", "parse_labels", "ray_engine", "repair_index", "save_model", "verify_index",
]


@dataclass(frozen=True)
class IndexInfo:
    """A summary of one index, as ``mmsearch info`` / ``list`` show it."""

    name: str
    path: str
    model: str
    fingerprint: str
    dim: int
    images: int
    texts: int
    failed: int
    size_bytes: int
    ann: dict[str, Any]
    schema_version: int
    created_at: float
    updated_at: float

    error: str | None = None  # set when the index cannot be opened: why (the other fields are then blank)
    photos: PhotoStats | None = None  # capture dates, positions, places and cameras of the images
    videos: int = 0  # searchable videos (their frames hold the vectors)
    frames: int = 0  # frames of those videos, one vector each
    # What --precision auto measured and chose for this index's model, per machine (retrieval.image_choice).
    image_runtimes: dict[str, Any] = field(default_factory=dict)


    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self)
        return data if self.error else {k: v for k, v in data.items() if k != "error"}

    @classmethod
    def broken(cls, folder: Path, error: str) -> "IndexInfo":
        return cls(name=folder.name, path=str(folder), model="", fingerprint="", dim=0, images=0, texts=0, failed=0,
                   size_bytes=catalog.folder_size(folder), ann={}, schema_version=0, created_at=0.0, updated_at=0.0,
                   error=error)


class Index:
    """One named index: its store, its vector index and (loaded on demand) its model.

    Pass ``encoder`` to reuse a model you already hold (tests pass a tiny one);
    otherwise the model recorded in the manifest is loaded on first use.
    """

    def __init__(
        self, store: IndexStore, encoder: "Encoder | None" = None, device: str = "cpu",
        precision: str = "fp32", threads: int | None = None,
    ) -> None:
        check_model_options(device, precision)
        self.store = store
        self._device = device
        self._precision = precision
        self._threads = threads
        self._vectors: "VectorIndex | None" = None
        self._vectors_generation = -1
        self._thumbnails: "ThumbnailCache | None" = None
        self._thumbnails_lock = threading.Lock()
        self._verified: "VerifiedFiles | None" = None  # files whose content hash was checked (open_original)
        self.newly_created = False  # set by open_or_create_index when it made the index
        if encoder is not None:
            self._check_encoder(encoder)
        self.queries = QueryEncoder(
            self._load_model, fingerprint=store.manifest.fingerprint, index_root=self.path.parent,
            device=device, item_vector=self.item_vector, encoder=encoder, model=store.manifest.model,
        )

    # -- what the index is ------------------------------------------------------

    @property
    def name(self) -> str:
        """The index's name: its folder's."""
        return self.store.name

    @property
    def path(self) -> Path:
        return self.store.directory

    @property
    def model(self) -> str:
        """The model spec the index was built with (queries use it too)."""
        return self.store.manifest.model

    @property
    def encoder(self) -> "Encoder":
        """The index's model, loaded on first use."""
        return self.queries.encoder

    def _load_model(self) -> "Encoder":
        return self._check_encoder(load_query_model(
            self.model, index_root=self.path.parent, device=self._device, precision=self._precision,
            threads=self._threads,
        ))

    def _check_encoder(self, encoder: "Encoder") -> "Encoder":
        m = self.store.manifest
        if encoder.dim != m.dim or encoder.fingerprint != m.fingerprint:
            raise ModelMismatchError(
                f"index {self.name!r} was built with model {m.model!r} (fingerprint {m.fingerprint}), "
                f"but the model given is {encoder.spec!r} (fingerprint {encoder.fingerprint}): "
                "query it with its own model, or index into a new --index"
            )
        return encoder

    def __len__(self) -> int:
        return self.store.counts()["items"]

    def info(self) -> IndexInfo:
        m = self.store.manifest
        counts = self.store.counts()
        size = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
        return IndexInfo(
            name=self.name, path=str(self.path), model=m.model, fingerprint=m.fingerprint, dim=m.dim,
            images=counts["images"], texts=counts["texts"], failed=counts["failed"], size_bytes=size,
            ann=dict(m.ann), schema_version=m.schema_version, created_at=m.created_at, updated_at=m.updated_at,
            photos=self.store.photo_stats(), videos=counts["videos"], frames=counts["frames"],
            image_runtimes=read_auto_choices(self.path.parent, m.fingerprint),
        )

    def configure_ann(
        self, *, ann: str | None = None, max_memory: str | int | None = None, target_recall: float | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Change the ANN policy (``auto``/``flat``/``hnsw``/``ivf``/``ivfpq``, memory budget, recall target).

        The index is rebuilt (and tuned) from the stored vectors at once; returns the new ``ann`` manifest entry.
        """
        from .ann_lifecycle import make_policy, policy_of

        with self.store.writer_lock(wait=wait):
            current = policy_of(self.store.manifest.ann)
            policy = make_policy(ann, max_memory, target_recall, base=current)
            if policy != current:
                self.store.set_ann_policy(policy)
                self.store.save_vector_index(self.store.rebuild_vector_index())
        self._vectors = None
        return dict(self.store.manifest.ann)

    def failed(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be indexed: undecodable ones, and what the walks skipped."""
        return sorted(self.store.failed_items() + self.store.skipped_files())

    # -- items ------------------------------------------------------------------

    def item(self, item_id: int) -> ItemRow | None:
        """One item's stored row (path or text, size, dimensions, status, metadata), or None."""
        return self.items([item_id]).get(item_id)

    def items(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        """Stored rows of the given ids (ids not in the index are left out)."""
        for item_id in ids:
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                raise InvalidQueryError(f"an item id is a whole number (got {item_id!r})")
        return self.store.items_by_id([i for i in ids if 0 <= i < 2**63])

    def find_item(self, path_or_id: "PathLike | int") -> int:
        """The id of an indexed item, given its id, its file path, its text key, or a moment of a video.

        A moment is ``PATH#t=SECONDS`` (or ``#t=MM:SS``): the id of the video's
        frame nearest that time.
        """
        if isinstance(path_or_id, bool) or not isinstance(path_or_id, (int, str, os.PathLike)):
            raise InvalidQueryError(f"an item is named by its id or its path, not {type(path_or_id).__name__}")
        if isinstance(path_or_id, int) or (isinstance(path_or_id, str) and path_or_id.isascii() and path_or_id.isdigit()):
            item_id = int(path_or_id)
            if 0 <= item_id < 2**63 and self.store.items_by_id([item_id]):
                return item_id
            raise ItemNotFoundError(f"no item with id {item_id} in index {self.name!r}")
        row = self._row_by_path(os.fspath(path_or_id))
        if row is None:
            from .video_files import split_moment

            moment = split_moment(os.fspath(path_or_id))
            if moment is not None and (video := self._row_by_path(moment[0])) is not None:
                return self._frame_near(video, moment[1])
            raise ItemNotFoundError(
                f"{os.fspath(path_or_id)} is not in index {self.name!r} (index it first, or use 'query --image')"
            )
        if row.status != "ok":
            raise ItemNotFoundError(f"{os.fspath(path_or_id)} could not be indexed: {row.error}")
        return row.id

    def _row_by_path(self, text: str) -> ItemRow | None:
        key = os.path.abspath(os.path.expanduser(text))
        return self.store.item_by_key(key) or self.store.item_by_key(text)

    def _frame_near(self, video: ItemRow, seconds: float) -> int:
        """The id of the frame of ``video`` nearest ``seconds`` (what a moment names)."""
        if video.kind != "video":
            raise ItemNotFoundError(f"{video.key} is not a video: a moment (#t=SECONDS) names a time in a video")
        if video.status != "ok":
            raise ItemNotFoundError(f"{video.key} could not be indexed: {video.error}")
        frames = self.store.frames_of(video.id)
        if not frames:
            raise ItemNotFoundError(f"{video.key} has no indexed frames ('mmsearch repair', then index it again)")
        return min(frames, key=lambda f: (abs(f[1] - seconds), f[1]))[0]

    def item_vector(self, item_id: int) -> np.ndarray | None:
        """An item's stored vector; for a video, the mean of its frames' (the video as a whole); None if none."""
        vector = self.store.vector(int(item_id))
        if vector is not None:
            return vector
        frames = self.store.frames_of(int(item_id))
        if not frames:
            return None
        mean = self.store.vectors_of([i for i, _ in frames]).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 1e-8 else None

    def moments(self, item_id: int) -> list[tuple[int, float]]:
        """(frame id, seconds) of a video's indexed frames in time order; [] for anything else."""
        return self.store.frames_of(int(item_id))

    def open_original(self, item: "ItemRow | int") -> tuple[BinaryIO, ItemRow]:
        """The file of an image or video item, open for reading, only while it is still the file that was indexed.

        Opened without following a symlink put in its place, checked on the open
        descriptor (a regular file of the recorded size and time) and by its
        content hash (once per unchanged file); see :mod:`retrieval.originals`.
        A frame of a video opens its video (the row returned is the video's).
        Raises ``ItemNotFoundError`` with the reason for a text, an item that
        failed, or a file that is gone, changed or replaced. Given a row (not an
        id) it does not touch the store, except to find a frame's video. The
        caller closes the file.
        """
        return self._open_checked(item, check_content=True)

    def _file_row(self, item: "ItemRow | int") -> ItemRow:
        """The row whose file an item shows: itself for images and videos, the video for a frame."""
        row = self.item(item) if isinstance(item, int) else item
        if row is None:
            raise ItemNotFoundError(f"no item with id {item} in index {self.name!r}")
        if row.kind == "frame":
            video = self.item(row.parent_id) if row.parent_id is not None else None
            if video is None:
                raise ItemNotFoundError(f"item {row.id} is a frame of a video that is no longer indexed")
            row = video
        if row.kind not in ("image", "video") or row.path is None:
            raise ItemNotFoundError(f"item {row.id} is a text, it has no image")
        if row.status != "ok":
            raise ItemNotFoundError(f"item {row.id} could not be indexed: {row.error}")
        return row

    def _open_checked(self, item: "ItemRow | int", *, check_content: bool) -> tuple[BinaryIO, ItemRow]:
        from .originals import ExpectedFile, VerifiedFiles, open_indexed_file

        row = self._file_row(item)
        if self._verified is None:
            with self._thumbnails_lock:
                if self._verified is None:
                    self._verified = VerifiedFiles()
        expected = ExpectedFile.of(row)
        return open_indexed_file(expected, self._verified, check_content=check_content), row

    def shown_at(self, item: "ItemRow | int") -> tuple[ItemRow, float | None]:
        """(the row of the file an item shows, the time it shows): what a thumbnail or a player needs.

        An image: itself, no time. A video: itself at its first indexed frame
        (after any black intro). A frame: its video at the frame's time. Reads
        the store (the server calls it on its index thread, then hands the
        result to :meth:`thumbnail` and :meth:`open_original` elsewhere).
        """
        if isinstance(item, ItemRow) and item.kind == "image":
            return item, None
        row = self._file_row(item)
        if row.kind != "video":
            return row, None
        given = item if isinstance(item, ItemRow) else self.item(item)
        if given is not None and given.kind == "frame":
            return row, float(given.time or 0.0)
        frames = self.store.frames_of(row.id)
        return row, frames[0][1] if frames else 0.0

    def thumbnail(self, item: ItemRow, size: int | None = None, *, time: float | None = None) -> Path:
        """A JPEG thumbnail of an image item, or of a video at a moment (longest side ``size``), made once and cached.

        A video shows ``time`` (seconds); a frame item, or a video without
        ``time``, is first resolved with :meth:`shown_at` (which reads the
        store). Served only while the item's file is still the file that was
        indexed (the rule of :meth:`open_original`) and made from that open
        file; a thumbnail made earlier is served after the cheap part of the
        check (the content was checked when it was made). Raises
        ``ItemNotFoundError`` when the file is not the one indexed,
        ``ImageDecodeError`` (``VideoDecodeError``) when it can no longer be
        decoded. Given an image, or a video with ``time``, it does not touch
        the store: any thread may call it.
        """
        from .thumbnails import DEFAULT_THUMB_SIZE, ThumbnailCache

        if self._thumbnails is None:
            with self._thumbnails_lock:
                if self._thumbnails is None:
                    self._thumbnails = ThumbnailCache.for_index(self.path)
        row = item
        if item.kind == "frame" or (item.kind == "video" and time is None):
            row, time = self.shown_at(item)
        key = row.hash or f"id{row.id}-{row.mtime_ns}"
        if row.kind == "video":
            from .video_files import format_seconds

            time = float(time or 0.0)
            key = f"{key}-t{format_seconds(time)}"
        size = size or DEFAULT_THUMB_SIZE
        made = self._thumbnails.path_for(key, size).is_file()
        source, row = self._open_checked(row, check_content=not made)
        with source:
            return self._thumbnails.get(source, key, size, name=row.path, time=time if row.kind == "video" else None)

    # -- writing ----------------------------------------------------------------

    def add_folder(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        exclude: Sequence[str] = (),
        batch_size: int = 32,
        workers: int = 0,
        wait: bool = True,
        on_progress: ProgressFn | None = None,
        on_skip: SkipFn | None = None,
        on_wait: Callable[[], None] | None = None,
        engine: str = "local",
        ray: "RayCfg | None" = None,
        videos: bool = True,
        sampling: "FrameSampling | None" = None,
    ) -> IndexReport:
        """Index every image and video under ``paths`` (folders, files or fsspec URLs); only changes are embedded.

        ``engine="ray"`` embeds on a Ray cluster (see :mod:`retrieval.engine_ray`,
        configured by ``ray``, e.g. from :func:`ray_engine`) with the same result as the local engine.
        A video is embedded by its sampled frames (``sampling``, default
        :class:`retrieval.video.FrameSampling`) and answers queries at its best
        moment; ``videos=False`` leaves videos out (and those indexed as they are).
        """
        roots = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not roots:
            raise SourceError("no folder given to index")
        if engine not in ("local", "ray"):
            raise MMSearchError(f"unknown engine {engine!r}: use local or ray")
        check_sources(roots)
        if engine == "ray":
            from dataclasses import replace

            from .engine_ray import RayCfg, require_ray, update_index_ray

            require_ray()  # before waiting for the lock: a missing extra is said at once
            cfg = replace(ray or RayCfg(), batch_size=batch_size, precision=self._precision, device=self._device)
            with self.store.writer_lock(wait=wait, on_wait=on_wait):
                report = update_index_ray(
                    self.store, roots, cfg, exclude=exclude, on_progress=on_progress, on_skip=on_skip,
                    videos=videos, sampling=sampling,
                )
            self._vectors = None
            return report
        encoder = self.encoder
        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            report = update_index(
                self.store, encoder, roots, exclude=exclude, batch_size=batch_size, workers=workers,
                on_progress=on_progress, on_skip=on_skip, videos=videos, sampling=sampling,
            )
        self._vectors = None
        return report

    def add_texts(
        self,
        path: PathLike,
        *,
        field: str | None = None,
        id_field: str | None = None,
        batch_size: int = 64,
        wait: bool = True,
        on_skip: SkipFn | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> IndexReport:
        """Index the texts of a TXT/CSV/JSONL file (see ``sources.read_text_records``).

        Re-running embeds only new or changed texts and removes texts that left the file.
        """
        check_sources(text_files=[path])
        encoder = self.encoder
        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            report = update_texts(
                self.store, encoder, path, field=field, id_field=id_field, batch_size=batch_size, on_skip=on_skip
            )
        self._vectors = None
        return report

    @contextmanager
    def discard_if_left_empty(self) -> Iterator["Index"]:
        """Around the first run into an index that :func:`open_or_create_index` just created.

        If the run fails and the index holds no item, the index is deleted, so a
        failed first run leaves nothing behind. Not when the failure is another
        process holding the lock: it created the same index at the same moment
        and is filling it.
        """
        try:
            yield self
        except MMSearchError as exc:
            if self.newly_created and not isinstance(exc, IndexLockedError) and len(self) == 0:
                self.close()
                delete_index(self.path.name, root=self.path.parent)
            raise

    # -- searching --------------------------------------------------------------

    def _vector_index(self) -> "VectorIndex":
        generation = self.store.generation
        if self._vectors is None or generation != self._vectors_generation:
            self._vectors = self.store.load_vector_index(mmap=True)
            self._vectors_generation = generation
        return self._vectors

    def embed_text(self, text: str, lang: str | None = None) -> np.ndarray:
        """The unit vector of a text query; recent ones come from an LRU cache (same model, same vector).

        The text is normalised for the model's tokenizer; ``lang`` (``zh``, ``fr`` ...) is the language
        code of models that need one (NLLB), else the text's script decides (see :class:`QueryEncoder`).
        """
        return self.queries.text(text, lang)

    def embed_image(self, image: "PathLike | Image.Image") -> np.ndarray:
        """The unit vector of an image (a path or a PIL image)."""
        return self.queries.image(image)

    def embed_terms(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector of a combined query: weighted sum of unit term vectors, renormalised."""
        return self.queries.vector(terms)

    def search_vector(
        self, vector: np.ndarray, k: int = 10, *, filters: Filters | None = None, dedup: float | None = None,
        exclude_ids: frozenset[int] = frozenset(), sort: str = "score",
    ) -> list[Hit]:
        """Items nearest to a vector in the index's space, best first.

        Without ``filters`` only images are returned; ``Filters(target="text")``
        or ``"all"`` returns indexed texts too. ``sort="taken"`` shows the same
        k best matches newest capture first (see :func:`retrieval.search.sort_hits`).
        """
        return search_vector(
            self.store, self._vector_index(), _as_query_vector(vector), k,
            filters=filters or Filters(), dedup=dedup, exclude_ids=exclude_ids, sort=sort,
        )

    def search_text(
        self, text: str, k: int = 10, *, filters: Filters | None = None, sort: str = "score", lang: str | None = None
    ) -> list[Hit]:
        """Items that best match a text (in any language the model reads), best first."""
        return self.search_vector(self.embed_text(text, lang), k, filters=filters, sort=sort)

    def search_image(
        self, image: "PathLike | Image.Image", k: int = 10, *, filters: Filters | None = None, sort: str = "score"
    ) -> list[Hit]:
        """Items that look most like an image (a path or a PIL image), best first."""
        return self.search_vector(self.embed_image(image), k, filters=filters, sort=sort)

    def search(
        self, terms: Sequence[QueryTerm], k: int = 10, *, filters: Filters | None = None, dedup: float | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """A combined query, e.g. ``[QueryTerm.image("shoe.jpg"), QueryTerm.text("red", 2), QueryTerm.text("leather", -1)]``."""
        return self.search_vector(self.embed_terms(terms), k, filters=filters, dedup=dedup, sort=sort)

    def similar(
        self, path_or_id: "PathLike | int", k: int = 10, *, filters: Filters | None = None, dedup: float | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """"More like this": neighbours of an indexed item, from its stored vector (no re-encoding).

        From a moment of a video (a frame's id, or ``PATH#t=SECONDS``): that
        frame's vector; from a video as a whole (its id or path): the mean of
        its frames'. The item itself (a video with all its frames) is left out.
        """
        item_id = self.find_item(path_or_id)
        vector = self.item_vector(item_id)
        if vector is None:
            raise ItemNotFoundError(f"item {item_id} has no stored vector")
        row = self.item(item_id)
        video_id = row.parent_id if row is not None and row.kind == "frame" else item_id
        excluded = {item_id, video_id if video_id is not None else item_id}
        excluded |= {frame_id for frame_id, _ in self.store.frames_of(video_id)} if video_id is not None else set()
        return self.search_vector(vector, k, filters=filters, dedup=dedup, exclude_ids=frozenset(excluded), sort=sort)

    def duplicates(self, threshold: float = 0.95, *, filters: Filters | None = None) -> list["DuplicateGroup"]:
        """Groups of near-identical photos, the copy to keep first; nothing is ever deleted.

        Photos whose vectors have cosine >= ``threshold`` (resized, re-encoded and
        lightly cropped copies, edits, bursts) are grouped from their stored
        vectors, by a FAISS range search (:func:`retrieval.ann.range_pairs`), not
        by comparing every pair; see :func:`retrieval.duplicates.find_duplicates`
        for the grouping. The copy to keep has the most pixels, then the earliest
        capture, then the larger file. Members with the same bytes as an earlier
        one have ``exact_copy_of`` set. ``filters`` (paths, dates, places...)
        narrow the photos compared. Largest groups first.
        """
        from .ann import range_pairs
        from .duplicates import ItemFacts, find_duplicates

        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise InvalidQueryError(f"duplicate threshold must be a cosine in (0, 1], got {threshold!r}")
        chosen = filters or Filters(target="image")
        rows = [r for r in self.store.image_rows() if chosen.accepts(r)]
        vectors = self.store.vectors_of([r.id for r in rows]) if rows else np.zeros((0, self.store.manifest.dim))
        facts = [ItemFacts(r.id, r.width, r.height, r.taken_ts, r.hash, r.size, r.path, r.taken_at) for r in rows]
        return find_duplicates(vectors, facts, range_pairs, threshold=float(threshold))

    # -- why did this match? heatmaps over the picture (issue 21) ----------------

    def explain(
        self, query: ExplainQuery, item: "PathLike | int | Image.Image", *, method: str = EXPLAIN_DEFAULT_METHOD,
        **options: Any,
    ) -> "Explanation":
        """Why ``item`` scores as it does for ``query``: a signed heatmap over the picture, with the index's model.

        ``query``: a text, one :class:`QueryTerm` or several (combined and
        negative queries, as :meth:`search` takes them), or a vector. ``item``:
        an indexed item's id, a picture's path (indexed or not) or a PIL image.
        ``method``: one of :data:`EXPLAIN_METHODS` (see :mod:`retrieval.explain`);
        ``options`` go to it. The result's ``terms`` hold each term's share of
        the map: a negative term's share shows what pushed the picture away.

        Raises ``InvalidQueryError`` (bad query, unknown method or option),
        ``ItemNotFoundError``, ``ImageDecodeError`` (no such picture, or not
        decodable) and ``ExplainUnsupportedError`` (the method cannot read this
        model's image tower; the message names one that can).
        """
        return self._explain(self._explain_terms(query), self._explain_picture(item), method, options)

    def explain_overlay(
        self, query: ExplainQuery, item: "PathLike | int | Image.Image", *, method: str = EXPLAIN_DEFAULT_METHOD,
        max_side: int | None = 1024, format: str = "PNG", alpha: float = 0.6, term: int | None = None,
        **options: Any,
    ) -> "ExplainedItem":
        """:meth:`explain`, and the overlay drawn on the photo as the user sees it, as an image file.

        The overlay is the EXIF-oriented full frame (parts the model did not see
        shaded), its longest side at most ``max_side`` (None: full size), in
        ``format`` (PNG, JPEG or WEBP); ``term`` (0-based) draws one query
        term's share instead of the total. What an HTTP endpoint returns: the
        result's ``explanation.as_dict()`` and its ``image`` bytes
        (``media_type``). Raises as :meth:`explain` does.
        """
        picture = self._explain_picture(item)
        explanation = self._explain(self._explain_terms(query), picture, method, options)
        data = explanation.overlay_bytes(picture, format=format, max_side=max_side, alpha=alpha, term=term)
        return ExplainedItem(item, explanation, data, format.upper())

    def explain_overlays(
        self, query: ExplainQuery, items: "Sequence[PathLike | int]", *, method: str = EXPLAIN_DEFAULT_METHOD,
        max_side: int | None = 256, format: str = "JPEG", alpha: float = 0.6, **options: Any,
    ) -> Iterator["ExplainedItem"]:
        """:meth:`explain_overlay` for several pictures (e.g. a query's hits), the query embedded once.

        A picture that cannot be explained (its file gone or undecodable) is
        yielded with ``error`` set, and the others still are; a bad query, an
        unknown method or a tower the method cannot read raises at once.
        """
        terms = self._explain_terms(query)
        for item in items:
            try:
                picture = self._explain_picture(item)
                explanation = self._explain(terms, picture, method, options)
                data = explanation.overlay_bytes(picture, format=format, max_side=max_side, alpha=alpha)
            except (ImageDecodeError, ItemNotFoundError) as exc:
                yield ExplainedItem(item, None, None, format.upper(), error=str(exc))
                continue
            yield ExplainedItem(item, explanation, data, format.upper())

    def _explain(self, terms: list[tuple[np.ndarray, float, str | None]], picture: "PathLike | Image.Image",
                 method: str, options: dict[str, Any]) -> "Explanation":
        from .explain import explain as compute  # torch: only when a heatmap is asked for

        return compute(self.encoder, terms, picture, method=method, **options)

    def _explain_terms(self, query: ExplainQuery) -> list[tuple[np.ndarray, float, str | None]]:
        """(unit vector, weight, label) per query term, embedded as a search embeds them."""
        if isinstance(query, str):
            terms = [QueryTerm.text(query)]
        elif isinstance(query, QueryTerm):
            terms = [query]
        elif isinstance(query, np.ndarray):
            terms = [QueryTerm.vector(query)]
        else:
            try:
                terms = list(query)
            except TypeError:
                raise InvalidQueryError(
                    f"a query to explain is a text, query terms or a vector, not {type(query).__name__}"
                ) from None
        if not terms:
            raise InvalidQueryError("empty query: give some words (or an image) whose match to explain")
        if not all(isinstance(t, QueryTerm) for t in terms):
            raise InvalidQueryError("a query to explain is a text, query terms or a vector")
        vectors, labels = [], []
        for term in terms:
            if term.kind == "text":
                vectors.append(self.queries.text(str(term.value)))
                labels.append(str(term.value).strip())
            elif term.kind == "image":
                vectors.append(self.queries.image(term.value))  # type: ignore[arg-type]
                path = term.value if isinstance(term.value, (str, os.PathLike)) else None
                labels.append(f"image {os.path.basename(os.fspath(path))}" if path is not None else "image")
            elif term.kind == "item":
                vectors.append(self.queries.item(term.value))  # type: ignore[arg-type]
                labels.append(f"item {term.value}")
            else:
                vectors.append(np.asarray(term.value, dtype=np.float32).reshape(-1))
                labels.append(None)
        weights = [t.weight for t in terms]
        combine(vectors, weights)  # the checks (and messages) of a search: weights, sizes, cancelling terms
        return [(v, float(w), label) for v, w, label in zip(vectors, weights, labels)]

    def _explain_picture(self, item: "PathLike | int | Image.Image") -> "PathLike | Image.Image":
        """The picture named by an item id, a path (an existing file is used as it is) or a PIL image."""
        from PIL import Image

        if isinstance(item, Image.Image):
            return item
        if isinstance(item, bool) or not isinstance(item, (int, str, os.PathLike)):
            raise InvalidQueryError(f"a picture to explain is an item id, a file path or a PIL image, not "
                                    f"{type(item).__name__}")
        if not isinstance(item, int):
            if os.path.isfile(item):
                return Path(item)
            if os.path.isdir(item):
                raise ImageDecodeError(f"{os.fspath(item)} is a folder, not a picture")
            if not os.fspath(item).strip():
                raise ImageDecodeError("name the picture to explain (an empty path names nothing)")
        try:
            item_id = self.find_item(item)
        except ItemNotFoundError:
            if isinstance(item, int) or (isinstance(item, str) and item.isascii() and item.isdigit()):
                raise
            raise ImageDecodeError(f"no such file: {os.fspath(item)}") from None
        row = self.item(item_id)
        if row is None or row.kind != "image" or row.path is None:
            raise InvalidQueryError(f"item {item_id} is a text: a heatmap needs a picture")
        return Path(row.path)

    # -- maintenance: explicit removal, consistency check, repair ----------------

    def remove(
        self, paths: PathLike | Sequence[PathLike], *, wait: bool = True, on_wait: Callable[[], None] | None = None,
        dry_run: bool = False, on_plan: Callable[[list[str]], None] | None = None,
    ) -> dict[str, int]:
        """Drop the items at ``paths`` (files, or everything inside folders) -> items removed per path.

        The files themselves are never touched; paths need not exist any more.
        ``on_plan`` gets the keys (paths) of the items about to go, under the
        writer lock, before anything changes; ``dry_run`` stops there.
        """
        from .maintenance import remove_paths

        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not items or any(not os.fspath(p).strip() for p in items):
            # '' would mean the current folder: 'cd / && mmsearch remove ""' must not empty the index.
            raise SourceError("name the files or folders whose items to remove (an empty path names nothing)")
        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            removed = remove_paths(self.store, items, dry_run=dry_run, on_plan=on_plan)
        self._vectors = None
        return removed

    def prune(
        self, *, wait: bool = True, on_wait: Callable[[], None] | None = None, dry_run: bool = False,
        on_plan: Callable[[list[str]], None] | None = None,
    ) -> list[str]:
        """Drop every image item whose file no longer exists (in any folder) -> the paths dropped.

        A file that cannot be checked (permission denied) is not gone: its item
        stays. ``on_plan`` and ``dry_run`` as for :meth:`remove`.
        """
        from .maintenance import prune_missing

        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            gone = prune_missing(self.store, dry_run=dry_run, on_plan=on_plan)
        self._vectors = None
        return gone

    def verify(self, *, check_files: bool = True) -> "VerifyReport":
        """Check that manifest, items, vectors and the FAISS index agree (reads only)."""
        from .integrity import verify_index

        return verify_index(self.store, check_files=check_files)

    def rebuild(
        self, *, wait: bool = True, on_wait: Callable[[], None] | None = None, dry_run: bool = False,
        on_plan: Callable[["RepairReport"], None] | None = None,
    ) -> "RepairReport":
        """Repair the index and rebuild its FAISS file from the stored vectors (no re-encoding); see :func:`repair_index`."""
        from .integrity import repair_index as repair

        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            report = repair(self.store, dry_run=dry_run, on_plan=on_plan)
        self._vectors = None
        return report

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_query_vector(vector: object) -> np.ndarray:
    try:
        return np.asarray(vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidQueryError(f"a query vector is a list of numbers (got {type(vector).__name__})") from None


# -- opening, creating, listing, deleting ------------------------------------------


def open_index(
    name: str = DEFAULT_INDEX_NAME, *, root: PathLike | None = None, encoder: "Encoder | None" = None,
    device: str = "cpu", precision: str = "fp32", threads: int | None = None,
) -> Index:
    """Open an existing index (raises ``IndexNotFoundError`` if there is none).

    ``precision`` (fp32, bf16, int8, auto) and ``threads`` apply to the model
    loaded on first use; the fingerprint check ignores precision.
    """
    store = IndexStore.open(catalog.index_path(name, root), name=name)
    return Index(store, encoder=encoder, device=device, precision=precision, threads=threads)


def create_index(
    name: str = DEFAULT_INDEX_NAME, *, model: str = DEFAULT_MODEL, root: PathLike | None = None,
    encoder: "Encoder | None" = None, device: str = "cpu", ann: str | None = None,
    max_memory: str | int | None = None, target_recall: float | None = None,
    precision: str = "fp32", threads: int | None = None,
) -> Index:
    """Create a new, empty index for ``model`` (or for the given ``encoder``).

    ``ann`` (default ``auto``), ``max_memory`` and ``target_recall`` set the ANN policy.
    """
    from .ann_lifecycle import make_policy

    policy = make_policy(ann, max_memory, target_recall)
    check_model_options(device, precision)
    directory = catalog.index_path(name, root)
    IndexStore.check_creatable(directory, name)  # before a model is loaded for nothing
    if encoder is None:
        encoder = load_query_model(model, index_root=directory.parent, device=device, precision=precision,
                                   threads=threads)
    store = IndexStore.create(
        directory, name=name, model=encoder.spec, fingerprint=encoder.fingerprint, dim=encoder.dim
    )
    store.set_ann_policy(policy)
    return Index(store, encoder=encoder, device=device, precision=precision, threads=threads)


def open_or_create_index(
    name: str = DEFAULT_INDEX_NAME, *, model: str | None = None, root: PathLike | None = None,
    encoder: "Encoder | None" = None, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
) -> Index:
    """Open ``name`` if it exists (checking ``model`` against it), else create it (``newly_created`` is then True)."""
    if catalog.looks_like_index(catalog.index_path(name, root)):
        index = open_index(name, root=root, encoder=encoder, device=device, precision=precision, threads=threads)
        if model is not None and encoder is None:
            from .model_spec import parse_model_spec

            wanted = parse_model_spec(model).canonical
            if wanted != index.model:
                raise ModelMismatchError(
                    f"index {name!r} was built with model {index.model!r}, not {wanted!r}: "
                    "leave out --model to update it, or choose another --index"
                )
        return index
    try:
        index = create_index(
            name, model=model or DEFAULT_MODEL, root=root, encoder=encoder, device=device, precision=precision,
            threads=threads,
        )
    except IndexExistsError:  # another process made it a moment ago: use theirs
        return open_or_create_index(name, model=model, root=root, encoder=encoder, device=device,
                                    precision=precision, threads=threads)
    index.newly_created = True
    return index


def list_indexes(root: PathLike | None = None) -> list[IndexInfo]:
    """Every index under the root, sorted by name; one that cannot be opened has ``error`` set (why)."""
    infos = []
    for folder in catalog.index_folders(root):
        try:
            with open_index(folder.name, root=folder.parent) as index:
                infos.append(index.info())
        except MMSearchError as exc:  # a broken index must not hide the others
            infos.append(IndexInfo.broken(folder, str(exc)))
        except OSError as exc:
            infos.append(IndexInfo.broken(folder, f"cannot read it: {exc.strerror or exc}"))
    return infos


@dataclass(frozen=True)
class DropPlan:
    """What ``delete_index`` removes: the index folder and, when it was the model's last index, its text export."""

    name: str
    path: str
    items: int | None  # None when items.sqlite cannot be read
    size_bytes: int
    text_export: str | None

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def drop_plan(name: str, *, root: PathLike | None = None) -> DropPlan:
    """What deleting index ``name`` would remove (reads only; also for an index too damaged to open)."""
    directory = catalog.index_path(name, root)
    if not catalog.looks_like_index(directory):
        raise IndexNotFoundError(f"no index named {name!r} in {directory.parent}")
    items: int | None = None
    try:
        store = IndexStore.open(directory, name=name, readonly=True, recover=True)
        try:
            items = store.counts()["items"]
        finally:
            store.close()
    except (MMSearchError, OSError):
        items = None
    return DropPlan(name=name, path=str(directory), items=items, size_bytes=catalog.folder_size(directory),
                    text_export=catalog.export_only_used_by(directory))


def delete_index(name: str, *, root: PathLike | None = None, wait: bool = False,
                 on_wait: Callable[[], None] | None = None) -> DropPlan:
    """Remove an index folder entirely (and its model's text-tower export when no other index uses it).

    Takes the writer lock first: an index that another process is writing is
    not deleted (``IndexLockedError``, unless ``wait``). Works on an index
    whose manifest is missing or damaged. Returns what was removed.
    """
    plan = drop_plan(name, root=root)
    with catalog.writer_lock_of(catalog.index_path(name, root), wait=wait, on_wait=on_wait):
        catalog.remove_index_folder(name, root)
    return plan


def verify_index(name: str = DEFAULT_INDEX_NAME, *, root: PathLike | None = None,
                 check_files: bool = True) -> "VerifyReport":
    """Check that manifest, items, vectors and FAISS agree (reads only); a damaged manifest is reported, not fatal."""
    from .integrity import verify_index as verify

    store = IndexStore.open(catalog.index_path(name, root), name=name, recover=True)
    try:
        return verify(store, check_files=check_files)
    finally:
        store.close()


def repair_index(
    name: str = DEFAULT_INDEX_NAME, *, root: PathLike | None = None, model: str | None = None,
    device: str = "cpu", dry_run: bool = False, wait: bool = True, on_wait: Callable[[], None] | None = None,
    on_plan: Callable[["RepairReport"], None] | None = None, salvage: bool = False,
) -> "RepairReport":
    """Make index ``name`` consistent again (see :mod:`retrieval.integrity`), also one whose manifest is lost.

    ``model`` names the model of an index whose items.sqlite does not record
    one (made by an older mmsearch); it is loaded only to learn its
    fingerprint and dimension. ``on_plan`` sees what will be dropped or
    rewritten, under the writer lock, before anything changes; ``dry_run``
    stops there. ``salvage`` first copies every readable row of a damaged
    items.sqlite into a new file (see :mod:`retrieval.store_salvage`).
    """
    from .integrity import repair_index as repair
    from .store import ITEMS_DB, ModelRecord

    record = None
    if model is not None:
        from .encoder import load_encoder

        encoder = load_encoder(model, device=device)
        record = ModelRecord(encoder.spec, encoder.fingerprint, encoder.dim)
    directory = catalog.index_path(name, root)
    if not catalog.looks_like_index(directory):
        raise IndexNotFoundError(f"no index named {name!r} in {directory.parent}")
    salvaged = None
    if salvage and not dry_run:
        from .store_salvage import salvage as copy_readable_rows

        with catalog.writer_lock_of(directory, wait=wait, on_wait=on_wait):
            salvaged = copy_readable_rows(directory, ITEMS_DB)
    store = IndexStore.open(directory, name=name, recover=True)
    try:
        with store.writer_lock(wait=wait, on_wait=on_wait):
            report = repair(store, model=record, dry_run=dry_run, on_plan=on_plan)
    finally:
        store.close()
    report.salvage = salvaged.as_dict() if salvaged is not None else None
    return report


def check_sources(paths: Sequence[PathLike] = (), text_files: Sequence[PathLike] = ()) -> None:
    """Raise ``SourceError`` unless every folder/file (or URL) to index is there; cheap, so callers check first."""
    from .urls import is_url

    if not paths and not text_files:
        raise SourceError("nothing to index: give a folder of images and/or --texts FILE")
    for path in [*paths, *text_files]:
        if not is_url(os.fspath(path)) and not os.path.exists(path):
            raise SourceError(f"no such file or directory: {os.fspath(path)}")


# -- the rest of the engine ---------------------------------------------------------


def ray_engine(address: str | None = None, num_workers: int | None = None) -> "RayCfg":
    """Settings for ``add_folder(engine="ray")`` / ``embed_to_shards(engine="ray")``; says at once if Ray is missing."""
    from .engine_ray import RayCfg, require_ray

    require_ray()
    return RayCfg(address=address, num_workers=num_workers)


def embed_to_shards(
    paths: Sequence[PathLike], output: PathLike, *, model: str = DEFAULT_MODEL, **options: Any
) -> "EmbedResult":
    """Embed every image under ``paths`` into Parquet shards in ``output`` (no index); see :mod:`retrieval.shard_embed`."""
    from .shard_embed import embed_to_shards as embed

    return embed(paths, output, model=model, **options)


def merge_shards(name: str, shards: Sequence[PathLike], *, root: PathLike | None = None, **options: Any) -> "MergeResult":
    """Build or update index ``name`` from Parquet embedding shards; see :func:`retrieval.merge.merge_into_index`."""
    from .merge import merge_into_index

    return merge_into_index(name, shards, root=root, **options)


def classify_images(
    images: Sequence["PathLike | Image.Image"], labels: Sequence[str], *, model: str | None = None,
    index: str = DEFAULT_INDEX_NAME, root: PathLike | None = None, device: str = "cpu",
) -> list["Prediction"]:
    """Zero-shot labels for images; the model is ``model``, else index ``index``'s model, else the default."""
    from .encoder import load_encoder
    from .zeroshot import classify

    if model is None:
        model = DEFAULT_MODEL
        if catalog.index_exists(index, root):
            with open_index(index, root=root) as opened:
                model = opened.model
    return classify(load_encoder(model, device=device), images, list(labels))


def load_model(spec: str, *, device: str = "cpu", precision: str = "fp32") -> "Encoder":
    """The model a spec names, for callers that embed without an index (the immich stand-in, notebooks)."""
    from .encoder import load_encoder

    check_model_options(device, precision)
    return load_encoder(spec, device=device, precision=precision)


def list_models(*, pretrained: bool = False) -> list[str]:
    """Architectures (or ``ARCH:PRETRAINED`` pairs) that a model spec may name."""
    from .encoder import available_models

    return available_models(pretrained=pretrained)


def multilingual_models(lang: str = "zh") -> list[dict[str, Any]]:
    """The published multilingual models, best first by Crossmodal-3600 recall@1 in ``lang``, and the English default.

    One JSON-ready row each (see :func:`retrieval.multilingual.model_rows`); no torch is imported.
    """
    from .multilingual import model_rows

    return model_rows(lang)


def save_model(spec: str, out_dir: PathLike, *, overwrite: bool = False, device: str = "cpu") -> Path:
    """Write model ``spec`` into one folder that ``--model out_dir`` loads with no network; returns the folder.

    Downloads the model if it is not cached; see :func:`retrieval.model_save.save_model_folder`.
    """
    from .model_save import save_model_folder

    return save_model_folder(spec, out_dir, overwrite=overwrite, device=device)


def parse_labels(raw: str | None = None, labels_file: PathLike | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a file with one label per line."""
    from .zeroshot import parse_labels as parse

    return parse(raw, labels_file)

