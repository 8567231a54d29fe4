"""The Python API: open or create an index, add folders, search.

The CLI and the server are thin layers over this module.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .config import DEFAULT_INDEX_NAME, DEFAULT_MODEL, light_text_enabled, resolve_index_root, validate_index_name
from .errors import (
    ImageDecodeError,
    IndexNotFoundError,
    InvalidQueryError,
    MMSearchError,
    ModelMismatchError,
    SourceError,
)
from .indexer import IndexReport, ProgressFn, SkipFn, update_index
from .query import Filters, QueryTerm, combine
from .search import Hit, search_vector
from .store import MANIFEST, IndexStore

if TYPE_CHECKING:
    from PIL import Image

    from .ann import VectorIndex
    from .encoder import Encoder
    from .engine_ray import RayCfg
    from .integrity import RepairReport, VerifyReport
    from .text_light import LightTextEncoder

PathLike = str | os.PathLike[str]


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

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class Index:
    """One named index: its store, its vector index and (loaded on demand) its model.

    Pass ``encoder`` to reuse a model you already hold (tests pass a tiny one);
    otherwise the model recorded in the manifest is loaded on first use.
    """

    def __init__(
        self, store: IndexStore, encoder: "Encoder | None" = None, device: str = "cpu",
        precision: str = "fp32", threads: int | None = None,
    ) -> None:
        self.store = store
        self._encoder = encoder
        self._device = device
        self._precision = precision
        self._threads = threads
        self._vectors: "VectorIndex | None" = None
        self._vectors_generation = -1
        self.newly_created = False  # set by open_or_create_index when it made the index
        self._text_cache = _TextCache(TEXT_CACHE_SIZE)
        self._light_text: "LightTextEncoder | None | bool" = None  # False: looked, none usable
        if encoder is not None:
            self._check_encoder(encoder)

    # -- properties -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.store.manifest.name

    @property
    def path(self) -> Path:
        return self.store.directory

    @property
    def model(self) -> str:
        return self.store.manifest.model

    @property
    def encoder(self) -> "Encoder":
        if self._encoder is None:
            from .encoder import load_encoder

            root = self.path.parent
            self._encoder = self._check_encoder(load_encoder(
                self.model, device=self._device, precision=self._precision, threads=self._threads,
                on_fp32_text=lambda enc: _export_text_tower(enc, root),
            ))
        return self._encoder

    def _text_encoder(self) -> "Encoder | LightTextEncoder":
        """What embeds text queries: the loaded model, else its torch-free export when there is one."""
        if self._encoder is not None:
            return self._encoder
        if self._light_text is None:
            self._light_text = False
            if light_text_enabled() and self._device in ("cpu", "auto"):
                from .text_light import load_light_encoder

                self._light_text = load_light_encoder(self.path.parent, self.store.manifest.fingerprint) or False
        return self._light_text or self.encoder

    def _check_encoder(self, encoder: "Encoder") -> "Encoder":
        m = self.store.manifest
        if encoder.dim != m.dim or encoder.fingerprint != m.fingerprint:
            raise ModelMismatchError(
                f"index {m.name!r} was built with model {m.model!r} (fingerprint {m.fingerprint}), "
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
            name=m.name, path=str(self.path), model=m.model, fingerprint=m.fingerprint, dim=m.dim,
            images=counts["images"], texts=counts["texts"], failed=counts["failed"], size_bytes=size,
            ann=dict(m.ann), schema_version=m.schema_version, created_at=m.created_at, updated_at=m.updated_at,
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
        """(path, reason) of every file that could not be indexed."""
        return self.store.failed_items()

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
    ) -> IndexReport:
        """Index every image under ``paths`` (folders, files or fsspec URLs); only changes are embedded.

        ``engine="ray"`` embeds on a Ray cluster (see :mod:`retrieval.engine_ray`,
        configured by ``ray``) with the same result as the local engine.
        """
        from .urls import is_url

        roots = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not roots:
            raise SourceError("no folder given to index")
        if engine not in ("local", "ray"):
            raise MMSearchError(f"unknown engine {engine!r}: use local or ray")
        for root in roots:
            if not is_url(os.fspath(root)) and not os.path.exists(root):
                raise SourceError(f"no such file or directory: {os.fspath(root)}")
        if engine == "ray":
            from dataclasses import replace

            from .engine_ray import RayCfg, require_ray, update_index_ray

            require_ray()  # before waiting for the lock: a missing extra is said at once
            cfg = replace(ray or RayCfg(), batch_size=batch_size, precision=self._precision, device=self._device)
            with self.store.writer_lock(wait=wait, on_wait=on_wait):
                report = update_index_ray(
                    self.store, roots, cfg, exclude=exclude, on_progress=on_progress, on_skip=on_skip
                )
            self._vectors = None
            return report
        encoder = self.encoder
        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            report = update_index(
                self.store, encoder, roots, exclude=exclude, batch_size=batch_size, workers=workers,
                on_progress=on_progress, on_skip=on_skip,
            )
        self._vectors = None
        return report

    # -- searching --------------------------------------------------------------

    def _vector_index(self) -> "VectorIndex":
        generation = self.store.generation
        if self._vectors is None or generation != self._vectors_generation:
            self._vectors = self.store.load_vector_index(mmap=True)
            self._vectors_generation = generation
        return self._vectors

    def embed_text(self, text: str) -> np.ndarray:
        """The unit vector of a text query; recent ones come from an LRU cache (same model, same vector)."""
        if not text or not text.strip():
            raise InvalidQueryError("empty query: give some words to search for")
        key = text.strip()
        vector = self._text_cache.get(key)
        if vector is None:
            try:
                vector = self._text_encoder().encode_texts([key])[0]
            except (OSError, ValueError) as exc:
                if self._encoder is not None or not self._light_text:
                    raise
                # The torch-free export broke under us (a file truncated since it was checked):
                # answer with the model itself from now on.
                logging.getLogger(__name__).debug("torch-free text path failed: %s", exc)
                self._light_text = False
                vector = self.encoder.encode_texts([key])[0]
            self._text_cache.put(key, vector)
        return vector.copy()  # callers may scale or negate it in place

    def embed_image(self, image: "PathLike | Image.Image") -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            from .loading import load_image

            if not os.path.isfile(image):
                raise ImageDecodeError(f"query image not found: {os.fspath(image)}")
            # A big JPEG is decoded at reduced size, as the indexer does (same vectors, ~3x less work).
            loaded = load_image(image, min_side=int(getattr(self.encoder, "image_size", 0)) or None)
            if loaded.image is None:
                raise ImageDecodeError(f"cannot decode query image {os.fspath(image)}: {loaded.error}")
            image = loaded.image
        return self.encoder.encode_images([image.convert("RGB")])[0]

    def search_vector(
        self, vector: np.ndarray, k: int = 10, *, filters: Filters | None = None, dedup: float | None = None,
        exclude_ids: frozenset[int] = frozenset(),
    ) -> list[Hit]:
        """Items nearest to a vector in the index's space, best first.

        Without ``filters`` only images are returned; ``Filters(target="text")``
        or ``"all"`` returns indexed texts too.
        """
        return search_vector(
            self.store, self._vector_index(), np.asarray(vector, dtype=np.float32), k,
            filters=filters or Filters(), dedup=dedup, exclude_ids=exclude_ids,
        )

    def search_text(self, text: str, k: int = 10, *, filters: Filters | None = None) -> list[Hit]:
        """Items that best match a text, best first."""
        return self.search_vector(self.embed_text(text), k, filters=filters)

    def search_image(self, image: "PathLike | Image.Image", k: int = 10, *, filters: Filters | None = None) -> list[Hit]:
        """Items that look most like an image (a path or a PIL image), best first."""
        return self.search_vector(self.embed_image(image), k, filters=filters)

    def embed_terms(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector of a combined query: weighted sum of unit term vectors, renormalised."""
        vectors = []
        for term in terms:
            if term.kind == "text":
                vectors.append(self.embed_text(str(term.value)))
            elif term.kind == "image":
                vectors.append(self.embed_image(term.value))  # type: ignore[arg-type]
            else:
                vectors.append(np.asarray(term.value, dtype=np.float32))
        return combine(vectors, [t.weight for t in terms])

    def search(
        self, terms: Sequence[QueryTerm], k: int = 10, *, filters: Filters | None = None, dedup: float | None = None
    ) -> list[Hit]:
        """A combined query, e.g. ``[QueryTerm.image("shoe.jpg"), QueryTerm.text("red", 2), QueryTerm.text("leather", -1)]``."""
        return self.search_vector(self.embed_terms(terms), k, filters=filters, dedup=dedup)

    def find_item(self, path_or_id: "PathLike | int") -> int:
        """The id of an indexed item, given its id, its file path or its text key."""
        if isinstance(path_or_id, int) or (isinstance(path_or_id, str) and path_or_id.isdigit()):
            item_id = int(path_or_id)
            if self.store.items_by_id([item_id]):
                return item_id
            raise InvalidQueryError(f"no item with id {item_id} in index {self.name!r}")
        key = os.path.abspath(os.path.expanduser(os.fspath(path_or_id)))
        row = self.store.item_by_key(key) or self.store.item_by_key(os.fspath(path_or_id))
        if row is None:
            raise InvalidQueryError(
                f"{os.fspath(path_or_id)} is not in index {self.name!r} (index it first, or use 'query --image')"
            )
        if row.status != "ok":
            raise InvalidQueryError(f"{os.fspath(path_or_id)} could not be indexed: {row.error}")
        return row.id

    def similar(
        self, path_or_id: "PathLike | int", k: int = 10, *, filters: Filters | None = None, dedup: float | None = None
    ) -> list[Hit]:
        """"More like this": neighbours of an indexed item, from its stored vector (no re-encoding)."""
        item_id = self.find_item(path_or_id)
        vector = self.store.vector(item_id)
        if vector is None:
            raise InvalidQueryError(f"item {item_id} has no stored vector")
        return self.search_vector(vector, k, filters=filters, dedup=dedup, exclude_ids=frozenset({item_id}))

    def add_texts(
        self,
        path: PathLike,
        *,
        field: str | None = None,
        id_field: str | None = None,
        batch_size: int = 64,
        wait: bool = True,
        on_skip: SkipFn | None = None,
    ) -> IndexReport:
        """Index the texts of a TXT/CSV/JSONL file (see ``sources.read_text_records``).

        Re-running embeds only new or changed texts and removes texts that left the file.
        """
        import json
        import time

        from .embed import content_hash
        from .sources import Skipped, read_text_records
        from .store import NewItem

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
        encoder = self.encoder
        with self.store.writer_lock(wait=wait):
            db = self.store.connect()
            old = {
                key: (item_id, digest)
                for key, item_id, digest in db.execute(
                    "SELECT key, id, hash FROM items WHERE kind='text' AND substr(key, 1, ?) = ?",
                    (len(prefix), prefix),
                )
            }
            todo = []
            for rid, rec in records.items():
                digest = content_hash(rec.text.encode("utf-8"))
                prev = old.get(prefix + rid)
                if prev is not None and prev[1] == digest:
                    report.unchanged += 1
                else:
                    todo.append((rid, rec, digest, prev is not None))
            index = self.store.load_vector_index()
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
                added, dropped = self.store.commit(items, [])
                index.remove(np.asarray(dropped, dtype=np.int64))
                index.add(np.asarray(added, dtype=np.int64), vectors)
                report.encoded += len(chunk)
                report.updated += sum(1 for c in chunk if c[3])
                report.added += sum(1 for c in chunk if not c[3])
            gone = [item_id for key, (item_id, _) in old.items() if key[len(prefix):] not in records]
            if gone:
                self.store.commit([], gone)
                index.remove(np.asarray(gone, dtype=np.int64))
            report.removed = len(gone)
            self.store.save_vector_index(index)
        self._vectors = None
        report.seconds = time.perf_counter() - started
        return report

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- maintenance: explicit removal, consistency check, repair ----------------

    def remove(
        self, paths: PathLike | Sequence[PathLike], *, wait: bool = True, on_wait: Callable[[], None] | None = None
    ) -> dict[str, int]:
        """Drop the items at ``paths`` (files, or everything inside folders) -> items removed per path.

        The files themselves are never touched; paths need not exist any more.
        """
        from .indexer import remove_paths

        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            removed = remove_paths(self.store, items)
        self._vectors = None
        return removed

    def prune(self, *, wait: bool = True, on_wait: Callable[[], None] | None = None) -> list[str]:
        """Drop every image item whose file no longer exists (in any folder) -> the paths dropped."""
        from .indexer import prune_missing

        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            gone = prune_missing(self.store)
        self._vectors = None
        return gone

    def verify(self, *, check_files: bool = True) -> "VerifyReport":
        """Check that manifest, items, vectors and the FAISS index agree (reads only)."""
        from .integrity import verify_index

        return verify_index(self.store, check_files=check_files)

    def rebuild(self, *, wait: bool = True, on_wait: Callable[[], None] | None = None) -> "RepairReport":
        """Repair the index and rebuild its FAISS file from the stored vectors (no re-encoding)."""
        from .integrity import repair_index

        with self.store.writer_lock(wait=wait, on_wait=on_wait):
            report = repair_index(self.store)
        self._vectors = None
        return report


