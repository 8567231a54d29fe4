"""The dual encoder: a model spec becomes an open_clip model, its preprocessing and tokenizer.

Only this module (and ``retrieval.train``) imports torch and open_clip. Every
vector leaving it is float32 and L2-normalised, so no caller can forget.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image

from .errors import ModelLoadError
from .model_spec import LOCAL_CONFIG_NAME, ModelSpec, parse_model_spec

# Our own small architectures (tests, the offline demo) join open_clip's registry.
_OWN_CONFIGS = Path(__file__).with_name("model_configs")
open_clip.add_model_config(_OWN_CONFIGS)

# Random-weight models are seeded so that the same spec always gives the same encoder.
RANDOM_INIT_SEED = 0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but no CUDA GPU is available")
    return dev


class Encoder:
    """Embeds images and texts into one space.

    Construct with :func:`load_encoder`; the constructor takes ready objects so
    tests and the trainer can wrap a model they already hold.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        spec: str,
        model_config: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.model_config = model_config or {}
        self.device = torch.device(device)
        self._fingerprint: str | None = None
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["probe"]).to(self.device))
        self.dim = int(probe.shape[-1])

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature): multiplies cosines into logits for zero-shot softmax."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0

    @property
    def fingerprint(self) -> str:
        """A short hash of the architecture and the weights.

        An index records it so that querying with different weights under the
        same name is caught. Hashing a strided sample of every tensor keeps this
        to milliseconds even for large models while still changing with any
        retraining.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.model_config, sort_keys=True).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                flat = tensor.detach().reshape(-1)
                step = max(1, flat.numel() // 256)
                sample = flat[::step][:256].to(torch.float32).cpu().numpy()
                h.update(name.encode())
                h.update(str(tuple(tensor.shape)).encode())
                h.update(np.round(sample, 6).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # -- images -----------------------------------------------------------------

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize/crop/normalise PIL images into one pixel batch."""
        return torch.stack([self.preprocess(img) for img in images])

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed pixel batch of shape (n, 3, H, W)."""
        with torch.inference_mode():
            feats = self.model.encode_image(pixels.to(self.device), normalize=True)
        return _to_unit_float32(feats)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images; returns (n, dim) float32, rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.preprocess_images(images))

    # -- texts ------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns (n, dim) float32, rows of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_text(tokens, normalize=True)
        return _to_unit_float32(feats)


def _to_unit_float32(feats: torch.Tensor) -> np.ndarray:
    arr = feats.detach().float().cpu().numpy().astype(np.float32, copy=False)
    # Re-normalise in float32: a low-precision model's output may be off by ~1e-3.
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def load_encoder(spec: str | ModelSpec, device: str = "cpu") -> Encoder:
    """Load the encoder named by a model spec (see :mod:`retrieval.model_spec`).

    Raises ``ModelLoadError`` with a message that says what to do, e.g. when
    weights cannot be downloaded and are not cached.
    """
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    dev = resolve_device(device)
    model_config = _model_config(parsed)
    _fail_fast_if_unreachable(parsed)
    try:
        if parsed.kind == "builtin" and parsed.pretrained is None:
            # No weights asked for: a seeded random init, identical on every load.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(parsed.arch, device=dev)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                parsed.open_clip_name, pretrained=parsed.pretrained, device=dev
            )
        tokenizer = open_clip.get_tokenizer(parsed.open_clip_name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises many types; each becomes one actionable message
        raise _explain_load_failure(parsed, exc) from exc
    return Encoder(model, preprocess, tokenizer, spec=parsed.canonical, model_config=model_config, device=dev)


def _model_config(parsed: ModelSpec) -> dict[str, Any]:
    if parsed.kind == "builtin":
        if parsed.arch not in open_clip.list_models():
            raise ModelLoadError(
                f"unknown model architecture {parsed.arch!r}; run 'mmsearch models' to list them"
            )
        if parsed.pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(parsed.arch)
            if parsed.pretrained not in tags and not Path(parsed.pretrained).is_file():
                known = ", ".join(tags) or "none"
                raise ModelLoadError(
                    f"model {parsed.arch!r} has no pretrained weights {parsed.pretrained!r} (known: {known})"
                )
        return dict(open_clip.get_model_config(parsed.arch) or {})
    if parsed.kind == "local-dir":
        assert parsed.path is not None
        try:
            cfg = json.loads((parsed.path / LOCAL_CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {parsed.path / LOCAL_CONFIG_NAME}: {exc}") from exc
        return dict(cfg.get("model_cfg", cfg))
    return {"hf-hub": parsed.repo}


def _hub_files(parsed: ModelSpec) -> tuple[str, list[str]] | None:
    """(repo, candidate files) that a download of this spec would fetch, when known."""
    if parsed.kind == "hf-hub" and parsed.repo:
        return parsed.repo, [LOCAL_CONFIG_NAME]
    if parsed.kind == "builtin" and parsed.pretrained:
        cfg = open_clip.get_pretrained_cfg(parsed.arch, parsed.pretrained) or {}
        hub = (cfg.get("hf_hub") or "").strip("/")
        if hub:
            parts = hub.split("/")
            repo = "/".join(parts[:2])
            named = ["/".join(parts[2:])] if len(parts) > 2 else []
            return repo, named + ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return None


def _fail_fast_if_unreachable(parsed: ModelSpec) -> None:
    """Without this, huggingface_hub retries for ~45 s before saying it has no network."""
    files = _hub_files(parsed)
    if files is None:
        return
    from huggingface_hub import try_to_load_from_cache

    repo, names = files
    for name in names:
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return  # cached: open_clip will find it without the network
        except Exception:  # a malformed repo id etc.: let open_clip report it
            return
    import socket

    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        raise _no_weights_error(parsed) from None


def _no_weights_error(parsed: ModelSpec) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {parsed.canonical!r}: its weights could not be downloaded "
        "(no network?) and are not in the local cache. Run once with network access to cache them, "
        "or pass --model /path/to/dir pointing at a local model directory "
        f"({LOCAL_CONFIG_NAME} + weights, e.g. one written by 'mmsearch train')."
    )


def _explain_load_failure(parsed: ModelSpec, exc: Exception) -> ModelLoadError:
    logging.getLogger(__name__).debug("model load failed", exc_info=exc)
    text = f"{type(exc).__name__}: {exc}"
    network_words = ("connect", "offline", "resolve", "network", "LocalEntryNotFound", "404", "hub", "download")
    if parsed.kind != "local-dir" and any(w.lower() in text.lower() for w in network_words):
        return _no_weights_error(parsed)
    return ModelLoadError(f"could not load model {parsed.canonical!r}: {text.splitlines()[0][:300]}")
