"""Index maintenance commands: ``remove``, ``prune``, ``verify``, ``repair`` (alias ``rebuild``).

Thin adapters over :class:`retrieval.api.Index`; none of them loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_NAME
from ..errors import IndexCorruptError, MMSearchError
from .options import IndexDirOpt, IndexOpt, JsonOpt, NoWaitOpt, open_named_index, writer_waits


def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders whose items to drop (they need not exist).")],
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Drop items from an index (your files are never touched)."""
    with open_named_index(index_name, index_dir) as idx:
        removed = idx.remove(paths, **writer_waits(no_wait, index_name))
        total = len(idx)
    if json_out:
        typer.echo(json.dumps({"index": index_name, "removed": removed, "items": total}, indent=2))
        return
    if not any(removed.values()):
        shown = ", ".join(removed)
        raise MMSearchError(f"nothing in index {index_name!r} is at or under {shown}")
    for path, n in removed.items():
        if n == 0:
            typer.echo(f"warning: nothing in index {index_name!r} is at or under {path}", err=True)
    typer.echo(f"index {index_name!r}: {sum(removed.values())} removed ({total} items)")


def prune(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Drop every item whose file no longer exists, in any folder."""
    with open_named_index(index_name, index_dir) as idx:
        gone = idx.prune(**writer_waits(no_wait, index_name))
        total = len(idx)
    if json_out:
        typer.echo(json.dumps({"index": index_name, "removed": len(gone), "paths": gone, "items": total}, indent=2))
        return
    for path in gone:
        typer.echo(f"removed: {path}", err=True)
    typer.echo(f"index {index_name!r}: {len(gone)} removed ({total} items)")


def verify(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    no_files: Annotated[bool, typer.Option("--no-files", help="Do not check that indexed files still exist.")] = False,
) -> None:
    """Check that an index's manifest, items, vectors and FAISS index agree (exit 1 if not)."""
    with open_named_index(index_name, index_dir) as idx:
        report = idx.verify(check_files=not no_files)
    if json_out:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        ann = f"{report.ann_vectors} in index.faiss" if report.ann_current else "index.faiss rebuilt on demand"
        typer.echo(
            f"index {index_name!r}: {report.items} items, {report.vectors} vectors ({ann}), "
            f"generation {report.generation}: {'ok' if report.ok else 'INCONSISTENT'}"
        )
        for note in report.notes:
            typer.echo(f"note: {note}", err=True)
        for problem in report.problems:
            typer.echo(f"problem: {problem}")
    if not report.ok:
        raise IndexCorruptError(
            f"index {index_name!r} is inconsistent ({len(report.problems)} problems): "
            f"run 'mmsearch repair --index {index_name}'"
        )


def repair(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild the FAISS index from the stored vectors and drop rows that cannot be trusted (no re-encoding)."""
    with open_named_index(index_name, index_dir) as idx:
        report = idx.rebuild(**writer_waits(no_wait, index_name))
    if json_out:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    dropped = ""
    if report.dropped_items or report.dropped_vectors:
        dropped = (
            f"; dropped {report.dropped_items} items and {report.dropped_vectors} stray vectors "
            "(the next 'mmsearch index' run re-encodes those files)"
        )
    typer.echo(f"index {index_name!r}: rebuilt index.faiss from {report.vectors} stored vectors{dropped}")


def register(app: typer.Typer) -> None:
    """Add the maintenance commands to the ``mmsearch`` app."""
    app.command("remove")(remove)
    app.command("prune")(prune)
    app.command("verify")(verify)
    app.command("repair")(repair)
    app.command("rebuild", help="Same as 'repair'.")(repair)
