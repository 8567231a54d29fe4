"""Writing a model folder that loads with no network: ``mmsearch models save SPEC DIR``, and checkpoints.

The folder is open_clip's ``local-dir:`` layout plus what a Hugging Face text
tower needs offline (see :mod:`retrieval.model_folder`)::

    open_clip_config.json         model_cfg unchanged (so the fingerprint, and every index built
                                  with the spec, still match), preprocess_cfg, and an "mmsearch"
                                  block: source spec, fingerprint, file sizes
    open_clip_model.safetensors   every weight, the text tower's included
    config.json                   the text tower's transformers config (HF towers only)
    tokenizer.json, tokenizer_config.json, ...  the tokenizer as transformers saves it (HF tokenizers only)

:func:`write_model_files` writes that layout (``mmsearch train``'s checkpoints
use it too); :func:`save_model_folder` loads a spec (where the download
happens), writes it aside, loads it back from disk and swaps it into place
only when it is the same model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError
from .model_folder import HF_CONFIG_NAME, META_KEY, hf_text_parts
from .model_spec import LOCAL_CONFIG_NAME, ModelSpec, parse_model_spec, read_local_config

if TYPE_CHECKING:
    import torch

    from .encoder import Encoder

WEIGHTS_NAME = "open_clip_model.safetensors"
FOLDER_FORMAT = 1


def hub_config(model: "torch.nn.Module", model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``open_clip_config.json`` body, built as open_clip's ``save_config_for_hf`` builds it."""
    visual = model.visual  # type: ignore[attr-defined]
    preprocess_cfg: dict[str, Any] = {"mean": list(visual.image_mean), "std": list(visual.image_std)}
    other = getattr(visual, "preprocess_cfg", {}) or {}
    for key in ("interpolation", "resize_mode"):
        if key in other:
            preprocess_cfg[key] = other[key]
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def atomic_write_bytes(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``: a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_model_files(model: "torch.nn.Module", model_cfg: dict[str, Any], out_dir: str | Path,
                      tokenizer: Any | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` into ``out_dir`` in open_clip's hub layout, with what its HF text side needs offline.

    Weights first, the config last (each atomically): a crash between the two
    leaves the previous config over weights of the same architecture. HF
    tokenizers (``save_pretrained``) and the HF text tower's ``config.json``
    are written beside them, so the folder loads with no network. ``extra``
    becomes the config's ``mmsearch`` block.
    """
    import safetensors.torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage: copy each tensor (cheap next to the write).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_NAME, lambda tmp: safetensors.torch.save_file(tensors, str(tmp)))
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
    hf_config = getattr(getattr(model, "text", None), "config", None)
    if hf_text_parts(model_cfg)[0] and hasattr(hf_config, "to_json_string"):
        atomic_write_text(out / HF_CONFIG_NAME, hf_config.to_json_string())  # type: ignore[union-attr]
    config = hub_config(model, model_cfg)
    if extra:
        config[META_KEY] = extra
    atomic_write_text(out / LOCAL_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return out


def save_model_folder(
    encoder_or_spec: "Encoder | ModelSpec | str", out_dir: str | os.PathLike[str], *, overwrite: bool = False,
    verify: bool = True, device: str = "cpu",
) -> Path:
    """Write everything a model needs into ``out_dir``, so ``--model out_dir`` loads it with no network.

    ``encoder_or_spec`` is a loaded fp32 encoder or a spec (loaded here, so this
    is where a download happens). The folder is built aside and renamed into
    place; with ``verify`` it is first loaded back from disk (every hub id
    pointed at the folder) and must give the same fingerprint. Raises
    ``ModelLoadError`` (folder exists without ``overwrite``, lowered encoder,
    verification failed) or ``MissingDependencyError``.
    """
    from .encoder import Encoder, load_encoder

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ModelLoadError(f"{str(out)!r} already exists: choose a new folder (or overwrite it)")
    if isinstance(encoder_or_spec, Encoder):
        encoder = encoder_or_spec
    else:
        spec = encoder_or_spec if isinstance(encoder_or_spec, ModelSpec) else parse_model_spec(encoder_or_spec)
        encoder = load_encoder(spec, device=device, precision="fp32")
    if encoder.precision != "fp32":
        raise ModelLoadError(f"save a model from an fp32 load, not {encoder.precision}: its weights were lowered")
    model_cfg, fp_config = _configs_of(encoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = encoder.tokenizer if hasattr(encoder.tokenizer, "save_pretrained") else None
        meta: dict[str, Any] = {"format": FOLDER_FORMAT, "source": encoder.spec, "fingerprint": encoder.fingerprint,
                                "dim": encoder.dim}
        if fp_config != model_cfg:
            meta["fingerprint_config"] = fp_config
        write_model_files(encoder.model, model_cfg, tmp, tokenizer, meta)
        meta["hf_text_config"] = HF_CONFIG_NAME if (tmp / HF_CONFIG_NAME).is_file() else None
        meta["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())
                         if p.is_file() and p.name != LOCAL_CONFIG_NAME}
        config = json.loads((tmp / LOCAL_CONFIG_NAME).read_text(encoding="utf-8"))
        config[META_KEY] = meta
        atomic_write_text(tmp / LOCAL_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        if verify:
            reloaded = load_encoder(str(tmp), device=device, precision="fp32")
            if reloaded.fingerprint != encoder.fingerprint:
                raise ModelLoadError(
                    f"the saved folder loads as a different model (fingerprint {reloaded.fingerprint}, "
                    f"not {encoder.fingerprint}); nothing was written to {str(out)!r}"
                )
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _configs_of(encoder: "Encoder") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the model_cfg to save, the config the encoder's fingerprint hashed)."""
    fp_config = dict(encoder.model_config)
    source = Path(encoder.spec)
    if source.is_dir() and (source / LOCAL_CONFIG_NAME).is_file():  # a folder: its own config, no download
        return read_local_config(source), fp_config
    if "hf-hub" in fp_config and len(fp_config) == 1:
        from open_clip.pretrained import download_pretrained_from_hf

        repo = str(fp_config["hf-hub"])
        try:  # already cached by the load that made the encoder
            hub = json.loads(Path(download_pretrained_from_hf(repo, filename=LOCAL_CONFIG_NAME)).read_text())
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types
            raise ModelLoadError(f"cannot read {LOCAL_CONFIG_NAME} of hf-hub:{repo}: {exc}") from exc
        return dict(hub["model_cfg"]), fp_config
    if not fp_config.get("text_cfg"):
        raise ModelLoadError(f"model {encoder.spec!r} has no open_clip model config to save")
    return fp_config, fp_config


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, replacing an existing ``out`` as a whole."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["WEIGHTS_NAME", "atomic_write_text", "hub_config", "save_model_folder", "write_model_files"]
