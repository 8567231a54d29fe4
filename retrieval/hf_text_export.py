"""Write a Hugging Face-tokenizer model's text side for :mod:`retrieval.hf_text_light`, and check it.

The counterpart of :mod:`retrieval.text_export` for models whose tokenizer is
open_clip's ``HFTokenizer`` (XLM-R, NLLB, SigLIP i18n, and SigLIP's English
models too): the text tower is exported to ONNX (torch's TorchScript-based
exporter: it needs the ``onnx`` package, not ``onnxscript``), the token-vector table beside
it as a memory-mapped ``.npy``, and the tokenizer transformers actually built
as ``tokenizer.json``. The export is written to a temporary directory and
renamed into place only after the torch-free path has reproduced open_clip's
token ids exactly and its embeddings to cosine >= :data:`MIN_COSINE` on probe
texts in many scripts (for NLLB under several language codes). A model that
fails gets ``unsupported.json`` (the check is not repeated) and keeps the
torch path; a missing package (onnx, onnxruntime, tokenizers) writes nothing,
so installing it later enables the export.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .encoder import Encoder
from .errors import ModelLoadError
from .hf_text_light import (
    EMBEDDING_FILE,
    FORMAT,
    NLLB_CODE,
    TOKENIZER_FILE,
    TOWER_FILE,
    HfLightTextEncoder,
    load_hf_light_encoder,
)
from .export_cache import mark_unsupported, publish, staging_dir
from .text_light import META_FILE, UNSUPPORTED_FILE, export_dir
from .text_normalise import tokenizer_kind_of

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999
# Scripts, widths, emoji, entities, mojibake, whitespace and a text longer than any context.
PROBE_TEXTS = (
    "red shoes",
    "红色的鞋子",
    "紅色的鞋子",
    "一只在沙发上睡觉的猫",
    "赤い靴を履いた犬",
    "빨간 신발",
    "كلب على الشاطئ",
    "Собака на пляже",
    "🐶🏖️ dog on the beach 🌊",
    "iPhone 手机壳 red",
    "ＲＥＤ　ｓｈｏｅｓ　１２３！",
    "café &amp; croissants, naïve",
    "çº¢è‰²çš„éž‹å­\x90",
    "  lots   of\twhitespace\n here  ",
    "x",
    " ".join(["一只在沙发上睡觉的猫 a cat sleeping on a sofa"] * 12),
)
PROBE_LANGUAGES = ("eng_Latn", "zho_Hans", "zho_Hant", "jpn_Jpan", "arb_Arab", "kor_Hang")
_TABLE_CHUNK = 8192


def is_hf_tokenizer_model(encoder: Encoder) -> bool:
    """True when the encoder tokenises with open_clip's ``HFTokenizer`` (this module's kind of model)."""
    from open_clip.tokenizer import HFTokenizer

    return isinstance(encoder.tokenizer, HFTokenizer)


def ensure_hf_export(encoder: Encoder, index_root: Path) -> bool:
    """Export ``encoder``'s text side under ``index_root`` unless done (or known unsupported); True if usable.

    Never raises: the export only makes later cold queries faster, so a full
    disk, a read-only folder or a missing runtime is logged and the torch path stays.
    """
    target = export_dir(index_root, encoder.fingerprint)
    if getattr(encoder, "text_dtype", torch.float32) != torch.float32:
        return False  # a lowered (bf16) text tower: only an exact load can be exported
    if load_hf_light_encoder(index_root, encoder.fingerprint) is not None:
        return True
    if (target / UNSUPPORTED_FILE).is_file():
        if _marked_by_us(target):
            return False
        # A marker from the CLIP exporter (written before HF models were dispatched here) says
        # nothing about this exporter: try it.
        (target / UNSUPPORTED_FILE).unlink(missing_ok=True)
    try:
        import onnx  # noqa: F401 - torch's exporter writes the graph with it
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False  # not a property of the model: no marker, so installing the package enables it
    try:
        if target.exists():  # damaged, or written by another exporter: write it again
            shutil.rmtree(target)
        return _export(encoder, target)
    except Exception as exc:  # noqa: BLE001 - an optional speed-up must never stop a model from loading
        log.debug("HF text-side export to %s failed: %s", target, exc)
        return False


def _export(encoder: Encoder, target: Path) -> bool:
    settings = _tokenizer_settings(encoder)
    if isinstance(settings, str):
        _mark_unsupported(target, settings)
        return False
    with staging_dir(target) as tmp:
        backend = encoder.tokenizer.tokenizer.backend_tokenizer
        (tmp / TOKENIZER_FILE).write_text(backend.to_str(), encoding="utf-8")
        try:
            embedding = _export_tower(encoder, tmp)
        except OSError:
            raise  # a full disk or a read-only folder says nothing about the model: try again next time
        except Exception as exc:  # noqa: BLE001 - the exporter's many error types: the tower has no ONNX form
            _mark_unsupported(target, f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}")
            return False
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format": FORMAT, "model": encoder.spec, "fingerprint": encoder.fingerprint, "dim": encoder.dim,
            "trim": _ignores_padding(encoder), "embedding": embedding, "tokenizer": settings, "files": files,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            problem = _verify(encoder, tmp)
        except (ModelLoadError, ValueError) as exc:  # onnxruntime cannot open or run the graph it was given
            problem = str(exc)
        if problem:
            _mark_unsupported(target, problem)
            return False
        return publish(tmp, target, META_FILE)


def _mark_unsupported(target: Path, why: str) -> None:
    mark_unsupported(target, UNSUPPORTED_FILE, why, FORMAT)


def _marked_by_us(target: Path) -> bool:
    try:
        return json.loads((target / UNSUPPORTED_FILE).read_text(encoding="utf-8")).get("exporter") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _tokenizer_settings(encoder: Encoder) -> dict[str, Any] | str:
    """How open_clip's HFTokenizer turns a text into ids, as data; or why it cannot be reproduced."""
    from open_clip.tokenizer import HFTokenizer, _clean_canonicalize, _clean_lower, _clean_whitespace

    tok = encoder.tokenizer
    if not isinstance(tok, HFTokenizer):
        return f"tokenizer {type(tok).__name__} is not open_clip's HFTokenizer"
    if tok.tokenizer_mode:
        return f"tokenizer mode {tok.tokenizer_mode!r}"
    clean = {_clean_lower: "lower", _clean_whitespace: "whitespace", _clean_canonicalize: "canonicalize"}.get(
        tok.clean_fn)
    if clean is None:
        return "unknown tokenizer cleaning"
    hf = tok.tokenizer
    if getattr(hf, "padding_side", "right") != "right" or getattr(hf, "truncation_side", "right") != "right":
        return "left padding or truncation"
    if hf.pad_token_id is None:
        return "tokenizer without a padding token"
    languages = _languages(hf)
    probe = "red shoes 红色的鞋子"
    full = list(hf(probe).input_ids)
    content = list(hf(probe, add_special_tokens=False).input_ids)
    at = _find(full, content)
    if at is None:
        return "special tokens are not a plain prefix and suffix"
    settings: dict[str, Any] = {
        "kind": tokenizer_kind_of(tok), "context_length": int(tok.context_length), "clean": clean,
        "pad_id": int(hf.pad_token_id), "prefix": full[:at], "suffix": full[at + len(content):],
        "strip_sep_id": int(hf.sep_token_id) if tok.strip_sep_token and hf.sep_token_id is not None else None,
    }
    if languages:
        slot = _language_slot(hf, probe, settings["prefix"], settings["suffix"], len(content))
        if slot is None:
            return "cannot tell where the tokenizer writes the language code"
        settings.update(languages=languages, default_language=str(hf.src_lang), language_slot=slot)
    return settings


