"""The torch-free text path for Hugging Face tokenizers and towers: same ids and vectors as open_clip, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.hf_text_light import (
    EMBEDDING_FILE,
    TOKENIZER_FILE,
    TOWER_FILE,
    HfLightTextEncoder,
    load_any_light_encoder,
    load_hf_light_encoder,
)
from retrieval.text_light import META_FILE, UNSUPPORTED_FILE, export_dir

from .conftest import REPO
from .tiny_multilingual import FAMILIES, TinyModels, load_tiny, tiny_exports, tiny_ml  # noqa: F401 - fixtures

pytest.importorskip("onnxruntime")

# Scripts, widths, emoji, mojibake, entities, whitespace, empty, and longer than every context.
TEXTS = [
    "红色的鞋子", "紅色的鞋子", "一只在沙发上睡觉的猫", "海边的狗", "赤い靴を履いた犬", "ｶﾀｶﾅ half-width", "빨간 신발",
    "كلب على الشاطئ", "собака на пляже", "🐶🏖️🌊", "👨‍👩‍👧 family", "iPhone 手机壳 red", "ＲＥＤ　ｓｈｏｅｓ　１２３！",
    "Striped BLUE shirt, size 42!", "çº¢è‰²çš„éž‹å­\x90", "&amp;lt;b&amp;gt; café", "  lots \t of   space  ", "x", "",
    " ".join(["左边的小黄伞 a small yellow umbrella on the left"] * 10),
]
LANGUAGES = ("zho_Hans", "zho_Hant", "jpn_Jpan", "arb_Arab", "kor_Hang", "rus_Cyrl", "eng_Latn")


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_and_vectors_equal_open_clip(tiny_exports, family: str) -> None:  # noqa: F811 - a fixture
    import torch

    encoder, root = tiny_exports[family]
    light = load_hf_light_encoder(root, encoder.fingerprint)
    assert light is not None and light.dim == encoder.dim
    ids, lengths = light.tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(ids, encoder.tokenizer(TEXTS).numpy())
    assert ids.shape[1] == encoder.tokenizer.context_length
    reference = encoder.encode_texts(TEXTS)
    ours = light.encode_texts(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.sum(ours * reference, axis=1).min() >= 0.9999
    # One text at a time (the query path): padding skipped where the tower ignores it, same vectors.
    # (An NLLB model reads each text under its script's code; the ids above were made under the default one.)
    default = {"lang": light.tokenizer.default_language} if light.languages else {}
    for i in (0, 9, len(TEXTS) - 1):
        one = light.encode_texts([TEXTS[i]], **default)
        with torch.inference_mode():
            full = encoder.encode_tokens_full(torch.from_numpy(ids[i:i + 1]))
        assert float(np.sum(one * full)) >= 0.9999


def test_nllb_language_codes_reach_the_tokens(tiny_exports) -> None:  # noqa: F811 - a fixture
    """NLLB queries carry their language: ids and vectors equal open_clip's with the same ``src_lang``."""
    import torch

    encoder, root = tiny_exports["nllb"]
    light = load_hf_light_encoder(root, encoder.fingerprint)
    assert light is not None and light.languages is not None and "zho_Hant" in light.languages
    hf = encoder.tokenizer.tokenizer
    vectors = {}
    try:
        for lang in LANGUAGES:
            hf.src_lang = lang  # the setter; open_clip's set_language() is undone by every call (transformers 5)
            theirs = encoder.tokenizer(TEXTS).numpy()
            ours = light.tokenizer(TEXTS, lang)
            np.testing.assert_array_equal(ours, theirs)
            assert (ours[:, 0] == hf.convert_tokens_to_ids(lang)).all()
            vectors[lang] = light.encode_texts(TEXTS[:3], lang)
            with torch.inference_mode():  # open_clip's own tokens under src_lang, through its own encode_text
                reference = encoder.encode_tokens_full(torch.from_numpy(theirs[:3]))
            assert np.sum(vectors[lang] * reference, axis=1).min() >= 0.9999
            assert np.sum(vectors[lang] * encoder.encode_texts(TEXTS[:3], lang=lang), axis=1).min() >= 0.9999
    finally:
        hf.src_lang = "eng_Latn"
    # The code changes the embedding: the same words under another language are another vector.
    assert float(np.sum(vectors["zho_Hans"][0] * vectors["jpn_Jpan"][0])) < 0.9999
    with pytest.raises(Exception, match="no language code"):
        light.encode_texts(["x"], "xxx_Xxxx")


