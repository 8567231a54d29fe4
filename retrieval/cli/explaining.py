"""``mmsearch explain``: why a picture matches a query, as a heatmap drawn on the photo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import DEFAULT_INDEX_NAME
from .options import DeviceOpt, IndexDirOpt, IndexOpt, JsonOpt, PrecisionOpt, ThreadsOpt, echo_json, err, out

# The names of retrieval.explanation.METHODS, for --help without importing the engine
# (a test checks that the two agree).
METHOD_HELP = ("How to compute the heatmap: intgrad (default: integrated gradients, 4 forward and 3 backward "
               "passes), occlusion (37 forward passes), rise (97), gradcam, gradeclip or tokens (1 forward pass "
               "each, gradcam and gradeclip 1 backward too); how they compare: docs/explain.md.")
# Image formats an overlay may be written in, by file extension.
OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _split_args(args: list[str]) -> tuple[str | None, str]:
    """``[TEXT] PHOTO`` -> (text or None, photo)."""
    from ..errors import InvalidQueryError

    if not args or len(args) > 2:
        raise InvalidQueryError(
            "give the picture to explain, after the query's words if any: mmsearch explain \"red shoes\" photo.jpg"
        )
    return (args[0], args[1]) if len(args) == 2 else (None, args[0])


def check_out_path(path: Path) -> str:
    """The image format to write ``--out`` in; ``MMSearchError`` when it cannot be written there."""
    from ..errors import MMSearchError

    if path.is_dir():
        raise MMSearchError(f"--out {path} is a folder: give a file name, e.g. {path / 'why.png'}")
    if not path.parent.is_dir():
        raise MMSearchError(f"--out {path}: the folder {path.parent} does not exist")
    fmt = OUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MMSearchError(f"--out {path}: write the heatmap as .png, .jpg or .webp")
    return fmt


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a reader never sees half a picture."""
    from ..errors import MMSearchError

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MMSearchError(f"cannot write --out {path}: {exc.strerror or exc}") from exc


def _describe(why: Any, photo: str) -> list[str]:
    """What a person reads: the score, where the picture answered the query, each term's pull and push."""
    w, h = why.geometry.photo_size
    lines = [f"{photo}: score {why.score:.3f} ({why.method}; {why.tower})"]
    if why.boxes:
        x0, y0, x1, y1 = why.boxes[0]
        lines.append(f"strongest region: x {x0}-{x1}, y {y0}-{y1} of the {w}x{h} photo")
    else:
        lines.append("no region pulls the picture towards the query")
    if len(why.terms) > 1:
        for term in why.terms:
            pull = float(term.grid[term.grid > 0].sum())
            push = float(term.grid[term.grid < 0].sum())
            lines.append(f"  {term.label or 'vector'} ({term.weight:+g}): pulls {pull:+.3g}, pushes {push:+.3g}")
    for note in ([why.outside_note] if why.outside_note else []) + list(why.notes):
        lines.append(f"note: {note}")
    return lines


def explain(
    args: Annotated[list[str], typer.Argument(metavar="[TEXT] PHOTO",
                                              help="The query's words (optional WEIGHT: prefix), then the picture: "
                                                   "a file, or an indexed item's id.")],
    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the photo with the heatmap here "
                                                     "(.png, .jpg or .webp).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=METHOD_HELP)] = None,
    image: Annotated[
        Optional[list[str]], typer.Option("--image", help="[WEIGHT:]FILE: which parts look like this image (repeatable).")
    ] = None,
    more_text: Annotated[
        Optional[list[str]], typer.Option("--text", help="[WEIGHT:]TEXT: another text term (repeatable).")
    ] = None,
    not_text: Annotated[
        Optional[list[str]], typer.Option("--not-text", help="[WEIGHT:]TEXT: a term that pushes away (repeatable).")
    ] = None,
    not_image: Annotated[
        Optional[list[str]], typer.Option("--not-image", help="[WEIGHT:]FILE: an image that pushes away (repeatable).")
    ] = None,
    term: Annotated[Optional[int], typer.Option("--term", min=1, help="Draw only this term's share (1 = the first "
                                                "term), on the same colour scale.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the strongest colour.")] = 0.6,
    max_side: Annotated[Optional[int], typer.Option("--max-side", min=1, help="Shrink the written photo to this "
                                                    "many pixels on its longest side [default: full size].")] = None,
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Why does a picture match a query? A heatmap over the photo: red pulls it towards the query, blue pushes away.

    \b
    mmsearch explain "red shoes" photo.jpg --out why.png
    mmsearch explain --image query.jpg photo.jpg --out why.png
    mmsearch explain "red shoes" --not-text leather 42 --json
    """
    from ..api import EXPLAIN_DEFAULT_METHOD
    from ..errors import InvalidQueryError
    from ..query import parse_terms
    from .options import open_named_index

    text, photo = _split_args(args)
    terms = parse_terms(
        texts=([text] if text is not None else []) + list(more_text or []), not_texts=not_text or [],
        images=image or [], not_images=not_image or [],
    )
    if not terms:
        raise InvalidQueryError("give the words (or --image FILE) whose match to explain, then the picture")
    fmt = check_out_path(out_path) if out_path is not None else None
    if term is not None and term > len(terms):
        raise InvalidQueryError(f"--term {term}: the query has {len(terms)} term(s)")
    with open_named_index(index_name, index_dir, device=device, precision=precision, threads=threads) as idx:
        chosen = method or EXPLAIN_DEFAULT_METHOD
        if out_path is not None and fmt is not None:
            drawn = idx.explain_overlay(terms, photo, method=chosen, max_side=max_side, format=fmt, alpha=alpha,
                                        term=None if term is None else term - 1)
            why = drawn.explanation
            write_atomically(out_path, drawn.image or b"")
        else:
            why = idx.explain(terms, photo, method=chosen)
    if json_out:
        echo_json({"photo": photo, "out": str(out_path) if out_path is not None else None, **why.as_dict()})
    else:
        for line in _describe(why, photo):
            out(line)
    if out_path is not None:
        err(f"wrote {out_path}")


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the ``mmsearch`` app."""
    app.command("explain")(explain)
