"""One optimizer step's arithmetic: the learning-rate schedule, forward and backward over micro-batches, the loss."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from . import distributed as dist_env


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup then cosine decay to zero (open_clip_train's ``cosine_lr``)."""
    if step < warmup:
        return base_lr * (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def _forward(model: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[Any, Any, Any, Any]:
    """(image features, text features, logit scale, logit bias or None), whatever open_clip returns."""
    out = model(pixels, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    return out[0], out[1], out[2], (out[3] if len(out) > 3 else None)


def accumulate(net: torch.nn.Module, loss_fn: torch.nn.Module, kind: str,
               batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, device: torch.device,
               amp: bool = True) -> float:
    """Forward and backward over ``n`` micro-batches (pixels, tokens): one optimizer step's gradients.

    Returns the mean loss. Each micro-batch's negatives are its own (global) batch. Under
    DDP, gradients are averaged across ranks once, on the last micro-batch.
    """
    total = 0.0
    for a, (pixels, tokens) in enumerate(batches):
        with dist_env.maybe_no_sync(net, skip=a < n - 1):
            with dist_env.autocast(device, amp):
                image_f, text_f, scale, bias = _forward(net, pixels.to(device, non_blocking=True),
                                                        tokens.to(device, non_blocking=True))
            loss = _loss(loss_fn, kind, image_f, text_f, scale, bias)
            (loss / n).backward()
        total += float(loss.detach()) / n
    return total


def _loss(loss_fn: torch.nn.Module, kind: str, image_f: torch.Tensor, text_f: torch.Tensor, scale: torch.Tensor,
          bias: torch.Tensor | None) -> torch.Tensor:
    """The contrastive loss in at least fp32 whatever precision the forward pass ran in (logits x 100 need it)."""

    def wide(t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    if kind == "siglip":
        return loss_fn(wide(image_f), wide(text_f), wide(scale), wide(bias) if bias is not None else None)
    return loss_fn(wide(image_f), wide(text_f), wide(scale))
