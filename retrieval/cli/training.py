"""``mmsearch train``, ``mmsearch eval`` and ``mmsearch synth``.

torch, open_clip and :mod:`retrieval.train` are imported inside the commands, so
that registering them costs ``mmsearch --help`` nothing. Library errors
(``MMSearchError``) propagate; the application turns them into one line on stderr.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import echo_json, err, out


class LossName(str, Enum):
    clip = "clip"
    siglip = "siglip"


class BudgetClock(str, Enum):
    wall = "wall"
    cpu = "cpu"


DataArg = Annotated[
    str,
    typer.Argument(
        help="Image-caption pairs: a CSV (image,caption[,label][,split]), a JSONL file, a folder of images with "
             "sidecar .txt captions, webdataset tar shards ('shards/{00000..00099}.tar', a folder of .tar "
             "files, or fsspec URLs) or Parquet (a file, folder or glob; image bytes or paths + captions).",
    ),
]
ImagesOpt = Annotated[
    Optional[Path], typer.Option("--images", help="Folder that image paths in the CSV/JSONL are relative to "
                                                  "[default: the file's folder].")
]
ImageColOpt = Annotated[Optional[str], typer.Option("--image-column", help="CSV column holding image paths.")]
CaptionColOpt = Annotated[Optional[str], typer.Option("--caption-column", help="CSV column holding captions.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


def _read(data: str, images: Path | None, image_column: str | None, caption_column: str | None,
          quiet: bool = False) -> Any:
    from ..train import read_pairs

    pairs = read_pairs(data, images_dir=images, image_column=image_column, caption_column=caption_column)
    if not quiet:
        err(pairs.summary())
    return pairs


def _metrics_line(m: dict[str, Any]) -> str:
    i2t, t2i = m["image_to_text"], m["text_to_image"]
    text = ("image->text R@1/5/10 " + "/".join(f"{v:.3f}" for v in i2t.values())
            + "   text->image R@1/5/10 " + "/".join(f"{v:.3f}" for v in t2i.values()))
    if m.get("zero_shot_accuracy") is not None:
        text += f"   zero-shot {m['zero_shot_accuracy']:.3f}"
    return text


def train(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the model into.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Train from scratch with this open_clip architecture [default: mmsearch-small].")] = None,
    from_spec: Annotated[Optional[str], typer.Option(
        "--from", help="Fine-tune this model spec (ARCH:PRETRAINED, hf-hub:ORG/REPO or a model directory).")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", min=1, help="Epochs to train [default: 10, or unlimited with --max-minutes].")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", min=0.01, help="Time budget; the learning-rate schedule is fitted to it.")] = None,
    budget_clock: Annotated[BudgetClock, typer.Option(
        "--budget-clock", help="wall time, or CPU time / threads (the same work on a busy machine).")
    ] = BudgetClock.wall,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=2, help="Samples per process per batch. Under torchrun a global batch (whose "
                                          "samples are each other's negatives) is this x processes; an optimizer "
                                          "step sees that x --accum-steps.")] = 64,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak learning rate [default: 1e-3 from scratch, 1e-5 fine-tuning].")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.2,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Warmup steps [default: 10%, at most 100].")] = None,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Max gradient norm; 0 disables.")] = 1.0,
    accum_steps: Annotated[int, typer.Option("--accum-steps", min=1, help="Batches per optimizer step.")] = 1,
    loss: Annotated[LossName, typer.Option("--loss", help="Contrastive loss (open_clip's).")] = LossName.clip,
    lock_image: Annotated[bool, typer.Option("--lock-image", help="Freeze the image tower (LiT).")] = False,
    lock_text: Annotated[bool, typer.Option("--lock-text", help="Freeze the text tower.")] = False,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random crops of the images.")] = True,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", min=0.0, max=0.9, help="Held out for validation when the data has no split column.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again even if OUT holds a model.")] = False,
    device: Annotated[str, typer.Option(
        "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps. Under torchrun with CUDA each "
                         "process uses cuda:LOCAL_RANK.")] = "auto",
    amp: Annotated[bool, typer.Option(
        "--amp/--no-amp", help="bf16 autocast on CUDA GPUs that support it (CPU and MPS train in fp32).")] = True,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, help="Decode threads preparing the next batches while the model runs [default: half "
                                 "the CPUs, at most 8; on a GPU all but one]; 0 decodes on the training thread.")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="torch threads [default: one per CPU; on a CPU with --max-minutes, the count "
                                 "that trains fastest, measured as the machine's load changes].")] = None,
    cache_mb: Annotated[Optional[float], typer.Option(
        "--cache-mb", min=0, help="Memory for decoded pictures, kept as uint8 at the model's input size; the rest "
                                  "are decoded each time they are met [default: 1/8 of RAM, at most 1536].")
    ] = None,
    checkpoint_minutes: Annotated[float, typer.Option(
        "--checkpoint-minutes", min=0, help="Also save OUT/last this often within an epoch, so --resume after a "
                                            "crash continues mid-epoch; 0: at epoch ends only.")] = 10.0,
    images: ImagesOpt = None,
    image_column: ImageColOpt = None,
    caption_column: CaptionColOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a dual encoder on image-caption pairs (from scratch, or fine-tune with --from).

    Multi-process: torchrun --nproc_per_node N -m retrieval.cli train ... (one process per GPU, or CPU processes).
    """
    import sys

    from ..cpu_threads import prefer_passive_waiting

    prefer_passive_waiting()  # before torch loads: see retrieval/cpu_threads.py (training on a busy machine)
    from ..errors import MMSearchError
    from ..train import TrainCfg, fit, world_from_env

    if model and from_spec:
        raise MMSearchError("give --model ARCH (train from scratch) or --from SPEC (fine-tune), not both")
    main_rank = world_from_env()[0] == 0  # under torchrun only rank 0 reports
    pairs = _read(data, images, image_column, caption_column, quiet=not main_rank)
    cfg = TrainCfg(
        arch=model, from_spec=from_spec, epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup, grad_clip=grad_clip or None, accum_steps=accum_steps,
        loss=loss.value, lock_image=lock_image, lock_text=lock_text, augment=augment, val_fraction=val_fraction,
        seed=seed, resume=resume, overwrite=overwrite, budget_clock=budget_clock.value, device=device, amp=amp,
        workers=workers, threads=threads, cache_mb=cache_mb, checkpoint_minutes=checkpoint_minutes or None,
    )
    result = fit(pairs, out, cfg, progress=sys.stderr)
    if result.rank != 0:
        return
    reasons = dict(pairs.skip_reasons)
    for why, n in result.skip_reasons.items():
        reasons[why] = reasons.get(why, 0) + n
    summary = {
        "out": str(result.out_dir), "epochs_run": result.epochs_run, "steps": result.steps,
        "best_epoch": result.best_epoch, "best_val": result.best, "samples_per_s": round(result.samples_per_s, 1),
        "train_seconds": round(result.train_seconds, 1), "stopped_by": result.stopped_by,
        "n_train": result.n_train, "n_val": result.n_val, "processes": result.world_size,
        "skipped_rows": pairs.skipped_rows, "skipped_images": pairs.skipped_images + result.skipped_images,
        "skip_reasons": reasons, "decode_workers": result.decode_workers, "threads": result.threads,
        "cached_images": result.cached_items, "cache_mb": round(result.cache_bytes / 2**20, 1),
    }
    if as_json:
        echo_json(summary, compact=True)
        return
    if result.skipped_images:
        err(f"skipped {result.skipped_images} more image(s) met while training: "
            + ", ".join(f"{n} {why}" for why, n in sorted(result.skip_reasons.items())))
    out(f"trained {result.epochs_run} epoch(s), {result.steps} steps, "
        f"{result.samples_per_s:.0f} samples/s, {result.train_seconds:.0f} s (stopped by {result.stopped_by})")
    if result.best:
        out(f"best epoch {result.best_epoch}: {_metrics_line(result.best)}")
    out(f"model saved to {result.out_dir} (use it with --model {result.out_dir})")


