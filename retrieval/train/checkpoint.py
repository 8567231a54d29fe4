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
from ..model_save import WEIGHTS_NAME, atomic_write_text, hub_config, write_model_files  # noqa: F401 - re-exported
from ..model_spec import LOCAL_CONFIG_NAME

STATE_NAME = "train_state.pt"
LAST_DIR = "last"
METRICS_NAME = "metrics.jsonl"
INFO_NAME = "train_info.json"


def save_model(model: torch.nn.Module, model_cfg: dict[str, Any], out_dir: str | Path,
               tokenizer: Any | None = None) -> Path:
    """Write ``model`` into ``out_dir`` in open_clip's hub layout (config + safetensors weights).

    Weights are replaced before the config; within one training run the config never
    changes, so a crash between the two renames still leaves a loadable pair.
    HF tokenizers (models whose text config names one) are saved alongside, as open_clip's
    ``save_for_hf`` does, and an HF text tower's ``config.json`` too, so the trained model
    loads with no network (:func:`retrieval.model_save.write_model_files`); CLIP-BPE models
    need neither.
    """
    return write_model_files(model, model_cfg, out_dir, tokenizer)


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
