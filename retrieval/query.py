"""From query terms to one vector: weighted texts, images and indexed items.

A combined query is the weighted sum of the unit vectors of its terms,
normalised again (negative weights push results away from a term). The CLI
and the upload form write a weight as a prefix: ``2:red`` or ``-0.5:leather``.

:class:`QueryEncoder` embeds the terms for one index's model: texts through a
small LRU cache and, while the model itself is not loaded, through its
torch-free export (:mod:`retrieval.text_light` for CLIP's tokenizer,
:mod:`retrieval.hf_text_light` for Hugging Face ones); images through the
model; indexed items from their stored vectors. Ranking the vector is
:mod:`retrieval.search`'s job (``Filters`` is re-exported here for callers
that import it from this module).

A text in any script is first normalised as the model's tokenizer expects it
(:func:`retrieval.text_normalise.normalise_query`); a model whose tokenizer
takes a language code (NLLB) gets the query's code, from ``lang`` (``--lang
zh``) or from the query's script (:func:`retrieval.multilingual.query_language`).
:meth:`QueryEncoder.notes` says what a user should know about a query: that it
was cut to the model's context, or that the model reads English only.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Sequence

import numpy as np

from .config import light_text_enabled
from .errors import ImageDecodeError, InvalidQueryError, ItemNotFoundError, MMSearchError
from .search import Filters  # noqa: F401 - part of this module's public names (README, user code)

if TYPE_CHECKING:
    from PIL import Image

    from .encoder import Encoder
    from .hf_text_light import HfLightTextEncoder
    from .text_light import LightTextEncoder
    from .text_normalise import FittedQuery

    TextEncoder = Encoder | LightTextEncoder | HfLightTextEncoder

TermKind = Literal["text", "image", "vector", "item"]
PathLike = str | os.PathLike[str]

_WEIGHT_PREFIX = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)):(.*)$", re.S)


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query, with a weight: a text, an image (path or PIL image), a raw vector or an indexed item's id.

    A text may carry ``lang`` (``zh``, ``zh-TW``, ``fr``, or an NLLB code): the
    language code of models that need one (NLLB); without it the text's script decides.
    """

    kind: TermKind
    value: object
    weight: float = 1.0
    lang: str | None = None

    @classmethod
    def text(cls, text: str, weight: float = 1.0, lang: str | None = None) -> "QueryTerm":
        return cls("text", text, weight, lang)

    @classmethod
    def image(cls, image: object, weight: float = 1.0) -> "QueryTerm":
        return cls("image", image, weight)

    @classmethod
    def vector(cls, vector: np.ndarray, weight: float = 1.0) -> "QueryTerm":
        return cls("vector", vector, weight)

    @classmethod
    def item(cls, item_id: int, weight: float = 1.0) -> "QueryTerm":
        """An indexed item, by id: its stored vector (no model run)."""
        return cls("item", item_id, weight)


def parse_weighted(raw: str, *, negate: bool = False) -> tuple[float, str]:
    """Split an optional ``WEIGHT:`` prefix off a CLI value: ``"2:red"`` -> (2.0, "red")."""
    match = _WEIGHT_PREFIX.match(raw)
    weight, value = (float(match.group(1)), match.group(2)) if match else (1.0, raw)
    if not value.strip():
        raise InvalidQueryError(f"empty query term {raw!r}")
    return (-weight if negate else weight), value


