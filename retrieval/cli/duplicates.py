"""``mmsearch duplicates``: groups of near-identical photos, the copy to keep first (nothing is deleted)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import DEFAULT_INDEX_NAME
from .options import (
    IndexDirOpt,
    IndexOpt,
    JsonOpt,
    UnderOpt,
    echo_json,
    err,
    human_size,
    open_named_index,
    out,
)

ThresholdOpt = Annotated[
    float,
    typer.Option("--threshold", "-t", help="Cosine at or above which two photos count as the same picture "
                 "(0.95: copies, crops and bursts; lower finds more, and more false pairs)."),
]


def duplicates(
    threshold: ThresholdOpt = 0.95,
    under: UnderOpt = None,
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Also write a page with each group's thumbnails side by side.")
    ] = None,
) -> None:
    """Near-duplicate photos (resized, re-encoded or cropped copies, bursts), the copy to keep first.

    The copy to keep has the most pixels, then the earliest capture, then the
    larger file; exact byte copies are marked. Nothing is ever deleted.

    \b
    mmsearch duplicates
    mmsearch duplicates --threshold 0.97 --html dups.html
    """
    from ..errors import MMSearchError
    from ..search import Filters

    filters = Filters.parse(target="image", under=under)
    with open_named_index(index_name, index_dir) as idx:
        groups = idx.duplicates(threshold, filters=filters)
        if html is not None:
            from ..duplicates_report import write_duplicates_page

            def thumbnail(member: Any) -> bytes | None:
                row = idx.item(member.id)
                if row is None:
                    return None
                try:
                    return idx.thumbnail(row).read_bytes()
                except (MMSearchError, OSError):  # a file gone or unreadable since it was indexed: no preview
                    return None

            written = write_duplicates_page(groups, html, f"mmsearch: duplicates in {idx.name}", thumbnail,
                                            threshold=threshold)
            err(f"wrote {written}")
    if json_out:
        echo_json({"threshold": threshold, "groups": [g.as_dict() for g in groups]})
        return
    if not groups:
        err(f"no near-duplicates at cosine >= {threshold:g}")
        return
    for number, group in enumerate(groups, 1):
        what = "exact byte copies" if group.all_exact else "near-duplicates"
        out(f"group {number}: {len(group.members)} {what}")
        paths = {m.id: m.facts.path for m in group.members}
        for i, member in enumerate(group.members):
            out("  " + _member_line(member, i == 0, paths))
    spare = sum(len(g.members) - 1 for g in groups)
    err(f"{len(groups)} groups, {spare} photos beside the copies to keep (nothing was deleted)")


def _member_line(member: Any, keep: bool, paths: dict[int, str | None]) -> str:
    """``keep  4000x3000  1.2 MiB  2021-07-04 18:30  PATH`` (a copy: its cosine, or ``exact`` with its twin)."""
    f = member.facts
    if keep:
        mark = "keep"
    elif member.exact_copy_of is not None:
        mark = "exact"
    else:
        mark = f"{member.similarity:.3f}"
    size = f"{f.width}x{f.height}" if f.width and f.height else "?"
    when = (f.taken_at or "")[:16].replace("T", " ")  # the photo's own clock
    line = f"{mark:<6} {size:>11} {human_size(f.size or 0):>9}  {when or '-':<16}  {f.path}"
    if member.exact_copy_of is not None:
        line += f"  (same bytes as {paths.get(member.exact_copy_of)})"
    return line


def register(app: typer.Typer) -> None:
    """Add ``duplicates`` to the ``mmsearch`` app."""
    app.command("duplicates")(duplicates)
