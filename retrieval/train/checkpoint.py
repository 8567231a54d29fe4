"""Checkpoints in open_clip's hub layout, so a trained model loads like a published one.

An output directory looks like::

    models/mine/
      open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}  } the best model by
      open_clip_model.safetensors  the weights                                } validation recall
      metrics.jsonl                one line per epoch
      train_info.json              how it was trained, best epoch, data counts
      last/                        the latest state, for --resume:
        open_clip_config.json, open_clip_model.safetensors, train_state.pt

``load_encoder("models/mine")`` (or open_clip's ``local-dir:models/mine``) loads it.
Every file is written to a temporary name and renamed into place; ``last/`` is built
as a whole in a temporary directory and swapped in, so a crash at any moment leaves
the previous consistent checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ..model_spec import LOCAL_CONFIG_NAME

WEIGHTS_NAME = "open_clip_model.safetensors"
STATE_NAME = "train_state.pt"
LAST_DIR = "last"
METRICS_NAME = "metrics.jsonl"
INFO_NAME = "train_info.json"


def hub_config(model: torch.nn.Module, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``open_clip_config.json`` body, built as open_clip's ``save_config_for_hf`` builds it."""
    visual = model.visual  # type: ignore[attr-defined]
    preprocess_cfg: dict[str, Any] = {"mean": list(visual.image_mean), "std": list(visual.image_std)}
    other = getattr(visual, "preprocess_cfg", {}) or {}
    for key in ("interpolation", "resize_mode"):
        if key in other:
            preprocess_cfg[key] = other[key]
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _state_dict_for_safetensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; copies are cheap at this size.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: torch.nn.Module, model_cfg: dict[str, Any], out_dir: str | Path,
               tokenizer: Any | None = None) -> Path:
    """Write ``model`` into ``out_dir`` in open_clip's hub layout (config + safetensors weights).

    Weights are replaced before the config; within one training run the config never
    changes, so a crash between the two renames still leaves a loadable pair.
    HF tokenizers (models whose text config names one) are saved alongside, as open_clip's
    ``save_for_hf`` does; CLIP-BPE models need no tokenizer files.
    """
    import safetensors.torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _state_dict_for_safetensors(model)
    _atomic_write_bytes(out / WEIGHTS_NAME, lambda tmp: safetensors.torch.save_file(tensors, str(tmp)))
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
    atomic_write_text(out / LOCAL_CONFIG_NAME, json.dumps(hub_config(model, model_cfg), indent=2) + "\n")
    return out


def save_last(model: torch.nn.Module, model_cfg: dict[str, Any], state: dict[str, Any], out_dir: str | Path,
              tokenizer: Any | None = None) -> Path:
    """Write ``out_dir/last`` (model + training state) as one unit: build aside, then swap in."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / LAST_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{LAST_DIR}.", dir=out))
    try:
        save_model(model, model_cfg, tmp, tokenizer)
        torch.save(state, tmp / STATE_NAME)
        old = out / f".{LAST_DIR}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_last(out_dir: str | Path) -> Path | None:
    """The directory holding the latest resumable state, if any (a swap cut short is recovered)."""
    out = Path(out_dir)
    for candidate in (out / LAST_DIR, out / f".{LAST_DIR}.old"):
        if (candidate / STATE_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
            return candidate
    return None


def load_state(last_dir: Path) -> dict[str, Any]:
    try:
        return torch.load(last_dir / STATE_NAME, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: say which one
        raise ModelLoadError(f"cannot read training state {str(last_dir / STATE_NAME)!r}: {exc}") from exc


def is_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a loadable model (config + weights)."""
    out = Path(out_dir)
    return (out / LOCAL_CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()


def append_metrics(out_dir: str | Path, record: dict[str, Any]) -> None:
    with (Path(out_dir) / METRICS_NAME).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
