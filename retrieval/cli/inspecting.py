"""``mmsearch info``, ``list``, ``drop`` and ``models``: what indexes and models there are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import DEFAULT_INDEX_NAME
from .options import (
    DeviceOpt,
    DryRunOpt,
    IndexDirOpt,
    IndexOpt,
    JsonOpt,
    NoWaitOpt,
    echo_json,
    human_size,
    open_named_index,
    out,
    print_rows,
    waiting,
)


def info(
    index_name: IndexOpt = DEFAULT_INDEX_NAME,
    index_dir: IndexDirOpt = None,
    json_out: JsonOpt = False,
    failed: Annotated[bool, typer.Option("--failed", help="Also list the files that could not be indexed.")] = False,
) -> None:
    """What an index holds: model, counts, size, and what its photos say (dates, places, cameras)."""
    with open_named_index(index_name, index_dir) as idx:
        data = idx.info()
        failures = idx.failed() if failed else []
    if json_out:
        shown = data.as_dict()
        if failed:
            shown["failed_files"] = [{"path": p, "reason": r} for p, r in failures]
        echo_json(shown)
        return
    out(f"index:    {data.name}  ({data.path})")
    out(f"model:    {data.model}  (fingerprint {data.fingerprint}, {data.dim}-d)")
    videos = f", {data.videos} videos ({data.frames} moments)" if getattr(data, "videos", 0) else ""
    out(f"items:    {data.images} images{videos}, {data.texts} texts, {data.failed} failed")
    out(f"size:     {human_size(data.size_bytes)}")
    ann = data.ann
    for line in ann_lines(ann):
        out(line)
    policy = ann.get("policy") or {}
    if policy:
        out(
            f"          policy --ann {policy.get('ann')} --max-memory {human_size(policy.get('max_memory', 0))} "
            f"--target-recall {policy.get('target_recall')}"
        )
    for line in _runtime_lines(data.image_runtimes):
        out(line)
    if data.photos is not None and data.photos.images:
        for line in _photo_lines(data.photos):
            out(line)
    for path, reason in failures:
        out(f"failed:   {path}: {reason}")


def _runtime_lines(machines: dict[str, Any]) -> list[str]:
    """What --precision auto chose per machine, with each candidate's measured rate and cosine to fp32."""
    lines = []
    for machine, entry in sorted(machines.items()):
        if not isinstance(entry, dict):
            continue
        lines.append(f"image:    --precision auto = {entry.get('chosen')} on {machine}")
        cells = []
        for name, m in sorted((entry.get("candidates") or {}).items(),
                              key=lambda kv: -float(kv[1].get("images_per_s") or 0.0)):
            if "mean_cosine" not in m:
                cells.append(f"{name} unavailable")
                continue
            rate = f"{m['images_per_s']:.1f} img/s" if m.get("images_per_s") is not None else "not timed"
            floor = "" if m.get("passed") else f" < floor {m.get('floor')}"
            cells.append(f"{name} {rate} cos {m['mean_cosine']:.5f}{floor}")
        if cells:
            lines.append("          " + "; ".join(cells))
    return lines


def ann_lines(ann: dict[str, Any]) -> list[str]:
    """``info``'s lines about the ANN index: kind, rule, tuned search and what it measured, files, any shortfall."""
    lines = [f"ann:      {ann.get('type', 'flat')} ({ann.get('factory', 'IDMap2,Flat')}), "
             f"{ann.get('rule') or 'exact search'}"]
    if ann.get("search"):
        params = ", ".join(f"{k}={v}" for k, v in ann["search"].items())
        held = ann.get("held_out") or {}
        kinds = f" ({', '.join(f'{kind} queries {r}' for kind, r in held.items())})" if held else ""
        p50 = f"; p50 {ann['p50_ms']} ms" if ann.get("p50_ms") is not None else ""
        lines.append(f"          search {params}; recall@10 {ann.get('measured_recall')} held out{kinds}, "
                     f"target {ann.get('target_recall')}{p50}")
    files = []
    if ann.get("lists_on_disk"):
        files.append(f"lists on disk ({(ann.get('lists') or {}).get('name', 'not written yet')}, memory-mapped)")
    if ann.get("copy_dtype"):
        copy = ann.get("copy")
        files.append(f"re-rank copy {ann['copy_dtype']} ({'rerank.vectors' if copy else 'not written yet'})")
    if files:
        lines.append("          " + "; ".join(files))
    lines += shortfall_lines(ann, indent="          ")
    return lines


