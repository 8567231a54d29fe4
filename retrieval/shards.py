"""Parquet embedding shards: the schema, writing, reading, and the model check.

A shard is one Parquet file of embedded files, the shape clip-retrieval users
know (embeddings next to their metadata), written by ``mmsearch embed`` and by
the Ray engine, and read by ``mmsearch merge``. Columns:

=========  ==============================  ===========================================
id         int64                           position in the listing that made the run;
                                           rows are merged in this order, so item ids
                                           come out as a local run's
path       string                          the item key: absolute path or URL
size       int64                           bytes
mtime_ns   int64                           modification time (ns), as the index keeps it
hash       string                          blake2b-128 of the content (rename detection)
width      int32                           original pixel size (null if not decoded)
height     int32
vector     fixed_size_list<float32>[dim]   L2-normalised embedding; null if none
error      string                          why the file has no vector (null if it has)
reused     bool                            content already indexed: the merge takes the
                                           index's vector for ``hash`` (vector is null)
kind       string                          ``image``, ``video`` or ``frame`` (format 2)
part       int32                           0 for a file's own row; 1, 2, ... for the frames
                                           of a video, which follow it with its ``id``
time       float64                         frames: seconds into the video
meta       string                          videos: JSON of ``info`` (duration, codec,
                                           sampling, truncated ...) and ``photo`` (capture
                                           time, place, camera); frames: why kept
=========  ==============================  ===========================================

A video is one ``video`` row (no vector; its error if it failed) followed by
one ``frame`` row per sampled moment, all with the video's ``id``: a shard
always holds whole videos, and a merge commits each video with its frames in
one transaction, as a local run does. Format-1 shards (no ``kind``) hold images only.

The schema metadata key ``mmsearch`` holds JSON with the model spec,
fingerprint and dimension (and the run that wrote it): shards from another
model are refused, never silently mixed. pyarrow is imported on use only.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import MissingDependencyError, ModelMismatchError, ShardError
from .indexer import FileOutcome
from .video_index import VideoOutcome
from .manifest import describe_write_error
from .urls import filesystem, is_url

if TYPE_CHECKING:
    import pyarrow as pa

    from .manifest import Manifest

FORMAT = "mmsearch-embeddings"
FORMAT_VERSION = 2  # 2: videos (kind, part, time, meta); format-1 shards are read as images
META_KEY = b"mmsearch"
SUFFIX = ".parquet"
# Columns every row has, read up front to validate shards before anything is written.
SMALL_COLUMNS = ("id", "path", "size", "mtime_ns", "hash", "width", "height", "error", "reused")
VIDEO_COLUMNS = ("kind", "part", "time")  # small columns of format 2, read with SMALL_COLUMNS when present


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "Parquet shards need pyarrow: pip install 'mmsearch[ray]' (or pip install pyarrow)"
        ) from exc
    return pyarrow


@dataclass(frozen=True)
class ShardModel:
    """The model a shard's vectors come from (stored in its schema metadata)."""

    model: str
    fingerprint: str
    dim: int

    def describe(self) -> str:
        return f"{self.model!r} (fingerprint {self.fingerprint}, {self.dim}-d)"


def shard_schema(model: ShardModel, run: str) -> "pa.Schema":
    """The Arrow schema of a shard made by ``model`` in run ``run``."""
    pa = _pyarrow()
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "model": model.model, "fingerprint": model.fingerprint,
        "dim": model.dim, "run": run, "created_at": time.time(),
    }
    return pa.schema(
        [
            ("id", pa.int64()), ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
            ("hash", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
            ("vector", pa.list_(pa.float32(), model.dim)), ("error", pa.string()), ("reused", pa.bool_()),
            ("kind", pa.string()), ("part", pa.int32()), ("time", pa.float64()), ("meta", pa.string()),
        ],
        metadata={META_KEY: json.dumps(meta).encode()},
    )


def outcomes_table(ids: Sequence[int], outcomes: Sequence["FileOutcome | VideoOutcome"], schema: "pa.Schema") -> "pa.Table":
    """Rows of a shard: ``outcomes[i]`` is the file at listing position ``ids[i]`` (a video: its row, then its frames)."""
    pa = _pyarrow()
    dim = schema.field("vector").type.list_size
    rows: list[dict[str, Any]] = []
    for item_id, out in zip(ids, outcomes):
        if isinstance(out, VideoOutcome):
            rows += _video_rows(int(item_id), out)
            continue
        rows.append({
            "id": int(item_id), "path": out.key, "size": out.size, "mtime_ns": out.mtime_ns, "hash": out.hash,
            "width": out.width or None, "height": out.height or None, "vector": out.vector,
            "error": None if out.vector is not None or out.reused else (out.error or "unknown error"),
            "reused": bool(out.reused and out.vector is None), "kind": "image", "part": 0, "time": None, "meta": None,
        })
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    missing = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        if row["vector"] is not None:
            flat[i] = row["vector"]
            missing[i] = False
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(missing))
    columns: dict[str, Any] = {}
    for name in schema.names:
        if name == "vector":
            columns[name] = vectors
        else:
            columns[name] = pa.array([row[name] for row in rows], schema.field(name).type)
    return pa.Table.from_pydict(columns, schema=schema)