# Text queries are encoded once per index object: a server or notebook repeating
# a search (paging, re-ranking, "more like this") skips the text tower entirely.
TEXT_CACHE_SIZE = 512


class _TextCache:
    """A small thread-safe LRU map from query text to its vector."""

    def __init__(self, size: int) -> None:
        import threading
        from collections import OrderedDict

        self._size = size
        self._items: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            vector = self._items.get(key)
            if vector is not None:
                self._items.move_to_end(key)
            return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _export_text_tower(encoder: "Encoder", index_root: Path) -> None:
    # Once per model, when we load it anyway (and before bf16 lowers its text tower): later
    # processes then embed text queries without torch.
    if light_text_enabled():
        from .text_export import ensure_export

        ensure_export(encoder, index_root)


def _index_dir(name: str, root: PathLike | None) -> Path:
    return resolve_index_root(root) / validate_index_name(name)


def open_index(
    name: str = DEFAULT_INDEX_NAME, *, root: PathLike | None = None, encoder: "Encoder | None" = None,
    device: str = "cpu", precision: str = "fp32", threads: int | None = None,
) -> Index:
    """Open an existing index (raises ``IndexNotFoundError`` if there is none).

    ``precision`` (fp32, bf16, int8, auto) and ``threads`` apply to the model
    loaded on first use; the fingerprint check ignores precision.
    """
    store = IndexStore.open(_index_dir(name, root), name=name)
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
    directory = _index_dir(name, root)
    if encoder is None:
        from .encoder import load_encoder

        encoder = load_encoder(model, device=device, precision=precision, threads=threads,
                               on_fp32_text=lambda enc: _export_text_tower(enc, resolve_index_root(root)))
    store = IndexStore.create(
        directory, name=name, model=encoder.spec, fingerprint=encoder.fingerprint, dim=encoder.dim
    )
    store.set_ann_policy(policy)
    return Index(store, encoder=encoder, device=device, precision=precision, threads=threads)


