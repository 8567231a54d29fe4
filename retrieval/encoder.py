"""The dual encoder: a model spec becomes an open_clip model, its preprocessing and tokenizer.

Only this module (and ``retrieval.train``) imports torch and open_clip. Every
vector leaving it is float32 and L2-normalised, so no caller can forget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
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

# Numerics of the image tower. fp32 is exact; the others trade a little accuracy
# for speed and are offered only because their embeddings keep a mean cosine
# >= 0.99 to fp32 (measured by benchmarks/bench_index.py). "auto" picks one per machine.
PRECISIONS = ("fp32", "bf16", "int8")


def default_precision(device: torch.device | str = "cpu") -> str:
    """What ``precision="auto"`` means here: bf16 on CPUs that multiply bf16 natively, else fp32.

    On this project's reference CPU (AVX-512 BF16) bf16 runs the image tower
    ~2.3x faster with embeddings at cosine >= 0.9999 to fp32; CPUs without
    native bf16 would emulate it and run slower, so they stay exact.
    """
    if torch.device(device).type != "cpu":
        return "fp32"
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return "fp32"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask and any cgroup (container) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the number in use.

    ``threads`` wins when given. Otherwise torch's own default (one per
    physical core) is lowered to :func:`available_cpus`: in a container with a
    CPU quota, more threads than CPUs make every parallel op wait for a
    descheduled thread, which costs far more than one thread less.
    """
    if threads is not None and threads < 1:
        raise ModelLoadError(f"threads must be >= 1, got {threads}")
    wanted = threads if threads is not None else min(torch.get_num_threads(), available_cpus())
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
    return wanted


# Texts encoded together are grouped by length, so short ones don't pay for long ones.
_TEXT_BUCKET = 64


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
        precision: str = "fp32",
        on_fp32_text: "Callable[[Encoder], object] | None" = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ModelLoadError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.model_config = model_config or {}
        self.device = torch.device(device)
        self.precision = precision
        self._fingerprint: str | None = None
        self._split = _SplitPreprocess.of(preprocess)
        if precision != "fp32":
            # The fingerprint names the weights, not how they are multiplied: an index
            # built in fp32 may be queried in bf16. Hash them before they are converted.
            _ = self.fingerprint
            self._image_dtype = _lower_image_tower(self.model, precision, self.device)
        else:
            self._image_dtype = torch.float32
        # Causal text towers can skip the padding after the end-of-text token.
        self._text_tower = _CausalTextTower.of(self.model)
        with torch.inference_mode():
            probe = self._encode_tokens(self.tokenizer(["probe"]).to(self.device))
        self.dim = int(probe.shape[-1])
        if on_fp32_text is not None:
            on_fp32_text(self)  # e.g. export the exact text tower before it is lowered
        self.text_dtype = _lower_text_tower(self.model, precision)

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

    def prepare_image(self, image: Image.Image) -> "np.ndarray | torch.Tensor":
        """The per-image part of :attr:`preprocess`, for worker threads.

        With open_clip's usual transform (PIL resize/crop, then to-tensor and
        normalise) this stops at the cropped uint8 pixels: Pillow releases the
        GIL for all of it, and the float work is done once per batch by
        :meth:`pixels_from_prepared`, with the same result as ``preprocess``.
        Any other transform runs whole here.
        """
        if self._split is None:
            return self.preprocess(image)
        return self._split.to_array(image)

    def pixels_from_prepared(self, prepared: Sequence["np.ndarray | torch.Tensor"]) -> torch.Tensor:
        """Stack :meth:`prepare_image` outputs into the pixel batch ``encode_pixels`` takes."""
        if self._split is None:
            return torch.stack(list(prepared))  # type: ignore[arg-type]
        return self._split.to_pixels(prepared)  # type: ignore[arg-type]

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed pixel batch of shape (n, 3, H, W)."""
        with torch.inference_mode():
            feats = self.model.encode_image(pixels.to(self.device, self._image_dtype), normalize=True)
        return _to_unit_float32(feats)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images; returns (n, dim) float32, rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.pixels_from_prepared([self.prepare_image(img) for img in images]))

    # -- texts ------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns (n, dim) float32, rows of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            if self._text_tower is None or len(texts) <= _TEXT_BUCKET:
                return _to_unit_float32(self._encode_tokens(tokens))
            # Many texts (captions): encode them in buckets of similar length.
            order = torch.argsort(self._text_tower.last_positions(tokens))
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            for start in range(0, len(texts), _TEXT_BUCKET):
                rows = order[start:start + _TEXT_BUCKET]
                out[rows.cpu().numpy()] = _to_unit_float32(self._encode_tokens(tokens[rows]))
            return out

    def encode_tokens_full(self, tokens: torch.Tensor) -> np.ndarray:
        """Embed token ids with open_clip's own full-context ``encode_text`` (the reference path)."""
        with torch.inference_mode():
            return _to_unit_float32(self.model.encode_text(tokens.to(self.device), normalize=True))

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._text_tower is not None:
            return self._text_tower.encode(tokens)
        return self.model.encode_text(tokens, normalize=True)


