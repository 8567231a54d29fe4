"""The Python API: open or create an index, add folders, search.

The CLI and the server are thin layers over this module.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .config import DEFAULT_INDEX_NAME, DEFAULT_MODEL, resolve_index_root, validate_index_name
from .errors import ImageDecodeError, IndexNotFoundError, InvalidQueryError, ModelMismatchError, SourceError
from .indexer import IndexReport, ProgressFn, SkipFn, update_index
from .search import Hit, search_vector
from .store import MANIFEST, IndexStore

if TYPE_CHECKING:
    from PIL import Image

    from .ann import VectorIndex
    from .encoder import Encoder

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

    def __init__(self, store: IndexStore, encoder: "Encoder | None" = None, device: str = "cpu") -> None:
        self.store = store
        self._encoder = encoder
        self._device = device
        self._vectors: "VectorIndex | None" = None
        self._vectors_generation = -1
        self.newly_created = False  # set by open_or_create_index when it made the index
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

            self._encoder = self._check_encoder(load_encoder(self.model, device=self._device))
        return self._encoder

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
    ) -> IndexReport:
        """Index every image under ``paths`` (folders or files); only changes are embedded."""
        roots = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not roots:
            raise SourceError("no folder given to index")
        for root in roots:
            if not os.path.exists(root):
                raise SourceError(f"no such file or directory: {os.fspath(root)}")
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
            self._vectors = self.store.load_vector_index()
            self._vectors_generation = generation
        return self._vectors

    def embed_text(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise InvalidQueryError("empty query: give some words to search for")
        return self.encoder.encode_texts([text.strip()])[0]

    def embed_image(self, image: "PathLike | Image.Image") -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            from .loading import load_image

            if not os.path.isfile(image):
                raise ImageDecodeError(f"query image not found: {os.fspath(image)}")
            loaded = load_image(image)
            if loaded.image is None:
                raise ImageDecodeError(f"cannot decode query image {os.fspath(image)}: {loaded.error}")
            image = loaded.image
        return self.encoder.encode_images([image.convert("RGB")])[0]

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        """Items nearest to a vector in the index's space, best first."""
        return search_vector(self.store, self._vector_index(), np.asarray(vector, dtype=np.float32), k)

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """Items that best match a text, best first."""
        return self.search_vector(self.embed_text(text), k)

    def search_image(self, image: "PathLike | Image.Image", k: int = 10) -> list[Hit]:
        """Items that look most like an image (a path or a PIL image), best first."""
        return self.search_vector(self.embed_image(image), k)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _index_dir(name: str, root: PathLike | None) -> Path:
    return resolve_index_root(root) / validate_index_name(name)


def open_index(
    name: str = DEFAULT_INDEX_NAME, *, root: PathLike | None = None, encoder: "Encoder | None" = None,
    device: str = "cpu",
) -> Index:
    """Open an existing index (raises ``IndexNotFoundError`` if there is none)."""
    return Index(IndexStore.open(_index_dir(name, root), name=name), encoder=encoder, device=device)


def create_index(
    name: str = DEFAULT_INDEX_NAME, *, model: str = DEFAULT_MODEL, root: PathLike | None = None,
    encoder: "Encoder | None" = None, device: str = "cpu",
) -> Index:
    """Create a new, empty index for ``model`` (or for the given ``encoder``)."""
    directory = _index_dir(name, root)
    if encoder is None:
        from .encoder import load_encoder

        encoder = load_encoder(model, device=device)
    store = IndexStore.create(
        directory, name=name, model=encoder.spec, fingerprint=encoder.fingerprint, dim=encoder.dim
    )
    return Index(store, encoder=encoder, device=device)


def open_or_create_index(
    name: str = DEFAULT_INDEX_NAME, *, model: str | None = None, root: PathLike | None = None,
    encoder: "Encoder | None" = None, device: str = "cpu",
) -> Index:
    """Open ``name`` if it exists (checking ``model`` against it), else create it."""
    directory = _index_dir(name, root)
    if (directory / MANIFEST).exists():
        index = open_index(name, root=root, encoder=encoder, device=device)
        if model is not None and encoder is None:
            from .model_spec import parse_model_spec

            wanted = parse_model_spec(model).canonical
            if wanted != index.model:
                raise ModelMismatchError(
                    f"index {name!r} was built with model {index.model!r}, not {wanted!r}: "
                    "leave out --model to update it, or choose another --index"
                )
        return index
    index = create_index(name, model=model or DEFAULT_MODEL, root=root, encoder=encoder, device=device)
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
    """Remove an index directory entirely."""
    directory = _index_dir(name, root)
    if not (directory / MANIFEST).is_file():
        raise IndexNotFoundError(f"no index named {name!r} in {directory.parent}")
    shutil.rmtree(directory)