def evaluate(
    data: DataArg,
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec, e.g. a directory written by train.")],
    split: Annotated[str, typer.Option(
        "--split", help="heldout (what training did not use), all, or a name from the data's split column.")
    ] = "heldout",
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="As given to train, when the data has no split column.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="As given to train.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "cpu",
    images: ImagesOpt = None,
    image_column: ImageColOpt = None,
    caption_column: CaptionColOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recall@1/5/10 both ways, mean rank and zero-shot accuracy of a model on held-out pairs."""
    from ..cpu_threads import prefer_passive_waiting

    prefer_passive_waiting()  # before torch loads (retrieval/cpu_threads.py)
    from ..train import evaluate_model, format_metrics

    pairs = _read(data, images, image_column, caption_column)
    metrics = evaluate_model(model, pairs, split=split, batch_size=batch_size, val_fraction=val_fraction,
                             seed=seed, device=device)
    if as_json:
        echo_json(metrics.to_dict(), compact=True)
    else:
        typer.echo(format_metrics(metrics))


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the catalogue into.")],
    n_images: Annotated[int, typer.Option("--n-images", "-n", min=1)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    image_size: Annotated[int, typer.Option("--image-size", min=16)] = 96,
    captions_per_image: Annotated[int, typer.Option("--captions-per-image", min=1, max=10)] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Write the synthetic product world (pictures + captions.csv) used by the demo and benchmarks."""
    from collections import Counter

    from ..synthetic import generate_catalogue

    catalogue = generate_catalogue(out_dir, n_images=n_images, seed=seed, image_size=image_size,
                                   captions_per_image=captions_per_image)
    counts = dict(Counter(item.split for item in catalogue.items))
    if as_json:
        echo_json({"root": str(out_dir), "n_images": n_images, "splits": counts,
                   "captions_csv": str(catalogue.captions_csv)}, compact=True)
        return
    splits = ", ".join(f"{name} {counts.get(name, 0)}" for name in ("train", "val", "test", "unseen"))
    out(f"wrote {n_images} pictures to {out_dir} ({splits})")
    out(f"train with: mmsearch train {catalogue.captions_csv} --out models/mine")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``eval`` and ``synth`` to ``app``."""
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("synth")(synth)
