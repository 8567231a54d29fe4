"""Multilingual models end to end, offline: catalogue, languages, one-folder save/load, index and query.

The tiny stand-ins of :mod:`tests.tiny_multilingual` are built in the layouts of
the published models (a hub-like folder per text tower and tokenizer); saved
with ``save_model_folder`` and their hub folders deleted, they must load, index
and answer queries in Chinese, Japanese and emoji with no network, through the
torch path and the torch-free cold path alike.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import InvalidQueryError, MissingDependencyError, ModelLoadError
from retrieval.multilingual import (
    CATALOGUE,
    LANG_TO_NLLB,
    default_model_figure,
    detect_language,
    find_model,
    model_rows,
    query_language,
    resolve_lang,
)
from retrieval.multilingual_figures import FIGURES

from .conftest import REPO, make_image
from .tiny_multilingual import (
    TinyModels,
    _quiet_transformers,
    build_tiny_multilingual,
    load_tiny,
    tiny_ml,  # noqa: F401 - a fixture
)

QUERIES = ["海边的狗", "一只在沙发上睡觉的猫", "ビーチの犬", "🐶🏖️", "紅色的鞋子", "ＲＥＤ　ｓｈｏｅｓ"]


# -- catalogue and languages (no torch) ---------------------------------------------------


def test_catalogue_matches_open_clip() -> None:
    import open_clip

    published = set(open_clip.list_pretrained(as_str=True))
    for model in CATALOGUE:
        assert model.spec in published, model.spec
        config = open_clip.get_model_config(model.arch)
        assert (config["embed_dim"], config["vision_cfg"]["image_size"]) == (model.dim, model.image_size)
        text = config["text_cfg"]
        assert text.get("hf_tokenizer_name"), model.spec  # every multilingual model tokenises with HF
        assert bool(text.get("hf_model_name")) == (model.family != "siglip-i18n")


def test_published_figures_cover_the_catalogue() -> None:
    for model in CATALOGUE:
        if (model.arch, model.pretrained) not in FIGURES:
            assert model.arch == "ViT-SO400M-16-SigLIP-i18n-256"  # the only one open_clip's table lacks
            assert model.figure("xm3600_r1", "zh") is None
            continue
        assert len(model.evaluated_languages()) == 36
        for metric in ("xm3600_r1", "xm3600_r10", "mscoco_r1", "mscoco_r10"):
            for lang in ("zh", "ja", "ko", "en") + (("ar",) if metric.startswith("xm3600") else ()):
                value = model.figure(metric, lang)
                assert value is not None and 0.0 < value < 1.0, (model.spec, metric, lang)
        assert model.figure("mscoco_r1", "ar") is None  # that table has no Arabic: None, not a made-up number
        # recall@10 >= recall@1, language by language: a check that columns were not mixed up
        assert all(model.figure("xm3600_r10", x) >= model.figure("xm3600_r1", x) for x in ("zh", "ja", "ko", "ru"))
    # The table's own story: the English default barely finds anything from a Chinese query.
    zh_default = default_model_figure("xm3600_r1", "zh")
    assert zh_default is not None
    assert all(m.figure("xm3600_r1", "zh") > 10 * zh_default for m in CATALOGUE if m.figure("xm3600_r1", "zh"))
    rows = model_rows("zh")
    multilingual = [r["xm3600_r1"] for r in rows if r["multilingual"] and r["xm3600_r1"] is not None]
    assert multilingual == sorted(multilingual, reverse=True) and len(multilingual) == len(CATALOGUE) - 1
    assert not rows[-1]["multilingual"] and rows[-1]["xm3600_r1"] == zh_default  # the English default, last
    assert {r["lang"] for r in rows} == {"zh"} and {r["lang"] for r in model_rows("zh-TW")} == {"zh"}
    json.dumps(rows)  # JSON-ready for --json
    assert find_model("nllb-clip-base-siglip:mrl").needs_language
    assert find_model("xlm-roberta-base-ViT-B-32") is CATALOGUE[0]
    assert find_model("ViT-B-32") is None


def test_language_table_uses_real_nllb_codes() -> None:
    pytest.importorskip("transformers")
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    assert set(LANG_TO_NLLB.values()) <= set(FAIRSEQ_LANGUAGE_CODES)


@pytest.mark.parametrize("text, code, certain", [
    ("红色的鞋子", "zho_Hans", True), ("紅色的鞋子", "zho_Hant", True), ("海邊的狗", "zho_Hant", True),
    ("一只在沙发上睡觉的猫", "zho_Hans", True), ("狗", "zho_Hans", True), ("赤い靴", "jpn_Jpan", True),
    ("東京タワー", "jpn_Jpan", True), ("ｶﾀｶﾅ", "jpn_Jpan", True), ("빨간 신발", "kor_Hang", True),
    ("كلب على الشاطئ", "arb_Arab", False), ("سگ در پارک", "pes_Arab", False), ("собака на пляже", "rus_Cyrl", False),
    ("собака на пляжі", "ukr_Cyrl", False), ("Σκύλος στην παραλία", "ell_Grek", True), ("สุนัข", "tha_Thai", True),
    ("une robe rouge", "eng_Latn", False), ("iPhone 手机壳", "zho_Hans", True),
    ("ＲＥＤ ｓｈｏｅｓ", "eng_Latn", False),
    ("🐶🏖️ 123 !?", None, False),
])
def test_detect_language(text: str, code: str | None, certain: bool) -> None:
    guess = detect_language(text)
    assert (guess.code, guess.certain) == (code, certain)


def test_lang_option() -> None:
    assert [resolve_lang(x) for x in ("zh", "ZH-tw", "zh_Hant", "zh-HK", "ja", "fr", "de-AT", "pt-BR", "fra_Latn")] == [
        "zho_Hans", "zho_Hant", "zho_Hant", "zho_Hant", "jpn_Jpan", "fra_Latn", "deu_Latn", "por_Latn", "fra_Latn"]
    assert query_language("une robe rouge", "fr") == "fra_Latn"
    assert query_language("une robe rouge") == "eng_Latn"  # Latin script: English unless told
    assert query_language("🐶") == "eng_Latn"
    for bad in ("klingon", "", "zh-XX-foo-bar", "x"):
        with pytest.raises(InvalidQueryError, match="unknown language"):
            resolve_lang(bad)


# -- the one-folder layout -------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray, str]]:
    """Each family saved in one folder, its hub folder then deleted: (folder, query vectors, fingerprint)."""
    from retrieval.model_save import save_model_folder

    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("saved")
    tiny = build_tiny_multilingual(root / "build", prefix="mmsearch-tiny-save")
    out = {}
    for family, arch in tiny.archs.items():
        encoder = load_tiny(arch)
        with _quiet_transformers():
            folder = save_model_folder(encoder, root / "models" / family)
        out[family] = (folder, encoder.encode_texts(QUERIES), encoder.fingerprint)
    shutil.rmtree(root / "build" / "hub")  # what the spec was built from is gone: the folders stand alone
    return out


def test_saved_folder_layout(saved) -> None:
    from retrieval.model_folder import HF_CONFIG_NAME, folder_info, local_model_kwargs

    for family, (folder, _, fingerprint) in saved.items():
        names = {p.name for p in folder.iterdir()}
        assert {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"} <= names
        assert (HF_CONFIG_NAME in names) == (family != "siglip-i18n")
        info = folder_info(folder)
        assert info["fingerprint"] == fingerprint and info["source"].endswith(family)
        assert all((folder / name).stat().st_size == size for name, size in info["files"].items())
        kwargs = local_model_kwargs(folder)
        if family == "siglip-i18n":
            assert kwargs == {}  # open_clip's own tower: local-dir alone suffices
        else:
            assert kwargs["text_cfg"]["hf_model_name"] == str(folder) and not kwargs["text_cfg"]["hf_model_pretrained"]
        assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp folder left behind


def test_saved_folders_load_with_no_network(saved) -> None:
    """A fresh process with every socket refused and no HF_HUB_OFFLINE loads each folder: same fingerprint, vectors."""
    folders = {family: str(folder) for family, (folder, _, _) in saved.items()}
    script = f"""