def _video_rows(item_id: int, out: VideoOutcome) -> list[dict[str, Any]]:
    """A video's row (no vector) and one row per frame, all with the video's listing id."""
    failed = not out.frames and not out.reused
    meta = {"info": out.info, "photo": out.photo.as_dict() if out.photo is not None else None}
    rows = [{
        "id": item_id, "path": out.key, "size": out.size, "mtime_ns": out.mtime_ns, "hash": out.hash,
        "width": out.width or None, "height": out.height or None, "vector": None,
        "error": (out.error or "no frame could be embedded") if failed else None, "reused": bool(out.reused),
        "kind": "video", "part": 0, "time": None, "meta": json.dumps(meta, ensure_ascii=False, default=str),
    }]
    for part, (seconds, reason, vector) in enumerate(out.frames, start=1):
        rows.append({
            "id": item_id, "path": out.key, "size": None, "mtime_ns": None, "hash": None, "width": None,
            "height": None, "vector": vector, "error": None, "reused": False, "kind": "frame", "part": part,
            "time": float(seconds), "meta": json.dumps({"reason": reason}) if reason else None,
        })
    return rows


def table_outcomes(table: "pa.Table") -> list["FileOutcome | VideoOutcome"]:
    """The rows of a shard table as outcomes, in table order: a video row and its frames become one :class:`VideoOutcome`."""
    data = {name: table.column(name).to_pylist() for name in SMALL_COLUMNS}
    n = table.num_rows
    kinds = table.column("kind").to_pylist() if "kind" in table.column_names else [None] * n
    times = table.column("time").to_pylist() if "time" in table.column_names else [None] * n
    metas = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * n
    vectors = vector_matrix(table)
    out: list[FileOutcome | VideoOutcome] = []
    i = 0
    while i < n:
        kind = kinds[i] or "image"
        if kind == "frame":  # a frame whose video row is not in this table: nothing to attach it to
            i += 1
            continue
        if kind == "video":
            frames = []
            j = i + 1
            while j < n and kinds[j] == "frame" and data["id"][j] == data["id"][i]:
                if vectors[j] is not None and times[j] is not None:
                    frames.append((float(times[j]), _reason(metas[j]), vectors[j]))
                j += 1
            out.append(_video_outcome(data, i, frames, metas[i]))
            i = j
            continue
        out.append(FileOutcome(
            key=data["path"][i], size=data["size"][i], mtime_ns=data["mtime_ns"][i], hash=data["hash"][i],
            vector=vectors[i], width=data["width"][i] or 0, height=data["height"][i] or 0,
            error=data["error"][i], reused=bool(data["reused"][i]),
        ))
        i += 1
    return out


def _video_outcome(data: dict[str, list[Any]], i: int, frames: list[tuple[float, str, np.ndarray]],
                   meta_text: str | None) -> VideoOutcome:
    from .photo_meta import PhotoMeta

    try:
        meta = json.loads(meta_text) if meta_text else {}
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    photo = PhotoMeta.from_dict(meta["photo"]) if isinstance(meta.get("photo"), dict) else None
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    return VideoOutcome(
        key=data["path"][i], size=data["size"][i], mtime_ns=data["mtime_ns"][i], hash=data["hash"][i],
        frames=tuple(frames), width=data["width"][i] or 0, height=data["height"][i] or 0,
        error=data["error"][i], reused=bool(data["reused"][i]), photo=photo, info=info,
    )


