"""Query text as the model's tokenizer expects it, and queries too long for the model's context.

What each tokenizer already does to a text (open_clip 3.3, transformers 5):

* every open_clip tokenizer first runs ``ftfy.fix_text`` (mojibake such as
  ``çº¢è‰²`` -> ``红色``, full-width and half-width forms -> ASCII / kana,
  ligatures), unescapes HTML twice and collapses whitespace;
* CLIP's BPE (``clip-bpe``) then lowercases; it is byte-level, so any script
  is representable, but its vocabulary is English: CJK text becomes byte
  pieces the model hardly learnt;
* XLM-R (``xlm-roberta``), NLLB (``nllb``) and mc4/T5 (``t5``, SigLIP i18n)
  are SentencePiece vocabularies whose normaliser is NFKC ("nmt_nfkc", kept
  in ``tokenizer.json`` as a precompiled charsmap). None of them converts
  traditional to simplified Chinese or back: both forms are in their
  vocabularies (NLLB tells them apart by its language code, ``zho_Hant`` /
  ``zho_Hans``), so converting a query would only move it away from the
  captions the model learnt. Characters outside the vocabulary (rare emoji)
  become ``<unk>``; nothing is raised. SigLIP i18n's "canonicalize" cleaning
  also lowercases and drops ASCII punctuation.

So :func:`normalise_query` adds only what no tokenizer does: undo bytes that
reached Python undecoded (a non-UTF-8 terminal), drop invisible characters
pasted with text (zero-width spaces, bidi marks, BOM, soft hyphens; the
joiners that emoji sequences and Indic/Persian script need are kept), unify
whitespace, and apply the Unicode form the tokenizer itself applies (NFKC for
SentencePiece kinds, NFC for CLIP), so that the text shown to the user when a
query is cut is the text the model reads.

A query longer than the context is cut by every tokenizer at a token
boundary (open_clip keeps the first ``context - specials`` tokens). That is
not an error, but it must not be silent: :func:`fit_query` says whether the
query was cut and which part of it the model reads, for the CLI's note on
stderr (:meth:`FittedQuery.note`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InvalidQueryError

TOKENIZER_KINDS = ("clip-bpe", "xlm-roberta", "nllb", "t5", "hf")
_NFKC_KINDS = frozenset({"xlm-roberta", "nllb", "t5", "hf"})

# Invisible characters people paste with text: zero-width space, word joiner, BOM, soft hyphen,
# Mongolian vowel separator, and the bidi marks/embeddings/isolates. ZWJ (U+200D) and ZWNJ
# (U+200C) stay: emoji sequences (👨‍👩‍👧) and Persian/Indic spelling need them.
_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad\u180e\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SURROGATE_ESCAPES = re.compile("[\udc80-\udcff]")
_LONE_SURROGATES = re.compile("[\ud800-\udfff]")


def normalise_query(text: str, tokenizer_kind: str = "hf") -> str:
    """``text`` cleaned for a tokenizer of ``tokenizer_kind`` (one of :data:`TOKENIZER_KINDS`).

    Idempotent, and a no-op on ordinary text, so the indexed captions (which the
    tokenizer cleans the same way) and the query meet in the same form.
    Raises ``InvalidQueryError`` when nothing but invisible characters and
    spaces is left.
    """
    if tokenizer_kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {tokenizer_kind!r}: use one of {', '.join(TOKENIZER_KINDS)}")
    if _SURROGATE_ESCAPES.search(text):
        # Bytes Python could not decode (argv under a non-UTF-8 locale) come as surrogate escapes:
        # they are usually UTF-8 after all; whatever is not becomes U+FFFD instead of mojibake.
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            pass
    text = _LONE_SURROGATES.sub("", text)  # tokenizers cannot encode them; they carry no meaning
    import ftfy  # a dependency of open_clip; the tokenizer runs it too, so running it first changes nothing

    text = ftfy.fix_text(text)
    text = _INVISIBLE.sub("", text)
    text = "".join(" " if _is_space_or_control(c) else c for c in text)
    text = unicodedata.normalize("NFKC" if tokenizer_kind in _NFKC_KINDS else "NFC", text)
    text = " ".join(text.split())
    if not text:
        raise InvalidQueryError("the query is empty once invisible characters and spaces are removed")
    return text


def _is_space_or_control(char: str) -> bool:
    category = unicodedata.category(char)
    return char.isspace() or category == "Cc" or category in ("Zl", "Zp")


@dataclass(frozen=True)
class FittedQuery:
    """A query measured against a model's context: the part the model reads and whether the rest was cut."""

    text: str            # the query as the tokenizer saw it (after its own cleaning)
    kept: str            # the leading part of ``text`` whose tokens fit
    truncated: bool
    tokens: int          # tokens the whole query needs, special tokens included
    context_length: int  # tokens the model reads

    def note(self) -> str | None:
        """The one-line note for stderr when the query was cut, else None."""
        if not self.truncated:
            return None
        return (f"note: the query is {self.tokens} tokens long but the model reads {self.context_length}; "
                f"only \u201c{self.kept}\u201d was used")


