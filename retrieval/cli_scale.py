"""Scale-out commands: ``embed`` (files -> Parquet embedding shards) and ``merge`` (shards -> an index).

Thin adapters over :mod:`retrieval.shard_embed` and :mod:`retrieval.merge`
(``mmsearch index --engine ray`` lives in ``cli.py`` and uses the same merge).
``retrieval.cli`` finds this module and calls :func:`register`.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Optional

import typer

from .config import DEFAULT_INDEX_NAME, DEFAULT_MODEL

from .cli_options import DeviceOpt, IndexDirOpt, IndexOpt, JsonOpt, PrecisionOpt

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No per-file messages.")]


class Engine(str, Enum):
    """Where images are embedded: this process, or a Ray cluster (``pip install 'mmsearch[ray]'``)."""

    local = "local"
    ray = "ray"


def _on_skip(quiet: bool):
    def on_skip(path: str, reason: str) -> None:
        if not quiet:
            typer.echo(f"skipped: {path}: {reason}", err=True)

    return on_skip


def merge(
    shards: Annotated[
        list[str], typer.Argument(help="Parquet shard files, folders of them, or URLs (s3://...), in merge order.")
    ],
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    ann: Annotated[
        Optional[str], typer.Option("--ann", help="ANN index: auto, flat, hnsw, ivf or ivfpq [default: auto].")
    ] = None,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="RAM budget of the ANN index.")] = None,
    target_recall: Annotated[Optional[float], typer.Option("--target-recall", help="recall@10 to tune to.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Fail at once if another process writes the index.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build or update an index from Parquet embedding shards (from 'mmsearch embed', made anywhere).

    \b
    mmsearch merge shards/ --index photos
    mmsearch merge s3://bucket/shards/ --index photos
    """
    from .merge import merge_into_index

    result = merge_into_index(
        index_name, shards, root=index_dir, ann=ann, max_memory=max_memory, target_recall=target_recall,
        wait=not no_wait, on_skip=_on_skip(quiet),
        on_wait=lambda: typer.echo(f"index {index_name!r} is being written by another process; waiting...", err=True),
    )
    report = result.report
    if json_out:
        typer.echo(json.dumps({"index": index_name, "items": result.items, "shards": result.shards,
                               "created": result.created, **report.as_dict()}, indent=2))
        return
    typer.echo(
        f"index {index_name!r}: merged {result.shards} shards: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.reused} reused, {report.failed} failed "
        f"({result.items} items) in {report.seconds:.1f}s"
    )


def embed(
    paths: Annotated[list[str], typer.Argument(help="Folders (or files) of images, or fsspec URLs (s3://...).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder (or URL) to write the Parquet shards to.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec.")] = DEFAULT_MODEL,
    engine: Annotated[Engine, typer.Option("--engine", help="Where to embed: local or ray.")] = Engine.local,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster to use (--engine ray).")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", min=1, help="Ray embedding actors.")] = None,
    exclude: Annotated[
        Optional[list[str]], typer.Option("--exclude", "-x", help="Glob of files/folders to skip (repeatable).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 32,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed images into Parquet shards, without an index (build one with 'mmsearch merge')."""
    from .shard_embed import embed_to_shards

    ray_cfg = None
    if engine is Engine.ray:
        from .engine_ray import RayCfg, require_ray

        require_ray()
        ray_cfg = RayCfg(address=address, num_workers=num_workers)
    result = embed_to_shards(
        paths, output, model=model, engine=engine.value, ray=ray_cfg, exclude=exclude or (), batch_size=batch_size,
        device=device, precision=precision, on_skip=_on_skip(quiet),
    )
    if json_out:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    typer.echo(
        f"wrote {len(result.files)} shards to {output}: {result.embedded} embedded, {result.failed} failed "
        f"({result.model}) in {result.seconds:.1f}s"
    )


def register(app: typer.Typer) -> None:
    """Add ``embed`` and ``merge`` to the ``mmsearch`` app."""
    app.command("embed")(embed)
    app.command("merge")(merge)
