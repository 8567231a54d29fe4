"""The index root: which indexes live under it, deleting one, and the model exports they share.

An index is a folder ``<root>/<name>/`` holding a ``manifest.json`` (see
:mod:`retrieval.store`). Beside the indexes, ``<root>/.cache/text/<fingerprint>/``
holds the torch-free text-tower export of each model (:mod:`retrieval.text_export`), and
``<root>/.cache/image/<fingerprint>/`` its image tower's ONNX graphs (:mod:`retrieval.image_export`),
shared by every index of that model and deleted with the last one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .config import resolve_index_root, validate_index_name
from .errors import IndexNotFoundError, MMSearchError
from .manifest import MANIFEST, read_manifest

PathLike = str | os.PathLike[str]


def index_path(name: str, root: PathLike | None = None) -> Path:
    """The folder of index ``name`` under ``root`` (default: $MMSEARCH_INDEX_DIR, else ./indexes)."""
    return resolve_index_root(root) / validate_index_name(name)


def index_exists(name: str, root: PathLike | None = None) -> bool:
    return (index_path(name, root) / MANIFEST).exists()


def index_folders(root: PathLike | None = None) -> list[Path]:
    """Every folder under the root that looks like an index (manifest or items.sqlite), sorted by name."""
    base = resolve_index_root(root)
    if not base.is_dir():
        return []
    try:
        children = sorted(base.iterdir())
    except OSError as exc:
        raise MMSearchError(f"cannot list the index folder {base}: {exc.strerror or exc}") from exc
    return [child for child in children if not child.name.startswith(".") and _is_index_folder(child)]


def _is_index_folder(child: Path) -> bool:
    try:
        return child.is_dir() and looks_like_index(child)
    except OSError:
        return True  # unreadable: listed, so the user learns why it cannot be opened


def looks_like_index(directory: Path) -> bool:
    """A folder holding a manifest or an items.sqlite (an index, possibly one whose manifest was lost)."""
    from .store import ITEMS_DB

    return (directory / MANIFEST).is_file() or (directory / ITEMS_DB).is_file()


def folder_size(directory: Path) -> int:
    """Bytes of the files in a folder, recursively (unreadable entries count 0)."""
    total = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def writer_lock_of(directory: Path, *, wait: bool = False, on_wait: Callable[[], None] | None = None) -> Any:
    """The writer lock of an index folder, without opening the index (drop takes it before deleting)."""
    from .store import writer_lock

    return writer_lock(directory, wait=wait, on_wait=on_wait)


def export_only_used_by(directory: Path) -> str | None:
    """The text export that deleting this index would remove (no other index under its root shares the model)."""
    from .text_light import export_dir

    try:
        mine = read_manifest(directory / MANIFEST).get("fingerprint")
    except Exception:  # noqa: BLE001 - no readable manifest: its export (if any) cannot be named
        return None
    if not isinstance(mine, str) or not export_dir(directory.parent, mine).is_dir():
        return None
    for other in index_folders(directory.parent):
        if other != directory:
            try:
                if read_manifest(other / MANIFEST).get("fingerprint") == mine:
                    return None
            except Exception:  # noqa: BLE001 - an unreadable sibling may use it: keep it
                return None
    return str(export_dir(directory.parent, mine))


def remove_index_folder(name: str, root: PathLike | None = None) -> None:
    """Delete index ``name``'s folder, then its model's text export if no other index uses it."""
    directory = index_path(name, root)
    if not looks_like_index(directory):
        raise IndexNotFoundError(f"no index named {name!r} in {directory.parent}")
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        raise MMSearchError(f"could not delete {directory}: {exc.strerror or exc}") from exc
    prune_text_exports(directory.parent)


def prune_text_exports(index_root: Path) -> None:
    """Delete the text- and image-tower exports that no index under ``index_root`` uses any more."""
    from .image_onnx import image_export_dir
    from .text_light import export_dir

    folders = [f for f in (export_dir(index_root, "x").parent, image_export_dir(index_root, "x").parent) if f.is_dir()]
    if not folders:
        return
    used = set()
    for child in index_root.iterdir():
        try:
            used.add(read_manifest(child / MANIFEST).get("fingerprint"))
        except Exception:  # noqa: BLE001 - not an index, or an unreadable one: keep every export
            if (child / MANIFEST).exists():
                return
    for exports in folders:
        for export in exports.iterdir():
            if export.is_dir() and export.name not in used and not export.name.startswith("."):
                shutil.rmtree(export, ignore_errors=True)
