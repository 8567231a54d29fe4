"""``fit()``: contrastive training with open_clip's losses, AdamW, warmup + cosine, checkpoints.

The pieces come from open_clip: the models, ``ClipLoss`` / ``SigLipLoss``, the
weight-decay exclusions and the temperature clamp of ``open_clip_train``. What
is ours: a loop small enough to run in seconds on a laptop CPU, a time budget
that the cosine schedule fits itself to, resumable checkpoints in hub layout (at
each epoch's end and every ``checkpoint_minutes`` within one, so a long epoch over
shards resumes where it was cut), the best model kept by validation recall, and an
input pipeline of bounded memory (:mod:`retrieval.train.pipeline`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from ..encoder import Encoder
from ..errors import DataError, MMSearchError
from . import checkpoint as ckpt
from . import distributed as dist_env
from .data import PairData, Split, split_items
from .distributed import DistEnv
from .evaluate import RetrievalMetrics, evaluate
from .models import (
    DEFAULT_ARCH,
    TrainableModel,
    create_from_checkpoint,
    create_from_scratch,
    create_from_spec,
    lock_towers,
    param_groups,
)
from .pipeline import PairLoader, epoch_order, plan_threads, rank_share
from .pixels import ImagePrep, PixelCache, default_cache_mb
from .progress import Progress, fmt_eta
from .steps import accumulate, lr_at
from .threads import ThreadTuner

DEFAULT_EPOCHS = 10
SCRATCH_LR = 1e-3
FINETUNE_LR = 1e-5
MAX_LOGIT_SCALE = math.log(100)  # open_clip_train clamps the learned temperature at 100


@dataclass
class TrainCfg:
    """How to train. ``arch`` trains from scratch, ``from_spec`` fine-tunes; neither means ``mmsearch-small``."""

    arch: str | None = None
    from_spec: str | None = None
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or unlimited when max_minutes is given
    max_minutes: float | None = None
    # "wall": the budget is wall-clock time. "cpu": process CPU time divided by torch's thread
    # count, i.e. the wall time the run would take with its cores to itself (busy machines).
    budget_clock: str = "wall"
    batch_size: int = 64  # per process: under torchrun the global (contrastive) batch is batch_size x processes
    lr: float | None = None  # None: SCRATCH_LR from scratch, FINETUNE_LR when fine-tuning
    weight_decay: float = 0.2
    warmup_steps: int | None = None  # None: 10% of the planned steps, at most 100
    grad_clip: float | None = 1.0
    accum_steps: int = 1
    loss: str = "clip"  # clip | siglip
    lock_image: bool = False
    lock_text: bool = False
    augment: bool = True
    val_fraction: float = 0.1
    max_val_items: int = 1000
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"  # auto | cpu | cuda | mps; under torchrun with CUDA each process takes cuda:LOCAL_RANK
    amp: bool = True  # bf16 autocast on CUDA GPUs that support it (CPU and MPS always train in fp32)
    # Where it runs, not what it trains (a resumed run takes the new values):
    workers: int | None = None  # decode threads; None: from the cores (pipeline.plan_threads); 0: none
    # torch threads; None: one per CPU, and on a CPU under a time budget tuned by measurement (threads.py)
    threads: int | None = None
    cache_mb: float | None = None  # decoded pixels kept in memory (per machine); None: pipeline.default_cache_mb()
    checkpoint_minutes: float | None = 10.0  # also save last/ this often within an epoch; None: at epoch ends only
    checkpoint_steps: int | None = None  # ... or every this many optimizer steps


@dataclass
class TrainResult:
    out_dir: Path
    epochs_run: int
    steps: int
    best_epoch: int | None
    best: dict[str, Any] | None
    last: dict[str, Any] | None
    samples_per_s: float
    train_seconds: float
    stopped_by: str  # epochs | time
    n_train: int
    n_val: int
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0  # under torchrun: this process's rank; only rank 0's metrics are complete
    world_size: int = 1
    skipped_images: int = 0  # undecodable images met while training and validating (all processes)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    cached_items: int = 0  # pictures kept in memory by this process, and their bytes
    cache_bytes: int = 0
    decode_workers: int = 0
    threads: int = 0  # torch intra-op threads


def _resume_state(cfg: TrainCfg, out_dir: Path) -> tuple[TrainCfg, dict[str, Any] | None, Path | None]:
    """With ``cfg.resume``: the checkpoint's state, and the settings of the run it continues.

    What defines the run (model, data split, schedule, augmentation, seed) comes from the
    checkpoint, so that a resumed run trains on the same split and batches; where and how
    long it runs (epochs, time budget, device, workers, cache) comes from ``cfg``.
    """
    if not cfg.resume:
        return cfg, None, None
    last = ckpt.find_last(out_dir)
    if last is None:
        raise MMSearchError(f"nothing to resume in {str(out_dir)!r}: it has no {ckpt.LAST_DIR}/ checkpoint")
    state = ckpt.load_state(last)
    saved = TrainCfg(**{k: v for k, v in state["cfg"].items() if k in TrainCfg.__dataclass_fields__})
    keep = {"epochs": cfg.epochs, "max_minutes": cfg.max_minutes, "device": cfg.device, "amp": cfg.amp}
    here = {k: getattr(cfg, k) for k in ("workers", "threads", "cache_mb", "checkpoint_minutes", "checkpoint_steps")}
    merged = TrainCfg(**{**asdict(saved), **{k: v for k, v in keep.items() if v is not None}, **here, "resume": True})
    return merged, state, last


def _build(cfg: TrainCfg, out_dir: Path, is_main: bool = True, state: dict[str, Any] | None = None,
           last: Path | None = None) -> TrainableModel:
    if state is not None and last is not None:
        return create_from_checkpoint(last, cfg.augment)
    if ckpt.find_last(out_dir) is not None or ckpt.is_complete(out_dir):
        if not cfg.overwrite:
            raise MMSearchError(
                f"{str(out_dir)!r} already holds a trained model: pass --resume to continue it, "
                "--overwrite to start again, or choose another --out"
            )
        for name in (ckpt.METRICS_NAME, ckpt.INFO_NAME):
            if is_main:
                (out_dir / name).unlink(missing_ok=True)
    if cfg.from_spec and cfg.arch:
        raise MMSearchError("give --model ARCH (train from scratch) or --from SPEC (fine-tune), not both")
    if cfg.from_spec:
        return create_from_spec(cfg.from_spec, cfg.loss, cfg.augment)
    return create_from_scratch(cfg.arch or DEFAULT_ARCH, cfg.loss, cfg.seed, cfg.augment)


def _validate(tm: TrainableModel, loader: PairLoader | None, batch_size: int,
              device: torch.device) -> RetrievalMetrics | None:
    if loader is None or not loader.items:
        return None
    was_training = tm.model.training
    encoder = Encoder(tm.model, tm.preprocess_val, tm.tokenizer, spec="(training)", model_config=tm.model_cfg,
                      device=device)
    try:
        return evaluate(encoder, loader.items, batch_size=max(batch_size, 64), images=loader.pictures)
    finally:
        tm.model.train(was_training)


def fit(data: PairData, out_dir: str | Path, cfg: TrainCfg | None = None,
        progress: TextIO | None = sys.stderr) -> TrainResult:
    """Train on ``data`` and write checkpoints into ``out_dir`` (see :mod:`retrieval.train.checkpoint`).

    Stops after ``cfg.epochs`` epochs or ``cfg.max_minutes`` minutes, whichever comes
    first; with a time budget the cosine schedule is stretched to end with it.
    Returns what happened; the best model (by mean validation recall) is in ``out_dir``.

    Under ``torchrun`` every process calls this: it joins the process group (see
    :mod:`retrieval.train.distributed`), contributes ``batch_size`` samples to each global
    batch of ``batch_size`` x processes, and rank 0 alone validates and writes; the result's
    ``best``/``last`` metrics and the history's validation are rank 0's to report.
    """
    cfg = cfg or TrainCfg()
    check_cfg(cfg)
    out = Path(out_dir)
    cfg, state, last = _resume_state(cfg, out)
    split = split_items(data.items, cfg.val_fraction, cfg.seed, cfg.max_val_items)  # the same on every rank
    if len(split.train) < 2:
        raise DataError(f"only {len(split.train)} training image(s) in {data.source}: need at least 2")
    created = _prepare_out_dir(out)
    env = dist_env.setup(cfg.device)
    try:
        return _fit(data, out, cfg, split, env, progress, state, last)
    except BaseException:
        if created and env.is_main:
            _remove_if_empty(out)  # a run that failed before writing anything leaves no empty folder
        raise
    finally:
        dist_env.teardown(env)


def check_cfg(cfg: TrainCfg) -> None:
    """Refuse settings that cannot train (a NaN or negative learning rate, a negative weight decay, ...)."""
    def bad(name: str, value: object, what: str) -> MMSearchError:
        return MMSearchError(f"{name} must be {what} (got {value!r})")

    if cfg.loss not in ("clip", "siglip"):
        raise MMSearchError(f"unknown loss {cfg.loss!r}: use clip or siglip")
    if cfg.batch_size < 2:
        raise MMSearchError("--batch-size must be at least 2: a contrastive loss needs negatives")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise bad("--lr", cfg.lr, "a positive number")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise bad("--weight-decay", cfg.weight_decay, "zero or a positive number")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise bad("--warmup", cfg.warmup_steps, "zero or more steps")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise bad("--grad-clip", cfg.grad_clip, "zero (off) or a positive number")
    if cfg.max_minutes is not None and not (math.isfinite(cfg.max_minutes) and cfg.max_minutes > 0):
        raise bad("--max-minutes", cfg.max_minutes, "a positive number")
    if not (math.isfinite(cfg.val_fraction) and 0 <= cfg.val_fraction < 1):
        raise bad("--val-fraction", cfg.val_fraction, "at least 0 and below 1")


def _prepare_out_dir(out: Path) -> bool:
    """Make sure ``out`` can hold a model; True when this call created it."""
    if out.exists() and not out.is_dir():
        raise MMSearchError(f"--out {out} is a file, not a folder: give a folder for the model")
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if not existed:
            _remove_if_empty(out)
        raise MMSearchError(f"cannot write the model into --out {out}: {exc.strerror or exc}") from exc
    return not existed


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (a checkpoint was written) or already gone


def _fit(data: PairData, out: Path, cfg: TrainCfg, split: Split, env: DistEnv, progress: TextIO | None,
         state: dict[str, Any] | None, last: Path | None) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    tm = _build(cfg, out, env.is_main, state, last)
    model = tm.model.to(env.device).train()
    lock_towers(model, cfg.lock_image, cfg.lock_text)
    bias = getattr(model, "logit_bias", None)
    if cfg.loss == "clip" and isinstance(bias, torch.nn.Parameter):
        bias.requires_grad_(False)  # softmax ignores a shared bias: no gradient, and DDP rejects unused parameters
    net: torch.nn.Module = model
    if env.distributed:  # rank 0's weights are broadcast here, so every rank starts alike
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None)
    base_lr = cfg.lr if cfg.lr is not None else (FINETUNE_LR if cfg.from_spec else SCRATCH_LR)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=base_lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = dist_env.create_loss(cfg.loss, env)

    per_rank = len(split.train) // env.world_size  # each rank's share of an epoch (equal shares)
    if per_rank == 0:  # more processes than training images
        raise DataError(f"only {len(split.train)} training image(s) for {env.world_size} processes: "
                        "use fewer processes or more data")
    train_loader, val_loader = _loaders(tm, model, cfg, split, env)
    batch = min(cfg.batch_size, per_rank)  # per process
    accum = max(1, cfg.accum_steps)
    step_samples = batch * accum * env.world_size  # samples per optimizer step, over all ranks
    steps_per_epoch = max(1, per_rank // batch // accum)
    epochs = cfg.epochs or (10**6 if cfg.max_minutes else DEFAULT_EPOCHS)
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf

    step, epoch, best_score, best_epoch, start_step = 0, 0, -math.inf, None, 0
    history: list[dict[str, Any]] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, epoch = int(state["step"]), int(state["epoch"])
        best_score = float(state["best_score"])
        best_epoch = state.get("best_epoch")
        # A checkpoint written within an epoch: the global samples of that epoch already trained on.
        start_step = min(int(state.get("epoch_samples", 0)) // step_samples, steps_per_epoch)
        saved_world = int(state.get("world_size", 1))
        if saved_world != env.world_size:  # keep the schedule's place in samples, not in steps
            step = min(round(step * saved_world / env.world_size), epoch * steps_per_epoch + start_step)
    max_steps = epochs * steps_per_epoch
    total_steps = max_steps
    # Transformers trained from scratch with Adam collapse without a warmup; 10% (at most 100 steps).
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, min(100, int(0.1 * total_steps)))
    if total_steps <= step:
        raise MMSearchError(f"already trained for {epoch} epoch(s): ask for more --epochs to continue")

    if env.is_main:
        ckpt.atomic_write_text(out / ckpt.INFO_NAME, _info_json(cfg, tm, data, split, base_lr, env))
    bar = Progress(progress if env.is_main else None)
    where = f" on {env.device}" + (f" x {env.world_size} processes" if env.distributed else "")
    resuming = (f", resuming at epoch {epoch + 1}" + (f" step {start_step + 1}" if start_step else "")) if state else ""
    bar.line(f"training {tm.source}{where} on {len(split.train)} images ({len(split.val)} for validation), "
             f"{steps_per_epoch} steps/epoch of {step_samples} samples{resuming}")
    # A time budget on a CPU: the thread count that makes the most steps, measured as the load changes.
    tuner = ThreadTuner(torch.get_num_threads()) if (
        budget_s < math.inf and env.device.type == "cpu" and not env.distributed and cfg.threads is None
        and "OMP_NUM_THREADS" not in os.environ) else None
    bar.line(train_loader.describe(torch.get_num_threads()) + (", tuned while training" if tuner else ""))
    start = time.monotonic()
    clock = _budget_clock(cfg.budget_clock)
    clock_start = clock()
    train_time, steps_done, val_time = 0.0, 0, 0.0
    train_clock, val_clock = 0.0, 0.0  # the same, measured by the budget's clock
    stopped_by = "epochs"
    last_metrics: RetrievalMetrics | None = None
    lr = base_lr
    last_save = time.monotonic()
    skips: dict[str, int] = {}

    def save_state(epochs_done: int, epoch_step: int) -> None:
        state_out = {
            "cfg": asdict(cfg), "optimizer": optimizer.state_dict(), "step": step, "epoch": epochs_done,
            "epoch_samples": epoch_step * step_samples, "best_score": best_score, "best_epoch": best_epoch,
            "world_size": env.world_size,
        }
        ckpt.save_last(model, tm.model_cfg, state_out, out, tm.tokenizer if _is_hf(tm) else None)

    try:
        first_epoch, tuner_logged = epoch, 0
        while epoch < epochs:
            order = rank_share(epoch_order(split.train, cfg.seed, epoch), env.rank, env.world_size)
            order = order[:steps_per_epoch * accum * batch]
            losses: list[float] = []
            batches = train_loader.batches(order, epoch, batch, start=start_step * accum)
            s = start_step
            try:
                while s < steps_per_epoch:
                    if tuner is not None:
                        tuner.before_step()
                    t0, t0_clock = time.monotonic(), clock()
                    lr = lr_at(step, base_lr, warmup, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    optimizer.zero_grad(set_to_none=True)
                    micro = ((train_loader.prep.to_pixels(b.pixels, env.device), b.tokens)
                             for b in (next(batches) for _ in range(accum)))
                    step_loss = accumulate(net, loss_fn, cfg.loss, micro, accum, env.device, cfg.amp)
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       cfg.grad_clip)
                    optimizer.step()
                    with torch.no_grad():
                        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)  # type: ignore[operator]
                    step += 1
                    s += 1
                    steps_done += 1
                    losses.append(step_loss)
                    train_time += time.monotonic() - t0
                    train_clock += clock() - t0_clock
                    if tuner is not None:
                        tuner.after_step(time.monotonic() - t0)
                    rate = steps_done * step_samples / max(train_time, 1e-9)
                    out_of_time = False
                    if budget_s < math.inf:
                        elapsed = clock() - clock_start
                        if steps_done >= 3:
                            # Fit the cosine to the budget: steps left = time left / time per step so far.
                            # Validation runs once an epoch: spread its cost over the epoch's steps.
                            per_step = train_clock / steps_done + val_clock / max(1, len(history)) / steps_per_epoch
                            total_steps = min(max_steps, step + max(1, int((budget_s - elapsed) / max(per_step, 1e-6))))
                        # Rank 0's clock decides for all, so that every rank runs the same steps.
                        flag, agreed_total = env.from_main([elapsed >= budget_s, total_steps])
                        out_of_time, total_steps = flag > 0, int(agreed_total)
                    eta = (total_steps - step) * step_samples / max(rate, 1e-9)
                    bar.update(f"epoch {epoch + 1} step {step}/{total_steps} loss {np.mean(losses[-20:]):.4f} "
                               f"lr {lr:.2e} {rate:.0f} samples/s ETA {fmt_eta(eta)}")
                    if out_of_time or step >= total_steps:
                        break
                    if env.is_main and s < steps_per_epoch and _checkpoint_due(cfg, step, last_save):
                        save_state(epoch, s)  # within the epoch: a kill -9 from here on resumes at step s
                        last_save = time.monotonic()
            finally:
                batches.close()  # stops the decode threads' look-ahead
            start_step = 0
            epoch += 1
            if tuner is not None and epoch == first_epoch + 1:
                tuner.remeasure()  # this run's first epoch decoded its images; the next ones read the cache
            train_loss = env.mean(float(np.mean(losses))) if losses else None  # over the global batch
            v0, v0_clock = time.monotonic(), clock()
            last_metrics = _validate(tm, val_loader, batch, env.device) if env.is_main else None
            val_time += time.monotonic() - v0
            val_clock += clock() - v0_clock
            skips = env.sum_counts(_merge_counts(train_loader.skip_reasons(), val_loader.skip_reasons()))
            score = last_metrics.mean_recall if last_metrics else -(train_loss or 0.0)
            is_best = env.is_main and score > best_score
            record = {
                "epoch": epoch, "step": step, "train_loss": train_loss, "lr": lr,
                "samples_per_s": steps_done * step_samples / max(train_time, 1e-9),
                "elapsed_s": time.monotonic() - start,
                "logit_scale": float(model.logit_scale.detach().exp()),  # type: ignore[operator]
                "val": last_metrics.to_dict() if last_metrics else None, "is_best": is_best,
                "skipped_images": sum(skips.values()), "threads": torch.get_num_threads(),
            }
            if tuner is not None:  # this epoch's rounds of thread-count probes
                record["thread_probes"], tuner_logged = tuner.rounds[tuner_logged:], len(tuner.rounds)
            if is_best:
                best_score, best_epoch = score, epoch
            if env.is_main:
                if is_best:
                    ckpt.save_model(model, tm.model_cfg, out, tm.tokenizer if _is_hf(tm) else None)
                save_state(epoch, 0)
                last_save = time.monotonic()
                ckpt.append_metrics(out, record)
            history.append(record)
            val_text = (f" val R@1 i->t {last_metrics.image_to_text['R@1']:.3f} t->i "
                        f"{last_metrics.text_to_image['R@1']:.3f}") if last_metrics else ""
            bar.line(f"epoch {epoch} step {step} loss {train_loss or 0.0:.4f}{val_text}"
                     f"{' (best)' if is_best else ''}  {record['samples_per_s']:.0f} samples/s")
            env.barrier()  # the other ranks wait here while rank 0 validates and writes
            if budget_s < math.inf and env.from_main([clock() - clock_start >= budget_s])[0] > 0:
                stopped_by = "time"
                break
            if step >= total_steps:
                break
    finally:
        train_loader.close()
        val_loader.close()
    final_threads = torch.get_num_threads()
    if tuner is not None:
        torch.set_num_threads(tuner.candidates and max(tuner.candidates))  # leave the process as planned
    if budget_s < math.inf and step < max_steps:
        stopped_by = "time"  # the schedule fitted to the budget ended before the epochs did
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    return TrainResult(
        out_dir=out, epochs_run=len(history), steps=step, best_epoch=best_epoch,
        best=best["val"] if best else None, last=last_metrics.to_dict() if last_metrics else None,
        samples_per_s=steps_done * step_samples / max(train_time, 1e-9), train_seconds=time.monotonic() - start,
        stopped_by=stopped_by, n_train=len(split.train), n_val=len(split.val), history=history,
        rank=env.rank, world_size=env.world_size, skipped_images=sum(skips.values()), skip_reasons=skips,
        cached_items=len(train_loader.cache) + len(val_loader.cache),
        cache_bytes=train_loader.cache.used + val_loader.cache.used,
        decode_workers=train_loader.workers, threads=final_threads,
    )


def _loaders(tm: TrainableModel, model: torch.nn.Module, cfg: TrainCfg, split: Split,
             env: DistEnv) -> tuple[PairLoader, PairLoader]:
    """The training and validation loaders, sharing one memory budget and the machine's cores."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if env.distributed else 1
    threads, workers = plan_threads(cfg.workers, env.device, local)
    threads = cfg.threads or threads
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    budget = (cfg.cache_mb if cfg.cache_mb is not None else default_cache_mb()) * 2**20 / max(1, local)
    prep_train = ImagePrep(model, tm.preprocess_train, cfg.augment)
    prep_val = ImagePrep(model, tm.preprocess_val, augment=False)
    # Validation pictures are met every epoch: keep them first, within a quarter of the budget.
    val_need = len(split.val) * (prep_val.size[0] * prep_val.size[1] * 3 + PixelCache.OVERHEAD) \
        if env.is_main else 0
    val_budget = min(val_need, budget // 4)
    pin = env.device.type == "cuda"
    train = PairLoader(split.train, prep_train, tm.tokenizer, PixelCache(int(budget - val_budget)),
                       seed=cfg.seed, workers=workers, pin_memory=pin)
    val = PairLoader(split.val if env.is_main else [], prep_val, None, PixelCache(int(val_budget)),
                     seed=cfg.seed, workers=workers)
    return train, val


def _checkpoint_due(cfg: TrainCfg, step: int, last_save: float) -> bool:
    if cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0:
        return True
    return bool(cfg.checkpoint_minutes) and time.monotonic() - last_save >= cfg.checkpoint_minutes * 60


def _merge_counts(*counts: dict[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            merged[k] = merged.get(k, 0) + v
    return merged


def _budget_clock(kind: str) -> Any:
    if kind == "wall":
        return time.monotonic
    if kind == "cpu":
        threads = max(1, torch.get_num_threads())
        return lambda: time.process_time() / threads
    raise MMSearchError(f"unknown budget clock {kind!r}: use wall or cpu")


def _is_hf(tm: TrainableModel) -> bool:
    return bool(tm.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name"))


def _info_json(cfg: TrainCfg, tm: TrainableModel, data: PairData, split: Any, lr: float, env: DistEnv) -> str:
    import json

    return json.dumps({
        "source": tm.source, "cfg": asdict(cfg), "lr": lr, "data": str(data.source),
        "device": str(env.device), "world_size": env.world_size,
        "n_images": len(data.items), "n_train": len(split.train), "n_val": len(split.val),
        "skipped_rows": data.skipped_rows, "skipped_images": data.skipped_images,
    }, indent=2) + "\n"
