"""Building the model to train: from scratch (an architecture) or from a model spec (fine-tuning)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import torch
from PIL import Image

from ..encoder import load_encoder
from ..errors import MissingDependencyError, ModelLoadError
from ..model_folder import explain_missing_module, local_model_kwargs, require_text_extra
from ..model_spec import LOCAL_CONFIG_NAME, parse_model_spec, read_local_config

DEFAULT_ARCH = "mmsearch-small"
SIGLIP_INIT_SCALE = math.log(10.0)  # SigLIP's recommended initial temperature and bias
SIGLIP_INIT_BIAS = -10.0


@dataclass
class TrainableModel:
    """A model and everything needed to train it and to save it in hub layout."""

    model: torch.nn.Module
    model_cfg: dict[str, Any]
    preprocess_train: Callable[[Image.Image], torch.Tensor]
    preprocess_val: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    source: str  # what it started from: an architecture, a spec, or a resumed directory


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip warns on the root logger that a from-scratch model has no pretrained weights: intended here."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _train_transform(model: torch.nn.Module, augment: bool) -> Callable[[Image.Image], torch.Tensor]:
    visual = model.visual  # type: ignore[attr-defined]
    pp = dict(getattr(visual, "preprocess_cfg", {}) or {})
    return open_clip.image_transform(
        visual.image_size,
        is_train=augment,
        mean=visual.image_mean,
        std=visual.image_std,
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
        # Mild crops only: flips would swap "left" and "right" in captions.
        aug_cfg={"scale": (0.85, 1.0)} if augment else None,
    )


def _with_siglip_params(model: torch.nn.Module, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """SigLIP needs a learnable logit bias; add one to a model that lacks it (and to its config)."""
    if getattr(model, "logit_bias", None) is None:
        model.logit_bias = torch.nn.Parameter(torch.ones_like(model.logit_scale.data) * SIGLIP_INIT_BIAS)
        model_cfg = dict(model_cfg, init_logit_bias=SIGLIP_INIT_BIAS)
    return model_cfg


def create_from_scratch(arch: str, loss: str = "clip", seed: int = 0, augment: bool = True) -> TrainableModel:
    """A randomly initialised (seeded) open_clip model of architecture ``arch``."""
    if arch not in open_clip.list_models():
        raise ModelLoadError(f"unknown model architecture {arch!r}; run 'mmsearch models' to list them")
    model_cfg = copy.deepcopy(open_clip.get_model_config(arch))
    extra: dict[str, Any] = {}
    if loss == "siglip" and model_cfg.get("init_logit_bias") is None:
        extra = {"init_logit_scale": SIGLIP_INIT_SCALE, "init_logit_bias": SIGLIP_INIT_BIAS}
        model_cfg.update(extra)
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)
        model, _, preprocess_val = open_clip.create_model_and_transforms(arch, **extra)
    return TrainableModel(
        model=model, model_cfg=model_cfg, preprocess_train=_train_transform(model, augment),
        preprocess_val=preprocess_val, tokenizer=open_clip.get_tokenizer(arch), source=arch,
    )


def create_from_spec(spec: str, loss: str = "clip", augment: bool = True) -> TrainableModel:
    """A model loaded from any spec ``load_encoder`` accepts, ready to fine-tune."""
    encoder = load_encoder(spec)  # the same friendly errors as indexing (no network, unknown tag, ...)
    parsed = parse_model_spec(spec)
    if parsed.kind == "hf-hub":
        try:
            model_cfg = dict(open_clip.factory._get_hf_config(parsed.repo)["model_cfg"])
        except Exception as exc:  # the weights loaded, so the config is cached; anything else is odd
            raise ModelLoadError(f"cannot read the model config of {spec!r}: {exc}") from exc
    elif parsed.kind == "local-dir" and parsed.path is not None:
        # The folder's own model config: a folder saved from hf-hub:ORG/REPO fingerprints as {"hf-hub": ...}.
        model_cfg = read_local_config(parsed.path)
    else:
        model_cfg = copy.deepcopy(encoder.model_config)
    model = encoder.model.train()
    if loss == "siglip":
        model_cfg = _with_siglip_params(model, model_cfg)
    return TrainableModel(
        model=model, model_cfg=model_cfg, preprocess_train=_train_transform(model, augment),
        preprocess_val=encoder.preprocess, tokenizer=encoder.tokenizer, source=parsed.canonical,
    )


def create_from_checkpoint(directory: Path, augment: bool = True) -> TrainableModel:
    """The model saved in a checkpoint directory (for --resume)."""
    try:
        model_cfg = json.loads((directory / LOCAL_CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"]
        require_text_extra(model_cfg, str(directory))
        name = f"local-dir:{directory}"
        # An HF text tower is rebuilt from the checkpoint's own config.json: resuming needs no network.
        model, _, preprocess_val = open_clip.create_model_and_transforms(name, **local_model_kwargs(directory))
        tokenizer = open_clip.get_tokenizer(name)
    except (ModelLoadError, MissingDependencyError):
        raise
    except Exception as exc:
        missing = explain_missing_module(exc, str(directory))
        if missing is not None:
            raise missing from exc
        raise ModelLoadError(f"cannot load the checkpoint in {str(directory)!r}: {exc}") from exc
    return TrainableModel(
        model=model, model_cfg=model_cfg, preprocess_train=_train_transform(model, augment),
        preprocess_val=preprocess_val, tokenizer=tokenizer, source=str(directory),
    )


def lock_towers(model: torch.nn.Module, lock_image: bool, lock_text: bool) -> None:
    """LiT-style: freeze one tower (its weights get no gradient and no update)."""
    if lock_image and lock_text:
        raise ModelLoadError("--lock-image and --lock-text together leave nothing to train")
    if lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)  # type: ignore[attr-defined]
    if lock_text:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)  # type: ignore[attr-defined]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as open_clip_train makes them: no decay on gains, biases and the temperature."""

    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]
