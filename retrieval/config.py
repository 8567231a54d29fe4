"""Configuration values shared across modules (no heavy imports here)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import MMSearchError

INDEX_DIR_ENV = "MMSEARCH_INDEX_DIR"
# "0" turns off the torch-free text path for queries (retrieval.text_light) and its export.
LIGHT_TEXT_ENV = "MMSEARCH_LIGHT_TEXT"
DEFAULT_INDEX_NAME = "default"
DEFAULT_MODEL = "ViT-B-32-256:datacomp_s34b_b86k"
SCHEMA_VERSION = 2

# Index names become directory names: keep them portable and free of path tricks.
_INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
        ".heic", ".heif", ".avif", ".jxl",
    }
)


def resolve_index_root(index_dir: str | os.PathLike[str] | None = None) -> Path:
    """Index root: the explicit argument, else $MMSEARCH_INDEX_DIR, else ./indexes."""
    if index_dir:
        return Path(index_dir).expanduser()
    env = os.environ.get(INDEX_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("indexes")


# Failure reasons that say nothing about the file's content (embed.read_file, urls.reader): a later
# run tries such files again even when their size and mtime are unchanged, unlike undecodable ones.
READ_ERROR_PREFIXES = ("cannot read", "permission denied", "file disappeared", "no vector yet")


def light_text_enabled() -> bool:
    """Whether text queries may use a model's torch-free export (on unless $MMSEARCH_LIGHT_TEXT is 0)."""
    return os.environ.get(LIGHT_TEXT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def validate_index_name(name: str) -> str:
    """Return ``name`` if it is a valid index name, else raise ``MMSearchError``."""
    if not _INDEX_NAME.match(name or ""):
        raise MMSearchError(
            f"invalid index name {name!r}: use letters, digits, '.', '_' or '-' (at most 100 characters)"
        )
    return name


# onnx-*: the image tower under ONNX Runtime (retrieval.image_onnx), exported and verified per model.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "onnx-fp32", "onnx-int8")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_model_options(device: str, precision: str) -> None:
    """Refuse an unknown ``--device`` or ``--precision`` at once, even when no model gets loaded (torch-free)."""
    from .errors import ModelLoadError

    if precision not in (*PRECISIONS, "auto"):
        raise ModelLoadError(f"unknown precision {precision!r}: use auto or one of {', '.join(PRECISIONS)}")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda or mps (cuda:N for one GPU)")
