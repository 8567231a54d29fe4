"""Checking and repairing an index directory: do manifest, items, vectors and FAISS agree?

``verify_index`` only reads (it works on a read-only index). ``repair_index``
needs the writer lock (the caller holds it). It first settles which model made
the vectors: the model items.sqlite records wins over manifest.json (a lost or
damaged manifest is rebuilt from it); an index from before that record is
told by ``--model`` (or by a manifest whose dimension its vectors share).
Then it drops the rows that cannot be trusted under that model (their files
are re-encoded by the next ``mmsearch index`` run), and rebuilds index.faiss
from the stored vectors. A vector that agrees with the model is never dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .config import SCHEMA_VERSION
from .errors import IndexCorruptError, ModelMismatchError
from .store import FAISS_FILE, TEMP_SUFFIX, IndexStore, ModelRecord, ann_count_agrees, ann_files_vouched, faiss_file_vouched
from .sources import file_is_gone
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
    """What :func:`repair_index` changed (or, with ``dry_run``, would change)."""

    name: str
    dropped_items: int = 0  # rows removed; their files are re-encoded by the next index run
    dropped_vectors: int = 0  # vectors without a (valid) item
    vectors: int = 0  # in the rebuilt FAISS index
    removed_temp_files: list[str] = field(default_factory=list)
    manifest_rewritten: str | None = None  # why manifest.json was rebuilt
    model_recorded: bool = False  # the model was written into items.sqlite now
    dropped: list[str] = field(default_factory=list)  # what the dropped rows were (paths, text keys or ids)
    dry_run: bool = False
    salvage: dict[str, Any] | None = None  # with --salvage: rows copied, unreadable ranges, where the old file is

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
    report = VerifyReport(name=store.name)
    report.problems += [f"{problem} ('mmsearch repair' rebuilds it from items.sqlite)"
                        for problem in store.manifest_problems]
    if not store.manifest_problems and m.schema_version != SCHEMA_VERSION:
        report.problems.append(f"manifest schema {m.schema_version}, this mmsearch writes {SCHEMA_VERSION}")
    if store.recorded_model() is None:
        report.notes.append("items.sqlite does not record its model yet (an index from an older mmsearch): "
                            "'mmsearch repair --model SPEC' records it")
    check = store.quick_check()
    if check != ["ok"]:
        report.problems.append("items.sqlite is damaged: " + "; ".join(check[:3]))
        return report  # nothing below can be trusted
    with store.snapshot():
        report.generation = store.generation
        report.items, report.vectors = store.row_counts()
        for what, n in store.inconsistencies().items():
            report.problems.append(f"{n} {what}")
        dims = store.stored_vector_dims()
        if m.dim <= 0 and len(dims) == 1:
            m.dim = next(iter(dims))  # no usable manifest, no record: judge the vectors by themselves
        wrong_size, bad_values = _bad_vector_ids(store, m.dim)
        if wrong_size:
            report.problems.append(f"{len(wrong_size)} vectors do not have {m.dim} dimensions")
        if bad_values:
            report.problems.append(f"{len(bad_values)} vectors are not finite unit vectors")
        image_paths = store.image_keys()
        _verify_ann(store, report)
    if check_files:
        # URL items (s3://...) are not checked: that would need the network.
        report.missing_files = sum(1 for p in image_paths if not is_url(p) and file_is_gone(p))
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
    if not ann_files_vouched(store.directory, ann):
        report.problems.append(
            f"{FAISS_FILE} is not the file the manifest describes (replaced or copied from elsewhere): queries rebuild "
            "it from the stored vectors; 'mmsearch repair' rewrites it"
        )
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
        report.problems.append(f"{exc} (queries rebuild it from the stored vectors; 'mmsearch repair' rewrites it)")
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
    _verify_copy(store, report, ann, index)


def _verify_copy(store: IndexStore, report: VerifyReport, ann: dict[str, Any], index: Any) -> None:
    """The re-rank copy beside index.faiss: the file the manifest vouches for, holding every stored vector."""
    from .vector_copy import COPY_FILE, VectorCopy

    if not index.config.copy_dtype:
        return
    path = store.directory / COPY_FILE
    recorded = ann.get("copy")
    fix = "queries re-rank from items.sqlite meanwhile (slower); 'mmsearch repair' rewrites it"
    if not isinstance(recorded, dict) or not path.is_file():
        report.notes.append(f"no {COPY_FILE} (the re-rank copy): {fix}")
        return
    if not faiss_file_vouched(path, {"file": recorded}):
        report.problems.append(f"{COPY_FILE} is not the file the manifest describes (replaced or copied from "
                               f"elsewhere): {fix}")
        return
    try:
        copy = VectorCopy.open(path, store.manifest.dim)
    except IndexCorruptError as exc:
        report.problems.append(f"{exc}: {fix}")
        return
    used = "queries read it, so they may miss or misorder results: 'mmsearch repair' rewrites it"
    report.problems += [f"{problem}: {used}" for problem in copy.problems_against(store.stored_vectors().chunks())]


def settle_model(store: IndexStore, given: ModelRecord | None) -> tuple[ModelRecord, bool]:
    """The model that made the vectors, and whether items.sqlite must record it now.

    items.sqlite's record wins; ``given`` (``repair --model``) must agree with
    it. Without a record: ``given``, else a manifest whose dimension the stored
    vectors share. Raises when neither can tell.
    """
    recorded = store.recorded_model()
    name = store.name
    if recorded is not None:
        if given is not None and (given.fingerprint, given.dim) != (recorded.fingerprint, recorded.dim):
            raise ModelMismatchError(
                f"index {name!r} records model {recorded.model!r} (fingerprint {recorded.fingerprint}, "
                f"{recorded.dim}-d), not {given.model!r} (fingerprint {given.fingerprint}, {given.dim}-d): "
                "leave out --model, or index into a new --index"
            )
        return recorded, False
    dims = store.stored_vector_dims()
    if given is not None:
        if dims and given.dim not in dims:
            raise ModelMismatchError(
                f"model {given.model!r} makes {given.dim}-d vectors, but index {name!r} stores "
                f"{', '.join(f'{n} of {d}-d' for d, n in sorted(dims.items()))}: it was made by another model"
            )
        return given, True
    m = store.manifest
    if not store.manifest_problems and m.fingerprint and m.dim > 0 and (not dims or m.dim in dims):
        return ModelRecord(m.model, m.fingerprint, m.dim), True
    shape = ", ".join(f"{n} vectors of {d}-d" for d, n in sorted(dims.items())) or "no vectors"
    raise IndexCorruptError(
        f"cannot tell which model made index {name!r} ({shape}; its manifest "
        f"{'is unusable' if store.manifest_problems else f'says {m.dim}-d'}): "
        f"run 'mmsearch repair --index {name} --model SPEC' with the model it was built with"
    )


def repair_index(
    store: IndexStore,
    *,
    model: ModelRecord | None = None,
    dry_run: bool = False,
    on_plan: Callable[[RepairReport], None] | None = None,
) -> RepairReport:
    """Make the index consistent again and rewrite index.faiss; the caller holds the writer lock.

    ``model`` (from ``repair --model SPEC``) names the model of an index whose
    items.sqlite does not record one. Rows that cannot be trusted are dropped
    in one transaction (never patched up), so their files are simply
    re-encoded by the next index run. ``on_plan`` sees what will change before
    anything is written; ``dry_run`` stops there.
    """
    name = store.name
    report = RepairReport(name=name, dry_run=dry_run)
    check = store.quick_check()
    if check != ["ok"]:
        raise IndexCorruptError(
            f"items.sqlite of index {name!r} is damaged ({check[0]}): 'mmsearch repair --index {name} --salvage' "
            f"copies every readable item and vector into a new file, or 'mmsearch drop {name}' starts again"
        )
    truth, record = settle_model(store, model)
    m = store.manifest
    if store.manifest_problems:
        report.manifest_rewritten = "; ".join(store.manifest_problems)
    elif (m.model, m.fingerprint, m.dim) != (truth.model, truth.fingerprint, truth.dim):
        report.manifest_rewritten = (f"it named model {m.model!r} ({m.fingerprint}, {m.dim}-d), "
                                     f"the vectors are {truth.model!r} ({truth.fingerprint}, {truth.dim}-d)")
    report.model_recorded = record
    wrong_size, bad_values = _bad_vector_ids(store, truth.dim)
    untrusted = wrong_size + bad_values
    report.dropped = store.describe_untrusted(untrusted)
    report.dropped_items, report.dropped_vectors = store.count_untrusted(untrusted)
    if on_plan is not None:
        on_plan(report)
    if dry_run:
        return report
    report.removed_temp_files = store.remove_temp_files()
    if record:
        store.record_model(truth)
    if report.manifest_rewritten is not None:
        store.rebuild_manifest(truth)
    report.dropped_items, report.dropped_vectors = store.drop_untrusted(
        untrusted, lambda why: f"could not repair index {name!r}: {why}; it is unchanged",
    )
    index = store.rebuild_vector_index()
    store.save_vector_index(index)
    report.vectors = index.ntotal
    return report
