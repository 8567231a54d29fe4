"""A torch-free text encoder for models with Hugging Face tokenizers: ``tokenizers`` + ONNX Runtime.

The multilingual models (XLM-R, NLLB, SigLIP i18n) tokenise with Hugging Face
tokenizers and, for XLM-R and NLLB, embed with a ``transformers`` text tower;
loading them through open_clip costs ``import torch, transformers`` and the
whole model before a query's first token. :mod:`retrieval.hf_text_export`
writes, once per model, what a query needs (under the same
``<index root>/.cache/text/<fingerprint>/`` as :mod:`retrieval.text_light`):

``tokenizer.json``       the exact backend tokenizer transformers built (its normaliser,
                         pre-tokenizer and model; special tokens are added here)
``text_tower.onnx``      token ids (+ their vectors) -> unit text embedding: the tower,
                         its pooling, projection and normalisation, as open_clip runs them
``token_embedding.npy``  the token-vector table, memory-mapped: a query reads a dozen rows
                         of a table that is most of the tower (192 MB of XLM-R base's 1.1 GB)
``meta.json``            format, fingerprint, file sizes, tokenizer settings

This module reads that with ``tokenizers``, ``numpy`` and ``onnxruntime``; none
of them imports torch or transformers. The export is verified against
open_clip's own tokenizer and encoder before it is written (tokens equal,
cosine >= ``MIN_COSINE``), and anything missing or damaged makes
:func:`load_hf_light_encoder` return None, so the caller keeps the torch path.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cpu_threads import available_cpus
from .errors import InvalidQueryError, ModelLoadError
from .text_light import META_FILE, LightTextEncoder, _clean, export_dir, load_light_encoder
from .text_normalise import FittedQuery, fit_spans

FORMAT = "hf-onnx-1"
TOKENIZER_FILE = "tokenizer.json"
TOWER_FILE = "text_tower.onnx"
EMBEDDING_FILE = "token_embedding.npy"
CLEAN_KINDS = ("lower", "whitespace", "canonicalize")
NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")


class HfTokenizer:
    """Token ids as open_clip's ``HFTokenizer`` makes them, from ``tokenizers`` alone.

    open_clip cleans the text, lets the transformers tokenizer add its special
    tokens (NLLB: the language code first), cut the content to fit and pad to
    the context. The export records those special tokens as ``prefix`` and
    ``suffix`` (with the language's slot for NLLB), and the export step checks
    that the ids equal open_clip's on probe texts in many scripts.
    """

    def __init__(self, backend: Any, settings: dict[str, Any]) -> None:
        if settings["clean"] not in CLEAN_KINDS:
            raise ModelLoadError(f"unknown tokenizer cleaning {settings['clean']!r}")
        self.backend = backend
        self.kind: str = settings["kind"]
        self.context_length = int(settings["context_length"])
        self.clean: str = settings["clean"]
        self.pad_id = int(settings["pad_id"])
        self.prefix: list[int] = [int(i) for i in settings["prefix"]]
        self.suffix: list[int] = [int(i) for i in settings["suffix"]]
        self.strip_sep_id: int | None = settings.get("strip_sep_id")
        self.languages: dict[str, int] | None = settings.get("languages")
        self.default_language: str | None = settings.get("default_language")
        slot = settings.get("language_slot")  # ["prefix" | "suffix", index] for NLLB
        self.language_slot: tuple[str, int] | None = (str(slot[0]), int(slot[1])) if slot else None

    @classmethod
    def from_file(cls, path: Path, settings: dict[str, Any]) -> "HfTokenizer":
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust loader raises its own Exception type for bad files
            raise ModelLoadError(f"cannot read tokenizer {path}: {exc}") from exc
        backend.no_padding()
        backend.no_truncation()
        return cls(backend, settings)

    def _specials(self, lang: str | None) -> tuple[list[int], list[int]]:
        prefix, suffix = list(self.prefix), list(self.suffix)
        if self.language_slot is None:
            return prefix, suffix
        code = lang or self.default_language
        assert self.languages is not None
        if code not in self.languages:
            raise ModelLoadError(f"this model's tokenizer has no language code {code!r}")
        where, index = self.language_slot
        (prefix if where == "prefix" else suffix)[index] = self.languages[code]
        return prefix, suffix

    def _content(self, text: str) -> tuple[str, Any]:
        cleaned = _clean(text, self.clean)
        return cleaned, self.backend.encode(cleaned, add_special_tokens=False)

    def encode(self, texts: Sequence[str], lang: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((n, context_length) int64 ids, (n,) lengths before padding); ``lang`` is an NLLB code or None."""
        prefix, suffix = self._specials(lang)
        budget = max(0, self.context_length - len(prefix) - len(suffix))
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = prefix + list(self._content(text)[1].ids[:budget]) + suffix
            ids = ids[: self.context_length]
            out[row, : len(ids)] = ids
            lengths[row] = len(ids)
        if self.strip_sep_id is not None:  # open_clip's strip_sep_token: separators become 0
            out[out == self.strip_sep_id] = 0
        return out, lengths

    def __call__(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        """(n, context_length) int64 ids, as open_clip's tokenizer returns them."""
        return self.encode(texts, lang)[0]

    def fit(self, text: str, lang: str | None = None) -> FittedQuery:
        """Whether ``text`` fits the context, and which part of it the model reads."""
        prefix, suffix = self._specials(lang)
        cleaned, encoding = self._content(text)
        return fit_spans(cleaned, encoding.offsets, len(prefix) + len(suffix), self.context_length)


class HfLightTextEncoder:
    """Embeds texts with an exported HF-tokenizer text tower: float32 unit rows, as the torch path gives."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory = directory
        self.meta = meta
        self.fingerprint: str = meta["fingerprint"]
        self.dim: int = int(meta["dim"])
        self.trim: bool = bool(meta["trim"])
        self._tokenizer: HfTokenizer | None = None
        self._session: Any = None
        self._inputs: set[str] = set()
        self._table: np.ndarray | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "HfLightTextEncoder":
        """Open an export written by :func:`retrieval.hf_text_export.ensure_hf_export`; raises ``ModelLoadError``."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"no usable text-tower export in {directory}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelLoadError(f"text-tower export in {directory} is not an {FORMAT} export")
        return cls(directory, meta)

    @property
    def tokenizer(self) -> HfTokenizer:
        if self._tokenizer is None:
            self._tokenizer = HfTokenizer.from_file(self.directory / TOKENIZER_FILE, self.meta["tokenizer"])
        return self._tokenizer

    @property
    def tokenizer_kind(self) -> str:
        """``xlm-roberta``, ``nllb``, ``t5`` or ``hf``: for :func:`retrieval.text_normalise.normalise_query`."""
        return str(self.meta["tokenizer"]["kind"])

    @property
    def languages(self) -> list[str] | None:
        """The language codes this model's queries take (NLLB), else None."""
        langs = self.meta["tokenizer"].get("languages")
        return sorted(langs) if langs else None

    def check(self) -> None:
        """Sizes of every file as exported, the table's header, and the ONNX graph loaded; raises ``ModelLoadError``."""
        try:
            for name, size in self.meta["files"].items():
                if (self.directory / name).stat().st_size != int(size):
                    raise ValueError(f"{name} has {(self.directory / name).stat().st_size} bytes, not {size}")
            if self.meta.get("embedding"):
                table = self._embedding_table()
                if table.dtype != np.float32 or table.ndim != 2:
                    raise ValueError(f"{EMBEDDING_FILE} is {table.dtype} with {table.ndim} dimensions")
            _ = self.tokenizer
            self._open_session()
        except ModelLoadError:
            raise
        except Exception as exc:  # OSError, ValueError, and onnxruntime's own error types
            raise ModelLoadError(f"damaged text-tower export in {self.directory}: {exc}") from exc

    def _embedding_table(self) -> np.ndarray:
        if self._table is None:
            self._table = np.load(self.directory / EMBEDDING_FILE, mmap_mode="r")
        return self._table

    def _open_session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = available_cpus()
            options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
            self._session = ort.InferenceSession(
                str(self.directory / TOWER_FILE), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._inputs = {i.name for i in self._session.get_inputs()}
        return self._session

    def encode_tokens(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Unit text features for (n, context_length) ids; padding is skipped when the tower ignores it."""
        session = self._open_session()
        if self.trim and lengths is not None and len(lengths):
            tokens = tokens[:, : max(1, int(lengths.max()))]
        feeds: dict[str, np.ndarray] = {}
        if "input_ids" in self._inputs:
            feeds["input_ids"] = np.ascontiguousarray(tokens, dtype=np.int64)
        if "token_vectors" in self._inputs:
            feeds["token_vectors"] = np.ascontiguousarray(self._embedding_table()[tokens], dtype=np.float32)
        try:
            out = np.asarray(session.run(None, feeds)[0], dtype=np.float32)
        except Exception as exc:  # onnxruntime's error types; ValueError is what callers fall back to torch on
            raise ValueError(f"the text-tower export in {self.directory} failed: {exc}") from exc
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def encode_texts(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        """Embed texts; returns (n, dim) float32 rows of unit length.

        For a model whose tokenizer takes a language code (:attr:`languages`),
        every text is encoded under ``lang`` (``zh``, ``zho_Hans`` ...) or, when
        it is None, under the code its script names, as
        :meth:`retrieval.encoder.Encoder.encode_texts` does. Other models ignore ``lang``.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        languages = self.languages
        if not languages:
            ids, lengths = self.tokenizer.encode(list(texts))
            return self.encode_tokens(ids, lengths)
        from .multilingual import query_language

        codes = [query_language(text, lang) for text in texts]
        unknown = sorted(set(codes) - set(languages))
        if unknown:
            raise InvalidQueryError(f"this model has no language code {unknown[0]!r}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for code in dict.fromkeys(codes):
            rows = [i for i, c in enumerate(codes) if c == code]
            ids, lengths = self.tokenizer.encode([texts[i] for i in rows], code)
            out[rows] = self.encode_tokens(ids, lengths)
        return out


def load_hf_light_encoder(index_root: str | os.PathLike[str], fingerprint: str) -> HfLightTextEncoder | None:
    """The torch-free HF text encoder of this model, or None when it has no valid export here.

    None too when ``onnxruntime`` or ``tokenizers`` is not installed: the torch path still works.
    """
    directory = export_dir(index_root, fingerprint)
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
        return None
    try:
        light = HfLightTextEncoder(directory, meta)
        light.check()
    except (ModelLoadError, ImportError, KeyError, TypeError, ValueError):
        return None  # damaged, from another version, or a runtime missing: the torch path still works
    return light


def load_any_light_encoder(
    index_root: str | os.PathLike[str], fingerprint: str
) -> LightTextEncoder | HfLightTextEncoder | None:
    """Whichever torch-free text encoder this model has under ``index_root`` (CLIP numpy or HF ONNX), else None."""
    return load_light_encoder(index_root, fingerprint) or load_hf_light_encoder(index_root, fingerprint)