def open_or_create_index(
    name: str = DEFAULT_INDEX_NAME, *, model: str | None = None, root: PathLike | None = None,
    encoder: "Encoder | None" = None, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
) -> Index:
    """Open ``name`` if it exists (checking ``model`` against it), else create it."""
    directory = _index_dir(name, root)
    if (directory / MANIFEST).exists():
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
    index = create_index(
        name, model=model or DEFAULT_MODEL, root=root, encoder=encoder, device=device, precision=precision,
        threads=threads,
    )
    index.newly_created = True
    return index


def list_indexes(root: PathLike | None = None) -> list[IndexInfo]:
    """Every index under the root, sorted by name (unreadable ones are left out)."""
    base = resolve_index_root(root)
    if not base.is_dir():
        return []
    infos = []
    for child in sorted(base.iterdir()):
        if (child / MANIFEST).is_file():
            try:
                with open_index(child.name, root=base) as index:
                    infos.append(index.info())
            except Exception:  # a broken index must not hide the others; 'info NAME' explains it
                continue
    return infos


def delete_index(name: str, *, root: PathLike | None = None) -> None:
    """Remove an index directory entirely, and its model's text-tower export when no other index uses it."""
    directory = _index_dir(name, root)
    if not (directory / MANIFEST).is_file():
        raise IndexNotFoundError(f"no index named {name!r} in {directory.parent}")
    shutil.rmtree(directory)
    _drop_unused_text_exports(directory.parent)


def _drop_unused_text_exports(index_root: Path) -> None:
    from .manifest import read_manifest
    from .text_light import export_dir

    exports = export_dir(index_root, "x").parent
    if not exports.is_dir():
        return
    used = set()
    for child in index_root.iterdir():
        try:
            used.add(read_manifest(child / MANIFEST).get("fingerprint"))
        except Exception:  # noqa: BLE001 - not an index, or an unreadable one: keep every export
            if (child / MANIFEST).exists():
                return
    for export in exports.iterdir():
        if export.is_dir() and export.name not in used and not export.name.startswith("."):
            shutil.rmtree(export, ignore_errors=True)