import json, os, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:80])
    raise OSError("network refused by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)
from transformers.utils import logging as hf_logging
hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
from retrieval.encoder import load_encoder
out = {{}}
for family, folder in {folders!r}.items():
    enc = load_encoder(folder)
    out[family] = {{"fp": enc.fingerprint, "vectors": enc.encode_texts({QUERIES!r}).tolist()}}
print(json.dumps({{"models": out, "attempts": attempts}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    for family, (_, vectors, fingerprint) in saved.items():
        got = result["models"][family]
        assert got["fp"] == fingerprint
        assert np.sum(np.asarray(got["vectors"], dtype=np.float32) * vectors, axis=1).min() >= 0.99999


def test_save_refuses_existing_folder_and_lowered_models(tiny_ml: TinyModels, tmp_path: Path) -> None:  # noqa: F811
    from retrieval.encoder import load_encoder
    from retrieval.model_save import save_model_folder

    encoder = load_tiny(tiny_ml.archs["xlm-roberta"])
    with _quiet_transformers():
        folder = save_model_folder(encoder, tmp_path / "model", verify=False)
    with pytest.raises(ModelLoadError, match="already exists"):
        save_model_folder(encoder, folder)
    with _quiet_transformers():
        lowered = load_encoder(tiny_ml.archs["xlm-roberta"], precision="bf16")
    with pytest.raises(ModelLoadError, match="fp32"):
        save_model_folder(lowered, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    (folder / "stale.txt").write_text("from the old folder")
    with _quiet_transformers():  # overwrite replaces the folder as a whole
        again = save_model_folder(encoder, folder, overwrite=True)
    assert again == folder and (folder / "open_clip_model.safetensors").is_file()
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or .old folder left


def test_missing_extra_is_one_line(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without transformers: one line naming the extra, for a published spec and for a saved folder."""
    from retrieval.encoder import load_encoder
    from retrieval.model_folder import require_text_extra
    from retrieval.model_spec import read_local_config

    folder = saved["xlm-roberta"][0]
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails, as if not installed
    messages = []
    for spec in ("xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k", "nllb-clip-base-siglip:mrl",
                 "ViT-B-16-SigLIP-i18n-256:webli", str(folder)):
        with pytest.raises(MissingDependencyError) as exc:  # before any download is tried
            load_encoder(spec)
        messages.append(str(exc.value))
    for message in messages:
        assert "\n" not in message
        assert "pip install 'mmsearch[multilingual]'" in message and "transformers" in message
    assert "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k" in messages[0] and "text tower and tokenizer" in messages[0]
    assert "Hugging Face tokenizer, which" in messages[2]  # SigLIP i18n: open_clip's tower, an HF tokenizer
    with pytest.raises(MissingDependencyError, match="Hugging Face tokenizer, which"):
        require_text_extra(read_local_config(saved["siglip-i18n"][0]), "ViT-B-16-SigLIP-i18n-256")
    require_text_extra({"text_cfg": {"context_length": 77}}, "ViT-B-32")  # CLIP BPE models need nothing


def test_published_spec_without_network_says_how_to_bring_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here nothing can be downloaded: a published multilingual spec is one error naming 'models save'."""
    import socket

    from retrieval.encoder import load_encoder

    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # fail at once, whatever the machine's resolver does
    with pytest.raises(ModelLoadError) as exc:
        load_encoder("xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k")
    message = str(exc.value)
    assert "\n" not in message and "could not be downloaded" in message
    assert "mmsearch models save xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k DIR" in message


def test_missing_package_found_in_load_errors() -> None:
    from retrieval.model_folder import explain_missing_module

    err = ModuleNotFoundError("No module named 'sentencepiece'", name="sentencepiece")
    assert "sentencepiece" in str(explain_missing_module(err, "m"))
    assert "transformers" in str(explain_missing_module(
        RuntimeError("Please `pip install transformers` to use pre-trained HuggingFace models"), "m"))
    assert explain_missing_module(ValueError("shape mismatch in transformers/modeling.py"), "m") is None
    assert isinstance(explain_missing_module(err, "m"), MissingDependencyError)


# -- index and query --------------------------------------------------------------------


def _images(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        make_image(100 + i).save(folder / f"p{i}.png")
    return folder


@pytest.mark.parametrize("family", ["xlm-roberta", "nllb", "siglip-i18n"])
def test_index_and_query_from_a_saved_folder(saved, family: str, tmp_path: Path) -> None:
    """--model DIR: index, query in Chinese/Japanese/emoji; the cold (torch-free) query answers the same."""
    from retrieval.api import create_index, open_index
    from retrieval.hf_text_light import load_hf_light_encoder

    folder = saved[family][0]
    root = tmp_path / "indexes"
    with _quiet_transformers():
        index = create_index("ml", model=str(folder), root=root)
        index.add_folder(_images(tmp_path / "photos"))
    assert index.model == str(folder)
    assert load_hf_light_encoder(root, index.store.manifest.fingerprint) is not None  # exported on load
    warm = {q: [(h.path, round(h.score, 5)) for h in index.search_text(q, k=3)] for q in QUERIES}
    assert all(len(hits) == 3 for hits in warm.values())
    index.close()
    script = f"""
import json, sys
from retrieval.api import open_index
index = open_index("ml", root={str(root)!r})
out = {{q: [(h.path, round(h.score, 5)) for h in index.search_text(q, k=3)] for q in {QUERIES!r}}}
print(json.dumps({{"hits": out, "torch": "torch" in sys.modules, "path": index.queries.text_path,
                  "light": type(index.queries._text_encoder()).__name__}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    cold = json.loads(done.stdout)
    assert cold["light"] == "HfLightTextEncoder" and cold["path"] == "torch-free export" and cold["torch"] is False
    for q in QUERIES:
        assert [p for p, _ in cold["hits"][q]] == [p for p, _ in warm[q]], q
        assert np.allclose([s for _, s in cold["hits"][q]], [s for _, s in warm[q]], atol=1e-4)
    reopened = open_index("ml", root=root)
    assert reopened.encoder.fingerprint == saved[family][2]  # the torch path loads the folder offline too


def test_fine_tuned_multilingual_model_loads_and_resumes_offline(saved, tmp_path: Path) -> None:
    """mmsearch train --from a saved XLM-R folder: the checkpoint holds the tower's config, so it loads with no hub."""
    from retrieval import synthetic as syn
    from retrieval.encoder import load_encoder
    from retrieval.model_folder import HF_CONFIG_NAME
    from retrieval.train import TrainCfg, fit, read_pairs

    world = syn.generate_catalogue(tmp_path / "world", n_images=24, seed=1, image_size=32, languages=("en", "zh"))
    data = read_pairs(world.captions_csv)
    out = tmp_path / "tuned"
    cfg = TrainCfg(from_spec=str(saved["xlm-roberta"][0]), epochs=1, batch_size=8, augment=False)
    with _quiet_transformers():
        fit(data, out, cfg, progress=None)
        assert (out / HF_CONFIG_NAME).is_file() and (out / "last" / HF_CONFIG_NAME).is_file()
        tuned = load_encoder(str(out))  # the hub folder the spec was built from is gone (see ``saved``)
        assert tuned.encode_texts(QUERIES).shape == (len(QUERIES), tuned.dim)
        resumed = fit(data, out, TrainCfg(resume=True, epochs=2), progress=None)
    assert resumed.epochs_run == 1 and resumed.steps > 0


def test_tokenizer_kinds(tiny_ml: TinyModels) -> None:  # noqa: F811
    from retrieval.text_light import ClipBpeTokenizer
    from retrieval.text_normalise import tokenizer_kind_of

    kinds = {family: tokenizer_kind_of(load_tiny(arch).tokenizer) for family, arch in tiny_ml.archs.items()}
    assert kinds == {"xlm-roberta": "xlm-roberta", "nllb": "nllb", "siglip-i18n": "t5", "hf-tokenizers": "hf"}
    assert tokenizer_kind_of(ClipBpeTokenizer()) == "clip-bpe"


def test_save_from_an_hf_hub_spec_keeps_its_fingerprint(tiny_ml: TinyModels, tmp_path: Path,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder loaded from hf-hub:ORG/REPO hashes {"hf-hub": repo}; its folder must load as the same model."""
    import open_clip.pretrained

    from retrieval.encoder import Encoder, load_encoder
    from retrieval.model_folder import folder_info
    from retrieval.model_save import save_model_folder

    tiny = load_tiny(tiny_ml.archs["xlm-roberta"])
    hub_config = tmp_path / "hub" / "open_clip_config.json"  # what the hub repo would hold, cached
    hub_config.parent.mkdir()
    hub_config.write_text(json.dumps({"model_cfg": tiny.model_config, "preprocess_cfg": {}}))
    calls = []

    def cached(repo: str, filename: str = "", **kwargs) -> str:
        calls.append((repo, filename))
        return str(hub_config)

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", cached)
    encoder = Encoder(tiny.model, tiny.preprocess, tiny.tokenizer, spec="hf-hub:org/tiny-xlmr",
                      model_config={"hf-hub": "org/tiny-xlmr"})
    with _quiet_transformers():
        folder = save_model_folder(encoder, tmp_path / "model")
        assert calls == [("org/tiny-xlmr", "open_clip_config.json")]
        assert folder_info(folder)["fingerprint_config"] == {"hf-hub": "org/tiny-xlmr"}
        assert load_encoder(str(folder)).fingerprint == encoder.fingerprint
        # Saving a folder again, by its path, copies it (same model, same fingerprint).
        copy = save_model_folder(str(folder), tmp_path / "copy")
    assert folder_info(copy)["fingerprint"] == encoder.fingerprint
    assert len(calls) == 1  # the copy read the folder's own config, not the hub
