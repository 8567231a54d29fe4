"""Multilingual search through the command line and the query path: models --multilingual, models save, --lang, notes.

Offline: the multilingual models are the tiny stand-ins of :mod:`tests.tiny_multilingual`
(same layouts as the published ones), saved by ``mmsearch models save`` into one
folder whose hub folders are then deleted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import TINY_MODEL, make_image, one_line_error
from .tiny_multilingual import _quiet_transformers, build_tiny_multilingual

runner = CliRunner()


def run(*args: str):
    with _quiet_transformers():
        return runner.invoke(app, list(args))


# -- mmsearch models --multilingual (no model is loaded) ------------------------------------


def test_models_multilingual_lists_published_figures() -> None:
    table = run("models", "--multilingual")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert "XM3600 R@1" in lines[0] and "zh" in lines[1]
    rows = lines[2:-2]  # two header lines, two footer lines (source, extra)
    # Best first for Chinese; the English default last, for comparison.
    assert rows[0].startswith("nllb-clip-large-siglip:mrl") and "59.5%" in rows[0]
    assert "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k" in table.stdout and "53.7%" in table.stdout
    assert rows[-1].startswith("ViT-B-32-256:datacomp_s34b_b86k (English default)") and "2.4%" in rows[-1]
    assert "pip install 'mmsearch[multilingual]'" in table.stdout

    as_json = run("models", "--multilingual", "--lang", "ja", "--json")
    assert as_json.exit_code == 0, as_json.output
    rows_ja = json.loads(as_json.stdout)
    by_spec = {r["spec"]: r for r in rows_ja}
    assert by_spec["xlm-roberta-large-ViT-H-14:frozen_laion5b_s13b_b90k"]["xm3600_r1"] == pytest.approx(0.7261, abs=0.002)
    assert by_spec["nllb-clip-base-siglip:mrl"]["needs_language"] is True
    assert {r["lang"] for r in rows_ja} == {"ja"}
    one_line_error(run("models", "--multilingual", "--lang", "klingon"), "unknown language")


def test_models_listing_still_works() -> None:
    names = run("models", "--json")
    assert names.exit_code == 0 and TINY_MODEL in json.loads(names.stdout)
    pairs = run("models", "--pretrained")
    assert "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k" in pairs.stdout.split()


def test_missing_extra_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    photos = _photos(tmp_path / "photos")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the multilingual extra were not installed
    for args in (("index", str(photos), "--model", "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k"),
                 ("models", "save", "nllb-clip-base-siglip:mrl", str(tmp_path / "nllb"))):
        one_line_error(runner.invoke(app, list(args)), "pip install 'mmsearch[multilingual]'", "transformers")
    assert not (tmp_path / "nllb").exists()


# -- models save, index and query with --lang, offline --------------------------------------


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """XLM-R and NLLB stand-ins written by 'mmsearch models save'; their hub folders then deleted."""
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("cli-ml")
    tiny = build_tiny_multilingual(root / "build", families=("xlm-roberta", "nllb"), prefix="mmsearch-tiny-cli")
    folders = {}
    for family, arch in tiny.archs.items():
        result = run("models", "save", arch, str(root / family))
        assert result.exit_code == 0, result.output
        assert f"use --model {root / family}" in result.stdout
        folders[family] = root / family
    again = run("models", "save", tiny.archs["nllb"], str(root / "nllb"))
    one_line_error(again, "already exists")
    shutil.rmtree(root / "build" / "hub")  # nothing of the spec's source is left: the folders must stand alone
    return folders


def _photos(folder: Path) -> Path:
    folder.mkdir()
    for i in range(6):
        make_image(200 + i).save(folder / f"p{i}.png")
    return folder


def test_save_index_and_query_in_chinese(saved_folders: dict[str, Path], tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    folder = saved_folders["xlm-roberta"]
    indexed = run("index", str(photos), "--model", str(folder), "-q", "--json")
    assert indexed.exit_code == 0, indexed.output
    hits = {}
    for query in ("海边的狗", "一只在沙发上睡觉的猫", "ビーチの犬", "🐶🏖️", "ＲＥＤ　ｓｈｏｅｓ"):
        result = run("query", query, "-k", "3", "--json")
        assert result.exit_code == 0, result.output
        assert result.stderr == ""  # short queries: nothing to note
        hits[query] = json.loads(result.stdout)
        assert len(hits[query]) == 3
    # Full-width letters reach the model as the tokenizer normalises them: the same vector as ASCII.
    ascii_hits = json.loads(run("query", "RED shoes", "-k", "3", "--json").stdout)
    assert [h["path"] for h in ascii_hits] == [h["path"] for h in hits["ＲＥＤ　ｓｈｏｅｓ"]]
    assert [h["score"] for h in ascii_hits] == pytest.approx([h["score"] for h in hits["ＲＥＤ　ｓｈｏｅｓ"]], abs=1e-5)
    one_line_error(run("query", "海边的狗", "--lang", "klingon"), "unknown language")
    one_line_error(run("query", "\u200b\u200b \u2060"), "empty")


def test_long_query_is_cut_with_a_note(saved_folders: dict[str, Path], tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    assert run("index", str(photos), "--model", str(saved_folders["xlm-roberta"]), "-q").exit_code == 0
    long_query = "左边的小黄伞 " * 40
    result = run("query", long_query, "-k", "2")
    assert result.exit_code == 0, result.output
    note = result.stderr.strip()
    assert note.startswith("note: the query is ") and "the model reads 77" in note and "only “左边的小黄伞" in note
    assert len(note.splitlines()) == 1


def test_nllb_queries_carry_their_language(saved_folders: dict[str, Path], tmp_path: Path) -> None:
    """--lang picks the NLLB code; without it the script decides; each code is its own vector (and cache entry)."""
    from retrieval.api import create_index

    with _quiet_transformers():
        index = create_index("nllb", model=str(saved_folders["nllb"]), root=tmp_path / "indexes")
    queries = index.queries
    assert queries.prepare("海边的狗") == ("海边的狗", "zho_Hans")
    assert queries.prepare("海邊的狗") == ("海邊的狗", "zho_Hant")
    assert queries.prepare("une robe rouge") == ("une robe rouge", "eng_Latn")  # Latin script: English unless told
    assert queries.prepare("une robe rouge", "fr") == ("une robe rouge", "fra_Latn")
    french, english = queries.text("une robe rouge", "fr"), queries.text("une robe rouge")
    assert float(french @ english) < 0.9999
    assert np.allclose(queries.text("une robe rouge", "fra_Latn"), french)
    encoder = index.encoder
    assert np.allclose(encoder.encode_texts(["une robe rouge"], lang="fr")[0], french, atol=1e-6)
    # Texts indexed without a language are encoded under their script's code, as queries are.
    mixed = encoder.encode_texts(["海边的狗", "a dog on the beach"])
    assert np.allclose(mixed[0], encoder.encode_texts(["海边的狗"], lang="zh")[0], atol=1e-6)
    assert np.allclose(mixed[1], encoder.encode_texts(["a dog on the beach"], lang="en")[0], atol=1e-6)
    index.close()


# -- notes on the query path (a CLIP-BPE model) ---------------------------------------------


def test_english_only_model_says_so_for_other_scripts(tiny_encoder) -> None:
    from retrieval.query import QueryEncoder

    def encoder_for(model: str) -> QueryEncoder:
        return QueryEncoder(lambda: tiny_encoder, fingerprint=tiny_encoder.fingerprint, index_root=Path("."),
                            encoder=tiny_encoder, model=model)

    published = encoder_for("ViT-B-32-256:datacomp_s34b_b86k")
    notes = published.notes("海边的狗")
    assert len(notes) == 1 and "English" in notes[0] and "mmsearch models --multilingual" in notes[0]
    assert published.notes("red shoes") == [] and published.notes("🐶 123") == []
    assert encoder_for(TINY_MODEL).notes("海边的狗") == []  # not a published model: its languages are unknown
    assert encoder_for("xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k").notes("海边的狗") == []
    cut = encoder_for(TINY_MODEL).notes("红色的鞋子" * 10)  # CLIP's BPE: ~2 tokens a character, context 32
    assert len(cut) == 1 and "the model reads 32" in cut[0]
