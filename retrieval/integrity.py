"""Checking and repairing an index directory: do manifest, items, vectors and FAISS agree?

``verify_index`` only reads (it works on a read-only index). ``repair_index``
needs the writer lock (the caller holds it): it drops rows that cannot be
trusted, so the next ``mmsearch index`` run re-encodes those files, and
rebuilds index.faiss from the stored vectors.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import SCHEMA_VERSION
from .errors import IndexCorruptError
from .store import FAISS_FILE, TEMP_SUFFIX, IndexStore, ann_count_agrees
from .urls import is_url

_NORM_TOLERANCE = 1e-3  # vectors are stored L2-normalised


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_index`. ``problems`` make an index inconsistent; ``notes`` do not."""

    name: str
    generation: int = 0
    items: int = 0
    vectors: int = 0
    ann_vectors: int | None = None  # in index.faiss, when it is current
    ann_current: bool = False
    missing_files: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class RepairReport:
    """What :func:`repair_index` changed."""

    name: str
    dropped_items: int = 0  # rows removed; their files are re-encoded by the next index run
    dropped_vectors: int = 0  # vectors without a (valid) item
    vectors: int = 0  # in the rebuilt FAISS index
    removed_temp_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bad_vector_ids(store: IndexStore, dim: int) -> tuple[list[int], list[int]]:
    """(ids whose blob has the wrong size, ids whose values are not finite or not unit length)."""
    wrong_size: list[int] = []
    bad_values: list[int] = []
    for item_id, blob in store.vector_blobs():
        if len(blob) != 4 * dim:
            wrong_size.append(item_id)
            continue
        vec = np.frombuffer(blob, dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(vec).all() or abs(norm - 1.0) > _NORM_TOLERANCE:
            bad_values.append(item_id)
    return wrong_size, bad_values


def verify_index(store: IndexStore, *, check_files: bool = True) -> VerifyReport:
    """Check every invariant the index relies on, from one consistent snapshot (read-only)."""
    m = store.manifest
    report = VerifyReport(name=m.name)
    if m.schema_version != SCHEMA_VERSION:
        report.problems.append(f"manifest schema {m.schema_version}, this mmsearch writes {SCHEMA_VERSION}")
    check = store.quick_check()
    if check != ["ok"]:
        report.problems.append("items.sqlite is damaged: " + "; ".join(check[:3]))
        return report  # nothing below can be trusted
    with store.snapshot():
        report.generation = store.generation
        report.items, report.vectors = store.row_counts()
        for what, n in store.inconsistencies().items():
            report.problems.append(f"{n} {what}")
        wrong_size, bad_values = _bad_vector_ids(store, m.dim)
        if wrong_size:
            report.problems.append(f"{len(wrong_size)} vectors do not have {m.dim} dimensions")
        if bad_values:
            report.problems.append(f"{len(bad_values)} vectors are not finite unit vectors")
        image_paths = store.image_keys()
        _verify_ann(store, report)
    if check_files:
        # URL items (s3://...) are not checked: that would need the network.
        report.missing_files = sum(1 for p in image_paths if not is_url(p) and not os.path.exists(p))
        if report.missing_files:
            report.notes.append(
                f"{report.missing_files} indexed files no longer exist "
                "(re-run 'mmsearch index' on their folder, or 'mmsearch prune')"
            )
    leftovers = sorted(p.name for p in store.directory.glob("*" + TEMP_SUFFIX))
    if leftovers:
        report.notes.append(f"{len(leftovers)} temporary files left by an interrupted write (the next write removes them)")
    return report


def _verify_ann(store: IndexStore, report: VerifyReport) -> None:
    from .ann import AnnConfig, VectorIndex

    path = store.directory / FAISS_FILE
    ann = store.reload_manifest().ann
    if not path.is_file():
        report.notes.append(f"no {FAISS_FILE}: it is rebuilt from the stored vectors when needed ('mmsearch repair' writes it)")
        return
    if ann.get("generation") != report.generation:
        report.notes.append(
            f"{FAISS_FILE} is older than the items (generation {ann.get('generation')} < {report.generation}), "
            "as after an interrupted run: queries rebuild it from the stored vectors; 'mmsearch repair' rewrites it"
        )
        return
    report.ann_current = True
    try:
        index = VectorIndex.load(path, store.manifest.dim, AnnConfig.from_dict(ann))
    except IndexCorruptError as exc:
        report.problems.append(str(exc))
        return
    report.ann_vectors = index.ntotal
    if not ann_count_agrees(index, report.vectors):
        report.problems.append(f"{FAISS_FILE} holds {index.ntotal} vectors, items.sqlite {report.vectors}")
        return
    counted = ann.get("ntotal")
    if counted is not None and counted != index.ntotal:
        report.problems.append(f"manifest says {FAISS_FILE} holds {counted} vectors, it holds {index.ntotal}")
    # Spot-check that FAISS maps ids to the stored vectors: first, middle and last
    # stored vectors must each find their own id (exact for flat; near-certain otherwise).
    ids = [item_id for item_id, _ in store.vector_blobs()]
    for item_id in sorted({ids[0], ids[len(ids) // 2], ids[-1]}) if ids else []:
        blob = store.vector_blob(item_id)
        if blob is None or len(blob) != 4 * store.manifest.dim:
            continue  # reported above
        _, found = index.search(np.frombuffer(blob, dtype=np.float32)[None, :], 10)
        if item_id not in set(int(i) for i in found[0]):
            report.problems.append(f"{FAISS_FILE} does not find item {item_id} by its own stored vector")


def repair_index(store: IndexStore) -> RepairReport:
    """Make the index consistent again and rewrite index.faiss; the caller holds the writer lock.

    Rows that cannot be trusted are dropped in one transaction (never patched
    up), so their files are simply re-encoded by the next index run.
    """
    report = RepairReport(name=store.manifest.name)
    report.removed_temp_files = store.remove_temp_files()
    check = store.quick_check()
    if check != ["ok"]:
        name = store.manifest.name
        raise IndexCorruptError(
            f"items.sqlite of index {name!r} is damaged ({check[0]}) and cannot be repaired in place: "
            f"re-create it with 'mmsearch drop {name}' then 'mmsearch index FOLDER --index {name}'"
        )
    wrong_size, bad_values = _bad_vector_ids(store, store.manifest.dim)
    report.dropped_items, report.dropped_vectors = store.drop_untrusted(
        wrong_size + bad_values,
        lambda why: f"could not repair index {store.manifest.name!r}: {why}; it is unchanged",
    )
    index = store.rebuild_vector_index()
    store.save_vector_index(index)
    report.vectors = index.ntotal
    return report
