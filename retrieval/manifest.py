"""manifest.json: what an index is (model, dimension, schema, ANN state), and atomic file writes.

The manifest is always replaced whole (temp file, fsync, rename, fsync of the
folder), so a crash leaves the old one or the new one, never a mix.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SCHEMA_VERSION
from .errors import IndexCorruptError, SchemaVersionError

MANIFEST = "manifest.json"
TEMP_SUFFIX = ".tmp"  # atomic writes go through <name>.<random>.tmp, then os.replace


@dataclass
class Manifest:
    """What an index is: written as manifest.json, atomically."""

    name: str
    model: str
    fingerprint: str
    dim: int
    schema_version: int = SCHEMA_VERSION
    metric: str = "inner_product"
    ann: dict[str, Any] = field(default_factory=lambda: {"type": "flat", "generation": 0})
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """A manifest from its JSON; ``IndexCorruptError`` names the first field that is missing or of the wrong type."""
        for name, check, what in _FIELD_CHECKS:
            if name not in data:
                if name in _REQUIRED:
                    raise IndexCorruptError(f"{MANIFEST} has no {name!r}")
                continue
            if not check(data[name]):
                raise IndexCorruptError(f"{MANIFEST} field {name!r} is {data[name]!r}, not {what}")
        problem = ann_problem(data.get("ann") or {})
        if problem:
            raise IndexCorruptError(f"{MANIFEST} field 'ann' {problem}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def ann_problem(ann: dict[str, Any]) -> str | None:
    """What is wrong with the manifest's ANN entry (the built index's config and the user's policy), or None."""
    optional_int = lambda v: v is None or _is_int(v)  # noqa: E731
    optional_number = lambda v: v is None or _is_number(v)  # noqa: E731
    checks: dict[str, tuple[Any, str]] = {
        "type": (lambda v: v in ("flat", "hnsw", "ivf", "ivfpq"), "an ANN kind"),
        "factory": (lambda v: isinstance(v, str), "a FAISS description"),
        "nlist": (optional_int, "a list count"), "pq_m": (optional_int, "a code size"),
        "hnsw_m": (optional_int, "a link count"), "rule": (lambda v: isinstance(v, str), "a text"),
        "search": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) for k, x in v.items()),
                   "search parameters"),
        "trained_on": (_is_int, "a count"), "built_for": (_is_int, "a count"), "generation": (_is_int, "a count"),
        "ntotal": (_is_int, "a count"), "target_recall": (optional_number, "a recall"),
        "measured_recall": (optional_number, "a recall"), "policy": (lambda v: isinstance(v, dict), "an object"),
        "file": (lambda v: isinstance(v, dict) and all(_is_int(v.get(k)) for k in ("size", "mtime_ns")),
                 "the size and time of index.faiss"),
    }
    for key, (check, what) in checks.items():
        if key in ann and not check(ann[key]):
            return f"has {key} {ann[key]!r}, not {what}"
    policy = ann.get("policy") or {}
    if "ann" in policy and policy["ann"] not in ("auto", "flat", "hnsw", "ivf", "ivfpq"):
        return f"has the policy --ann {policy['ann']!r}"
    if "max_memory" in policy and not (_is_int(policy["max_memory"]) and policy["max_memory"] > 0):
        return f"has the policy --max-memory {policy['max_memory']!r}"
    if "target_recall" in policy and not (_is_number(policy["target_recall"]) and 0 < policy["target_recall"] <= 1):
        return f"has the policy --target-recall {policy['target_recall']!r}"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v  # NaN is no time


_REQUIRED = ("model", "fingerprint", "dim")
_FIELD_CHECKS: tuple[tuple[str, Any, str], ...] = (
    ("name", lambda v: isinstance(v, str), "a name"),
    ("model", lambda v: isinstance(v, str) and bool(v.strip()), "a model spec"),
    ("fingerprint", lambda v: isinstance(v, str) and bool(v.strip()), "a fingerprint"),
    ("dim", lambda v: _is_int(v) and 0 < v <= 1_000_000, "a positive dimension"),
    ("schema_version", _is_int, "a schema number"),
    ("metric", lambda v: v == "inner_product", "'inner_product'"),
    ("ann", lambda v: isinstance(v, dict), "an object"),
    ("counts", lambda v: isinstance(v, dict), "an object"),
    ("created_at", _is_number, "a time"),
    ("updated_at", _is_number, "a time"),
)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable across power loss (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_write_error(exc: BaseException) -> str:
    """A one-line reason for a failed write, with what to do when the disk is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free some space and run again"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{exc.strerror or exc}: the index directory is read-only"
    text = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
    if "disk is full" in text or "database or disk is full" in text:
        return "the disk is full: free some space and run again"
    if "readonly" in text:
        return f"{text}: the index directory is read-only"
    return text


def older_schema_error(name: str, version: object) -> SchemaVersionError:
    return SchemaVersionError(
        f"index {name!r} was written by an older mmsearch (schema {version}) that this one cannot upgrade: "
        f"re-create it with 'mmsearch drop {name}' then 'mmsearch index FOLDER --index {name}'"
    )


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise IndexCorruptError(f"{path} is not a manifest (expected a JSON object)")
    return data
