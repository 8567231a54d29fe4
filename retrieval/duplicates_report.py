"""A self-contained HTML page of near-duplicate groups: each group's photos side by side, the copy to keep first.

A face helper of ``mmsearch duplicates --html``. Thumbnails are inlined as
data URIs (the page works when moved or mailed); they come from a callable
the caller gives, so the page is built from the index's own thumbnail cache
(:meth:`retrieval.api.Index.thumbnail`) and this module decodes nothing. The
page only shows: nothing is ever deleted, and each photo links to its file.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import MMSearchError

if TYPE_CHECKING:
    from .duplicates import DuplicateGroup, DuplicateMember

ThumbnailFn = Callable[["DuplicateMember"], "bytes | None"]  # a member -> JPEG bytes, or None (no preview)

__all__ = ["render_duplicates_page", "write_duplicates_page"]


def _size(n: int | None) -> str:
    if not n:
        return ""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def _when(taken_at: str | None) -> str:
    return html.escape((taken_at or "")[:16].replace("T", " "))  # the photo's own clock, as recorded


def _figure(member: "DuplicateMember", keep: bool, paths: dict[int, str], thumbnail: ThumbnailFn) -> str:
    f = member.facts
    path = f.path or f"item {f.id}"
    name = html.escape(os.path.basename(path))
    jpeg = thumbnail(member)
    picture = (
        f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}" alt="{name}" loading="lazy">'
        if jpeg else '<div class="missing">no preview</div>'
    )
    if keep:
        badge = '<b class="keep">keep</b>'
    elif member.exact_copy_of is not None:
        twin = html.escape(os.path.basename(paths.get(member.exact_copy_of, f"item {member.exact_copy_of}")))
        badge = f'<b class="exact" title="same bytes as {twin}">exact copy</b>'
    else:
        badge = f'<b class="near">{member.similarity:.3f}</b>'
    facts = " &middot; ".join(
        part for part in (f"{f.width}&times;{f.height}" if f.width and f.height else "", _size(f.size),
                          _when(f.taken_at)) if part
    )
    href = html.escape(Path(path).as_uri(), quote=True) if os.path.isabs(path) else "#"
    return (
        f'<figure><a href="{href}">{picture}</a><figcaption>{badge} {facts}<br>'
        f'<span title="{html.escape(path, quote=True)}">{name}</span></figcaption></figure>'
    )


def render_duplicates_page(
    groups: Sequence["DuplicateGroup"], title: str, thumbnail: ThumbnailFn, *, threshold: float | None = None
) -> str:
    """The page as a string: one row per group, the copy to keep first, then each copy with its cosine to it."""
    paths = {m.id: m.facts.path or "" for g in groups for m in g.members}
    rows = []
    for number, group in enumerate(groups, 1):
        figures = "\n".join(_figure(m, i == 0, paths, thumbnail) for i, m in enumerate(group.members))
        what = "exact byte copies" if group.all_exact else "near-duplicates"
        rows.append(
            f'<section><h2>Group {number}: {len(group.members)} {what}</h2><div class="row">{figures}</div></section>'
        )
    spare = sum(len(g.members) - 1 for g in groups)
    summary = (f"{len(groups)} groups; {spare} photos beside the copy to keep"
               + (f"; cosine &ge; {threshold:g}" if threshold is not None else "")
               + ". Nothing has been deleted.")
    body = "\n".join(rows) or "<p>No near-duplicates found.</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.2rem; font-weight: 600; }}
h2 {{ font-size: 1rem; font-weight: 600; margin: 1.5rem 0 .5rem; }}
.row {{ display: flex; gap: 1rem; overflow-x: auto; padding-bottom: .5rem; }}
figure {{ margin: 0; flex: 0 0 220px; background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; overflow: hidden; }}
figure img {{ width: 100%; height: 200px; object-fit: contain; background: #eee; display: block; }}
figcaption {{ padding: .4rem .6rem; font-size: .8rem; color: #555; word-break: break-all; }}
.missing {{ height: 200px; display: grid; place-items: center; color: #999; }}
b {{ padding: 0 .3rem; border-radius: 4px; font-weight: 600; }}
b.keep {{ background: #d5f5d5; color: #135213; }}
b.exact {{ background: #fde2c8; color: #7a3a00; }}
b.near {{ background: #e3e8f8; color: #1d3270; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{summary}</p>
{body}
</body>
</html>
"""


def write_duplicates_page(
    groups: Sequence["DuplicateGroup"], path: str | os.PathLike[str], title: str, thumbnail: ThumbnailFn,
    *, threshold: float | None = None,
) -> Path:
    """Write the page atomically and return its path; ``MMSearchError`` says why it cannot be written."""
    out = Path(path)
    if out.is_dir():
        raise MMSearchError(f"--html {out} is a folder: give a file name, e.g. {out / 'duplicates.html'}")
    if not out.parent.is_dir():
        raise MMSearchError(f"--html {out}: the folder {out.parent} does not exist")
    page = render_duplicates_page(groups, title, thumbnail, threshold=threshold)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(page.encode("utf-8", "backslashreplace"))  # a non-UTF-8 name stays readable
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MMSearchError(f"cannot write --html {out}: {exc.strerror or exc}") from exc
    return out
