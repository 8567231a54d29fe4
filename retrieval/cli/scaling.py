"""Scale-out commands: ``embed`` (files -> Parquet embedding shards) and ``merge`` (shards -> an index).

Thin adapters over :func:`retrieval.api.embed_to_shards` and :func:`retrieval.api.merge_shards`
(``mmsearch index --engine ray`` uses the same merge).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_NAME, DEFAULT_MODEL
from . import options as opt


def merge(
    shards: Annotated[
        list[str], typer.Argument(help="Parquet shard files, folders of them, or URLs (s3://...), in merge order.")
    ],
    index_name: opt.IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: opt.IndexDirOpt = None,
    ann: opt.AnnOpt = None,
    max_memory: opt.MaxMemoryOpt = None,
    target_recall: opt.TargetRecallOpt = None,
    no_wait: opt.NoWaitOpt = False,
    json_out: opt.JsonOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Build or update an index from Parquet embedding shards (from 'mmsearch embed', made anywhere).

    \b
    mmsearch merge shards/ --index photos
    mmsearch merge s3://bucket/shards/ --index photos
    """
    from ..api import merge_shards

    result = merge_shards(
        index_name, shards, root=index_dir, ann=ann, max_memory=max_memory, target_recall=target_recall,
        wait=not no_wait, on_skip=opt.skip_printer(quiet), on_wait=opt.waiting(index_name),
    )
    report = result.report
    if json_out:
        opt.echo_json({"index": index_name, "items": result.items, "shards": result.shards,
                       "created": result.created, **report.as_dict()})
        return
    opt.out(
        f"index {index_name!r}: merged {result.shards} shards: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.reused} reused, {report.failed} failed "
        f"({result.items} items) in {report.seconds:.1f}s"
    )


def embed(
    paths: Annotated[list[str], typer.Argument(help="Folders (or files) of images, or fsspec URLs (s3://...).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder (or URL) to write the Parquet shards to.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec.")] = DEFAULT_MODEL,
    engine: opt.EngineOpt = opt.Engine.local,
    address: opt.AddressOpt = None,
    num_workers: opt.NumWorkersOpt = None,
    exclude: opt.ExcludeOpt = None,
    batch_size: opt.BatchSizeOpt = 32,
    device: opt.DeviceOpt = "auto",
    precision: opt.PrecisionOpt = "auto",
    json_out: opt.JsonOpt = False,
    quiet: opt.QuietOpt = False,
    no_video: opt.NoVideoOpt = False,
) -> None:
    """Embed images (and videos, by their moments) into Parquet shards, without an index ('mmsearch merge' builds one)."""
    from ..api import embed_to_shards, ray_engine

    ray_cfg = ray_engine(address, num_workers) if engine is opt.Engine.ray else None
    result = embed_to_shards(
        paths, output, model=model, engine=engine.value, ray=ray_cfg, exclude=exclude or (), batch_size=batch_size,
        device=device, precision=precision, on_skip=opt.skip_printer(quiet), videos=not no_video,
    )
    if json_out:
        opt.echo_json(result.as_dict())
        return
    opt.out(
        f"wrote {len(result.files)} shards to {output}: {result.embedded} embedded, {result.failed} failed "
        f"({result.model}) in {result.seconds:.1f}s"
    )


def register(app: typer.Typer) -> None:
    """Add ``embed`` and ``merge`` to the ``mmsearch`` app."""
    app.command("embed")(embed)
    app.command("merge")(merge)
