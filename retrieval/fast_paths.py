"""The encoder's fast paths, each exact or measured against open_clip's own path.

* :class:`CausalTextTower`: a causal text tower run only up to the end-of-text
  token (same vectors, a fraction of the work).
* :class:`SplitPreprocess`: open_clip's image transform cut at ``ToTensor``, so
  worker threads do the PIL part and the float part is done once per batch
  (bit-identical pixels).
* :func:`lower_image_tower` / :func:`lower_text_tower`: bf16 or int8 numerics,
  offered because their embeddings keep a mean cosine >= 0.99 to fp32
  (benchmarks/bench_index.py, bench_query.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ModelLoadError


@dataclass(frozen=True)
class CausalTextTower:
    """The parts of a causal CLIP text tower, run on the tokens up to end-of-text only.

    With a causal mask, token i attends to tokens 0..i alone, so the features at
    the end-of-text token (the ones pooled) do not depend on the padding after
    it. Running the transformer on ``tokens[:, :n]`` with the mask and positional
    embedding cut to ``n`` gives the same embedding as the full 77-token pass,
    at a fraction of the cost (a 6-word query is ~9 tokens). Towers this does
    not hold for (bidirectional like SigLIP and MobileCLIP, a class token, a
    padding mask, Hugging Face text models) get ``None`` and the full pass.
    """

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    attn_mask: torch.Tensor
    ln_final: torch.nn.Module
    projection: torch.nn.Module | torch.Tensor | None
    pool_type: str
    eos_id: int | None

    @classmethod
    def of(cls, model: torch.nn.Module) -> "CausalTextTower | None":
        from open_clip.transformer import TextTransformer

        text = getattr(model, "text", None)
        if isinstance(text, TextTransformer):  # CustomTextCLIP
            if text.cls_emb is not None or text.use_pad_mask or text.output_tokens:
                return None
            owner, pool_type, eos_id = text, text.pool_type, getattr(text, "eos_id", None)
            projection = text.text_projection
        elif hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # CLIP
            owner, pool_type, eos_id = model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
            projection = model.text_projection
        else:
            return None
        mask = getattr(owner, "attn_mask", None)
        if mask is None or pool_type not in ("argmax", "eos") or (pool_type == "eos" and eos_id is None):
            return None
        return cls(
            owner.token_embedding, owner.positional_embedding, owner.transformer, mask, owner.ln_final,
            projection, pool_type, eos_id,
        )

    def last_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (end-of-text) token in each row, as open_clip's pooling finds it."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-length text features, identical (to float rounding) to ``encode_text(normalize=True)``."""
        last = self.last_positions(tokens)
        n = int(last.max().item()) + 1
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens[:, :n]).to(cast_dtype)
        x = x + self.positional_embedding[:n].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), last]
        if isinstance(self.projection, torch.nn.Linear):
            x = self.projection(x)
        elif self.projection is not None:
            x = x @ self.projection
        return torch.nn.functional.normalize(x, dim=-1)


