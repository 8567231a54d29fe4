"""Folders of exported model parts cached beside an index, written so readers never see half of one.

The text exports (CLIP BPE towers as .npy, Hugging Face towers as ONNX) and the image-tower ONNX exports
share this: a staging folder beside the target, published by one atomic rename, and an
``unsupported.json`` marker when a model has no exported form, so that it is not tried again on every load.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .manifest import write_json_atomic

log = logging.getLogger(__name__)


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target`` (same file system), removed on exit whether published or not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is as readable as the index
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, target: Path, meta_file: str) -> bool:
    """Move a finished staging folder to ``target`` atomically; True when ``target`` now holds an export.

    Another process may have published the same export first: its ``meta_file`` then stands and counts.
    """
    try:
        os.replace(tmp, target)  # atomic: readers see a whole export or none
    except OSError:
        if (target / meta_file).is_file():  # another process finished first
            return True
        raise
    return True


def mark_unsupported(target: Path, marker: str, why: str, exporter: str) -> None:
    """Record that this model has no export of this kind (with why), so loads stop trying."""
    log.debug("%s not exported: %s", target, why)
    target.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target / marker, {"reason": why, "exporter": exporter})
