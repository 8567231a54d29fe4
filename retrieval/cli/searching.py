"""``mmsearch query``, ``similar`` and ``classify``: asking an index (or a model) about pictures and words."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import DEFAULT_INDEX_NAME
from .options import (
    DeviceOpt,
    IndexDirOpt,
    IndexOpt,
    JsonOpt,
    PrecisionOpt,
    ResultOptions,
    ThreadsOpt,
    echo_json,
    err,
    open_named_index,
    out,
    print_rows,
    with_result_options,
)


def _emit(hits: list[Any], results: ResultOptions, title: str, heatmaps: dict[int, str] | None = None) -> None:
    if results.html is not None:
        from ..html_report import write_results_page

        written = write_results_page(hits, results.html, title, heatmaps=heatmaps)
        err(f"wrote {written}")
    if results.paths_only and not results.json_out:
        for h in hits:
            out(h.path if h.path is not None else h.text)
        return
    if results.about_photos:  # the user asked by date, place or camera: show them
        print_rows(hits, as_json=results.json_out, empty="no results",
                   header=f"{'rank':>4}  {'score':>6}  {'taken':<17}  item  (camera; place)", line=_photo_line)
        return
    print_rows(hits, as_json=results.json_out, empty="no results", header=f"{'rank':>4}  {'score':>6}  item",
               line=lambda h: f"{h.rank:>4}  {h.score:6.3f}  {_item(h)}")


def _item(hit: Any) -> str:
    """What a result line names: the file (a video with its moment, ``at 01:23.2``) or the text."""
    if hit.path is None:
        return hit.text
    return f"{hit.path}  at {hit.clock}" if hit.clock else hit.path


def _photo_line(hit: Any) -> str:
    """``rank score taken item (camera; place)``; a time read from the file's date only is marked with ``~``."""
    photo = hit.photo or {}
    taken = (photo.get("taken_at") or "")[:16].replace("T", " ")
    if taken and photo.get("time_source") == "file-mtime":
        taken = "~" + taken
    about = "; ".join(p for p in (photo.get("camera"), photo.get("place")) if p)
    item = _item(hit)
    return f"{hit.rank:>4}  {hit.score:6.3f}  {taken or '-':<17}  {item}" + (f"  ({about})" if about else "")


@with_result_options
def query(
    text: Annotated[Optional[str], typer.Argument(help="What to look for, in words (optional WEIGHT: prefix).")] = None,
    image: Annotated[
        Optional[list[str]], typer.Option("--image", help="[WEIGHT:]FILE: results that look like this image (repeatable).")
    ] = None,
    more_text: Annotated[
        Optional[list[str]], typer.Option("--text", help="[WEIGHT:]TEXT: another text term (repeatable).")
    ] = None,
    not_text: Annotated[
        Optional[list[str]], typer.Option("--not-text", help="[WEIGHT:]TEXT: push results away from this (repeatable).")
    ] = None,
    not_image: Annotated[
        Optional[list[str]], typer.Option("--not-image", help="[WEIGHT:]FILE: push results away from this image.")
    ] = None,
    lang: Annotated[
        Optional[str],
        typer.Option("--lang", help="Language of the query's words (zh, zh-TW, ja, fr, ... or an NLLB code), for "
                     "models that need one (NLLB) [default: from the script; Latin script is read as English]."),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="With --html: beside each picture, a heatmap of why it matched "
                           "(a few image encodes per hit; see mmsearch explain).")
    ] = False,
    explain_method: Annotated[
        Optional[str], typer.Option("--explain-method", metavar="METHOD",
                                    help="How --explain draws its heatmaps [default: intgrad; see mmsearch explain].")
    ] = None,
    *,
    results: ResultOptions,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
    index_name: str = "",
    index_dir: Optional[Path] = None,
) -> None:
    """Search by text, by example image, or by a weighted combination of both.

    \b
    mmsearch query "red shoes"
    mmsearch query --image q.jpg
    mmsearch query --image q.jpg --text "2:red" --not-text leather
    mmsearch query "海边的狗"
    mmsearch query beach --taken-after 2023-06-01 --taken-before 2023-09-01 --place Spain
    mmsearch query "birthday cake" --near Berlin --camera iphone --sort taken
    mmsearch query fireworks --type video --json
    mmsearch query "red shoes" --html results.html --explain   (why each hit matched)
    """
    from ..errors import InvalidQueryError
    from ..query import parse_terms
    from ..search import Filters

    terms = parse_terms(
        texts=([text] if text is not None else []) + list(more_text or []), not_texts=not_text or [],
        images=image or [], not_images=not_image or [], lang=lang,
    )
    if not terms or all(t.kind == "text" and not str(t.value).strip() for t in terms):
        raise InvalidQueryError("empty query: give some words to search for, or --image FILE")
    if (explain or explain_method is not None) and results.html is None:
        raise InvalidQueryError("--explain draws its heatmaps on the results page: add --html FILE")
    filters = Filters.parse(**results.filters)
    heatmaps = None
    with open_named_index(index_name, index_dir, device=device, precision=precision, threads=threads) as idx:
        for term in terms:  # a query cut to the model's context, or a language the model does not read, is said
            if term.kind == "text":
                for note in idx.queries.notes(str(term.value), term.lang):
                    err(note)
        hits = idx.search(terms, results.k, filters=filters, dedup=results.dedup, sort=results.sort)
        if explain or explain_method is not None:
            from ..explain_report import heatmap_uris

            heatmaps = heatmap_uris(idx, terms, hits, method=explain_method,
                                    on_skip=lambda path, why: err(f"skipped the heatmap of {path}: {why}"))
    title = " ".join(f"{t.weight:+g}:{t.value}" for t in terms)
    _emit(hits, results, f"mmsearch: {title}", heatmaps)


@with_result_options
def similar(
    item: Annotated[str, typer.Argument(help="An indexed file's path, an item id, or a moment of a video: PATH#t=SECONDS.")],
    *,
    results: ResultOptions,
    index_name: str = "",
    index_dir: Optional[Path] = None,
) -> None:
    """More like this: neighbours of an item already in the index (no model needed).

    \b
    mmsearch similar ~/Pictures/beach.jpg
    mmsearch similar ~/Videos/party.mp4#t=83.2   (that moment of the video)
    mmsearch similar ~/Videos/party.mp4          (the video as a whole)
    """
    from ..search import Filters

    with open_named_index(index_name, index_dir) as idx:
        hits = idx.similar(item, results.k, filters=Filters.parse(**results.filters), dedup=results.dedup,
                           sort=results.sort)
    _emit(hits, results, f"mmsearch: more like {item}")


def classify(
    images: Annotated[list[Path], typer.Argument(help="Images to label.")],
    labels: Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated labels.")] = None,
    labels_file: Annotated[Optional[Path], typer.Option("--labels-file", help="One label per line.")] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Model spec [default: the index's model, else the default model].")
    ] = None,
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Labels shown per image.")] = 3,
) -> None:
    """Zero-shot classification: the most likely of LABELS for each image."""
    from ..api import classify_images, parse_labels

    names = parse_labels(labels, labels_file)
    predictions = classify_images(images, names, model=model, index=index_name, root=index_dir)
    if json_out:
        echo_json([p.as_dict() for p in predictions])
        return
    for p in predictions:
        shown = ", ".join(f"{label} {prob:.1%}" for label, prob in p.labels[:top])
        out(f"{p.source}: {shown}")


def register(app: typer.Typer) -> None:
    """Add ``query``, ``similar`` and ``classify`` to the ``mmsearch`` app."""
    app.command("query")(query)
    app.command("similar")(similar)
    app.command("classify")(classify)
