"""Write a model's text tower for :mod:`retrieval.text_light`, and check it reproduces the model.

An export is kept per model fingerprint under ``<index root>/.cache/text/``, so
all indexes of one model share it and a retrained model gets a new one. It is
written only after the numpy path has reproduced open_clip's tokens exactly and
its embeddings to cosine >= :data:`MIN_COSINE` on probe texts; a model that
fails, or whose tower or tokenizer is not the plain CLIP kind, gets a
``unsupported.json`` marker instead (so the check is not repeated) and keeps
the torch path.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .encoder import Encoder
from .fast_paths import CausalTextTower
from .export_cache import mark_unsupported, publish, staging_dir
from .text_light import (
    CLEAN_KINDS,
    FORMAT_VERSION,
    META_FILE,
    UNSUPPORTED_FILE,
    ClipBpeTokenizer,
    LightTextEncoder,
    export_dir,
    load_light_encoder,
)

log = logging.getLogger(__name__)

MIN_COSINE = 0.99999
EXPORTER = "clip-numpy"  # names this exporter in unsupported.json, beside retrieval.hf_text_export's
# Probes cover casing, punctuation, digits, accents, emoji, HTML entities and truncation.
PROBE_TEXTS = (
    "red shoes",
    "A photo of a DOG playing in the snow, 2019!",
    "café au lait & croissants &amp; jam",
    "a striped blue shirt",
    "🐈 cat's toys — they're everywhere",
    "x",
    " ".join(["a very long caption that goes on"] * 20),
)


def ensure_export(encoder: Encoder, index_root: Path) -> bool:
    """Export ``encoder``'s text side under ``index_root`` unless done (or known unsupported); True if usable.

    Models whose tokenizer is a Hugging Face one (the multilingual XLM-R, NLLB
    and SigLIP i18n models) get the ONNX export of
    :func:`retrieval.hf_text_export.ensure_hf_export`; the others this module's
    numpy export. Never raises: the export only makes later cold queries
    faster, so a full disk or read-only folder is logged and the torch path
    stays in use.
    """
    from .hf_text_export import ensure_hf_export, is_hf_tokenizer_model

    if is_hf_tokenizer_model(encoder):
        return ensure_hf_export(encoder, index_root)
    return _ensure_clip_export(encoder, index_root)


def _ensure_clip_export(encoder: Encoder, index_root: Path) -> bool:
    target = export_dir(index_root, encoder.fingerprint)
    if getattr(encoder, "text_dtype", torch.float32) != torch.float32:
        return False  # a lowered (bf16) text tower: only an exact load can be exported
    if load_light_encoder(index_root, encoder.fingerprint) is not None:
        return True
    if (target / UNSUPPORTED_FILE).is_file():
        return False
    try:
        if target.exists():  # a damaged export: write it again
            shutil.rmtree(target)
        return _export(encoder, target)
    except Exception as exc:  # noqa: BLE001 - an optional speed-up must never stop a model from loading
        log.debug("text-tower export to %s failed: %s", target, exc)
        return False


def _export(encoder: Encoder, target: Path) -> bool:
    layout = _describe(encoder)
    if isinstance(layout, str):
        _mark_unsupported(target, layout)
        return False
    meta, tensors = layout
    with staging_dir(target) as tmp:
        for name, tensor in tensors.items():
            np.save(tmp / f"{name}.npy", tensor.detach().to(torch.float32).cpu().numpy())
        meta["fingerprint"] = encoder.fingerprint
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        problem = _verify(encoder, tmp)
        if problem:
            _mark_unsupported(target, problem)
            return False
        return publish(tmp, target, META_FILE)


def _mark_unsupported(target: Path, why: str) -> None:
    mark_unsupported(target, UNSUPPORTED_FILE, why, EXPORTER)


def _describe(encoder: Encoder) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | str:
    """(meta, tensors) of a plain CLIP text tower, or why it is not one."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_canonicalize, _clean_lower, _clean_whitespace
    from open_clip.transformer import LayerScale, QuickGELU, ResidualAttentionBlock

    tower = CausalTextTower.of(encoder.model)
    if tower is None:
        return "not a causal CLIP text tower"
    tok = encoder.tokenizer
    if not isinstance(tok, SimpleTokenizer) or tok.reduction_fn is not None or tok.vocab_size != 49408:
        return f"tokenizer {type(tok).__name__} is not the plain CLIP BPE tokenizer"
    cleans = {_clean_lower: "lower", _clean_whitespace: "whitespace", _clean_canonicalize: "canonicalize"}
    clean = cleans.get(tok.clean_fn)
    if clean not in CLEAN_KINDS:
        return "unknown tokenizer cleaning"
    blocks = list(getattr(tower.transformer, "resblocks", []))
    if not blocks or not all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in blocks):
        return "text blocks are not plain residual attention blocks"
    if not getattr(tower.transformer, "batch_first", True):
        return "sequence-first transformer"
    act_module = blocks[0].mlp.gelu
    if isinstance(act_module, QuickGELU):
        activation = "quick_gelu"
    elif isinstance(act_module, torch.nn.GELU):
        activation = "gelu_tanh" if act_module.approximate == "tanh" else "gelu"
    else:
        return f"activation {type(act_module).__name__}"
    layer_scale = isinstance(blocks[0].ls_1, LayerScale)
    norms = [tower.ln_final] + [m for b in blocks for m in (b.ln_1, b.ln_2)]
    if not all(isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine for m in norms):
        return "norm layers are not affine LayerNorm"
    eps = {float(m.eps) for m in norms}
    if len(eps) != 1:
        return "mixed LayerNorm eps"
    tensors: dict[str, torch.Tensor] = {
        "token_embedding": tower.token_embedding.weight,
        "positional_embedding": tower.positional_embedding,
        "ln_final.weight": tower.ln_final.weight,
        "ln_final.bias": tower.ln_final.bias,
    }
    for i, b in enumerate(blocks):
        if type(b.ls_1) is not type(blocks[0].ls_1) or type(b.mlp.gelu) is not type(act_module):
            return "blocks differ from one another"
        attn = b.attn
        if attn.in_proj_weight is None or attn.in_proj_bias is None or attn.bias_k is not None:
            return "attention without a packed, biased in-projection"
        p = f"l{i}."
        tensors.update({
            p + "ln_1.weight": b.ln_1.weight, p + "ln_1.bias": b.ln_1.bias,
            p + "in_proj_weight": attn.in_proj_weight, p + "in_proj_bias": attn.in_proj_bias,
            p + "out_proj.weight": attn.out_proj.weight, p + "out_proj.bias": attn.out_proj.bias,
            p + "ln_2.weight": b.ln_2.weight, p + "ln_2.bias": b.ln_2.bias,
            p + "c_fc.weight": b.mlp.c_fc.weight, p + "c_fc.bias": b.mlp.c_fc.bias,
            p + "c_proj.weight": b.mlp.c_proj.weight, p + "c_proj.bias": b.mlp.c_proj.bias,
        })
        if layer_scale:
            tensors[p + "ls_1"], tensors[p + "ls_2"] = b.ls_1.gamma, b.ls_2.gamma
    proj = tower.projection
    projection_bias = False
    if isinstance(proj, torch.nn.Linear):
        projection = "linear"
        tensors["text_projection.weight"] = proj.weight
        if proj.bias is not None:
            tensors["text_projection.bias"] = proj.bias
            projection_bias = True
    elif isinstance(proj, torch.Tensor):
        projection = "matrix"
        tensors["text_projection"] = proj
    elif proj is None:
        projection = "none"
    else:
        return f"projection {type(proj).__name__}"
    meta = {
        "format": FORMAT_VERSION,
        "model": encoder.spec,
        "dim": encoder.dim,
        "layers": len(blocks),
        "heads": int(blocks[0].attn.num_heads),
        "eps": eps.pop(),
        "activation": activation,
        "layer_scale": layer_scale,
        "projection": projection,
        "projection_bias": projection_bias,
        "pool": tower.pool_type,
        "eos_id": tower.eos_id,
        "tokenizer": {"kind": "clip-bpe", "context_length": int(tok.context_length), "clean": clean},
    }
    return meta, tensors


def _verify(encoder: Encoder, directory: Path) -> str | None:
    """None when the export reproduces the model on the probes, else what differs."""
    light = LightTextEncoder.load(directory)
    ours = light.tokenizer(list(PROBE_TEXTS))
    theirs = encoder.tokenizer(list(PROBE_TEXTS)).numpy()
    if not isinstance(light.tokenizer, ClipBpeTokenizer) or not np.array_equal(ours, theirs):
        return "tokens differ from open_clip's"
    reference = encoder.encode_texts(list(PROBE_TEXTS))
    cosine = float(np.min(np.sum(reference * light.encode_tokens(ours), axis=1)))
    if not cosine >= MIN_COSINE:
        return f"embeddings differ from the model's (min cosine {cosine:.6f})"
    return None
