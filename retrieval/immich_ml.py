"""A stand-in for immich's machine-learning service: CLIP embeddings for its smart search, from mmsearch's encoder.

immich (the self-hosted photo app) sends every CLIP job to a machine-learning
URL and, when an admin lists several, tries the next one whenever a reply is
not OK. This app speaks that protocol, learned from immich's own service
(``machine-learning/immich_ml``) and from how its server calls it
(``server/src/repositories/machine-learning.repository.ts``):

- ``GET /ping`` -> ``pong`` (text); ``GET /`` -> ``{"message": "Immich ML"}``.
- ``POST /predict``, multipart: ``entries`` is JSON such as
  ``{"clip": {"textual": {"modelName": "ViT-B-32__openai", "options": {"language": "de"}}}}``
  with a ``text`` field, or ``{"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}``
  with an ``image`` file. The reply is ``{"clip": "[0.0123,...]"}`` (the vector as
  a JSON-array *string*: immich's server hands it to Postgres as is), plus
  ``imageHeight``/``imageWidth`` for an image.
- Face detection/recognition and OCR are answered ``501`` with a message, so
  immich moves on to its next ML URL (its own service, listed after this one).

Model names are immich's (``ARCH__PRETRAINED``, optionally prefixed by
``immich-app/``); each maps to an open_clip spec, and immich expects a vector
dimension for each (its database column has that size): an encoder whose
vectors have another size is refused for that name. Texts are cleaned as
immich's service cleans them (whitespace collapsed; punctuation and case
dropped for models whose tokenizer canonicalises, e.g. SigLIP), and
``options.language`` picks the source language of the NLLB text towers.
Images are decoded as mmsearch decodes a query file (EXIF orientation
applied, reduced-size JPEG decode), so a vector here equals ``Index.embed_image``
of the same file.

Each model is loaded once (:class:`ImmichModels`); every model call runs on one
worker thread, and the app has the server's Host guard, body cap and JSON errors.
immich's model table, name and text cleaning and language codes are in
:mod:`retrieval.immich_models`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, Protocol, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from .errors import ModelLoadError, ModelMismatchError
from .immich_models import (
    DEFAULT_FLORES,
    IMMICH_CLIP_MODELS,
    clean_model_name,
    clean_text,
    flores_code,
    format_embedding,
)
from .server_files import DEFAULT_DECODE_WORKERS, DecodePool
from .server_guard import ApiError, RequestGuard, install_error_handlers

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["create_immich_ml_app", "ImmichModels", "ImmichEncoder", "parse_entries", "Entry", "load_model"]

T = TypeVar("T")
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # immich sends its preview JPEGs (a few MB), never originals
DEFAULT_MAX_UPLOAD_PIXELS = 100_000_000
DEFAULT_IMMICH_DECODE_QUEUE = 32  # immich is the only client; it sends a few jobs at a time


class ImmichEncoder(Protocol):
    """What the stand-in needs of an encoder (``retrieval.encoder.Encoder`` is one)."""

    dim: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, images: Sequence["Image.Image"]) -> np.ndarray: ...


# -- the models ----------------------------------------------------------------------------


def load_model(spec: str, *, device: str = "auto") -> ImmichEncoder:
    """The open_clip model a spec names (weights downloaded on first use), for immich's requests.

    The stand-in serves a model's own embeddings with no index behind them, so
    it loads models itself (``ModelLoadError`` says what to do when it cannot).
    """
    from .api import load_model

    return load_model(spec, device=device)



@dataclass
class ImmichModels:
    """The CLIP models this stand-in answers for, keyed by immich name; each loaded once.

    ``encoders`` are ready encoders (the CLI's ``--model``, or a tiny one in
    tests). With ``load`` (e.g. ``retrieval.encoder.load_encoder``), a known
    immich name that is not loaded yet is loaded on first use; without it only
    ``encoders`` are served. A name immich does not know is served as given
    (immich itself never sends one, but a fork may).
    """

    encoders: Mapping[str, ImmichEncoder] = field(default_factory=dict)
    load: Callable[[str], ImmichEncoder] | None = None

    def __post_init__(self) -> None:
        self._loaded: dict[str, ImmichEncoder] = {}
        self._refused: dict[str, ModelMismatchError] = {}  # loaded once, wrong size: not loaded again
        self._lock = threading.Lock()
        for name, encoder in dict(self.encoders).items():
            self.add(name, encoder)

    def add(self, name: str, encoder: ImmichEncoder) -> None:
        """Serve ``encoder`` under immich model ``name``; ``ModelMismatchError`` if immich expects another size."""
        key = clean_model_name(name)
        known = IMMICH_CLIP_MODELS.get(key)
        if known is not None and int(encoder.dim) != known.dim:
            raise ModelMismatchError(
                f"immich expects {known.dim}-d vectors from {key}, but this model gives {encoder.dim}-d ones: "
                f"serve {key} with {known.spec or 'its own model'}, or pick the immich model that matches yours "
                f"({', '.join(n for n, m in IMMICH_CLIP_MODELS.items() if m.dim == int(encoder.dim)) or 'none'})"
            )
        self._loaded[key] = encoder

    @property
    def names(self) -> list[str]:
        """The immich names loaded now."""
        return sorted(self._loaded)

    def get(self, name: str) -> ImmichEncoder:
        """The encoder for an immich model name; ``ModelLoadError`` (or ``ModelMismatchError``) when not served."""
        key = clean_model_name(name)
        encoder = self._loaded.get(key)
        if encoder is not None:
            return encoder
        known = IMMICH_CLIP_MODELS.get(key)
        if known is not None and known.unsupported:
            raise ModelLoadError(known.unsupported)
        if known is None or self.load is None:
            served = ", ".join(self.names) or "none"
            raise ModelLoadError(f"model {key!r} is not served here (this server serves: {served})")
        with self._lock:  # two first requests for one model load it once
            if key in self._refused:
                raise self._refused[key]
            if key not in self._loaded:
                assert known.spec is not None
                try:
                    self.add(key, self.load(known.spec))
                except ModelMismatchError as exc:
                    self._refused[key] = exc
                    raise
        return self._loaded[key]

    def canonicalizes(self, name: str) -> bool:
        """Whether the model's tokenizer drops punctuation and case (open_clip's ``clean: canonicalize``)."""
        config = getattr(self.get(name), "model_config", None) or {}
        kwargs = (config.get("text_cfg") or {}).get("tokenizer_kwargs") or {}
        return kwargs.get("clean") == "canonicalize"


# -- the requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One model call of an ``entries`` form field: task ``clip``, type ``textual``/``visual``, model, options."""

    task: str
    type: str
    model: str
    options: Mapping[str, Any]


