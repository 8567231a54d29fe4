"""Query normalisation per tokenizer kind, and queries too long for the context: cut at a token, and said so."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from retrieval.errors import InvalidQueryError
from retrieval.text_light import ClipBpeTokenizer
from retrieval.text_normalise import TOKENIZER_KINDS, FittedQuery, fit_query, fit_spans, normalise_query

from .conftest import REPO
from .tiny_multilingual import tiny_exports, tiny_ml  # noqa: F401 - fixtures

ORDINARY = ["red shoes", "红色的鞋子", "紅色的鞋子", "赤い靴", "كلب على الشاطئ", "🐶🏖️", "👨‍👩‍👧 family", "café"]
LONG_ZH = "左边的小黄伞和右边的红色鞋子" * 12
LONG_EN = " ".join(["a small yellow umbrella on the left"] * 12)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_ordinary_text_is_unchanged_and_normalising_is_idempotent(kind: str) -> None:
    for text in ORDINARY:
        once = normalise_query(text, kind)
        assert once == unicodedata.normalize("NFKC" if kind != "clip-bpe" else "NFC", text)
        assert normalise_query(once, kind) == once


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_what_users_paste(kind: str) -> None:
    # full width, ideographic space
    assert normalise_query("ＲＥＤ\u3000ｓｈｏｅｓ\u3000１２３", kind) == "RED shoes 123"
    assert normalise_query("çº¢è‰²çš„éž‹å­\x90", kind) == "红色的鞋子"                     # mojibake repaired
    assert normalise_query("\ufeff红\u200b色\u00ad的\u200e鞋子\u202c", kind) == "红色的鞋子"   # invisible marks dropped
    assert normalise_query("red\u00a0 \t\nshoes\x07", kind) == "red shoes"                # spaces and controls
    assert normalise_query("👨\u200d👩\u200d👧", kind) == "👨\u200d👩\u200d👧"             # joiners kept
    assert normalise_query("می\u200cخواهم", kind) == "می\u200cخواهم"                       # Persian ZWNJ kept
    assert normalise_query("ｶﾀｶﾅ", kind) == "カタカナ"
    assert normalise_query("紅色的鞋子", kind) == "紅色的鞋子"  # traditional stays traditional


def test_undecoded_bytes_are_recovered() -> None:
    """A UTF-8 query that reached Python as surrogate escapes (non-UTF-8 locale) is read as UTF-8."""
    raw = "海边的狗".encode("utf-8").decode("ascii", "surrogateescape")
    assert normalise_query(raw) == "海边的狗"
    broken = b"red \xff shoes".decode("ascii", "surrogateescape")
    assert normalise_query(broken) == "red \ufffd shoes"
    assert normalise_query("a\ud800b") == "ab"  # a lone surrogate cannot be encoded by any tokenizer


def test_argv_under_a_c_locale() -> None:
    """A Chinese query on the command line of a process with no UTF-8 locale still arrives whole."""
    script = "import sys; from retrieval.text_normalise import normalise_query; print(normalise_query(sys.argv[1]))"
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, "海边的狗"], capture_output=True, env=env, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("utf-8").strip() == "海边的狗"


def test_empty_and_unknown() -> None:
    for empty in ("", "   ", "\u200b\ufeff", "\t\n"):
        with pytest.raises(InvalidQueryError):
            normalise_query(empty)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        normalise_query("x", "bert")


def test_fit_spans() -> None:
    text = "ab cd ef"
    spans = [(0, 2), (3, 5), (6, 8)]
    assert fit_spans(text, spans, 2, 5) == FittedQuery(text, text, False, 5, 5)
    cut = fit_spans(text, spans, 2, 4)
    assert (cut.truncated, cut.kept, cut.tokens) == (True, "ab cd", 5)
    assert "5 tokens" in cut.note() and "reads 4" in cut.note() and "ab cd" in cut.note()
    # Two tokens of one span, cut between them: the half-read span is not shown as read.
    assert fit_spans("abc", [(0, 3), (0, 3)], 0, 1).kept == ""
    assert FittedQuery("x", "x", False, 3, 77).note() is None


@pytest.mark.parametrize("make", ["light", "open_clip"])
def test_clip_bpe_cut_matches_the_tokens(make: str) -> None:
    if make == "light":
        tokenizer = ClipBpeTokenizer(context_length=20)
    else:
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer(context_length=20)
    assert not fit_query("red shoes", tokenizer).truncated
    for text in (LONG_EN, LONG_ZH):
        fitted = fit_query(text, tokenizer)
        assert fitted.truncated and fitted.context_length == 20 and fitted.tokens > 20
        assert fitted.text.startswith(fitted.kept) and fitted.kept
        reference = ClipBpeTokenizer(context_length=200)
        kept_ids, all_ids = reference.encode(fitted.kept), reference.encode(text)
        assert len(all_ids) + 2 == fitted.tokens
        # The kept text's tokens are those the model reads (its last one carries BPE's end-of-word mark).
        assert len(kept_ids) <= 18 and kept_ids[:-1] == all_ids[: len(kept_ids) - 1]
        # ... and no more of the text is read: the 18 tokens cover the kept bytes, not one more character.
        symbols = {i: t for t, i in reference.encoder.items()}
        covered = sum(len(symbols[i].removesuffix("</w>")) for i in all_ids[:18])
        following = fitted.text[len(fitted.kept):].lstrip()[:1]
        kept_bytes = len(fitted.kept.replace(" ", "").encode())
        assert kept_bytes <= covered < kept_bytes + len(following.encode())


@pytest.mark.parametrize("family", ["xlm-roberta", "nllb", "siglip-i18n"])
def test_hf_cut_matches_open_clip(tiny_exports, family: str) -> None:  # noqa: F811
    """The flag equals 'open_clip's ids have no padding left'; the kept text is what the model reads."""
    from retrieval.hf_text_light import load_hf_light_encoder

    encoder, root = tiny_exports[family]
    light = load_hf_light_encoder(root, encoder.fingerprint)
    context = encoder.tokenizer.context_length
    for text in ORDINARY + [LONG_ZH, LONG_EN]:
        theirs = encoder.tokenizer([text]).numpy()[0]
        ours, length = light.tokenizer.encode([text])
        np.testing.assert_array_equal(ours[0], theirs)
        for fitted in (fit_query(text, encoder.tokenizer), fit_query(text, light.tokenizer)):
            assert fitted.truncated == (len(text) > 100), text
            assert fitted.truncated == (fitted.tokens > context) == (int(length[0]) == context)
            if fitted.truncated:
                assert fitted.text.startswith(fitted.kept) and fitted.kept
                kept, n = light.tokenizer.encode([fitted.kept])
                assert int(n[0]) <= context
                # the kept text's ids are the start of the ids the model reads, up to the end token
                assert list(kept[0, : int(n[0]) - 1]) == list(theirs[: int(n[0]) - 1])