def _languages(hf: Any) -> dict[str, int] | None:
    """NLLB-style language codes (``zho_Hans`` ...) that select the tokenizer's source language, with their ids."""
    if not hasattr(hf, "src_lang"):
        return None
    vocab = hf.get_vocab()
    codes = {token: int(i) for token, i in vocab.items() if NLLB_CODE.match(token)}
    return codes or None


def _language_slot(hf: Any, probe: str, prefix: list[int], suffix: list[int], n: int) -> list[Any] | None:
    """Where the language code sits among the special tokens: ["prefix" | "suffix", index]."""
    original = hf.src_lang
    try:
        other = "zho_Hans" if original != "zho_Hans" else "eng_Latn"
        hf.src_lang = other  # the setter re-templates; set_src_lang_special_tokens alone is undone on each call
        ids = list(hf(probe).input_ids)
    finally:
        hf.src_lang = original
    want = hf.convert_tokens_to_ids(other)
    for where, part, offset in (("prefix", prefix, 0), ("suffix", suffix, len(prefix) + n)):
        for i in range(len(part)):
            if offset + i < len(ids) and ids[offset + i] == want and part[i] != want:
                return [where, i]
    return None


def _find(seq: list[int], sub: list[int]) -> int | None:
    for start in range(len(seq) - len(sub) + 1):
        if seq[start:start + len(sub)] == sub:
            return start
    return None


def _ignores_padding(encoder: Encoder) -> bool:
    """True when padding cannot change the embedding (an attention mask hides it), so queries may skip it."""
    from open_clip.hf_model import HFTextEncoder

    return isinstance(getattr(encoder.model, "text", None), HFTextEncoder)


