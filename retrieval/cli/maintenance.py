"""Index maintenance commands: ``remove``, ``prune``, ``verify``, ``repair`` (alias ``rebuild``).

Thin adapters over :mod:`retrieval.api`; only ``repair --model`` loads a
model. Every command that removes something takes the writer lock, says what
it removes before doing it, and has ``--dry-run``.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import typer

from ..config import DEFAULT_INDEX_NAME
from ..errors import IndexCorruptError, MMSearchError
from .options import (
    DryRunOpt,
    IndexDirOpt,
    IndexOpt,
    JsonOpt,
    NoWaitOpt,
    echo_json,
    err,
    open_named_index,
    out,
    writer_waits,
)


def _announce(dry_run: bool, json_out: bool) -> Callable[[list[str]], None]:
    """Says what is about to go: on stderr before a real removal, on stdout for a dry run."""

    def show(keys: list[str]) -> None:
        if json_out:
            return  # the JSON result lists them
        for key in keys:
            (out if dry_run else err)(f"{'would remove' if dry_run else 'removing'}: {key}")

    return show


def remove(
    paths: Annotated[list[str], typer.Argument(help="Files or folders whose items to drop (they need not exist).")],
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    no_wait: NoWaitOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Drop items from an index (your files are never touched)."""
    planned: list[str] = []
    show = _announce(dry_run, json_out)

    def plan(keys: list[str]) -> None:
        planned.extend(keys)
        show(keys)

    with open_named_index(index_name, index_dir) as idx:
        removed = idx.remove(paths, dry_run=dry_run, on_plan=plan, **writer_waits(no_wait, index_name))
        total = len(idx)
    if json_out:
        echo_json({"index": index_name, "removed": removed, "items": total, "dry_run": dry_run, "keys": planned})
        return
    if not any(removed.values()):
        shown = ", ".join(removed)
        raise MMSearchError(f"nothing in index {index_name!r} is at or under {shown}")
    for path, n in removed.items():
        if n == 0:
            err(f"warning: nothing in index {index_name!r} is at or under {path}")
    verb = "would be removed (dry run)" if dry_run else "removed"
    out(f"index {index_name!r}: {sum(removed.values())} {verb} ({total} items)")


def prune(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    no_wait: NoWaitOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Drop every item whose file no longer exists, in any folder (a file that cannot be read is kept)."""
    with open_named_index(index_name, index_dir) as idx:
        gone = idx.prune(dry_run=dry_run, on_plan=_announce(dry_run, json_out), **writer_waits(no_wait, index_name))
        total = len(idx)
    if json_out:
        echo_json({"index": index_name, "removed": len(gone), "paths": gone, "items": total, "dry_run": dry_run})
        return
    verb = "would be removed (dry run)" if dry_run else "removed"
    out(f"index {index_name!r}: {len(gone)} {verb} ({total} items)")


def verify(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    no_files: Annotated[bool, typer.Option("--no-files", help="Do not check that indexed files still exist.")] = False,
) -> None:
    """Check that an index's manifest, items, vectors and FAISS index agree (exit 1 if not)."""
    from ..api import verify_index

    report = verify_index(index_name, root=index_dir, check_files=not no_files)
    if json_out:
        echo_json(report.as_dict())
    else:
        ann = f"{report.ann_vectors} in index.faiss" if report.ann_current else "index.faiss rebuilt on demand"
        out(
            f"index {index_name!r}: {report.items} items, {report.vectors} vectors ({ann}), "
            f"generation {report.generation}: {'ok' if report.ok else 'INCONSISTENT'}"
        )
        for note in report.notes:
            err(f"note: {note}")
        for problem in report.problems:
            out(f"problem: {problem}")
    if not report.ok:
        raise IndexCorruptError(
            f"index {index_name!r} is inconsistent ({len(report.problems)} problems): "
            f"run 'mmsearch repair --index {index_name}'"
        )


def _describe_repair(report: Any) -> list[str]:
    lines = []
    if report.manifest_rewritten:
        lines.append(f"manifest.json rebuilt from items.sqlite: {report.manifest_rewritten}")
    if report.model_recorded:
        lines.append("the model is recorded in items.sqlite")
    lines += [f"drop: {what}" for what in report.dropped]
    return lines


def repair(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="The model the index was built with, for an index from an older mmsearch "
                                           "whose items.sqlite does not record it (checked against the vectors)."),
    ] = None,
    salvage: Annotated[
        bool, typer.Option("--salvage", help="items.sqlite is damaged: first copy every row that can still be read "
                                             "into a new file (the damaged one is kept beside it).")
    ] = False,
    no_wait: NoWaitOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild the manifest and the FAISS index from items.sqlite; drop rows that cannot be trusted (no re-encoding)."""
    from ..api import repair_index

    def plan(report: Any) -> None:
        if not json_out:
            for line in _describe_repair(report):
                (out if dry_run else err)(("would: " if dry_run else "") + line)

    report = repair_index(index_name, root=index_dir, model=model, dry_run=dry_run, on_plan=plan,
                          salvage=salvage, **writer_waits(no_wait, index_name))
    if report.salvage and not json_out:
        got = report.salvage
        err(f"salvaged {got['items']} items and {got['vectors']} vectors; {got['unreadable_ranges']} unreadable "
            f"ranges skipped; the damaged file is kept as {got['kept_as']}")
    if json_out:
        echo_json(report.as_dict())
        return
    if dry_run:
        out(f"index {index_name!r}: dry run, {report.dropped_items} items and {report.dropped_vectors} stray "
            "vectors would be dropped; nothing was changed")
        return
    dropped = ""
    if report.dropped_items or report.dropped_vectors:
        dropped = (
            f"; dropped {report.dropped_items} items and {report.dropped_vectors} stray vectors "
            "(the next 'mmsearch index' run re-encodes those files)"
        )
    out(f"index {index_name!r}: rebuilt index.faiss from {report.vectors} stored vectors{dropped}")


def register(app: typer.Typer) -> None:
    """Add the maintenance commands to the ``mmsearch`` app."""
    app.command("remove")(remove)
    app.command("prune")(prune)
    app.command("verify")(verify)
    app.command("repair")(repair)
    app.command("rebuild", help="Same as 'repair'.")(repair)
