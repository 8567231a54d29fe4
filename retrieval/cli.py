"""The ``mmsearch`` command line: a thin layer over :mod:`retrieval.api`.

Heavy modules (torch, open_clip, faiss) are imported inside the commands that
need them, so ``mmsearch --help`` and ``mmsearch list`` start fast. Every
``MMSearchError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from typer.core import TyperGroup

from .cli_options import DeviceOpt, IndexDirOpt, IndexOpt, JsonOpt, PrecisionOpt, ThreadsOpt
from .cli_scale import Engine
from .config import DEFAULT_INDEX_NAME, DEFAULT_MODEL
from .errors import MMSearchError


class _Group(TyperGroup):
    """Turns library errors into a message on stderr and exit code 1, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MMSearchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: what was committed so far is kept", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    help="mmsearch: search your images (and texts) by meaning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help texts are plain: "[WEIGHT:]FILE" and "[default: ...]" must show as written
    context_settings={"help_option_names": ["-h", "--help"]},
)

@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library diagnostics.")] = False,
) -> None:
    # open_clip and huggingface_hub log warnings a user can do nothing about
    # (e.g. "model initialized randomly" for test models); keep stderr readable.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s: %(message)s")


def _err(message: str) -> None:
    typer.echo(message, err=True)


# -- index ------------------------------------------------------------------------


def _merge_reports(a: Any, b: Any) -> Any:
    """Add up two IndexReports (images, then texts) for one summary line."""
    from dataclasses import fields, replace

    merged = {f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a)}
    return replace(a, **merged)


