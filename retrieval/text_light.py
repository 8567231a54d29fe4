"""A torch-free text encoder for cold queries: CLIP's BPE tokenizer and causal text tower in numpy.

``import torch, open_clip`` and building the model cost several seconds before
a query's first token is encoded; the query itself needs a ~10-token pass
through the text tower, which numpy does in milliseconds. So the first time an
index's model is loaded with torch, :mod:`retrieval.text_export` writes the
text tower's weights (float32, one ``.npy`` per tensor, memory-mapped here) and
checks that this module reproduces open_clip's tokens and embeddings on probe
texts. Later processes embed text queries from that export without importing
torch at all.

Only the plain CLIP text tower is covered (pre-norm residual blocks with
multi-head causal attention, GELU or QuickGELU, optional LayerScale, pooling at
the end-of-text token) with open_clip's ``SimpleTokenizer``; every other model
keeps the torch path.

The tokenizer re-implements open_clip's ``SimpleTokenizer`` because that class
imports torch at module level (only to return a tensor); its BPE merges file
is read from the installed open_clip package, and the export step refuses any
model whose tokens differ from open_clip's on the probe texts.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import math
import os
import string
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ModelLoadError

META_FILE = "meta.json"
UNSUPPORTED_FILE = "unsupported.json"
FORMAT_VERSION = 1
CLEAN_KINDS = ("lower", "whitespace", "canonicalize")


# -- tokenizer ------------------------------------------------------------------------


def default_bpe_path() -> Path:
    """open_clip's BPE merges file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("open_clip is not installed: cannot find its BPE vocabulary")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    # Printable bytes map to themselves; the rest to unused code points, so BPE never sees whitespace or controls.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def _basic_clean(text: str) -> str:
    import ftfy  # a dependency of open_clip, imported only when a text is cleaned

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _clean(text: str, kind: str) -> str:
    text = _basic_clean(text)
    if kind == "canonicalize":
        text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
        return " ".join(text.split()).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if kind == "lower" else text