class SplitPreprocess:
    """open_clip's image transform cut in two at ``ToTensor``: PIL steps, then tensor steps."""

    def __init__(self, pil_steps: list[Callable[[Image.Image], Image.Image]], mean: torch.Tensor | None,
                 std: torch.Tensor | None) -> None:
        self.pil_steps = pil_steps
        self.mean = mean
        self.std = std

    @classmethod
    def of(cls, preprocess: Callable[[Image.Image], torch.Tensor]) -> "SplitPreprocess | None":
        from torchvision import transforms as T

        steps = getattr(preprocess, "transforms", None)
        if not isinstance(preprocess, T.Compose) or not steps:
            return None
        cut = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
        if cut is None:
            return None
        pil_steps, tail = list(steps[:cut]), list(steps[cut + 1:])
        # Only steps known to map PIL images to PIL images may run before the cut.
        pil_kinds = (T.Resize, T.CenterCrop)
        if not all(isinstance(t, pil_kinds) or type(t).__name__ == "MaybeConvertMode" for t in pil_steps):
            return None
        sizing = [t for t in pil_steps if isinstance(t, (T.Resize, T.CenterCrop))]
        if not sizing or not isinstance(sizing[-1], T.CenterCrop) and not _fixed_size_resize(sizing[-1]):
            return None  # a batch needs one pixel size
        if not tail:
            return cls(pil_steps, None, None)
        if len(tail) != 1 or not isinstance(tail[0], T.Normalize) or tail[0].inplace:
            return None
        mean = torch.as_tensor(tail[0].mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(tail[0].std, dtype=torch.float32).view(1, -1, 1, 1)
        return cls(pil_steps, mean, std)

    def to_array(self, image: Image.Image) -> np.ndarray:
        for step in self.pil_steps:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)

    def to_pixels(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        # The same operations as ToTensor + Normalize, in the same order, so the
        # result is bit-identical; only done once for the batch.
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div(255)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x


def _fixed_size_resize(step: Any) -> bool:
    size = getattr(step, "size", None)
    return isinstance(size, (tuple, list)) and len(size) == 2


# 16-bit floats: bf16 on CPUs with native bf16 (and GPUs), fp16 on GPUs (more mantissa, same speed there).
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def lower_image_tower(model: torch.nn.Module, precision: str, device: torch.device) -> torch.dtype:
    """Convert the image tower in place to ``precision``; returns the dtype its input wants.

    The text tower is lowered separately (:func:`lower_text_tower`), after a
    caller has had the chance to export its exact weights.
    """
    visual = model.visual
    if precision in HALF_DTYPES:
        visual.to(HALF_DTYPES[precision])
        return HALF_DTYPES[precision]
    if precision == "int8":
        if device.type != "cpu":
            raise ModelLoadError("precision int8 runs on the CPU only: use --device cpu or another precision")
        import warnings

        with warnings.catch_warnings():
            # torch.ao's eager dynamic quantisation is deprecated in favour of torchao, not removed.
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(visual, _quantisable_linears(visual), dtype=torch.qint8,
                                                   inplace=True)
        return torch.float32
    return torch.float32


def _quantisable_linears(visual: torch.nn.Module) -> set[str]:
    """Names of the Linear layers int8 may replace: not those whose weights are read directly.

    A ResNet tower's attention pool passes its projections' ``weight`` and
    ``bias`` to ``multi_head_attention_forward`` itself; a quantised Linear has
    no such tensors, so the pool stays fp32. Exact type, as torch's own type
    rule: attention's ``NonDynamicallyQuantizableLinear`` out-projection stays too.
    """
    from open_clip.modified_resnet import AttentionPool2d

    pools = [name for name, m in visual.named_modules() if isinstance(m, AttentionPool2d)]
    return {name for name, m in visual.named_modules()
            if type(m) is torch.nn.Linear and not any(name.startswith(p + ".") for p in pools)}


def lower_text_tower(model: torch.nn.Module, precision: str) -> torch.dtype:
    """With bf16 or fp16, the text tower runs in that dtype too; returns its dtype.

    A query is ~10 tokens, so the tower's cost is reading its weights (150 MB
    in fp32 for ViT-B-32): bf16 halves that, 1.8x faster per query on the
    reference CPU at cosine >= 0.9999 to fp32. int8 dynamic quantisation would
    leave the attention weights in fp32 and cost more accuracy, so int8 keeps
    an fp32 text tower.
    """
    dtype = HALF_DTYPES.get(precision)
    if dtype is None:
        return torch.float32
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP: the whole text tower is one module
        text.to(dtype)
        return dtype
    if not hasattr(model, "transformer"):
        return torch.float32
    for name in ("transformer", "token_embedding", "ln_final"):
        getattr(model, name).to(dtype)
    for name in ("positional_embedding", "text_projection"):
        value = getattr(model, name, None)
        if isinstance(value, torch.nn.Parameter):
            value.data = value.data.to(dtype)
        elif isinstance(value, torch.nn.Module):
            value.to(dtype)
    return dtype
