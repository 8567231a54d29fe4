"""The dual encoder: a model spec becomes an open_clip model, its preprocessing and tokenizer.

Only this module (and ``retrieval.train``) imports torch and open_clip. Every
vector leaving it is float32 and L2-normalised, so no caller can forget.

Multilingual models load like any other: a model with a Hugging Face text
tower or tokenizer first checks that the ``multilingual`` extra is installed
(:func:`retrieval.model_folder.require_text_extra`), a local folder's HF tower
is built from the folder itself (:func:`retrieval.model_folder.local_model_kwargs`),
and texts of a model whose tokenizer takes a language code (NLLB) are encoded
under their code (:meth:`Encoder.encode_texts`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image

from .config import PRECISIONS
from .cpu_threads import available_cpus  # noqa: F401 - also this module's name (callers and tests use it here)
from .errors import InvalidQueryError, ModelLoadError
from .fast_paths import CausalTextTower, SplitPreprocess, lower_image_tower, lower_text_tower
from .model_folder import explain_missing_module, fingerprint_config, local_model_kwargs, require_text_extra
from .model_spec import LOCAL_CONFIG_NAME, ModelSpec, parse_model_spec, read_local_config

# Our own small architectures (tests, the offline demo) join open_clip's registry.
_OWN_CONFIGS = Path(__file__).with_name("model_configs")
open_clip.add_model_config(_OWN_CONFIGS)

# Random-weight models are seeded so that the same spec always gives the same encoder.
RANDOM_INIT_SEED = 0

# Numerics of the towers. fp32 is exact; the others trade a little accuracy
# for speed and are offered only because their embeddings keep a mean cosine
# >= 0.995 to fp32 (measured by benchmarks/bench_index.py, bench_query.py and
# bench_runtimes.py, and tested). "auto" picks one per machine. fp16 is for GPUs only.


def default_precision(device: torch.device | str = "cpu") -> str:
    """The fixed default for a device: fp16 on GPUs; bf16 on CPUs that multiply bf16 natively; else fp32.

    ``precision="auto"`` means this on GPUs; on CPUs it measures the candidates
    instead (:mod:`retrieval.image_choice`), and this decides only whether bf16 is one.

    On this project's reference CPU (AVX-512 BF16) bf16 runs the image tower
    ~2x faster with embeddings at cosine >= 0.9999 to fp32; CPUs without
    native bf16 would emulate it and run slower, so they stay exact. GPUs
    (CUDA tensor cores, Apple GPUs) run fp16 at full speed, and fp16 keeps
    three more mantissa bits than bf16.
    """
    if torch.device(device).type in ("cuda", "mps"):
        return "fp16"
    if torch.device(device).type != "cpu":
        return "fp32"
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return "fp32"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "fp32"


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
        if precision == "fp16" and torch.device(device).type == "cpu":
            # CPUs emulate fp16 matmuls: many times slower than fp32, for no gain.
            raise ModelLoadError("precision fp16 is for GPUs (--device cuda or mps); on the CPU use bf16 or fp32")
        if precision.startswith("onnx-"):
            # The ONNX tower is verified against this very encoder's fp32 tower before it is attached.
            raise ModelLoadError(f"precision {precision}: load with load_encoder, or build in fp32 and call "
                                 "use_precision with a verified tower (retrieval.image_choice.attach_onnx)")
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.model_config = model_config or {}
        self.device = torch.device(device)
        self.precision = precision
        self._fingerprint: str | None = None
        self._split = SplitPreprocess.of(preprocess)
        self._languages: list[str] | None | bool = False  # False: not looked up yet
        # The image tower under ONNX Runtime (precision onnx-*), attached by load_encoder once verified.
        self.image_runtime: Any = None
        # What --precision auto measured and chose on this machine (retrieval.image_choice), when it ran.
        self.auto_choice: dict[str, Any] | None = None
        # An NLLB tokenizer takes its language as state (src_lang): one language at a time.
        self._language_lock = threading.Lock()
        if precision != "fp32":
            # The fingerprint names the weights, not how they are multiplied: an index
            # built in fp32 may be queried in bf16. Hash them before they are converted.
            _ = self.fingerprint
            self._image_dtype = lower_image_tower(self.model, precision, self.device)
        else:
            self._image_dtype = torch.float32
        # Causal text towers can skip the padding after the end-of-text token.
        self._text_tower = CausalTextTower.of(self.model)
        with torch.inference_mode():
            probe = self._encode_tokens(self.tokenizer(["probe"]).to(self.device))
        self.dim = int(probe.shape[-1])
        if on_fp32_text is not None:
            on_fp32_text(self)  # e.g. export the exact text tower before it is lowered
        self.text_dtype = lower_text_tower(self.model, precision)

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

    def use_precision(self, precision: str, image_runtime: Any = None) -> None:
        """Switch an encoder loaded in fp32 to ``precision`` (what ``--precision auto`` chose).

        Torch numerics lower both towers in place, as loading with that
        precision would; ``onnx-*`` attaches ``image_runtime`` (an
        :class:`retrieval.image_onnx.OnnxImageTower`) and keeps torch's towers exact.
        """
        if self.precision != "fp32" or self.image_runtime is not None:
            raise ModelLoadError(f"can only switch an fp32 encoder, not one in {self.precision}")
        if precision.startswith("onnx-"):
            if image_runtime is None:
                raise ModelLoadError(f"precision {precision} needs its ONNX image tower")
            self.image_runtime = image_runtime
        elif precision != "fp32":
            _ = self.fingerprint  # hashed from the exact weights, before they are converted
            self._image_dtype = lower_image_tower(self.model, precision, self.device)
            self.text_dtype = lower_text_tower(self.model, precision)
        self.precision = precision

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed pixel batch of shape (n, 3, H, W)."""
        if self.image_runtime is not None:
            return self.image_runtime.encode(pixels.detach().cpu().float().numpy())
        with torch.inference_mode():
            feats = self.model.encode_image(pixels.to(self.device, self._image_dtype), normalize=True)
        return _to_unit_float32(feats)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images; returns (n, dim) float32, rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixels(self.pixels_from_prepared([self.prepare_image(img) for img in images]))

    # -- texts ------------------------------------------------------------------

    @property
    def languages(self) -> list[str] | None:
        """The language codes this model's tokenizer writes before a text (NLLB: ``zho_Hans`` ...), else None.

        Such a model embeds the same words differently under another code, so
        each text is encoded under its own (see :meth:`encode_texts`).
        """
        if self._languages is False:
            self._languages = _language_codes(self.tokenizer)
        return self._languages  # type: ignore[return-value]

    def encode_texts(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        """Embed texts; returns (n, dim) float32, rows of unit length.

        ``lang`` (``zh``, ``zho_Hans`` ...) matters only for models whose
        tokenizer takes a language code (:attr:`languages`): every text is then
        encoded under that code, or, when ``lang`` is None, under the code its
        script names (:func:`retrieval.multilingual.query_language`). Other
        models read every language as it comes.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        languages = self.languages
        if not languages:
            return self._encode_text_list(list(texts))
        from .multilingual import query_language

        codes = [query_language(text, lang) for text in texts]
        unknown = sorted(set(codes) - set(languages))
        if unknown:
            raise InvalidQueryError(f"model {self.spec!r} has no language code {unknown[0]!r}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for code in dict.fromkeys(codes):
            rows = [i for i, c in enumerate(codes) if c == code]
            out[rows] = self._encode_text_list([texts[i] for i in rows], code)
        return out

    def _encode_text_list(self, texts: list[str], code: str | None = None) -> np.ndarray:
        if code is None:
            tokens = self.tokenizer(texts).to(self.device)
        else:
            hf = self.tokenizer.tokenizer  # type: ignore[attr-defined]
            with self._language_lock:
                # The src_lang setter re-templates the special tokens; open_clip's set_language()
                # is undone by every call under transformers 5 (see docs/multilingual.md).
                original = hf.src_lang
                hf.src_lang = code
                try:
                    tokens = self.tokenizer(texts).to(self.device)
                finally:
                    hf.src_lang = original
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


def _language_codes(tokenizer: Any) -> list[str] | None:
    """NLLB-style language codes (``zho_Hans`` ...) that select an HF tokenizer's source language, else None."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None or not hasattr(hf, "src_lang") or not hasattr(hf, "get_vocab"):
        return None
    import re

    code = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
    codes = sorted(token for token in hf.get_vocab() if code.match(token))
    return codes or None


def _to_unit_float32(feats: torch.Tensor) -> np.ndarray:
    arr = feats.detach().float().cpu().numpy().astype(np.float32, copy=False)
    # Re-normalise in float32: a low-precision model's output may be off by ~1e-3.
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def load_encoder(
    spec: str | ModelSpec, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
    on_fp32_text: "Callable[[Encoder], object] | None" = None, cache_root: str | os.PathLike[str] | None = None,
) -> Encoder:
    """Load the encoder named by a model spec (see :mod:`retrieval.model_spec`).

    ``precision`` sets the numerics of the towers: bf16 lowers both, int8 the
    image tower only (torch dynamic int8, Linear layers), ``onnx-fp32`` /
    ``onnx-int8`` run the image tower under ONNX Runtime from a verified export
    cached under ``cache_root`` (an index root; default: the one
    :func:`retrieval.config.resolve_index_root` names), falling back to torch
    fp32 with one logged warning when there is none. ``auto`` on the CPU
    measures the candidates that pass their accuracy floor once per machine
    and takes the fastest (:mod:`retrieval.image_choice`); on GPUs it is
    :func:`default_precision`.
    ``threads`` sets torch's CPU threads (see :func:`configure_threads`), and ONNX Runtime's.
    ``on_fp32_text`` is called with the encoder while its text tower is still
    exact (before any lowering). Raises ``ModelLoadError`` with a message that
    says what to do, e.g. when weights cannot be downloaded and are not cached.
    """
    if precision not in (*PRECISIONS, "auto"):
        raise ModelLoadError(f"unknown precision {precision!r}: use auto or one of {', '.join(PRECISIONS)}")
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    dev = resolve_device(device)
    onnx_kind = precision[len("onnx-"):] if precision.startswith("onnx-") else None
    if onnx_kind and dev.type != "cpu":
        raise ModelLoadError(f"precision {precision} runs on the CPU only: use --device cpu or another precision")
    measure = precision == "auto" and dev.type == "cpu"
    if precision == "auto":
        precision = "fp32" if measure else default_precision(dev)
    n_threads = configure_threads(threads)
    model_config = _model_config(parsed)
    # A model with a Hugging Face text side needs the multilingual extra: say so before any download.
    require_text_extra(_open_clip_config(parsed, model_config), parsed.canonical)
    _fail_fast_if_unreachable(parsed)
    # A local folder's HF text tower is built from the folder, not from the hub id in its config.
    extra = local_model_kwargs(parsed.path) if parsed.kind == "local-dir" and parsed.path is not None else {}
    try:
        if parsed.kind == "builtin" and parsed.pretrained is None:
            # No weights asked for: a seeded random init, identical on every load.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(parsed.arch, device=dev)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                parsed.open_clip_name, pretrained=parsed.pretrained, device=dev, **extra
            )
        tokenizer = open_clip.get_tokenizer(parsed.open_clip_name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises many types; each becomes one actionable message
        missing = explain_missing_module(exc, parsed.canonical)
        if missing is not None:
            raise missing from exc
        raise _explain_load_failure(parsed, exc) from exc
    encoder = Encoder(
        model, preprocess, tokenizer, spec=parsed.canonical, model_config=model_config, device=dev,
        precision="fp32" if onnx_kind else precision, on_fp32_text=on_fp32_text,
    )
    if measure or onnx_kind:
        from .config import resolve_index_root
        from .image_choice import attach_onnx, choose_precision

        root = Path(cache_root) if cache_root is not None else resolve_index_root()
        if onnx_kind:
            attach_onnx(encoder, root, onnx_kind, n_threads)
        else:
            choose_precision(encoder, root, n_threads, native_bf16=default_precision(dev) == "bf16")
    return encoder


def available_models(*, pretrained: bool = False) -> list[str]:
    """Architectures open_clip can build here, or with ``pretrained`` its ``ARCH:PRETRAINED`` pairs."""
    if pretrained:
        return [f"{arch}:{tag}" for arch, tag in open_clip.list_pretrained()]
    return list(open_clip.list_models())


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
        read_local_config(parsed.path)  # checks that it is an open_clip config, with a message that says what is wrong
        return fingerprint_config(parsed.path)  # a folder saved from hf-hub:ORG/REPO keeps that spec's fingerprint
    return {"hf-hub": parsed.repo}


def _open_clip_config(parsed: ModelSpec, model_config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip model config behind a spec when it is known before loading ({} for an uncached hf-hub repo)."""
    if parsed.kind == "local-dir" and parsed.path is not None:
        return read_local_config(parsed.path)
    if parsed.kind == "hf-hub":
        return {}  # known only once downloaded; a missing package is then explained by explain_missing_module
    return model_config


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
        f"or, where there is network, 'mmsearch models save {parsed.canonical} DIR', copy DIR here and pass "
        f"--model DIR (a folder with {LOCAL_CONFIG_NAME} + weights, as 'models save' and 'mmsearch train' write)."
    )


def _explain_load_failure(parsed: ModelSpec, exc: Exception) -> ModelLoadError:
    logging.getLogger(__name__).debug("model load failed", exc_info=exc)
    text = f"{type(exc).__name__}: {exc}"
    network_words = ("connect", "offline", "resolve", "network", "LocalEntryNotFound", "404", "hub", "download")
    if parsed.kind != "local-dir" and any(w.lower() in text.lower() for w in network_words):
        return _no_weights_error(parsed)
    return ModelLoadError(f"could not load model {parsed.canonical!r}: {text.splitlines()[0][:300]}")
