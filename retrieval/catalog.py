"""The index root: which indexes live under it, deleting one, and the model exports they share.

An index is a folder ``<root>/<name>/`` holding a ``manifest.json`` (see
:mod:`retrieval.store`). Beside the indexes, ``<root>/.cache/text/<fingerprint>/``
holds the torch-free text-tower export of each model (:mod:`retrieval.text_export`),
shared by every index of that model and deleted with the last one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .config import resolve_index_root, validate_index_name
from .errors import IndexNotFoundError
from .manifest import MANIFEST, read_manifest

PathLike = str | os.PathLike[str]


def index_path(name: str, root: PathLike | None = None) -> Path:
    """The folder of index ``name`` under ``root`` (default: $MMSEARCH_INDEX_DIR, else ./indexes)."""
    return resolve_index_root(root) / validate_index_name(name)


def index_exists(name: str, root: PathLike | None = None) -> bool:
    return (index_path(name, root) / MANIFEST).exists()


def index_folders(root: PathLike | None = None) -> list[Path]:
    """Every folder under the root that holds a manifest, sorted by name."""
    base = resolve_index_root(root)
    if not base.is_dir():
        return []
    return [child for child in sorted(base.iterdir()) if (child / MANIFEST).is_file()]


def remove_index_folder(name: str, root: PathLike | None = None) -> None:
    """Delete index ``name``'s folder, then its model's text export if no other index uses it."""
    directory = index_path(name, root)
    if not (directory / MANIFEST).is_file():
        raise IndexNotFoundError(f"no index named {name!r} in {directory.parent}")
    shutil.rmtree(directory)
    prune_text_exports(directory.parent)


def prune_text_exports(index_root: Path) -> None:
    """Delete the text-tower exports that no index under ``index_root`` uses any more."""
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