@dataclass(frozen=True)
class _CausalTextTower:
    """The parts of a causal CLIP text tower, run on the tokens up to end-of-text only.

    With a causal mask, token i attends to tokens 0..i alone, so the features at
    the end-of-text token (the ones pooled) do not depend on the padding after
    it. Running the transformer on ``tokens[:, :n]`` with the mask and positional
    embedding cut to ``n`` gives the same embedding as the full 77-token pass,
    at a fraction of the cost (a 6-word query is ~9 tokens). Towers this does
    not hold for (bidirectional like SigLIP and MobileCLIP, a class token, a
    padding mask, Hugging Face text models) get ``None`` and the full pass.
    """

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    attn_mask: torch.Tensor
    ln_final: torch.nn.Module
    projection: torch.nn.Module | torch.Tensor | None
    pool_type: str
    eos_id: int | None

    @classmethod
    def of(cls, model: torch.nn.Module) -> "_CausalTextTower | None":
        from open_clip.transformer import TextTransformer

        text = getattr(model, "text", None)
        if isinstance(text, TextTransformer):  # CustomTextCLIP
            if text.cls_emb is not None or text.use_pad_mask or text.output_tokens:
                return None
            owner, pool_type, eos_id = text, text.pool_type, getattr(text, "eos_id", None)
            projection = text.text_projection
        elif hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # CLIP
            owner, pool_type, eos_id = model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
            projection = model.text_projection
        else:
            return None
        mask = getattr(owner, "attn_mask", None)
        if mask is None or pool_type not in ("argmax", "eos") or (pool_type == "eos" and eos_id is None):
            return None
        return cls(
            owner.token_embedding, owner.positional_embedding, owner.transformer, mask, owner.ln_final,
            projection, pool_type, eos_id,
        )

    def last_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (end-of-text) token in each row, as open_clip's pooling finds it."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-length text features, identical (to float rounding) to ``encode_text(normalize=True)``."""
        last = self.last_positions(tokens)
        n = int(last.max().item()) + 1
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens[:, :n]).to(cast_dtype)
        x = x + self.positional_embedding[:n].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), last]
        if isinstance(self.projection, torch.nn.Linear):
            x = self.projection(x)
        elif self.projection is not None:
            x = x @ self.projection
        return torch.nn.functional.normalize(x, dim=-1)


