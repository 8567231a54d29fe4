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
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from . import catalog
from .config import DEFAULT_INDEX_NAME, DEFAULT_MODEL
from .config import check_model_options
from .errors import (
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
from .query import QueryEncoder, QueryTerm, load_query_model
from .search import Filters, Hit, search_vector
from .store import IndexStore, ItemRow, PhotoStats

if TYPE_CHECKING:
    from .zeroshot import Prediction
    from PIL import Image

    from .ann import VectorIndex
    from .duplicates import DuplicateGroup
    from .encoder import Encoder
    from .engine_ray import RayCfg
    from .integrity import RepairReport, VerifyReport
    from .originals import VerifiedFiles
    from .thumbnails import ThumbnailCache
    from .video import FrameSampling

from .api_explain import ExplainMixin, ExplainQuery
from .api_items import ItemsMixin
from .api_models import (
    check_sources,
    embed_to_shards,
    list_models,
    load_model,
    merge_shards,
    multilingual_models,
    parse_labels,
    ray_engine,
    save_model,
)

PathLike = str | os.PathLike[str]

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


class Index(ItemsMixin, ExplainMixin):
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
            from .api import (
                open_index,  # the door's own function: imported when it is needed (no cycle)
            )

            with open_index(index, root=root) as opened:
                model = opened.model
    return classify(load_encoder(model, device=device), images, list(labels))