def parse_terms(
    texts: Iterable[str] = (),
    not_texts: Iterable[str] = (),
    images: Iterable[str] = (),
    not_images: Iterable[str] = (),
    lang: str | None = None,
) -> list[QueryTerm]:
    """Query terms from ``[WEIGHT:]VALUE`` strings, as the command line and the upload form take them.

    ``not_*`` values push results away (their weight is negated); image values
    are file paths. Texts come first, then images, each in the order given.
    ``lang`` (``--lang``) is checked here (``InvalidQueryError`` for an unknown
    language) and given to every text term.
    """
    if lang is not None:
        from .multilingual import resolve_lang

        resolve_lang(lang)
    terms: list[QueryTerm] = []
    for raws, negate in ((texts, False), (not_texts, True)):
        for raw in raws:
            weight, value = parse_weighted(raw, negate=negate)
            terms.append(QueryTerm.text(value, weight, lang))
    for raws, negate in ((images, False), (not_images, True)):
        for raw in raws:
            weight, value = parse_weighted(raw, negate=negate)
            terms.append(QueryTerm.image(Path(value), weight))
    return terms


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, normalised; raises if nothing positive is asked for."""
    if not vectors:
        raise InvalidQueryError("empty query: give some words to search for, or an image")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InvalidQueryError(f"a term's weight must be a finite number (got {weight!r})")
    if not any(w > 0 for w in weights):
        raise InvalidQueryError("a query needs at least one term with a positive weight")
    # Only the weights' ratios matter (the sum is normalised): scaling them by the largest keeps
    # float32 from overflowing on a weight like 1e30.
    scale = max(abs(float(w)) for w in weights)
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float64))
    for vec, weight in zip(vectors, weights):
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        if v.shape != total.shape:
            raise InvalidQueryError(f"query vectors of different sizes ({v.shape[0]} and {total.shape[0]})")
        norm = float(np.linalg.norm(v))
        if not math.isfinite(norm) or norm < 1e-12:
            raise InvalidQueryError("a query term has a zero or non-finite vector")
        total += (float(weight) / scale) * v / norm
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise InvalidQueryError("the query terms cancel each other out")
    return (total / norm).astype(np.float32)


def read_query_image(data: bytes, *, max_pixels: int) -> "Image.Image":
    """Decode an uploaded query image (orientation applied); ``ImageDecodeError`` says why it cannot be used."""
    from .loading import load_image

    if not data:
        raise ImageDecodeError("the upload is empty")
    loaded = load_image(data, max_pixels=max_pixels)
    if loaded.image is None:
        raise ImageDecodeError(f"the upload is not a usable image: {loaded.error}")
    return loaded.image


def load_query_model(
    spec: str, *, index_root: Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
) -> "Encoder":
    """Load a model for an index under ``index_root``, exporting its text tower for torch-free queries.

    The export is taken once per model, while the text tower is still exact
    (before bf16 lowering); later processes then embed text queries without torch.
    The image tower's ONNX exports and ``--precision auto``'s choice are cached there too.
    """
    from .encoder import load_encoder

    def export(encoder: "Encoder") -> None:
        if light_text_enabled():
            from .text_export import ensure_export

            ensure_export(encoder, index_root)

    return load_encoder(spec, device=device, precision=precision, threads=threads, on_fp32_text=export,
                        cache_root=index_root)


# Text queries are encoded once per QueryEncoder: a server or notebook repeating a
# search (paging, re-ranking, "more like this") skips the text tower entirely.
TEXT_CACHE_SIZE = 512


class QueryEncoder:
    """Embeds query terms for one index's model.

    ``load_model`` loads (and checks) the index's model; it is called at most
    once, when a term first needs it. ``item_vector`` returns an indexed
    item's stored vector (None when there is none). Text queries use the
    model's torch-free export under ``index_root`` while the model itself is
    not loaded (and the device is the CPU), so a cold query need not import torch.
    """

    def __init__(
        self,
        load_model: Callable[[], "Encoder"],
        *,
        fingerprint: str,
        index_root: Path,
        device: str = "cpu",
        item_vector: Callable[[int], np.ndarray | None] | None = None,
        encoder: "Encoder | None" = None,
        model: str | None = None,
    ) -> None:
        self._load_model = load_model
        self._fingerprint = fingerprint
        self._index_root = index_root
        self._device = device
        self._item_vector = item_vector
        self._encoder = encoder
        self._model = model if model is not None else (encoder.spec if encoder is not None else None)
        self._light_text: "LightTextEncoder | HfLightTextEncoder | None | bool" = None  # False: looked, none usable
        self._text_cache = _LruCache(TEXT_CACHE_SIZE)
        self._load_lock = threading.Lock()

    @property
    def encoder(self) -> "Encoder":
        """The index's model, loaded on first use."""
        if self._encoder is None:
            with self._load_lock:
                if self._encoder is None:
                    self._encoder = self._load_model()
        return self._encoder

    @property
    def model_loaded(self) -> bool:
        return self._encoder is not None

    def _text_encoder(self) -> "TextEncoder":
        """What embeds text queries: the loaded model, else its torch-free export when there is one."""
        if self._encoder is not None:
            return self._encoder
        if self._light_text is None:
            self._light_text = False
            if light_text_enabled() and self._device in ("cpu", "auto"):
                from .hf_text_light import load_any_light_encoder

                self._light_text = load_any_light_encoder(self._index_root, self._fingerprint) or False
        return self._light_text or self.encoder

    @property
    def text_path(self) -> str:
        """Which path embeds text queries now: ``"model"`` or ``"torch-free export"``."""
        return "model" if self._text_encoder() is self._encoder else "torch-free export"

    def prepare(self, text: str, lang: str | None = None) -> tuple[str, str | None]:
        """(the text as the model will read it, its language code or None): normalised, language resolved.

        Raises ``InvalidQueryError`` for an empty query (also one of invisible
        characters only), an unknown ``lang``, or a language the model has no code for.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidQueryError("empty query: give some words to search for")
        from .text_normalise import normalise_query, tokenizer_kind_of

        encoder = self._text_encoder()
        # Encoders passed in by callers (tests, notebooks) may be duck-typed: no tokenizer, no languages.
        normalised = normalise_query(text, tokenizer_kind_of(getattr(encoder, "tokenizer", None)))
        languages = getattr(encoder, "languages", None)
        if not languages:
            if lang is not None:
                from .multilingual import resolve_lang

                resolve_lang(lang)  # a typo is an error even where the model needs no code
            return normalised, None
        from .multilingual import query_language

        code = query_language(normalised, lang)
        if code not in languages:
            raise InvalidQueryError(f"the index's model has no language code {code!r} (--lang {lang})")
        return normalised, code

    def text(self, text: str, lang: str | None = None) -> np.ndarray:
        """The unit vector of a text query; recent ones come from an LRU cache (same model, same vector).

        ``lang`` (``zh``, ``fr``, ``zho_Hans`` ...) is used by models whose
        tokenizer takes a language code (NLLB); see :meth:`prepare`.
        """
        normalised, code = self.prepare(text, lang)
        key = (code, normalised)
        vector = self._text_cache.get(key)
        if vector is None:
            language = {} if code is None else {"lang": code}
            try:
                vector = self._text_encoder().encode_texts([normalised], **language)[0]
            except (OSError, ValueError) as exc:
                if self._encoder is not None or not self._light_text:
                    raise
                # The torch-free export broke under us (a file truncated since it was checked):
                # answer with the model itself from now on.
                logging.getLogger(__name__).debug("torch-free text path failed: %s", exc)
                self._light_text = False
                vector = self.encoder.encode_texts([normalised], **language)[0]
            self._text_cache.put(key, vector)
        return vector.copy()  # callers may scale or negate it in place

    def fit(self, text: str, lang: str | None = None) -> "FittedQuery | None":
        """Whether a text query fits the model's context, and which part of it the model reads.

        None for an encoder whose tokenizer cannot be measured (a duck-typed one passed in by a caller).
        """
        from .text_normalise import fit_query

        normalised, _ = self.prepare(text, lang)
        tokenizer = getattr(self._text_encoder(), "tokenizer", None)
        if tokenizer is None:
            return None
        try:
            return fit_query(normalised, tokenizer)
        except TypeError:  # a tokenizer of a kind fit_query does not know
            return None

    def notes(self, text: str, lang: str | None = None) -> list[str]:
        """What a user should be told about a text query (for stderr): cut to the context, or an English-only model.

        Raises what :meth:`prepare` raises.
        """
        notes = []
        fitted = self.fit(text, lang)
        cut = fitted.note() if fitted is not None else None
        if cut:
            notes.append(cut)
        english = self._english_only_note(text)
        if english:
            notes.append(english)
        return notes

    def _english_only_note(self, text: str) -> str | None:
        """A note when a published CLIP-BPE model (trained on English captions) gets a query in another script."""
        from .model_spec import ModelSpec, parse_model_spec

        if not self._model:
            return None
        try:
            spec: ModelSpec = parse_model_spec(self._model)
        except MMSearchError:
            return None
        if spec.kind != "builtin" or not spec.pretrained:
            return None  # trained here (the demo's bilingual model) or from the hub: no way to know its languages
        from .multilingual import detect_language, find_model
        from .text_normalise import tokenizer_kind_of

        tokenizer = getattr(self._text_encoder(), "tokenizer", None)
        if find_model(self._model) is not None or tokenizer is None or tokenizer_kind_of(tokenizer) != "clip-bpe":
            return None
        script = detect_language(text).script
        if script is None or script == "Latn":
            return None
        return (f"note: {self._model} learnt from English captions and reads other languages poorly; "
                "'mmsearch models --multilingual' lists models that understand them")

    def image(self, image: "PathLike | Image.Image") -> np.ndarray:
        """The unit vector of a query image (a path or a PIL image)."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            from .loading import load_image

            if os.path.isdir(image):
                raise ImageDecodeError(f"query image {os.fspath(image)} is a folder, not an image file")
            if not os.path.isfile(image):
                raise ImageDecodeError(f"query image not found: {os.fspath(image)}")
            # A big JPEG is decoded at reduced size, as the indexer does (same vectors, ~3x less work).
            loaded = load_image(image, min_side=int(getattr(self.encoder, "image_size", 0)) or None)
            if loaded.image is None:
                raise ImageDecodeError(f"cannot decode query image {os.fspath(image)}: {loaded.error}")
            image = loaded.image
        if not isinstance(image, Image.Image):
            raise InvalidQueryError(f"a query image is a file path or a PIL image, not {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ImageDecodeError(f"the query image is empty ({image.width}x{image.height} pixels)")
        return self.encoder.encode_images([image.convert("RGB")])[0]

    def item(self, item_id: int) -> np.ndarray:
        """An indexed item's stored vector; ``ItemNotFoundError`` when there is none."""
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise InvalidQueryError(f"an item term names an item by its id, a whole number (got {item_id!r})")
        if not 0 <= item_id < 2**63:
            raise ItemNotFoundError(f"no searchable item with id {item_id}")
        vector = self._item_vector(item_id) if self._item_vector is not None else None
        if vector is None:
            raise ItemNotFoundError(f"no searchable item with id {item_id}")
        return vector

    def vector(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector of a combined query: weighted sum of unit term vectors, renormalised."""
        vectors = []
        for term in terms:
            if term.kind == "text":
                vectors.append(self.text(str(term.value), term.lang))
            elif term.kind == "image":
                vectors.append(self.image(term.value))  # type: ignore[arg-type]
            elif term.kind == "item":
                vectors.append(self.item(term.value))  # type: ignore[arg-type]
            elif term.kind == "vector":
                try:
                    vectors.append(np.asarray(term.value, dtype=np.float32).reshape(-1))
                except (TypeError, ValueError):
                    raise InvalidQueryError(f"a vector term must be numbers (got {type(term.value).__name__})") from None
            else:
                raise InvalidQueryError(f"unknown query term kind {term.kind!r}: use text, image, vector or item")
        return combine(vectors, [t.weight for t in terms])


class _LruCache:
    """A small thread-safe LRU map from (language code, normalised query text) to its vector."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: "OrderedDict[tuple[str | None, str], np.ndarray]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str | None, str]) -> np.ndarray | None:
        with self._lock:
            vector = self._items.get(key)
            if vector is not None:
                self._items.move_to_end(key)
            return vector

    def put(self, key: tuple[str | None, str], vector: np.ndarray) -> None:
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