@app.command()
def index(
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(help="Folders (or files) of images to index, or fsspec URLs (s3://BUCKET/PREFIX, needs s3fs)."),
    ] = None,
    texts: Annotated[
        Optional[list[Path]], typer.Option("--texts", help="A TXT (one per line), CSV or JSONL file of texts to index.")
    ] = None,
    text_field: Annotated[
        Optional[str], typer.Option("--text-field", help="CSV column / JSONL field holding the text [default: text].")
    ] = None,
    id_field: Annotated[
        Optional[str], typer.Option("--id-field", help="CSV column / JSONL field with a stable id per text.")
    ] = None,
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m",
            help=f"Model spec for a NEW index: ARCH:PRETRAINED, hf-hub:ORG/REPO or a local model folder "
            f"[default: {DEFAULT_MODEL}]. An existing index keeps its own model.",
        ),
    ] = None,
    exclude: Annotated[
        Optional[list[str]], typer.Option("--exclude", "-x", help="Glob of files/folders to skip (repeatable).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 32,
    workers: Annotated[int, typer.Option(min=0, help="Decoding threads (0 = one per core).")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process writes the index.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Also drop items whose files no longer exist, in any folder.")] = False,
    ann: Annotated[
        Optional[str],
        typer.Option("--ann", help="ANN index: auto (by size and --max-memory), flat, hnsw, ivf or ivfpq [default: auto]."),
    ] = None,
    max_memory: Annotated[
        Optional[str], typer.Option("--max-memory", help="RAM budget of the ANN index, e.g. 512MiB, 4GiB [default: 4GiB].")
    ] = None,
    target_recall: Annotated[
        Optional[float], typer.Option("--target-recall", help="recall@10 the search parameters are tuned to [default: 0.95].")
    ] = None,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-file messages.")] = False,
    engine: Annotated[
        Engine, typer.Option("--engine", help="Where to embed: local (this process) or ray (a Ray cluster).")
    ] = Engine.local,
    address: Annotated[
        Optional[str],
        typer.Option("--address", help="Ray cluster to use (e.g. auto, ray://HOST:10001) [default: $RAY_ADDRESS, else a private one].")
    ] = None,
    num_workers: Annotated[
        Optional[int], typer.Option("--num-workers", min=1, help="Ray embedding actors [default: one per 2 cluster CPUs].")
    ] = None,
) -> None:
    """Embed every image under PATHS into an index (only what changed since the last run)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .api import open_or_create_index
    from .errors import SourceError

    paths = paths or []
    if not paths and not texts:
        raise SourceError("nothing to index: give a folder of images and/or --texts FILE")
    from .urls import is_url

    for p in [*paths, *(texts or [])]:
        if not is_url(str(p)) and not Path(p).exists():
            raise SourceError(f"no such file or directory: {p}")
    ray_cfg = None
    if engine is Engine.ray:
        from .engine_ray import RayCfg, require_ray

        require_ray()  # before a model is loaded or an index created
        ray_cfg = RayCfg(address=address, num_workers=num_workers)
    console = Console(stderr=True, highlight=False)
    with open_or_create_index(
        index_name, model=model, root=index_dir, device=device, precision=precision, threads=threads
    ) as idx:
        progress = Progress(
            TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(), console=console, disable=quiet, transient=False,
        )
        task = progress.add_task("embed", total=None, rate="")
        t0 = [0.0]

        def on_progress(done: int, total: int) -> None:
            import time

            if done == 0:
                t0[0] = time.perf_counter()
                if total and not quiet:
                    progress.start()  # only once there is work: an error before that prints alone
            elapsed = time.perf_counter() - t0[0]
            rate = f"{done / elapsed:.1f} img/s" if elapsed > 0 and done else ""
            progress.update(task, completed=done, total=total, rate=rate)

        def on_skip(path: str, reason: str) -> None:
            if not quiet:
                console.print(f"skipped: {path}: {reason}", markup=False, soft_wrap=True)

        try:
            report = None
            if ann is not None or max_memory is not None or target_recall is not None:
                idx.configure_ann(ann=ann, max_memory=max_memory, target_recall=target_recall, wait=not no_wait)
            if paths:
                report = idx.add_folder(
                    paths, exclude=exclude or (), batch_size=batch_size, workers=workers, wait=not no_wait,
                    on_progress=on_progress, on_skip=on_skip,
                    on_wait=lambda: _err(f"index {index_name!r} is being written by another process; waiting..."),
                    engine=engine.value, ray=ray_cfg,
                )
            progress.stop()
            if prune and report is not None:
                report.removed += len(idx.prune(wait=not no_wait))
            for text_file in texts or []:
                text_report = idx.add_texts(
                    text_file, field=text_field, id_field=id_field, wait=not no_wait, on_skip=on_skip
                )
                report = text_report if report is None else _merge_reports(report, text_report)
        except MMSearchError as exc:
            progress.stop()
            from .errors import IndexLockedError

            # Locked: another process created the same index at the same moment and is filling it.
            if idx.newly_created and len(idx) == 0 and not isinstance(exc, IndexLockedError):
                from .api import delete_index

                idx.close()
                delete_index(index_name, root=index_dir)  # don't leave an empty index behind
            raise
        total = len(idx)
    if json_out:
        typer.echo(json.dumps({"index": index_name, "items": total, **report.as_dict()}, indent=2))
        return
    typer.echo(
        f"index {index_name!r}: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged, {report.reused} reused, {report.failed} failed "
        f"({total} items) in {report.seconds:.1f}s, {report.images_per_second:.1f} images/s"
    )


# -- query ------------------------------------------------------------------------


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    paths = "paths"


def _print_hits(hits: list[Any], fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        typer.echo(json.dumps([h.as_dict() for h in hits], indent=2, ensure_ascii=False))
    elif fmt is OutputFormat.paths:
        for h in hits:
            typer.echo(h.path if h.path is not None else h.text)
    else:
        if not hits:
            _err("no results")
            return
        typer.echo(f"{'rank':>4}  {'score':>6}  item")
        for h in hits:
            typer.echo(f"{h.rank:>4}  {h.score:6.3f}  {h.path if h.path is not None else h.text}")


TargetOpt = Annotated[
    Optional[str], typer.Option("--target", help="What to return: image, text or all [default: image; text for --image queries on a text-only index].")
]
MinScoreOpt = Annotated[Optional[float], typer.Option("--min-score", help="Drop results scoring below this cosine.")]
PathOpt = Annotated[Optional[str], typer.Option("--under", help="Only files under this folder.")]
GlobOpt = Annotated[Optional[str], typer.Option("--glob", help="Only files whose path or name matches this glob.")]
TypeOpt = Annotated[Optional[str], typer.Option("--type", help="Only these file types, e.g. 'jpg,png'.")]
AfterOpt = Annotated[Optional[str], typer.Option("--after", help="Only files modified on/after this date (YYYY-MM-DD).")]
BeforeOpt = Annotated[Optional[str], typer.Option("--before", help="Only files modified before this date (YYYY-MM-DD).")]
DedupOpt = Annotated[
    Optional[float], typer.Option("--dedup", min=0.0, max=1.0, help="Drop hits this similar (cosine) to a better hit.")
]
HtmlOpt = Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained results page here.")]
KOpt = Annotated[int, typer.Option("-k", "--top", min=1, help="Number of results (after filtering).")]


def _filters(target, min_score, under, glob, types, after, before, default_target: str = "image"):
    from .query import Filters

    return Filters(
        target=target or default_target, min_score=min_score, path_prefix=under, path_glob=glob,
        file_types=tuple((types or "").split(",")), modified_after=after, modified_before=before,
    )


def _emit(hits: list[Any], json_out: bool, paths_only: bool, html: Optional[Path], title: str) -> None:
    if html is not None:
        from .html_report import write_results_page

        written = write_results_page(hits, html, title)
        _err(f"wrote {written}")
    fmt = OutputFormat.json if json_out else OutputFormat.paths if paths_only else OutputFormat.table
    _print_hits(hits, fmt)


@app.command()
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
    k: KOpt = 10,
    target: TargetOpt = None,
    min_score: MinScoreOpt = None,
    under: PathOpt = None,
    glob: GlobOpt = None,
    types: TypeOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    dedup: DedupOpt = None,
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    paths_only: Annotated[bool, typer.Option("--paths", help="Only the paths (or texts), one per line.")] = False,
    html: HtmlOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Search by text, by example image, or by a weighted combination of both.

    \b
    mmsearch query "red shoes"
    mmsearch query --image q.jpg
    mmsearch query --image q.jpg --text "2:red" --not-text leather
    """
    from .api import open_index
    from .errors import InvalidQueryError
    from .query import QueryTerm, parse_weighted

    terms: list[QueryTerm] = []
    for raw in ([text] if text is not None else []) + list(more_text or []):
        weight, value = parse_weighted(raw)
        terms.append(QueryTerm.text(value, weight))
    for raw in not_text or []:
        weight, value = parse_weighted(raw, negate=True)
        terms.append(QueryTerm.text(value, weight))
    for raw, negate in [(r, False) for r in image or []] + [(r, True) for r in not_image or []]:
        weight, value = parse_weighted(raw, negate=negate)
        terms.append(QueryTerm.image(Path(value), weight))
    if not terms or all(t.kind == "text" and not str(t.value).strip() for t in terms):
        raise InvalidQueryError("empty query: give some words to search for, or --image FILE")
    filters = _filters(target, min_score, under, glob, types, after, before)
    with open_index(index_name, root=index_dir, device=device, precision=precision, threads=threads) as idx:
        hits = idx.search(terms, k, filters=filters, dedup=dedup)
    title = " ".join(f"{t.weight:+g}:{t.value}" for t in terms)
    _emit(hits, json_out, paths_only, html, f"mmsearch: {title}")


@app.command()
def similar(
    item: Annotated[str, typer.Argument(help="An indexed file's path, or an item id.")],
    k: KOpt = 10,
    target: TargetOpt = None,
    min_score: MinScoreOpt = None,
    under: PathOpt = None,
    glob: GlobOpt = None,
    types: TypeOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    dedup: DedupOpt = None,
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    paths_only: Annotated[bool, typer.Option("--paths", help="Only the paths (or texts), one per line.")] = False,
    html: HtmlOpt = None,
) -> None:
    """More like this: neighbours of an item already in the index (no model needed)."""
    from .api import open_index

    filters = _filters(target, min_score, under, glob, types, after, before)
    with open_index(index_name, root=index_dir) as idx:
        hits = idx.similar(item, k, filters=filters, dedup=dedup)
    _emit(hits, json_out, paths_only, html, f"mmsearch: more like {item}")


@app.command()
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
    from .encoder import load_encoder
    from .store import MANIFEST
    from .zeroshot import classify as run_classify
    from .zeroshot import parse_labels

    names = parse_labels(labels, labels_file)
    if model is None:
        from .config import resolve_index_root

        manifest = resolve_index_root(index_dir) / index_name / MANIFEST
        model = json.loads(manifest.read_text())["model"] if manifest.is_file() else DEFAULT_MODEL
    predictions = run_classify(load_encoder(model), images, names)
    if json_out:
        typer.echo(json.dumps([p.as_dict() for p in predictions], indent=2, ensure_ascii=False))
        return
    for p in predictions:
        shown = ", ".join(f"{label} {prob:.1%}" for label, prob in p.labels[:top])
        typer.echo(f"{p.source}: {shown}")


# -- info / list ------------------------------------------------------------------


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@app.command()
def info(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    failed: Annotated[bool, typer.Option("--failed", help="Also list the files that could not be indexed.")] = False,
) -> None:
    """What an index holds: model, counts, size."""
    from .api import open_index

    with open_index(index_name, root=index_dir) as idx:
        data = idx.info()
        failures = idx.failed() if failed else []
    if json_out:
        out = data.as_dict()
        if failed:
            out["failed_files"] = [{"path": p, "reason": r} for p, r in failures]
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"index:    {data.name}  ({data.path})")
    typer.echo(f"model:    {data.model}  (fingerprint {data.fingerprint}, {data.dim}-d)")
    typer.echo(f"items:    {data.images} images, {data.texts} texts, {data.failed} failed")
    typer.echo(f"size:     {_human_size(data.size_bytes)}")
    ann = data.ann
    typer.echo(f"ann:      {ann.get('type', 'flat')} ({ann.get('factory', 'IDMap2,Flat')}), {ann.get('rule') or 'exact search'}")
    if ann.get("search"):
        params = ", ".join(f"{k}={v}" for k, v in ann["search"].items())
        typer.echo(f"          search {params}; recall@10 {ann.get('measured_recall')} (target {ann.get('target_recall')})")
    policy = ann.get("policy") or {}
    if policy:
        typer.echo(
            f"          policy --ann {policy.get('ann')} --max-memory {_human_size(policy.get('max_memory', 0))} "
            f"--target-recall {policy.get('target_recall')}"
        )
    for path, reason in failures:
        typer.echo(f"failed:   {path}: {reason}")


@app.command("list")
def list_(index_dir: IndexDirOpt = None, json_out: JsonOpt = False) -> None:
    """Which indexes exist under the index folder."""
    from .api import list_indexes

    infos = list_indexes(index_dir)
    if json_out:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    if not infos:
        _err("no indexes yet: create one with 'mmsearch index FOLDER'")
        return
    typer.echo(f"{'name':<20} {'items':>8} {'size':>10}  model")
    for i in infos:
        typer.echo(f"{i.name:<20} {i.images + i.texts:>8} {_human_size(i.size_bytes):>10}  {i.model}")


@app.command()
def drop(
    index_name: Annotated[str, typer.Argument(help="Index to delete.")],
    index_dir: IndexDirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an index (your image files are never touched)."""
    from .api import delete_index

    if not yes and not typer.confirm(f"delete index {index_name!r}?", err=True):
        raise typer.Exit(1)
    delete_index(index_name, root=index_dir)
    typer.echo(f"deleted index {index_name!r}")


@app.command()
def models(
    pretrained: Annotated[bool, typer.Option("--pretrained", help="List ARCH:PRETRAINED pairs.")] = False,
) -> None:
    """Model architectures (and pretrained weights) that --model accepts."""
    import open_clip

    if pretrained:
        for arch, tag in open_clip.list_pretrained():
            typer.echo(f"{arch}:{tag}")
    else:
        for arch in open_clip.list_models():
            typer.echo(arch)


def _register_command_groups() -> None:
    """Commands that live in their own modules (each has ``register(app)``)."""
    import importlib

    for module in ("cli_train", "cli_maintenance", "cli_serve", "cli_scale"):
        try:
            mod = importlib.import_module(f".{module}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
            continue
        mod.register(app)


_register_command_groups()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mmsearch")


if __name__ == "__main__":
    main()
