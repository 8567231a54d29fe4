"""What a local model folder holds, how open_clip must be told to load it offline, and which extra a model needs.

open_clip's ``local-dir:`` layout is the anchor: ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors``. For a
model with a Hugging Face tokenizer open_clip already reads the tokenizer
files from that folder, but a Hugging Face *text tower* is still built from the
hub id in ``text_cfg.hf_model_name`` (``AutoConfig.from_pretrained("xlm-roberta-base")``),
which needs the network or the hub cache, although the weights then come from
the folder's checkpoint. A folder written by :mod:`retrieval.model_save` (or by
``mmsearch train``) therefore also holds the tower's ``config.json``, and
:func:`local_model_kwargs` points ``hf_model_name`` at the folder, so nothing is
fetched, with or without ``HF_HUB_OFFLINE``.

Models with a Hugging Face tower or tokenizer need ``transformers`` (and
``tokenizers``; ``sentencepiece`` where only a SentencePiece model is
published): :func:`require_text_extra` and :func:`explain_missing_module` say
so in one line naming the extra. Torch-free, so the encoder checks before it
loads anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, ModelLoadError
from .model_spec import LOCAL_CONFIG_NAME, read_local_config

HF_CONFIG_NAME = "config.json"  # the text tower's transformers config, beside the weights
META_KEY = "mmsearch"  # the block of open_clip_config.json that model_save writes (source, fingerprint, files)
EXTRA_INSTALL = "pip install 'mmsearch[multilingual]'"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt")


def hf_text_parts(model_cfg: dict[str, Any]) -> tuple[bool, bool]:
    """(has a Hugging Face text tower, has a Hugging Face tokenizer) for an open_clip model config."""
    text = model_cfg.get("text_cfg") or {}
    if not isinstance(text, dict):
        return False, False
    return bool(text.get("hf_model_name")), bool(text.get("hf_tokenizer_name"))


def require_text_extra(model_cfg: dict[str, Any], spec: str) -> None:
    """Raise ``MissingDependencyError`` (one line, naming the extra) when the model needs what is not installed."""
    tower, tokenizer = hf_text_parts(model_cfg)
    if not (tower or tokenizer):
        return
    missing = [name for name in ("transformers", "tokenizers") if not _importable(name)]
    if missing:
        what = "text tower and tokenizer" if tower else "tokenizer"
        raise MissingDependencyError(
            f"model {spec!r} has a Hugging Face {what}, which needs {' and '.join(missing)} "
            f"(not installed): {EXTRA_INSTALL}"
        )


def _importable(name: str) -> bool:
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None  # None: blocked (tests stand in for an uninstalled package so)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def explain_missing_module(exc: BaseException, spec: str) -> MissingDependencyError | None:
    """The one-line extra hint for a load that failed for want of a package (e.g. sentencepiece), else None."""
    text = f"{exc}"
    if isinstance(exc, ImportError):
        names = [exc.name or ""] + [n for n in ("sentencepiece", "protobuf", "transformers", "tokenizers") if n in text]
    elif "pip install" in text:  # open_clip: "Please `pip install transformers` to use pre-trained HuggingFace models"
        names = [n for n in ("transformers", "sentencepiece", "protobuf", "tokenizers") if n in text]
    else:
        return None
    name = next((n.split(".")[0] for n in names if n), None)
    if name is None:
        return None
    return MissingDependencyError(f"model {spec!r} needs {name} to read its tokenizer or text tower "
                                  f"(not installed): {EXTRA_INSTALL}")


def _config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole ``open_clip_config.json`` of a folder (its ``model_cfg`` checked by ``read_local_config``)."""
    file = Path(path) / LOCAL_CONFIG_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def local_model_kwargs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Extra keyword arguments for ``open_clip.create_model_and_transforms("local-dir:PATH", ...)``.

    When the folder holds its Hugging Face text tower's ``config.json``, the
    text config is passed with ``hf_model_name`` pointing at the folder (and no
    base weights to download: the checkpoint holds them), so nothing is
    fetched. Other folders need nothing. Raises ``ModelLoadError`` for a folder
    without weights.
    """
    folder = Path(path).resolve()
    text = dict(read_local_config(folder).get("text_cfg") or {})
    if not text.get("hf_model_name") or not (folder / HF_CONFIG_NAME).is_file():
        return {}
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ModelLoadError(f"model folder {str(folder)!r} has no weights file (open_clip_model.safetensors)")
    text.update(hf_model_name=str(folder), hf_model_pretrained=False)
    return {"text_cfg": text}


def fingerprint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model config an encoder loaded from this folder hashes into its fingerprint.

    The saved ``model_cfg``, except for folders saved from an ``hf-hub:`` spec,
    whose fingerprint config was ``{"hf-hub": repo}``: kept in the ``mmsearch``
    block so that the folder's fingerprint equals the spec's (an index built
    with the spec accepts the folder).
    """
    meta = _config_file(path).get(META_KEY) or {}
    saved = meta.get("fingerprint_config") if isinstance(meta, dict) else None
    return dict(saved) if isinstance(saved, dict) and saved else read_local_config(Path(path))


def folder_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``mmsearch`` block of a saved folder (source spec, fingerprint, files), or {} for other folders."""
    meta = _config_file(path).get(META_KEY)
    return dict(meta) if isinstance(meta, dict) else {}


__all__ = [
    "EXTRA_INSTALL", "HF_CONFIG_NAME", "META_KEY", "explain_missing_module", "fingerprint_config", "folder_info",
    "hf_text_parts", "local_model_kwargs", "require_text_extra",
]
