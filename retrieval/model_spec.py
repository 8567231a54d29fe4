"""Parsing model specs (no torch here, so the CLI can validate them cheaply).

A spec is one of:
- ``ARCH:PRETRAINED``   an open_clip built-in architecture with a pretrained tag;
- ``ARCH``              an architecture with deterministic random weights (tests, training from scratch);
- ``hf-hub:ORG/REPO``   a model published on the Hugging Face hub in open_clip's layout;
- a local directory     ``open_clip_config.json`` + weights (what ``mmsearch train`` writes),
                        optionally written ``local-dir:PATH``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ModelLoadError

SpecKind = Literal["builtin", "hf-hub", "local-dir"]
LOCAL_CONFIG_NAME = "open_clip_config.json"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; ``canonical`` is what an index manifest records."""

    kind: SpecKind
    arch: str | None = None
    pretrained: str | None = None
    path: Path | None = None
    repo: str | None = None

    @property
    def canonical(self) -> str:
        if self.kind == "local-dir":
            return str(self.path)
        if self.kind == "hf-hub":
            return f"hf-hub:{self.repo}"
        return f"{self.arch}:{self.pretrained}" if self.pretrained else str(self.arch)

    @property
    def open_clip_name(self) -> str:
        """The name open_clip's factory understands."""
        if self.kind == "local-dir":
            return f"local-dir:{self.path}"
        if self.kind == "hf-hub":
            return f"hf-hub:{self.repo}"
        return str(self.arch)


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a user-given model spec; raise ``ModelLoadError`` for malformed ones."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelLoadError("empty model spec: give ARCH:PRETRAINED, hf-hub:ORG/REPO or a local model directory")
    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:"):].strip("/")
        if repo.count("/") != 1:
            raise ModelLoadError(f"bad model spec {spec!r}: expected hf-hub:ORG/REPO")
        return ModelSpec(kind="hf-hub", repo=repo)
    local = spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec
    looks_like_path = spec.startswith("local-dir:") or os.sep in local or local.startswith(".") or Path(local).is_dir()
    if looks_like_path:
        path = Path(local).expanduser().resolve()
        if not path.is_dir():
            raise ModelLoadError(f"model directory {local!r} does not exist")
        if not (path / LOCAL_CONFIG_NAME).is_file():
            raise ModelLoadError(
                f"model directory {str(path)!r} has no {LOCAL_CONFIG_NAME}: "
                "it must be in open_clip's hub layout (as written by 'mmsearch train')"
            )
        return ModelSpec(kind="local-dir", path=path)
    arch, _, pretrained = spec.partition(":")
    if not arch:
        raise ModelLoadError(f"bad model spec {spec!r}: expected ARCH:PRETRAINED")
    return ModelSpec(kind="builtin", arch=arch, pretrained=pretrained or None)


def read_local_config(path: Path) -> dict:
    """The open_clip model config of a local model folder (``model_cfg`` of its config file), checked.

    Raises ``ModelLoadError`` naming what is wrong: unreadable, not JSON, or
    not an open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``).
    """
    import json

    file = Path(path) / LOCAL_CONFIG_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    cfg = data.get("model_cfg", data) if isinstance(data, dict) else data
    problem = None
    if not isinstance(cfg, dict):
        problem = f"its model config is {type(cfg).__name__}, not an object"
    elif not (isinstance(cfg.get("embed_dim"), int) and not isinstance(cfg.get("embed_dim"), bool)
              and cfg["embed_dim"] > 0):
        problem = f"embed_dim is {cfg.get('embed_dim')!r}, not a positive whole number"
    elif not isinstance(cfg.get("vision_cfg"), dict) or not isinstance(cfg.get("text_cfg"), dict):
        problem = "it has no vision_cfg and text_cfg objects"
    if problem:
        raise ModelLoadError(
            f"{file} is not an open_clip model config ({problem}); a model folder holds {LOCAL_CONFIG_NAME} "
            "and weights as 'mmsearch train' writes them"
        )
    return dict(cfg)