def shortfall_lines(ann: dict[str, Any], indent: str = "") -> list[str]:
    """What to say when the tuner could not reach the recall target: what it reached, and what would."""
    short = ann.get("shortfall")
    if not isinstance(short, dict):
        return []
    slow = f", p50 {short.get('p50_ms')} ms over the {short['limit_ms']} ms limit" if short.get("limit_ms") else ""
    lines = [f"{indent}SHORT OF TARGET: recall@10 {short.get('reached')} held out (target {short.get('target')}){slow}; "
             "to meet it:"]
    lines += [f"{indent}  - {need}" for need in short.get("needs") or []]
    return lines


def _photo_lines(photos: Any, shown: int = 8) -> list[str]:
    """``info``'s lines about capture dates, positions, places and cameras."""
    span = f" ({photos.first_taken} to {photos.last_taken})" if photos.first_taken else ""
    lines = [f"photos:   {photos.with_capture_time} of {photos.images} with a capture date{span}, "
             f"{photos.file_time_only} dated by their file time only"]
    countries = ", ".join(f"{name} {n}" for name, n in list(photos.countries.items())[:shown])
    more = f", {len(photos.countries) - shown} more" if len(photos.countries) > shown else ""
    lines.append(f"places:   {photos.with_gps} with GPS, {photos.with_place} with a place"
                 + (f" ({countries}{more})" if countries else ""))
    if photos.cameras:
        named = ", ".join(f"{name} {n}" for name, n in list(photos.cameras.items())[:shown])
        more = f", {len(photos.cameras) - shown} more" if len(photos.cameras) > shown else ""
        lines.append(f"cameras:  {named}{more}")
    else:
        lines.append("cameras:  none named")
    if photos.not_read:
        lines.append(f"          {photos.not_read} photos indexed before metadata was read: "
                     "the next 'mmsearch index' of their folder reads it (no re-encoding)")
    return lines


def list_(index_dir: IndexDirOpt = None, json_out: JsonOpt = False) -> None:
    """Which indexes exist under the index folder."""
    from ..api import list_indexes

    print_rows(
        list_indexes(index_dir), as_json=json_out, empty="no indexes yet: create one with 'mmsearch index FOLDER'",
        header=f"{'name':<20} {'items':>8} {'size':>10}  model",
        line=lambda i: f"{i.name:<20} {'?' if i.error else i.images + i.texts:>8} {human_size(i.size_bytes):>10}  "
                       + (f"cannot be opened: {i.error}" if i.error else i.model),
    )