class EntriesError(ValueError):
    """The ``entries`` field is not immich's shape."""


def parse_entries(raw: str) -> list[Entry]:
    """``{"clip": {"textual": {"modelName": ..., "options": {...}}}}`` -> entries; ``EntriesError`` if malformed."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise EntriesError(f"entries is not JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise EntriesError("entries must be a JSON object such as {\"clip\": {\"textual\": {\"modelName\": ...}}}")
    out = []
    for task, types in data.items():
        if not isinstance(types, dict) or not types:
            raise EntriesError(f"entries.{task} must map a model type to {{\"modelName\": ...}}")
        for kind, entry in types.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("modelName"), str) or not entry["modelName"]:
                raise EntriesError(f"entries.{task}.{kind} needs a modelName")
            options = entry.get("options") or {}
            if not isinstance(options, dict):
                raise EntriesError(f"entries.{task}.{kind}.options must be an object")
            out.append(Entry(str(task), str(kind), entry["modelName"], options))
    return out


def create_immich_ml_app(
    models: ImmichModels | Mapping[str, ImmichEncoder],
    *,
    allowed_hosts: Sequence[str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    decode_workers: int = DEFAULT_DECODE_WORKERS,
    decode_queue: int = DEFAULT_IMMICH_DECODE_QUEUE,
) -> FastAPI:
    """An ASGI app that answers immich's machine-learning requests for CLIP (see the module docstring).

    ``models``: an :class:`ImmichModels`, or a mapping immich name -> encoder.
    ``allowed_hosts``: accepted ``Host`` names (None: any; immich reaches the
    service by whatever name its ``machineLearning.urls`` give). Bodies over
    ``max_upload_bytes`` get 413; images are decoded in the server's bounded
    pool (``decode_workers`` at once, ``decode_queue`` waiting, then 503, on
    which immich tries its next ML URL). Pages of other origins may not POST.
    """
    from . import __version__

    registry = models if isinstance(models, ImmichModels) else ImmichModels(models)
    # One worker: torch spreads each forward pass over the cores already, and a tokenizer's
    # language (NLLB) is set per call, so calls must not interleave.
    # The pool is made when the app starts (again, if an earlier run of the app stopped it).
    model_thread: list[ThreadPoolExecutor] = []
    pictures = DecodePool(decode_workers, decode_queue)

    async def on_model_thread(fn: Callable[..., T], *args: Any) -> T:
        if not model_thread:
            raise ApiError(503, "unavailable", "the service is not running")
        return await asyncio.wrap_future(model_thread[0].submit(fn, *args))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        model_thread.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsearch-immich-ml"))
        yield
        model_thread.pop().shutdown(wait=True)
        pictures.shutdown()

    app = FastAPI(
        title="mmsearch as immich's machine-learning service", version=__version__, lifespan=lifespan,
        description="CLIP embeddings for immich's smart search (POST /predict, as immich's own service).",
    )
    app.add_middleware(
        RequestGuard, max_body=max_upload_bytes,
        allowed_hosts=None if allowed_hosts is None else {h.strip("[]").lower() for h in allowed_hosts},
    )
    install_error_handlers(app)

    @app.get("/", summary="What immich's service answers at its root")
    def root() -> dict[str, str]:
        return {"message": "Immich ML"}

    @app.get("/ping", response_class=PlainTextResponse, summary="immich's availability check")
    def ping() -> str:
        return "pong"

    @app.post("/predict", summary="CLIP text or image embedding, in immich's request and reply format")
    async def predict(
        entries: Annotated[str, Form(description="immich's JSON: {task: {type: {modelName, options}}}")],
        image: Annotated[UploadFile | None, File(description="the image (visual)")] = None,
        text: Annotated[str | None, Form(description="the query text (textual)")] = None,
    ) -> JSONResponse:
        try:
            calls = parse_entries(entries)
        except EntriesError as exc:
            raise ApiError(422, "invalid_request", f"invalid entries: {exc}") from None
        others = sorted({c.task if c.task != "clip" else f"clip.{c.type}" for c in calls
                         if c.task != "clip" or c.type not in ("textual", "visual")})
        if others:
            raise ApiError(
                501, "not_implemented",
                f"mmsearch answers only CLIP (smart search); {', '.join(others)} is not implemented here: list "
                "immich's own machine-learning URL after this one, and immich will ask it instead",
            )
        if image is None and text is None:
            raise ApiError(400, "invalid_request", "either image or text must be provided")
        data = await image.read() if image is not None else None
        reply: dict[str, Any] = {}
        size: tuple[int, int] | None = None
        for call in calls:
            if call.type == "textual" and text is None:
                raise ApiError(400, "invalid_request", "clip.textual needs a 'text' field")
            if call.type == "visual" and data is None:
                raise ApiError(400, "invalid_request", "clip.visual needs an 'image' file")
            try:
                picture = None
                if call.type == "visual":
                    assert data is not None
                    side = await on_model_thread(_image_side, registry, call.model)  # may load the model
                    # Decoded as Index.embed_image decodes a file (a large JPEG at reduced size, never
                    # below the model's input side), so the vector equals mmsearch's own for that file.
                    loaded = await pictures.decode(data, min_side=side, max_pixels=max_upload_pixels,
                                                   error_status=422)
                    picture, size = loaded.image, (loaded.width, loaded.height)
                vector = await on_model_thread(_embed, registry, call, text, picture)
            except (ModelLoadError, ModelMismatchError) as exc:
                # Not OK, so immich tries its next machine-learning URL.
                raise ApiError(501, "model_not_served", str(exc)) from None
            reply[call.task] = format_embedding(vector)
        if size is not None:
            reply["imageHeight"], reply["imageWidth"] = size[1], size[0]
        return JSONResponse(reply)

    return app


def _image_side(registry: ImmichModels, name: str) -> int | None:
    """The model's input side (on the model thread: the first use of a model may load it)."""
    return int(getattr(registry.get(name), "image_size", 0)) or None