def _reason(meta_text: str | None) -> str:
    try:
        meta = json.loads(meta_text) if meta_text else {}
    except ValueError:
        return ""
    return str(meta.get("reason", "")) if isinstance(meta, dict) else ""


def file_rows(table: "pa.Table") -> int:
    """How many files a shard table holds (a video's frames are parts of it, not files)."""
    if "kind" not in table.column_names:
        return table.num_rows
    return sum(1 for kind in table.column("kind").to_pylist() if kind != "frame")


def sort_rows(table: "pa.Table") -> "pa.Table":
    """A shard table in merge order: by listing id, a video's frames right after its row."""
    if "part" in table.column_names:
        return table.sort_by([("id", "ascending"), ("part", "ascending")])
    return table.sort_by("id")


def vector_matrix(table: "pa.Table") -> list[np.ndarray | None]:
    """The ``vector`` column as one float32 row per item (None where null)."""
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    # A fixed-size list keeps dim slots for null rows too, so rows map 1:1 onto the child array.
    flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    start = column.offset * dim
    matrix = flat[start : start + len(column) * dim].reshape(len(column), dim)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [matrix[i].copy() if valid[i] else None for i in range(len(column))]


# -- writing ------------------------------------------------------------------------


class ShardWriter:
    """Writes shards ``part-<first id>.parquet`` into a folder (local or URL), each file whole.

    A local shard is written to a temp name and renamed into place, so a crash
    never leaves a half file under a shard name; object stores (s3, gs) publish
    an object only when its upload completes.
    """

    def __init__(self, directory: str | os.PathLike[str], model: ShardModel, run: str | None = None) -> None:
        self.directory = os.fspath(directory)
        self.model = model
        self.run = run or uuid.uuid4().hex
        self.schema = shard_schema(model, self.run)
        self.files: list[str] = []
        try:
            if is_url(self.directory):
                self._fs, self._base = filesystem(self.directory)
                self._fs.makedirs(self._base, exist_ok=True)
            else:
                self._fs, self._base = None, self.directory
                Path(self.directory).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ShardError(f"cannot write shards to {self.directory}: {describe_write_error(exc)}") from exc

    def write(self, ids: Sequence[int], outcomes: Sequence[FileOutcome]) -> "pa.Table":
        """Write one shard of ``outcomes`` (listing positions ``ids``); returns the table written."""
        return self.write_table(outcomes_table(ids, outcomes, self.schema))

    def write_table(self, table: "pa.Table") -> "pa.Table":
        """Write a table already in this writer's schema (the Ray engine builds them in its workers)."""
        import pyarrow.parquet as pq

        table = table.replace_schema_metadata(self.schema.metadata)
        first = int(table.column("id")[0].as_py()) if table.num_rows else 0
        name = f"part-{first:010d}-{self.run[:8]}{SUFFIX}"
        if self._fs is not None:
            target = f"{self._base.rstrip('/')}/{name}"
            try:
                with self._fs.open(target, "wb") as fh:
                    pq.write_table(table, fh)
            except OSError as exc:
                raise ShardError(f"cannot write shard {target}: {describe_write_error(exc)}") from exc
            self.files.append(self._fs.unstrip_protocol(target))
        else:
            target = os.path.join(self._base, name)
            tmp = target + ".tmp"
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, target)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # no half-written shard left behind (a full disk)
                raise ShardError(f"cannot write shard {target}: {describe_write_error(exc)}") from exc
            self.files.append(target)
        return table


# -- reading ------------------------------------------------------------------------


@dataclass
class Shard:
    """One shard file, validated: its model, run, and the small columns (vectors are read on demand)."""

    location: str
    model: ShardModel
    run: str
    rows: "pa.Table"  # SMALL_COLUMNS (and VIDEO_COLUMNS of format 2), sorted by id then part
    first_id: int
    created_at: float = 0.0  # when its run wrote it (shard metadata); later runs win a merge

    def read(self) -> "pa.Table":
        """The whole shard (vectors included), sorted by id."""
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(_source(self.location))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for damaged files
            raise ShardError(f"cannot read shard {self.location}: {_one_line(exc)}") from exc
        return sort_rows(table)