class _Feed(torch.nn.Module):
    """Stands in for the token-embedding module during export: returns the vectors fed to the graph."""

    def __init__(self, original: torch.nn.Module) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None
        object.__setattr__(self, "original", original)  # not a submodule: its table stays out of the graph

    @property
    def weight(self) -> torch.Tensor:  # some towers read the embedding's dtype/device from it
        return self.original.weight  # type: ignore[attr-defined]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert self.value is not None
        return self.value


class _Tower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, feed: _Feed | None) -> None:
        super().__init__()
        self.model = model
        self.feed = feed

    def forward(self, input_ids: torch.Tensor, token_vectors: torch.Tensor | None = None) -> torch.Tensor:
        if self.feed is not None:
            self.feed.value = token_vectors
        return self.model.encode_text(input_ids, normalize=True)


def _embedding_slot(model: torch.nn.Module) -> tuple[torch.nn.Module, Any] | None:
    """(the token-embedding module, a setter that swaps it) of the text tower, when one is found."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        try:
            module = text.transformer.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        return module, text.transformer.set_input_embeddings
    owner = text if isinstance(text, TextTransformer) else model
    module = getattr(owner, "token_embedding", None)
    if isinstance(module, torch.nn.Embedding):
        return module, lambda m: setattr(owner, "token_embedding", m)
    return None


def _export_tower(encoder: Encoder, directory: Path) -> dict[str, int] | None:
    """Write the ONNX graph (and the token table when the embedding can be lifted out); returns the table's shape."""
    model = encoder.model
    ids = encoder.tokenizer(list(PROBE_TEXTS[:2])).to(encoder.device)
    slot = _embedding_slot(model)
    table_info = None
    feed = None
    if slot is not None:
        module, swap = slot
        rows = int(getattr(module, "num_embeddings", module.weight.shape[0]))
        table = np.lib.format.open_memmap(directory / EMBEDDING_FILE, mode="w+", dtype=np.float32,
                                          shape=(rows, int(module.weight.shape[1])))
        with torch.inference_mode():  # module(ids), not module.weight: some embeddings scale their output
            for start in range(0, rows, _TABLE_CHUNK):
                index = torch.arange(start, min(rows, start + _TABLE_CHUNK), device=encoder.device)
                table[start:start + len(index)] = module(index).float().cpu().numpy()
            vectors = module(ids).float()
        table.flush()
        del table
        table_info = {"rows": rows, "width": int(vectors.shape[-1])}
        feed = _Feed(module)
        swap(feed)
    try:
        tower = _Tower(model, feed).eval()
        args: tuple[torch.Tensor, ...] = (ids,) if feed is None else (ids, vectors)
        names = ["input_ids"] if feed is None else ["input_ids", "token_vectors"]
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}}
        if feed is not None:
            axes["token_vectors"] = {0: "batch", 1: "tokens"}
        fastpath = torch.backends.mha.get_fastpath_enabled()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings are about the exporter, not the user
            # nn.MultiheadAttention's fused inference kernel has no ONNX form; the plain path computes the same.
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                torch.onnx.export(tower, args, str(directory / TOWER_FILE), dynamo=False, input_names=names,
                                  output_names=["embedding"], dynamic_axes=axes, opset_version=17)
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
    finally:
        if slot is not None:
            slot[1](slot[0])
    return table_info


def _verify(encoder: Encoder, directory: Path) -> str | None:
    """None when the export reproduces open_clip's ids and embeddings on the probes, else what differs."""
    light = HfLightTextEncoder.load(directory)
    light.check()
    texts = list(PROBE_TEXTS)
    hf = encoder.tokenizer.tokenizer
    languages = [None] if light.languages is None else list(PROBE_LANGUAGES)
    worst = 1.0
    original = getattr(hf, "src_lang", None)
    try:
        for lang in languages:
            if lang is not None:
                if lang not in (light.languages or []):
                    continue
                hf.src_lang = lang
            theirs = encoder.tokenizer(texts).numpy()
            ours, lengths = light.tokenizer.encode(texts, lang)
            if not np.array_equal(ours, theirs):
                bad = int(np.nonzero((ours != theirs).any(axis=1))[0][0])
                return f"token ids differ from open_clip's on {texts[bad]!r} (language {lang})"
            with torch.inference_mode():
                reference = encoder.encode_tokens_full(torch.from_numpy(theirs))
            cosines = np.sum(reference * light.encode_tokens(ours, lengths), axis=1)
            worst = min(worst, float(cosines.min()))
    finally:
        if original is not None:
            hf.src_lang = original
    if not worst >= MIN_COSINE:
        return f"embeddings differ from the model's (min cosine {worst:.6f})"
    return None