def _embed(registry: ImmichModels, call: Entry, text: str | None, picture: "Image.Image | None") -> np.ndarray:
    """One CLIP vector, on the model thread."""
    encoder = registry.get(call.model)
    key = clean_model_name(call.model)
    if call.type == "visual":
        assert picture is not None
        vector = encoder.encode_images([picture])[0]
    else:
        assert text is not None
        cleaned = clean_text(text, canonicalize=registry.canonicalizes(key))
        language = call.options.get("language")
        known = IMMICH_CLIP_MODELS.get(key)
        takes_language = known.takes_language if known else key.startswith("nllb-")
        if takes_language:
            vector = _encode_in_language(encoder, cleaned, flores_code(language if isinstance(language, str) else None))
        else:
            vector = encoder.encode_texts([cleaned])[0]
    known = IMMICH_CLIP_MODELS.get(key)
    if known is not None and vector.shape[-1] != known.dim:  # add() checked encoder.dim; this guards the model itself
        raise ModelMismatchError(f"{key} gave a {vector.shape[-1]}-d vector; immich expects {known.dim}")
    return vector


def _encode_in_language(encoder: ImmichEncoder, text: str, code: str) -> np.ndarray:
    """Encode with the tokenizer's source language set to ``code`` (open_clip's HFTokenizer.set_language)."""
    tokenizer = getattr(encoder, "tokenizer", None)
    set_language = getattr(tokenizer, "set_language", None)
    if set_language is None:
        return encoder.encode_texts([text])[0]
    inner = getattr(tokenizer, "tokenizer", None)
    previous = getattr(inner, "src_lang", None) or getattr(tokenizer, "language", None) or DEFAULT_FLORES
    set_language(code)
    try:
        return encoder.encode_texts([text])[0]
    finally:
        set_language(previous)  # the next request without a language gets the default again