def test_cold_query_imports_neither_torch_nor_transformers(tiny_exports) -> None:  # noqa: F811 - a fixture
    roots = {family: (str(root), enc.fingerprint) for family, (enc, root) in tiny_exports.items()}
    script = f"""
import json, sys, time
t0 = time.perf_counter()
from retrieval.hf_text_light import load_hf_light_encoder
out = {{}}
for family, (root, fp) in {roots!r}.items():
    light = load_hf_light_encoder(root, fp)
    out[family] = light.encode_texts({TEXTS[:4]!r}).tolist()
heavy = sorted(m for m in ("torch", "transformers", "open_clip") if m in sys.modules)
print(json.dumps({{"vectors": out, "heavy": heavy, "seconds": time.perf_counter() - t0}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    for family, (encoder, _) in tiny_exports.items():
        got = np.asarray(result["vectors"][family], dtype=np.float32)
        assert np.sum(got * encoder.encode_texts(TEXTS[:4]), axis=1).min() >= 0.9999


@pytest.mark.parametrize("damage", ["truncate_tower", "truncate_table", "bad_tokenizer", "bad_meta", "missing_tower"])
def test_damaged_export_falls_back_and_is_rewritten(tiny_exports, tmp_path: Path, damage: str) -> None:  # noqa: F811 - a fixture
    import shutil

    from retrieval.hf_text_export import ensure_hf_export

    encoder, root = tiny_exports["xlm-roberta"]
    mine = tmp_path / "root"
    shutil.copytree(export_dir(root, encoder.fingerprint), export_dir(mine, encoder.fingerprint))
    target = export_dir(mine, encoder.fingerprint)
    if damage == "truncate_tower":
        data = (target / TOWER_FILE).read_bytes()
        (target / TOWER_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "truncate_table":
        data = (target / EMBEDDING_FILE).read_bytes()
        (target / EMBEDDING_FILE).write_bytes(data[:-64])
    elif damage == "bad_tokenizer":
        size = (target / TOKENIZER_FILE).stat().st_size
        (target / TOKENIZER_FILE).write_bytes(b"{" + b" " * (size - 1))  # same size, not JSON
    elif damage == "bad_meta":
        (target / META_FILE).write_text("{not json")
    else:
        (target / TOWER_FILE).unlink()
    assert load_hf_light_encoder(mine, encoder.fingerprint) is None
    assert load_any_light_encoder(mine, encoder.fingerprint) is None
    assert ensure_hf_export(encoder, mine)  # written again, whole
    again = load_hf_light_encoder(mine, encoder.fingerprint)
    assert again is not None
    assert np.sum(again.encode_texts(TEXTS[:2]) * encoder.encode_texts(TEXTS[:2]), axis=1).min() >= 0.9999


def test_unsupported_tokenizer_gets_a_marker_once(tiny_ml: TinyModels, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    from retrieval import hf_text_export

    encoder = load_tiny(tiny_ml.archs["xlm-roberta"])
    monkeypatch.setattr(encoder.tokenizer, "tokenizer_mode", "clips")
    assert not hf_text_export.ensure_hf_export(encoder, tmp_path)
    marker = export_dir(tmp_path, encoder.fingerprint) / UNSUPPORTED_FILE
    assert "clips" in json.loads(marker.read_text())["reason"]
    calls = []
    monkeypatch.setattr(hf_text_export, "_export", lambda *a: calls.append(a) or True)
    assert not hf_text_export.ensure_hf_export(encoder, tmp_path)
    assert calls == []  # known unsupported: not tried again


@pytest.mark.parametrize("package", ["onnxruntime", "onnx", "tokenizers"])
def test_missing_package_writes_no_marker(tiny_ml: TinyModels, tmp_path: Path, monkeypatch, package: str) -> None:  # noqa: F811
    from retrieval.hf_text_export import ensure_hf_export

    encoder = load_tiny(tiny_ml.archs["siglip-i18n"])
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    assert not ensure_hf_export(encoder, tmp_path)
    assert not export_dir(tmp_path, encoder.fingerprint).exists()  # installing the package later enables it


def test_lowered_text_tower_is_not_exported(tiny_ml: TinyModels, tmp_path: Path) -> None:  # noqa: F811
    from retrieval.encoder import load_encoder
    from retrieval.hf_text_export import ensure_hf_export

    from .tiny_multilingual import _quiet_transformers

    with _quiet_transformers():
        encoder = load_encoder(tiny_ml.archs["xlm-roberta"], precision="bf16")
    assert not ensure_hf_export(encoder, tmp_path)
    assert not export_dir(tmp_path, encoder.fingerprint).exists()


def test_clip_bpe_models_keep_their_own_export(tmp_path: Path) -> None:
    """A plain CLIP model is not this module's: the dispatcher finds the numpy export, the HF loader nothing."""
    from retrieval.encoder import load_encoder
    from retrieval.hf_text_export import is_hf_tokenizer_model
    from retrieval.text_export import ensure_export
    from retrieval.text_light import LightTextEncoder

    from .conftest import TINY_MODEL

    encoder = load_encoder(TINY_MODEL)
    assert not is_hf_tokenizer_model(encoder)
    assert ensure_export(encoder, tmp_path)
    assert load_hf_light_encoder(tmp_path, encoder.fingerprint) is None
    assert isinstance(load_any_light_encoder(tmp_path, encoder.fingerprint), LightTextEncoder)


def test_load_refuses_other_formats(tmp_path: Path) -> None:
    (tmp_path / META_FILE).write_text(json.dumps({"format": 1}))
    with pytest.raises(Exception, match="not an hf-onnx-1 export"):
        HfLightTextEncoder.load(tmp_path)


def test_a_tower_without_onnx_form_gets_a_marker(tiny_ml: TinyModels, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """An exporter failure is the model's: marked, not retried at every load; a full disk is not marked."""
    import torch

    from retrieval.hf_text_export import ensure_hf_export

    encoder = load_tiny(tiny_ml.archs["xlm-roberta"])

    def no_onnx_form(*args, **kwargs):
        raise torch.onnx.OnnxExporterError("operator 'aten::made_up' is not supported")

    monkeypatch.setattr(torch.onnx, "export", no_onnx_form)
    assert not ensure_hf_export(encoder, tmp_path / "a")
    marker = export_dir(tmp_path / "a", encoder.fingerprint) / UNSUPPORTED_FILE
    assert "made_up" in json.loads(marker.read_text())["reason"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", disk_full)
    assert not ensure_hf_export(encoder, tmp_path / "b")
    assert not (export_dir(tmp_path / "b", encoder.fingerprint) / UNSUPPORTED_FILE).exists()
    assert not [p for p in export_dir(tmp_path / "b", "x").parent.iterdir()]  # no temporary folder left
