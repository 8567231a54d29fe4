"""``mmsearch index``: embed folders of images (and files of texts) into an index."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import DEFAULT_INDEX_NAME, DEFAULT_MODEL
from ..errors import printable
from .inspecting import shortfall_lines
from .options import (
    AddressOpt,
    AnnOpt,
    BatchSizeOpt,
    DeviceOpt,
    Engine,
    EngineOpt,
    ExcludeOpt,
    IndexDirOpt,
    IndexOpt,
    JsonOpt,
    MaxMemoryOpt,
    NoVideoOpt,
    NumWorkersOpt,
    PrecisionOpt,
    TargetRecallOpt,
    ThreadsOpt,
    echo_json,
    out,
    waiting,
)


def _merge_reports(a: Any, b: Any) -> Any:
    """Add up two IndexReports (images, then texts) for one summary line."""
    from dataclasses import fields, replace

    merged = {f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a)}
    return replace(a, **merged)


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
    exclude: ExcludeOpt = None,
    batch_size: BatchSizeOpt = 32,
    workers: Annotated[int, typer.Option(min=0, help="Decoding threads (0 = one per core).")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process writes the index.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Also drop items whose files no longer exist, in any folder.")] = False,
    ann: AnnOpt = None,
    max_memory: MaxMemoryOpt = None,
    target_recall: TargetRecallOpt = None,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-file messages.")] = False,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    num_workers: NumWorkersOpt = None,
    no_video: NoVideoOpt = False,
) -> None:
    """Embed every image and video under PATHS into an index (only what changed since the last run).

    A video is embedded by frames sampled every few seconds and at scene
    changes (black intros skipped); queries answer it at its best moment.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..api import check_sources, open_or_create_index, ray_engine

    paths = paths or []
    check_sources(paths, texts or [])  # before a model is loaded or an index created
    ray_cfg = ray_engine(address, num_workers) if engine is Engine.ray else None
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
            if done == 0:
                t0[0] = time.perf_counter()
                if total and not quiet:
                    progress.start()  # only once there is work: an error before that prints alone
            elapsed = time.perf_counter() - t0[0]
            rate = f"{done / elapsed:.1f} files/s" if elapsed > 0 and done else ""
            progress.update(task, completed=done, total=total, rate=rate)

        def on_skip(path: str, reason: str) -> None:
            if not quiet:
                console.print(printable(f"skipped: {path}: {reason}"), markup=False, soft_wrap=True)

        with idx.discard_if_left_empty():
            try:
                report = None
                if ann is not None or max_memory is not None or target_recall is not None:
                    idx.configure_ann(ann=ann, max_memory=max_memory, target_recall=target_recall, wait=not no_wait)
                if paths:
                    report = idx.add_folder(
                        paths, exclude=exclude or (), batch_size=batch_size, workers=workers, wait=not no_wait,
                        on_progress=on_progress, on_skip=on_skip, on_wait=waiting(index_name),
                        engine=engine.value, ray=ray_cfg, videos=not no_video,
                    )
                progress.stop()
                if prune and report is not None:
                    report.removed += len(idx.prune(wait=not no_wait))
                for text_file in texts or []:
                    text_report = idx.add_texts(
                        text_file, field=text_field, id_field=id_field, wait=not no_wait, on_skip=on_skip,
                        on_wait=waiting(index_name),
                    )
                    report = text_report if report is None else _merge_reports(report, text_report)
            finally:
                progress.stop()
        total = len(idx)
        ann = idx.info().ann
        shortfall = shortfall_lines(ann, indent="  ")
    assert report is not None
    if shortfall:  # the recall promise is not kept: say so (stderr), and what would keep it
        console.print(f"warning: index {index_name!r}:", markup=False)
        for line in shortfall:
            console.print(line, markup=False, soft_wrap=True)
    if not quiet:
        for path, why in report.partial:
            console.print(printable(f"indexed in part: {path}: {why}"), markup=False, soft_wrap=True)
    unit = "items" if paths and texts or report.videos else "texts" if texts else "images"
    if json_out:
        echo_json({"index": index_name, "items": total, **report.as_dict(),
                   **({"ann_shortfall": ann["shortfall"]} if shortfall else {})})
        return
    videos = ""
    if report.videos:
        rate = report.video_seconds / report.seconds if report.seconds > 0 else 0.0
        videos = (f"; {report.videos} videos ({report.frames} frames from {report.video_seconds:.0f}s of video, "
                  f"{rate:.1f}s of video/s)")
    out(
        f"index {index_name!r}: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged, {report.reused} reused, {report.failed} failed "
        f"({total} items) in {report.seconds:.1f}s, {report.images_per_second:.1f} {unit}/s{videos}"
    )


def register(app: typer.Typer) -> None:
    """Add ``index`` to the ``mmsearch`` app."""
    app.command("index")(index)