class ClipBpeTokenizer:
    """Token ids as open_clip's ``SimpleTokenizer`` makes them (start, BPE ids, end, zero padding)."""

    def __init__(self, bpe_path: str | os.PathLike[str] | None = None, context_length: int = 77,
                 clean: str = "lower") -> None:
        import regex  # a dependency of open_clip; supports the \p{L} classes CLIP's pattern needs

        if clean not in CLEAN_KINDS:
            raise ModelLoadError(f"unknown tokenizer cleaning {clean!r}")
        with gzip.open(bpe_path or default_bpe_path()) as fh:
            lines = fh.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        symbols = list(_bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.sot_id = self.encoder["<start_of_text>"]
        self.eot_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(self.encoder)
        self.context_length = context_length
        self.clean = clean
        self._cache: dict[str, list[str]] = {}
        self._pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def _bpe(self, token: str) -> list[str]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            # Merge the lowest-ranked adjacent pair everywhere it occurs, then look again.
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, math.inf))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without the start/end tokens."""
        ids: list[int] = []
        for piece in self._pattern.findall(_clean(text, self.clean)):
            if piece in ("<start_of_text>", "<end_of_text>"):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self._bpe(mapped))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(n, context_length) int64 ids: start, text (truncated), end, zeros."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text)[: self.context_length - 2] + [self.eot_id]
            out[row, : len(ids)] = ids
        return out


# -- the text tower -----------------------------------------------------------------


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * gain + bias


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf. Abramowitz & Stegun 7.1.26 has an absolute error below 1.5e-7, about
    # float32's own rounding, so exact GELU comes out as torch computes it (checked on export).
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _activation(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "quick_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


class LightTextEncoder:
    """Embeds texts with an exported CLIP text tower, in numpy: float32 unit rows, as the torch path gives."""

    def __init__(self, directory: Path, meta: dict) -> None:
        self.directory = directory
        self.meta = meta
        self.fingerprint: str = meta["fingerprint"]
        self.dim: int = int(meta["dim"])
        self._weights: dict[str, np.ndarray] = {}
        self._tokenizer: ClipBpeTokenizer | None = None
        if meta["tokenizer"]["clean"] not in CLEAN_KINDS:
            raise ModelLoadError(f"unknown tokenizer cleaning {meta['tokenizer']['clean']!r} in {directory}")

    @property
    def tokenizer(self) -> ClipBpeTokenizer:
        # Built on first use (~50k BPE merges to read): checking that an export exists needs none.
        if self._tokenizer is None:
            tok = self.meta["tokenizer"]
            self._tokenizer = ClipBpeTokenizer(context_length=int(tok["context_length"]), clean=tok["clean"])
        return self._tokenizer

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "LightTextEncoder":
        """Open an export written by :func:`retrieval.text_export.ensure_export`; raises ``ModelLoadError``."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"no usable text-tower export in {directory}: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ModelLoadError(f"text-tower export in {directory} has format {meta.get('format')!r}")
        return cls(directory, meta)

    def tensor_names(self) -> list[str]:
        """Every weight file this export must hold."""
        meta = self.meta
        names = ["token_embedding", "positional_embedding", "ln_final.weight", "ln_final.bias"]
        for layer in range(int(meta["layers"])):
            p = f"l{layer}."
            names += [p + n for n in ("ln_1.weight", "ln_1.bias", "in_proj_weight", "in_proj_bias", "out_proj.weight",
                                      "out_proj.bias", "ln_2.weight", "ln_2.bias", "c_fc.weight", "c_fc.bias",
                                      "c_proj.weight", "c_proj.bias")]
            if meta["layer_scale"]:
                names += [p + "ls_1", p + "ls_2"]
        if meta["projection"] == "matrix":
            names.append("text_projection")
        elif meta["projection"] == "linear":
            names.append("text_projection.weight")
            if meta.get("projection_bias"):
                names.append("text_projection.bias")
        return names

    def check(self) -> None:
        """Open every weight file (headers only, memory-mapped); raises ``ModelLoadError`` if one is damaged."""
        try:
            for name in self.tensor_names():
                arr = self._w(name)
                if arr.dtype != np.float32:
                    raise ValueError(f"{name} is {arr.dtype}")
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"damaged text-tower export in {self.directory}: {exc}") from exc

    def _w(self, name: str) -> np.ndarray:
        # Memory-mapped: the token table is ~100 MB and a query touches a dozen of its rows.
        arr = self._weights.get(name)
        if arr is None:
            arr = self._weights[name] = np.load(self.directory / f"{name}.npy", mmap_mode="r")
        return arr

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Unit text features for (n, context_length) token ids, run up to the last end-of-text token."""
        meta = self.meta
        if meta["pool"] == "argmax":
            last = tokens.argmax(axis=-1)
        else:
            last = (tokens == meta["eos_id"]).argmax(axis=-1)
        n = int(last.max()) + 1
        heads, eps = int(meta["heads"]), float(meta["eps"])
        x = np.asarray(self._w("token_embedding")[tokens[:, :n]], dtype=np.float32)
        x = x + self._w("positional_embedding")[:n]
        batch, _, width = x.shape
        head_dim = width // heads
        # Causal mask: position i sees 0..i only, so padding after end-of-text changes nothing.
        mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
        for layer in range(int(meta["layers"])):
            p = f"l{layer}."
            h = _layer_norm(x, self._w(p + "ln_1.weight"), self._w(p + "ln_1.bias"), eps)
            qkv = h @ self._w(p + "in_proj_weight").T + self._w(p + "in_proj_bias")
            q, k, v = (t.reshape(batch, n, heads, head_dim).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
            scores = (q / math.sqrt(head_dim)) @ k.transpose(0, 1, 3, 2) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attended = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, n, width)
            out = attended @ self._w(p + "out_proj.weight").T + self._w(p + "out_proj.bias")
            if meta["layer_scale"]:
                out = out * self._w(p + "ls_1")
            x = x + out
            h = _layer_norm(x, self._w(p + "ln_2.weight"), self._w(p + "ln_2.bias"), eps)
            h = _activation(h @ self._w(p + "c_fc.weight").T + self._w(p + "c_fc.bias"), meta["activation"])
            h = h @ self._w(p + "c_proj.weight").T + self._w(p + "c_proj.bias")
            if meta["layer_scale"]:
                h = h * self._w(p + "ls_2")
            x = x + h
        x = _layer_norm(x, self._w("ln_final.weight"), self._w("ln_final.bias"), eps)
        pooled = x[np.arange(batch), last]
        if meta["projection"] == "matrix":
            pooled = pooled @ self._w("text_projection")
        elif meta["projection"] == "linear":
            pooled = pooled @ self._w("text_projection.weight").T
            if meta.get("projection_bias"):
                pooled = pooled + self._w("text_projection.bias")
        pooled = pooled.astype(np.float32, copy=False)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    # CLIP's tokenizer writes no language code: every language is read as it comes.
    languages: list[str] | None = None

    def encode_texts(self, texts: Sequence[str], lang: str | None = None) -> np.ndarray:
        """Embed texts; returns (n, dim) float32 rows of unit length (``lang`` is ignored: see :attr:`languages`)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_tokens(self.tokenizer(list(texts)))


def export_dir(index_root: str | os.PathLike[str], fingerprint: str) -> Path:
    """Where the text-tower export of the model with ``fingerprint`` lives under an index root."""
    return Path(index_root) / ".cache" / "text" / fingerprint


def load_light_encoder(index_root: str | os.PathLike[str], fingerprint: str) -> LightTextEncoder | None:
    """The torch-free text encoder of this model, or None when it has no valid export here."""
    directory = export_dir(index_root, fingerprint)
    if not (directory / META_FILE).is_file():
        return None
    try:
        light = LightTextEncoder.load(directory)
        light.check()  # a truncated weight file would otherwise fail at the first query
    except (ModelLoadError, KeyError, OSError, ValueError, TypeError):
        return None  # damaged or from another version: the torch path still works (and rewrites it)
    return light if light.fingerprint == fingerprint else None