class _SplitPreprocess:
    """open_clip's image transform cut in two at ``ToTensor``: PIL steps, then tensor steps."""

    def __init__(self, pil_steps: list[Callable[[Image.Image], Image.Image]], mean: torch.Tensor | None,
                 std: torch.Tensor | None) -> None:
        self.pil_steps = pil_steps
        self.mean = mean
        self.std = std

    @classmethod
    def of(cls, preprocess: Callable[[Image.Image], torch.Tensor]) -> "_SplitPreprocess | None":
        from torchvision import transforms as T

        steps = getattr(preprocess, "transforms", None)
        if not isinstance(preprocess, T.Compose) or not steps:
            return None
        cut = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
        if cut is None:
            return None
        pil_steps, tail = list(steps[:cut]), list(steps[cut + 1:])
        # Only steps known to map PIL images to PIL images may run before the cut.
        pil_kinds = (T.Resize, T.CenterCrop)
        if not all(isinstance(t, pil_kinds) or type(t).__name__ == "MaybeConvertMode" for t in pil_steps):
            return None
        sizing = [t for t in pil_steps if isinstance(t, (T.Resize, T.CenterCrop))]
        if not sizing or not isinstance(sizing[-1], T.CenterCrop) and not _fixed_size_resize(sizing[-1]):
            return None  # a batch needs one pixel size
        if not tail:
            return cls(pil_steps, None, None)
        if len(tail) != 1 or not isinstance(tail[0], T.Normalize) or tail[0].inplace:
            return None
        mean = torch.as_tensor(tail[0].mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(tail[0].std, dtype=torch.float32).view(1, -1, 1, 1)
        return cls(pil_steps, mean, std)

    def to_array(self, image: Image.Image) -> np.ndarray:
        for step in self.pil_steps:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)

    def to_pixels(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        # The same operations as ToTensor + Normalize, in the same order, so the
        # result is bit-identical; only done once for the batch.
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div(255)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x


def _fixed_size_resize(step: Any) -> bool:
    size = getattr(step, "size", None)
    return isinstance(size, (tuple, list)) and len(size) == 2


def _lower_image_tower(model: torch.nn.Module, precision: str, device: torch.device) -> torch.dtype:
    """Convert the image tower in place to ``precision``; returns the dtype its input wants.

    The text tower is lowered separately (:func:`_lower_text_tower`), after a
    caller has had the chance to export its exact weights.
    """
    visual = model.visual
    if precision == "bf16":
        visual.to(torch.bfloat16)
        return torch.bfloat16
    if precision == "int8":
        if device.type != "cpu":
            raise ModelLoadError("precision int8 runs on the CPU only: use --device cpu or another precision")
        import warnings

        with warnings.catch_warnings():
            # torch.ao's eager dynamic quantisation is deprecated in favour of torchao, not removed.
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(visual, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return torch.float32
    return torch.float32


def _lower_text_tower(model: torch.nn.Module, precision: str) -> torch.dtype:
    """With bf16, the text tower runs in bf16 too; returns its dtype.

    A query is ~10 tokens, so the tower's cost is reading its weights (150 MB
    in fp32 for ViT-B-32): bf16 halves that, 1.8x faster per query on the
    reference CPU at cosine >= 0.9999 to fp32. int8 dynamic quantisation would
    leave the attention weights in fp32 and cost more accuracy, so int8 keeps
    an fp32 text tower.
    """
    if precision != "bf16":
        return torch.float32
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP: the whole text tower is one module
        text.to(torch.bfloat16)
        return torch.bfloat16
    if not hasattr(model, "transformer"):
        return torch.float32
    for name in ("transformer", "token_embedding", "ln_final"):
        getattr(model, name).to(torch.bfloat16)
    for name in ("positional_embedding", "text_projection"):
        value = getattr(model, name, None)
        if isinstance(value, torch.nn.Parameter):
            value.data = value.data.to(torch.bfloat16)
        elif isinstance(value, torch.nn.Module):
            value.to(torch.bfloat16)
    return torch.bfloat16


def _to_unit_float32(feats: torch.Tensor) -> np.ndarray:
    arr = feats.detach().float().cpu().numpy().astype(np.float32, copy=False)
    # Re-normalise in float32: a low-precision model's output may be off by ~1e-3.
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def load_encoder(
    spec: str | ModelSpec, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
    on_fp32_text: "Callable[[Encoder], object] | None" = None,
) -> Encoder:
    """Load the encoder named by a model spec (see :mod:`retrieval.model_spec`).

    ``precision`` ("fp32", "bf16", "int8" or "auto", see :func:`default_precision`)
    sets the numerics of the towers: bf16 lowers both, int8 the image tower only.
    ``threads`` sets torch's CPU threads (see :func:`configure_threads`).
    ``on_fp32_text`` is called with the encoder while its text tower is still
    exact (before any lowering). Raises ``ModelLoadError`` with a message that
    says what to do, e.g. when weights cannot be downloaded and are not cached.
    """
    if precision not in (*PRECISIONS, "auto"):
        raise ModelLoadError(f"unknown precision {precision!r}: use auto or one of {', '.join(PRECISIONS)}")
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    dev = resolve_device(device)
    if precision == "auto":
        precision = default_precision(dev)
    configure_threads(threads)
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
    return Encoder(
        model, preprocess, tokenizer, spec=parsed.canonical, model_config=model_config, device=dev,
        precision=precision, on_fp32_text=on_fp32_text,
    )


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