def expand_shards(locations: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Shard files named by ``locations``: files as given, folders as the ``*.parquet`` inside them (sorted)."""
    found: list[str] = []
    for loc in locations:
        text = os.fspath(loc)
        if is_url(text):
            fs, path = filesystem(text)
            if fs.isdir(path):
                found += sorted(fs.unstrip_protocol(p) for p in fs.find(path) if p.endswith(SUFFIX))
            elif fs.exists(path):
                found.append(text)
            else:
                raise ShardError(f"shard not found: {text}")
        elif os.path.isdir(text):
            inside = sorted(str(p) for p in Path(text).rglob("*" + SUFFIX) if p.is_file())
            if not inside:
                raise ShardError(f"no {SUFFIX} shards in folder {text}")
            found += inside
        elif os.path.isfile(text):
            found.append(os.path.abspath(text))
        else:
            raise ShardError(f"shard not found: {text}")
    if not found:
        raise ShardError("no shards given")
    return found


def open_shard(location: str) -> Shard:
    """Validate one shard (readable Parquet, our format, complete columns) without reading its vectors."""
    _pyarrow()
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(_source(location))
        schema = parquet.schema_arrow
    except FileNotFoundError:
        raise ShardError(f"shard not found: {location}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, not Parquet at all, unreadable
        raise ShardError(f"{location} is not a readable Parquet shard ({_one_line(exc)})") from exc
    raw = (schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ShardError(f"{location} is a Parquet file but not an mmsearch embedding shard (no '{META_KEY.decode()}' metadata)")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ShardError(f"{location} was written by a newer mmsearch (shard format {meta['version']}): upgrade mmsearch")
    missing = [c for c in (*SMALL_COLUMNS, "vector") if c not in schema.names]
    if missing:
        raise ShardError(f"{location} lacks the column(s) {', '.join(missing)}")
    try:
        model = ShardModel(str(meta["model"]), str(meta["fingerprint"]), int(meta["dim"]))
        if schema.field("vector").type.list_size != model.dim:
            raise ValueError("vector width differs from the recorded dimension")
        extra = [c for c in VIDEO_COLUMNS if c in schema.names]
        rows = sort_rows(parquet.read(columns=[*SMALL_COLUMNS, *extra]))
    except Exception as exc:  # noqa: BLE001 - damaged pages, bad metadata values
        raise ShardError(f"{location} is damaged: {_one_line(exc)}") from exc
    first = int(rows.column("id")[0].as_py()) if rows.num_rows else 0
    try:
        created = float(meta.get("created_at", 0.0))
    except (TypeError, ValueError):
        created = 0.0
    return Shard(location=location, model=model, run=str(meta.get("run", "")), rows=rows, first_id=first,
                 created_at=created)


def open_shards(locations: Sequence[str | os.PathLike[str]]) -> list[Shard]:
    """Validate every shard up front, in merge order: runs oldest first, then by first id.

    Where several rows name one file the last merged wins, so the newest run
    (by the time its shards were written) decides; runs written at the same
    time keep the order in which they were given.

    Raises ``ShardError`` for a missing or damaged file and ``ModelMismatchError``
    when the shards come from more than one model, before anything is written.
    """
    shards = [open_shard(loc) for loc in expand_shards(locations)]
    models = {s.model for s in shards}
    if len(models) > 1:
        by_model: dict[ShardModel, str] = {}
        for s in shards:
            by_model.setdefault(s.model, s.location)
        shown = "; ".join(f"{m.describe()} in {loc}" for m, loc in by_model.items())
        raise ModelMismatchError(f"the shards come from {len(models)} different models and cannot share an index: {shown}")
    given: dict[str, int] = {}
    started: dict[str, float] = {}
    for s in shards:
        given.setdefault(s.run, len(given))
        started[s.run] = min(started.get(s.run, s.created_at), s.created_at)
    return sorted(shards, key=lambda s: (started[s.run], given[s.run], s.first_id, s.location))


def check_model(model: ShardModel, manifest: "Manifest") -> None:
    """Refuse shards whose vectors come from another model than the index's."""
    if model.fingerprint != manifest.fingerprint or model.dim != manifest.dim:
        raise ModelMismatchError(
            f"the shards were embedded with model {model.describe()}, but index {manifest.name!r} uses "
            f"{manifest.model!r} (fingerprint {manifest.fingerprint}, {manifest.dim}-d): "
            "merge them into a new --index, or embed again with the index's model"
        )


def _source(location: str) -> Any:
    """What pyarrow opens: a local path as is, a URL through its fsspec filesystem."""
    if not is_url(location):
        return location
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)).open_input_file(path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)