def fit_spans(text: str, spans: Sequence[tuple[int, int]], specials: int, context_length: int) -> FittedQuery:
    """Fit a query whose content tokens cover ``spans`` (character offsets into ``text``, in order).

    Tokens that share a span (byte pieces of one character or word) are kept or
    dropped together when the text is shown; the model itself reads exactly the
    first ``context_length - specials`` tokens, as open_clip cuts them.
    """
    budget = max(0, context_length - specials)
    total = len(spans) + specials
    if len(spans) <= budget:
        return FittedQuery(text, text, False, total, context_length)
    if budget == 0:
        return FittedQuery(text, "", True, total, context_length)
    last = spans[budget - 1]
    following = spans[budget]
    # The next token starts inside the last kept span: that span is only partly read, so show up to its start.
    end = last[0] if following[0] < last[1] else last[1]
    return FittedQuery(text, text[:end].rstrip(), True, total, context_length)


_HF_KINDS = {"XLMRobertaTokenizer": "xlm-roberta", "XLMRobertaTokenizerFast": "xlm-roberta",
             "NllbTokenizer": "nllb", "NllbTokenizerFast": "nllb", "T5Tokenizer": "t5", "T5TokenizerFast": "t5"}


def tokenizer_kind_of(tokenizer: Any) -> str:
    """The :data:`TOKENIZER_KINDS` entry of a tokenizer (open_clip's, transformers', or a torch-free one)."""
    kind = getattr(tokenizer, "kind", None)  # retrieval.hf_text_light.HfTokenizer
    if isinstance(kind, str) and kind in TOKENIZER_KINDS:
        return kind
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None and hasattr(hf, "backend_tokenizer"):  # open_clip HFTokenizer
        return _HF_KINDS.get(type(hf).__name__, "hf")
    return "clip-bpe"


def fit_query(text: str, tokenizer: Any) -> FittedQuery:
    """Measure ``text`` against ``tokenizer``'s context; works on every tokenizer a query may meet.

    ``tokenizer`` is open_clip's ``HFTokenizer`` or ``SimpleTokenizer``, or the
    torch-free ones (:class:`retrieval.text_light.ClipBpeTokenizer`,
    :class:`retrieval.hf_text_light.HfTokenizer`). Recognised by their
    attributes, so this module imports neither torch nor transformers.
    """
    fit = getattr(tokenizer, "fit", None)
    if callable(fit):  # the torch-free HF tokenizer measures itself
        return fit(text)
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None and hasattr(hf, "backend_tokenizer"):  # open_clip HFTokenizer around a transformers one
        cleaned = tokenizer.clean_fn(text)
        # Through the tokenizer, not its backend: the backend keeps the padding the last call set.
        encoding = hf(cleaned, add_special_tokens=False, return_offsets_mapping=True, padding=False,
                      truncation=False)
        spans = [tuple(span) for span in encoding["offset_mapping"]]
        return fit_spans(cleaned, spans, int(hf.num_special_tokens_to_add()), int(tokenizer.context_length))
    return _fit_clip_bpe(text, tokenizer)


def _fit_clip_bpe(text: str, tokenizer: Any) -> FittedQuery:
    """CLIP's BPE: pieces found by its regex, each split into byte-level BPE tokens mapped back to characters.

    A run of CJK letters is one regex piece; its tokens cover a few bytes each,
    so a token's span is the characters its bytes belong to.
    """
    if hasattr(tokenizer, "_pattern"):  # retrieval.text_light.ClipBpeTokenizer
        from .text_light import _clean

        cleaned = _clean(text, tokenizer.clean)
        pattern, bpe, byte_encoder = tokenizer._pattern, tokenizer._bpe, tokenizer.byte_encoder
    elif hasattr(tokenizer, "pat") and hasattr(tokenizer, "bpe"):  # open_clip SimpleTokenizer
        cleaned = tokenizer.clean_fn(text)
        pattern, byte_encoder = tokenizer.pat, tokenizer.byte_encoder
        bpe = lambda token: tokenizer.bpe(token).split(" ")  # noqa: E731 - its bpe() joins with spaces
    else:
        raise TypeError(f"cannot measure queries for tokenizer {type(tokenizer).__name__}")
    spans: list[tuple[int, int]] = []
    for match in pattern.finditer(cleaned):
        piece = match.group()
        if piece in ("<start_of_text>", "<end_of_text>"):
            spans.append((match.start(), match.end()))
            continue
        char_of_byte = [i for i, char in enumerate(piece) for _ in char.encode("utf-8")]
        at = 0
        for token in bpe("".join(byte_encoder[b] for b in piece.encode("utf-8"))):
            n = len(token.removesuffix("</w>"))  # one symbol per byte
            first, last = char_of_byte[at], char_of_byte[at + n - 1]
            spans.append((match.start() + first, match.start() + last + 1))
            at += n
    return fit_spans(cleaned, spans, 2, int(tokenizer.context_length))
