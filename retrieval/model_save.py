"""One folder per model, loadable with no network: ``mmsearch models save SPEC DIR``, then ``--model DIR``.

open_clip's ``local-dir:`` layout is the anchor: ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors``. For a
model with a Hugging Face tokenizer open_clip already reads the tokenizer
files from that folder, but a Hugging Face *text tower* is still built from the
hub id in ``text_cfg.hf_model_name`` (``AutoConfig.from_pretrained("xlm-roberta-base")``),
which needs the network or the hub cache, even though the weights then come
from the folder's checkpoint. So a saved folder holds:

``open_clip_config.json``        ``model_cfg`` unchanged (so the fingerprint, and every index
                                 built with the spec, still match), ``preprocess_cfg``, and an
                                 ``mmsearch`` block: source spec, fingerprint, file sizes
``open_clip_model.safetensors``  every weight, the text tower's included
``config.json``                  the text tower's ``transformers`` config (HF towers only)
``tokenizer.json``, ``tokenizer_config.json``  the tokenizer as transformers saves it (HF tokenizers only)

and loading it passes :func:`local_model_kwargs` to open_clip, which points
``hf_model_name`` at the folder (``AutoConfig`` reads ``config.json`` there;
``AutoModel.from_config`` builds the tower; the checkpoint fills it). Nothing
then touches the network, with or without ``HF_HUB_OFFLINE``.

Models with a Hugging Face tower or tokenizer need ``transformers`` (and
``tokenizers``; ``sentencepiece`` where only a SentencePiece model is
published): :func:`require_text_extra` says so in one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MissingDependencyError, ModelLoadError
from .model_spec import LOCAL_CONFIG_NAME, ModelSpec, parse_model_spec

if TYPE_CHECKING:
    from .encoder import Encoder

HF_CONFIG_NAME = "config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
META_KEY = "mmsearch"
FOLDER_FORMAT = 1
EXTRA_INSTALL = "pip install 'mmsearch[multilingual]'"


def hf_text_parts(model_cfg: dict[str, Any]) -> tuple[bool, bool]:
    """(has a Hugging Face text tower, has a Hugging Face tokenizer) for an open_clip model config."""
    text = model_cfg.get("text_cfg") or {}
    return bool(text.get("hf_model_name")), bool(text.get("hf_tokenizer_name"))


def require_text_extra(model_cfg: dict[str, Any], spec: str) -> None:
    """Raise ``MissingDependencyError`` (one line, naming the extra) when the model needs what is not installed."""
    tower, tokenizer = hf_text_parts(model_cfg)
    if not (tower or tokenizer):
        return
    missing = [name for name in ("transformers", "tokenizers") if importlib.util.find_spec(name) is None]
    if missing:
        what = "text tower and tokenizer" if tower else "tokenizer"
        raise MissingDependencyError(
            f"model {spec!r} has a Hugging Face {what}, which needs {' and '.join(missing)} "
            f"(not installed): {EXTRA_INSTALL}"
        )


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


def read_folder_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``open_clip_config.json``; raises ``ModelLoadError``."""
    config_path = Path(path) / LOCAL_CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ModelLoadError(f"{config_path} has no model_cfg: it is not an open_clip model folder")
    return config


def local_model_kwargs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Extra keyword arguments for ``open_clip.create_model_and_transforms("local-dir:PATH", ...)``.

    When the folder holds its text tower's ``config.json``, the text config is
    passed with ``hf_model_name`` pointing at the folder (and no base weights
    to download: the checkpoint holds them), so nothing is fetched. Other
    folders need nothing.
    """
    folder = Path(path).resolve()
    config = read_folder_config(folder)
    text = dict(config["model_cfg"].get("text_cfg") or {})
    if not text.get("hf_model_name") or not (folder / HF_CONFIG_NAME).is_file():
        return {}
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) and not any(folder.glob("*.pth")):
        raise ModelLoadError(f"model folder {str(folder)!r} has no weights file ({WEIGHTS_NAME})")
    text.update(hf_model_name=str(folder), hf_model_pretrained=False)
    return {"text_cfg": text}


def fingerprint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model config an encoder loaded from this folder hashes into its fingerprint.

    The saved ``model_cfg``, except for folders saved from an ``hf-hub:`` spec,
    whose fingerprint config was ``{"hf-hub": repo}``: kept in the ``mmsearch``
    block so the folder's fingerprint equals the spec's.
    """
    config = read_folder_config(path)
    meta = config.get(META_KEY) or {}
    return dict(meta.get("fingerprint_config") or config["model_cfg"])


