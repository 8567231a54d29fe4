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
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


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
