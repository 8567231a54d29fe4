"""The door's module functions beyond one index: sources, Ray and shards, zero-shot labels, the model catalogue."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import DEFAULT_MODEL, check_model_options
from .errors import (
    SourceError,
)

if TYPE_CHECKING:

    from .encoder import Encoder
    from .engine_ray import RayCfg
    from .merge import MergeResult
    from .shard_embed import EmbedResult


PathLike = str | os.PathLike[str]


def check_sources(paths: Sequence[PathLike] = (), text_files: Sequence[PathLike] = ()) -> None:
    """Raise ``SourceError`` unless every folder/file (or URL) to index is there; cheap, so callers check first."""
    from .urls import is_url

    if not paths and not text_files:
        raise SourceError("nothing to index: give a folder of images and/or --texts FILE")
    for path in [*paths, *text_files]:
        if not is_url(os.fspath(path)) and not os.path.exists(path):
            raise SourceError(f"no such file or directory: {os.fspath(path)}")


# -- the rest of the engine ---------------------------------------------------------


def ray_engine(address: str | None = None, num_workers: int | None = None) -> "RayCfg":
    """Settings for ``add_folder(engine="ray")`` / ``embed_to_shards(engine="ray")``; says at once if Ray is missing."""
    from .engine_ray import RayCfg, require_ray

    require_ray()
    return RayCfg(address=address, num_workers=num_workers)


def embed_to_shards(
    paths: Sequence[PathLike], output: PathLike, *, model: str = DEFAULT_MODEL, **options: Any
) -> "EmbedResult":
    """Embed every image under ``paths`` into Parquet shards in ``output`` (no index); see :mod:`retrieval.shard_embed`."""
    from .shard_embed import embed_to_shards as embed

    return embed(paths, output, model=model, **options)


def merge_shards(name: str, shards: Sequence[PathLike], *, root: PathLike | None = None, **options: Any) -> "MergeResult":
    """Build or update index ``name`` from Parquet embedding shards; see :func:`retrieval.merge.merge_into_index`."""
    from .merge import merge_into_index

    return merge_into_index(name, shards, root=root, **options)


def load_model(spec: str, *, device: str = "cpu", precision: str = "fp32") -> "Encoder":
    """The model a spec names, for callers that embed without an index (the immich stand-in, notebooks)."""
    from .encoder import load_encoder

    check_model_options(device, precision)
    return load_encoder(spec, device=device, precision=precision)


def list_models(*, pretrained: bool = False) -> list[str]:
    """Architectures (or ``ARCH:PRETRAINED`` pairs) that a model spec may name."""
    from .encoder import available_models

    return available_models(pretrained=pretrained)


def multilingual_models(lang: str = "zh") -> list[dict[str, Any]]:
    """The published multilingual models, best first by Crossmodal-3600 recall@1 in ``lang``, and the English default.

    One JSON-ready row each (see :func:`retrieval.multilingual.model_rows`); no torch is imported.
    """
    from .multilingual import model_rows

    return model_rows(lang)


def save_model(spec: str, out_dir: PathLike, *, overwrite: bool = False, device: str = "cpu") -> Path:
    """Write model ``spec`` into one folder that ``--model out_dir`` loads with no network; returns the folder.

    Downloads the model if it is not cached; see :func:`retrieval.model_save.save_model_folder`.
    """
    from .model_save import save_model_folder

    return save_model_folder(spec, out_dir, overwrite=overwrite, device=device)


def parse_labels(raw: str | None = None, labels_file: PathLike | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a file with one label per line."""
    from .zeroshot import parse_labels as parse

    return parse(raw, labels_file)