def folder_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``mmsearch`` block of a saved folder (source spec, fingerprint, files), or {} for other folders."""
    return dict(read_folder_config(path).get(META_KEY) or {})


def save_model_folder(
    encoder_or_spec: "Encoder | ModelSpec | str", out_dir: str | os.PathLike[str], *, overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Write everything a model needs into ``out_dir``, so ``--model out_dir`` loads it with no network.

    ``encoder_or_spec`` is a loaded fp32 encoder or a spec (loaded here, so this
    is where the download happens). The folder is built aside and renamed into
    place; with ``verify`` it is first loaded back from disk, with every hub id
    pointed at the folder, and must give the same fingerprint. Raises
    ``ModelLoadError`` (folder exists without ``overwrite``, lowered encoder,
    verification failed) or ``MissingDependencyError``.
    """
    from .encoder import Encoder, load_encoder
    from .train.checkpoint import save_model

    if isinstance(encoder_or_spec, Encoder):
        encoder = encoder_or_spec
    else:
        spec = encoder_or_spec if isinstance(encoder_or_spec, ModelSpec) else parse_model_spec(encoder_or_spec)
        encoder = load_model_folder(spec.path) if spec.kind == "local-dir" else load_encoder(spec)  # type: ignore[arg-type]
    if encoder.precision != "fp32":
        raise ModelLoadError(f"save a model from an fp32 load, not {encoder.precision}: its weights were lowered")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ModelLoadError(f"{str(out)!r} already exists: choose a new folder (or overwrite it)")
    model_cfg, fp_config = _configs_of(encoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = encoder.tokenizer if hasattr(encoder.tokenizer, "save_pretrained") else None
        save_model(encoder.model, model_cfg, tmp, tokenizer)
        text = getattr(encoder.model, "text", None)
        hf_config = getattr(text, "config", None)
        if hf_text_parts(model_cfg)[0] and hf_config is not None:
            hf_config.save_pretrained(str(tmp))
        config = read_folder_config(tmp)
        config[META_KEY] = {
            "format": FOLDER_FORMAT, "source": encoder.spec, "fingerprint": encoder.fingerprint, "dim": encoder.dim,
            "hf_text_config": HF_CONFIG_NAME if (tmp / HF_CONFIG_NAME).is_file() else None,
            "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())
                      if p.is_file() and p.name != LOCAL_CONFIG_NAME},
        }
        if fp_config != model_cfg:
            config[META_KEY]["fingerprint_config"] = fp_config
        (tmp / LOCAL_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if verify:
            reloaded = load_model_folder(tmp)
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
        return dict(read_folder_config(source)["model_cfg"]), fp_config
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
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def load_model_folder(path: str | os.PathLike[str], device: str = "cpu") -> "Encoder":
    """Load a model folder the way ``load_encoder`` should (see the report): open_clip plus :func:`local_model_kwargs`.

    Used to verify a saved folder; once ``retrieval.encoder.load_encoder`` passes
    :func:`local_model_kwargs` for local folders, ``load_encoder(path)`` is the same.
    """
    import open_clip

    from .encoder import Encoder

    spec = parse_model_spec(f"local-dir:{Path(path).resolve()}")
    config = read_folder_config(spec.path)  # type: ignore[arg-type]
    require_text_extra(config["model_cfg"], spec.canonical)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.open_clip_name, device=device, **local_model_kwargs(spec.path)  # type: ignore[arg-type]
        )
        tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip and transformers raise many types; each becomes one message
        missing = explain_missing_module(exc, spec.canonical)
        if missing is not None:
            raise missing from exc
        raise ModelLoadError(f"could not load model folder {spec.canonical!r}: {str(exc).splitlines()[0][:300]}") \
            from exc
    return Encoder(model, preprocess, tokenizer, spec=spec.canonical,
                   model_config=fingerprint_config(spec.path), device=device)  # type: ignore[arg-type]
