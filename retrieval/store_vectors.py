"""The ANN half of :class:`retrieval.store.IndexStore`: index.faiss and its re-rank copy, built, vouched for, saved."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import (
    IndexCorruptError,
    MMSearchError,
)
from .manifest import (
    MANIFEST,
    TEMP_SUFFIX,
    describe_write_error,
    read_manifest,
)
from .store_rows import FAISS_FILE

if TYPE_CHECKING:
    from .ann import VectorIndex
    from .store import IndexStore


class VectorIndexMixin:
    """Loading, building, refreshing and saving the ANN index of the stored vectors; mixed into IndexStore."""

    # -- the ANN index ----------------------------------------------------------

    def vector_index_is_current(self) -> bool:
        """Whether index.faiss (per the manifest on disk) was built from the committed generation."""
        try:
            ann = read_manifest(self.directory / MANIFEST).get("ann", {})
        except IndexCorruptError:
            return False
        return ann_files_vouched(self.directory, ann) and ann.get("generation") == self.generation

    def stored_vectors(self) -> "StoredVectors":
        """The stored vectors as a :class:`~retrieval.vector_copy.VectorSource` (chunks, samples, lookups).

        Use it inside :meth:`snapshot` to read one committed state throughout.
        """
        return StoredVectors(self)

    def load_vector_index(self, *, persist: bool = False, mmap: bool = False) -> "VectorIndex":
        """The FAISS index for the last committed state, with its re-rank copy when it has one.

        Loaded from index.faiss when that file matches the committed generation;
        otherwise (a crash or a concurrent writer) rebuilt from the stored
        vectors, and written back when ``persist`` (the writer holds the lock).
        The generation, the file check and the vectors come from one snapshot;
        the rebuild reads the vectors in chunks, never all at once. A re-rank
        copy that is missing or not vouched for is left out: queries then
        re-rank from items.sqlite, and the next save writes it again.
        """
        from .ann import AnnConfig, VectorIndex

        path = self.directory / FAISS_FILE
        with self.snapshot() as db:
            with self._read_lock(exclusive=False):
                generation = self.generation
                ann = self.reload_manifest().ann
                if ann_files_vouched(self.directory, ann) and ann.get("generation") == generation:
                    # mmap (readers): the codes stay in the page cache, shared between processes.
                    try:
                        index = VectorIndex.load(path, self.manifest.dim, AnnConfig.from_dict(ann), mmap=mmap)
                    except IndexCorruptError as exc:
                        # index.faiss is a cache of the stored vectors: a damaged one is rebuilt, not fatal.
                        logging.getLogger(__name__).warning(
                            "%s; rebuilding it from the stored vectors ('mmsearch repair --index %s' rewrites it)",
                            exc, self.name)
                    else:
                        count = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
                        if ann_count_agrees(index, count):
                            index.copy = self._vouched_copy(ann, index)
                            return index
            # Outside the read lock (a writer may publish meanwhile), inside the snapshot (one state).
            # A reader builds in the temp folder and lets go of the files at once (its mappings stay).
            private = self.readonly or mmap
            index = self._build_vector_index(Path(tempfile.gettempdir()) if private else self.directory)
        if private:
            index.discard()
        elif persist:
            self.save_vector_index(index, generation)
        return index

    def _vouched_copy(self, ann: dict[str, Any], index: "VectorIndex") -> Any:
        """The re-rank copy the manifest vouches for (same size and time, same count), or None."""
        from .vector_copy import COPY_FILE, VectorCopy

        recorded = ann.get("copy")
        path = self.directory / COPY_FILE
        if not index.config.copy_dtype or not isinstance(recorded, dict) or not faiss_file_vouched(
                path, {"file": recorded}):
            return None
        try:
            copy = VectorCopy.open(path, self.manifest.dim)
        except IndexCorruptError as exc:
            logging.getLogger(__name__).warning("%s; re-ranking reads items.sqlite until it is rewritten", exc)
            return None
        return copy if len(copy) == recorded.get("count") else None

    def _build_vector_index(self, workdir: Path) -> "VectorIndex":
        from .ann_lifecycle import build, policy_of

        with self.snapshot():
            source = self.stored_vectors()
            return build(policy_of(self.manifest.ann), self.manifest.dim, source, workdir=workdir)

    def rebuild_vector_index(self) -> "VectorIndex":
        """A new ANN index from every stored vector, per the policy (built, then tuned); the writer saves it."""
        return self._build_vector_index(self.directory)

    def refresh_vector_index(self, index: "VectorIndex") -> "VectorIndex":
        """``index``, or a rebuilt one if the policy now wants another kind or size (growth, untrained)."""
        from .ann_lifecycle import needs_refresh, policy_of

        count = self.connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        policy = policy_of(self.manifest.ann)
        if needs_refresh(policy, index, count, self.manifest.dim):
            return self.rebuild_vector_index()
        if index.config.type == "flat":  # nothing to rebuild, but say why for today's size
            from dataclasses import replace

            from .ann_lifecycle import plan

            index.config = replace(index.config, rule=plan(policy, count, self.manifest.dim).rule)
        return index

    def set_ann_policy(self, policy: dict[str, Any]) -> None:
        """Record a new ANN policy; the caller holds the writer lock and saves a rebuilt index."""
        self._require_writable()
        self.manifest.ann = {**self.manifest.ann, "policy": dict(policy)}
        self.write_manifest()

    def save_vector_index(self, index: "VectorIndex", generation: int | None = None) -> None:
        """Write the lists file and the re-rank copy, index.faiss, then the manifest that vouches for them.

        Each file is written atomically and in that order; files of earlier
        indexes (another lists file, a copy the new kind does not keep) go once
        the manifest no longer names them.
        """
        self._require_writable()
        generation = self.generation if generation is None else generation
        try:
            if index.config.copy_dtype and index.copy is None:  # missing or stale when loaded: write it anew
                from .vector_copy import COPY_FILE, VectorCopy

                with self.snapshot():
                    source = self.stored_vectors()
                    index.copy = VectorCopy.write_from(
                        self.directory / f"{COPY_FILE}.{os.getpid()}{TEMP_SUFFIX}", self.manifest.dim, len(source),
                        source.chunks(), dtype=index.config.copy_dtype)
                index.copy.temporary = True
            counts = self.counts()
            with self._read_lock(exclusive=True):
                index.save(self.directory / FAISS_FILE)
                from .ann_lifecycle import policy_of, with_policy

                self.manifest.ann = {
                    **with_policy(index.config, policy_of(self.manifest.ann)),
                    "generation": generation, "ntotal": index.ntotal,
                    # What the manifest vouches for: a file copied over it (another index's) is not it.
                    "file": _file_record(self.directory / FAISS_FILE),
                    **({"copy": {**_file_record(index.copy.path), "count": len(index.copy)}}
                       if index.copy is not None and index.copy.path is not None else {}),
                    **({"lists": {**_file_record(index.lists_file), "name": index.lists_file.name}}
                       if index.lists_file is not None else {}),
                }
                self.manifest.counts = counts
                self.write_manifest()
                self._remove_unnamed_ann_files(index)
        except (OSError, RuntimeError) as exc:  # faiss reports write errors as RuntimeError
            reason = describe_write_error(exc) if isinstance(exc, OSError) else str(exc).splitlines()[0]
            raise MMSearchError(
                f"could not write index {self.name!r} ({reason}); "
                "the items committed so far are safe and the next run finishes the job"
            ) from exc

    def _remove_unnamed_ann_files(self, index: "VectorIndex") -> None:
        """Delete lists files and a re-rank copy the manifest no longer names (readers' mappings stay valid)."""
        from .ann import LISTS_SUFFIX
        from .vector_copy import COPY_FILE

        keep = index.lists_file
        for old in self.directory.glob("index.*" + LISTS_SUFFIX):
            if keep is None or old.resolve() != keep.resolve():
                old.unlink(missing_ok=True)
        if index.copy is None:
            (self.directory / COPY_FILE).unlink(missing_ok=True)



class StoredVectors:
    """The vectors of an index store as a :class:`~retrieval.vector_copy.VectorSource` (what builds and tuning read)."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.dim = store.manifest.dim
        self._count = store.connect().execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def __len__(self) -> int:
        return int(self._count)

    def chunks(self, size: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Blocks of (ids, vectors) in id order (keyset pages: each read starts where the last one ended)."""
        db, dim, last = self.store.connect(), self.dim, None
        while True:
            rows = db.execute(
                "SELECT id, vec FROM vectors WHERE id > ? ORDER BY id LIMIT ?",
                (-(2**63) if last is None else last, size),
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            bad = next((r[0] for r in rows if len(r[1]) != 4 * dim), None)
            if bad is not None:
                raise IndexCorruptError(
                    f"index {self.store.name!r}: the stored vector of item {bad} is not {dim}-d; run 'mmsearch repair'")
            yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            last = int(ids[-1])

    def sample(self, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in self.store.connect().execute("SELECT id FROM vectors ORDER BY id")),
                          dtype=np.int64)
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=min(m, len(ids)), replace=False))
        return ids[pick], self.fetch(ids[pick])

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        return self.store.vectors_of(ids)


def _file_record(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def faiss_file_vouched(path: Path, ann: dict[str, Any]) -> bool:
    """Whether index.faiss is the very file the manifest's ANN entry describes (size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    recorded = ann.get("file")
    if not isinstance(recorded, dict):
        return True  # written before files were recorded: the generation check alone
    return recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns


def ann_files_vouched(directory: Path, ann: dict[str, Any]) -> bool:
    """Whether index.faiss, and the lists file it reads when its lists are on disk, are the ones the manifest names."""
    if not faiss_file_vouched(directory / FAISS_FILE, ann):
        return False
    lists = ann.get("lists")
    if not ann.get("lists_on_disk"):
        return True
    return isinstance(lists, dict) and isinstance(lists.get("name"), str) and faiss_file_vouched(
        directory / Path(lists["name"]).name, {"file": lists})


def ann_count_agrees(index: "VectorIndex", stored: int) -> bool:
    """Whether an ANN index can hold exactly the ``stored`` vectors.

    An index kind that cannot delete (HNSW) keeps removed ids, filtered out at
    query time by their missing rows, so it may hold more.
    """
    if getattr(index, "supports_remove", True):
        return index.ntotal == stored
    return index.ntotal >= stored