def drop(
    index_name: Annotated[str, typer.Argument(help="Index to delete.")],
    index_dir: IndexDirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: DryRunOpt = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Delete an index (your image files are never touched); not while another process writes it."""
    from ..api import delete_index, drop_plan

    plan = drop_plan(index_name, root=index_dir)
    items = "an unreadable number of" if plan.items is None else str(plan.items)
    what = f"index {index_name!r}: the folder {plan.path} ({items} items, {human_size(plan.size_bytes)})"
    if plan.text_export:
        what += f" and its model's text export {plan.text_export}"
    if dry_run:
        out(f"would delete {what}")
        return
    if not yes and not typer.confirm(f"delete {what}?", err=True):
        raise typer.Exit(1)
    delete_index(index_name, root=index_dir, wait=not no_wait, on_wait=waiting(index_name))
    out(f"deleted {what}")  # with --yes too: the user sees what went


models_app = typer.Typer(
    help="Models that --model accepts: architectures, pretrained weights, multilingual ones; 'models save' "
    "writes one into a folder that loads offline.",
    invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None,
)


@models_app.callback()
def models(
    ctx: typer.Context,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="List ARCH:PRETRAINED pairs.")] = False,
    multilingual: Annotated[
        bool, typer.Option("--multilingual", help="Models that understand other languages than English, with "
                           "published text->image recall per language.")
    ] = False,
    lang: Annotated[
        str, typer.Option("--lang", help="With --multilingual: the language whose figures are shown (zh, ja, ar, ...).")
    ] = "zh",
    json_out: JsonOpt = False,
) -> None:
    """Model architectures (and pretrained weights) that --model accepts.

    \b
    mmsearch models --pretrained
    mmsearch models --multilingual --lang ja
    mmsearch models save xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k ./xlmr
    """
    if ctx.invoked_subcommand is not None:
        return
    if multilingual:
        _print_multilingual(lang, json_out)
        return
    from ..api import list_models

    names = list_models(pretrained=pretrained)
    if json_out:
        echo_json(names)
        return
    for name in names:
        out(name)


def _percent(value: object) -> str:
    return "-" if value is None else f"{float(value):.1%}"  # type: ignore[arg-type]


def _print_multilingual(lang: str, json_out: bool) -> None:
    from ..api import multilingual_models

    rows = multilingual_models(lang)
    if json_out:
        echo_json(rows)
        return
    key = rows[0]["lang"]
    out(f"{'model':<52} {'dim':>5} {'params':>7} {'image':>7}  {'XM3600 R@1':>10} {'R@10':>6} {'COCO R@1':>8} "
        f"{'all langs':>9}  needs --lang")
    out(f"{'':<52} {'':>5} {'':>7} {'GFLOPs':>7}  {key:>10} {key:>6} {key:>8} {'R@1':>9}")
    for row in rows:
        params = "-" if row["params_m"] is None else f"{row['params_m']:.0f}M"
        flops = "-" if row["image_gflops"] is None else f"{row['image_gflops']:.1f}"
        needs = "yes (script or --lang)" if row["needs_language"] else "no"
        spec = row["spec"] if row["multilingual"] else f"{row['spec']} (English default)"
        out(f"{spec:<52} {row['dim']:>5} {params:>7} {flops:>7}  {_percent(row['xm3600_r1']):>10} "
            f"{_percent(row['xm3600_r10']):>6} {_percent(row['mscoco_r1']):>8} {_percent(row['xm3600_r1_avg']):>9}  "
            f"{needs}")
    out("recall: open_clip's multilingual benchmark, text->image (Crossmodal-3600; multilingual MS-COCO), "
        "'-' where not published; size and GFLOPs from open_clip's model profile")
    out("these models need the multilingual extra: pip install 'mmsearch[multilingual]'")


@models_app.command("save")
def save(
    spec: Annotated[str, typer.Argument(help="Model spec: ARCH:PRETRAINED, hf-hub:ORG/REPO or a model folder.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (weights, configs, tokenizer).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the folder if it exists.")] = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Write a model into one folder that loads with no network: then use --model DIR.

    Downloads the model if it is not cached yet (run it where there is network,
    then copy the folder).
    """
    from ..api import save_model

    folder = save_model(spec, out_dir, overwrite=overwrite, device=device)
    out(f"saved {spec} into {folder}: use --model {folder}")


def register(app: typer.Typer) -> None:
    """Add ``info``, ``list``, ``drop`` and ``models`` to the ``mmsearch`` app."""
    app.command("info")(info)
    app.command("list")(list_)
    app.command("drop")(drop)
    app.add_typer(models_app, name="models")
