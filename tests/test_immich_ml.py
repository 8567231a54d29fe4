"""mmsearch as immich's machine-learning service: immich's own request forms replayed, replies checked.

The forms are the ones immich's server builds (server/src/repositories/
machine-learning.repository.ts): a multipart body with ``entries`` (JSON) and
``text``, or ``image`` as a Blob (file name "blob", application/octet-stream).
Vectors must equal mmsearch's own embedding of the same input (tiny model).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the stand-in needs the 'fastapi' package")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs the 'httpx' package")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval.api import create_index  # noqa: E402
from retrieval.encoder import Encoder  # noqa: E402
from retrieval.errors import ModelMismatchError  # noqa: E402
from retrieval.immich_ml import ImmichModels, create_immich_ml_app  # noqa: E402
from retrieval.immich_models import (  # noqa: E402
    IMMICH_CLIP_MODELS,
    clean_model_name,
    clean_text,
    flores_code,
    format_embedding,
    immich_names_for,
)

from .conftest import make_image  # noqa: E402

TINY = "tiny__test"  # immich never sends a name it does not know; a test may


def textual(model: str, **options) -> str:
    """entries as encodeText builds it: options.language is dropped by JSON.stringify when undefined."""
    return json.dumps({"clip": {"textual": {"modelName": model, "options": options}}})


def visual(model: str) -> str:
    return json.dumps({"clip": {"visual": {"modelName": model}}})


def blob(data: bytes) -> dict:
    """The image part as Node's FormData sends a Blob."""
    return {"image": ("blob", data, "application/octet-stream")}


def vector_of(reply) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["clip"], str)  # a JSON array *in a string*, as immich stores it
    return np.asarray(json.loads(reply.json()["clip"]), dtype=np.float32)


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory, tiny_encoder):
    """mmsearch's own embeddings: an (empty) index of the tiny model."""
    index = create_index("own", encoder=tiny_encoder, root=tmp_path_factory.mktemp("immich") / "root")
    yield index
    index.close()


@pytest.fixture(scope="module")
def client(tiny_encoder):
    with TestClient(create_immich_ml_app({TINY: tiny_encoder})) as c:
        yield c


def test_ping_and_root_answer_as_immichs_service(client) -> None:
    pong = client.get("/ping")
    assert pong.status_code == 200 and pong.text == "pong" and pong.headers["content-type"].startswith("text/plain")
    assert client.get("/").json() == {"message": "Immich ML"}


def test_textual_requests_with_and_without_options(client, own) -> None:
    text = "a red square on a blue background"
    expected = own.embed_text(text)
    for entries in (textual(TINY), textual(TINY, language="de"),
                    json.dumps({"clip": {"textual": {"modelName": TINY}}}),  # no options key at all
                    textual(f"immich-app/{TINY}")):  # a hub-style name is cleaned as immich cleans it
        reply = client.post("/predict", data={"entries": entries, "text": text})
        assert set(reply.json()) == {"clip"}
        got = vector_of(reply)
        assert got.shape == (32,) and np.array_equal(got, expected)
    # immich's cleaning: whitespace runs collapse (the tiny tokenizer would fold them as well)
    messy = client.post("/predict", data={"entries": textual(TINY),
                                          "text": "  a red\tsquare \n on a   blue background "})
    assert np.array_equal(vector_of(messy), expected)


def test_visual_request_replies_with_the_vector_and_the_image_size(client, own, tmp_path: Path) -> None:
    # A photo stored sideways (EXIF orientation 6), big enough for mmsearch's reduced-size JPEG decode.
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(4, (320, 240)).save(path, exif=exif, quality=92)
    reply = client.post("/predict", data={"entries": visual(TINY)}, files=blob(path.read_bytes()))
    assert set(reply.json()) == {"clip", "imageHeight", "imageWidth"}
    assert (reply.json()["imageWidth"], reply.json()["imageHeight"]) == (240, 320)  # upright, as shown
    assert np.array_equal(vector_of(reply), own.embed_image(path))
    png = io.BytesIO()
    make_image(9, (64, 48)).save(png, format="PNG")
    small = client.post("/predict", data={"entries": visual(TINY)}, files=blob(png.getvalue()))
    assert (small.json()["imageWidth"], small.json()["imageHeight"]) == (64, 48)
    assert np.array_equal(vector_of(small), own.embed_image(Image.open(io.BytesIO(png.getvalue()))))


def test_faces_and_ocr_get_501_so_immich_moves_on(client, tmp_path: Path) -> None:
    png = io.BytesIO()
    make_image(1).save(png, format="PNG")
    faces = json.dumps({"facial-recognition": {"detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
                                               "recognition": {"modelName": "buffalo_l"}}})
    ocr = json.dumps({"ocr": {"detection": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.5,
                                                                                          "maxResolution": 736}},
                              "recognition": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.8}}}})
    for entries, task in ((faces, "facial-recognition"), (ocr, "ocr")):
        reply = client.post("/predict", data={"entries": entries}, files=blob(png.getvalue()))
        assert reply.status_code == 501
        body = reply.json()
        assert body["error"] == "not_implemented" and task in body["message"]
        assert "immich's own machine-learning URL" in body["message"]


def test_models_not_served_get_501_naming_what_is(client) -> None:
    other = client.post("/predict", data={"entries": textual("ViT-L-14__openai"), "text": "cat"})
    assert other.status_code == 501 and "ViT-L-14__openai" in other.json()["message"]
    assert TINY in other.json()["message"]
    mclip = client.post("/predict", data={"entries": textual("XLM-Roberta-Large-Vit-B-16Plus"), "text": "cat"})
    assert mclip.status_code == 501 and "M-CLIP" in mclip.json()["message"]


def test_a_model_whose_vectors_have_another_size_is_refused(tiny_encoder) -> None:
    with pytest.raises(ModelMismatchError, match="512-d vectors from ViT-B-32__openai, but this model gives 32-d"):
        ImmichModels({"ViT-B-32__openai": tiny_encoder})
    # Loaded on demand: the same refusal, as a 501 so immich asks its next URL; the model is not loaded again.
    loads: list[str] = []
    lazy = ImmichModels(load=lambda spec: loads.append(spec) or tiny_encoder)
    with TestClient(create_immich_ml_app(lazy)) as c:
        for _ in range(2):
            reply = c.post("/predict", data={"entries": textual("nllb-clip-base-siglip__v1"), "text": "cat"})
            assert reply.status_code == 501 and "768-d" in reply.json()["message"]
    assert loads == ["nllb-clip-base-siglip:v1"]


class SizedEncoder:
    """A stand-in for a real 512-d model: the tiny model's vector, tiled and renormalised."""

    def __init__(self, inner) -> None:
        self.inner, self.dim = inner, 512

    def _tile(self, v: np.ndarray) -> np.ndarray:
        out = np.tile(v, (1, 16))
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_texts(self, texts):
        return self._tile(self.inner.encode_texts(texts))

    def encode_images(self, images):
        return self._tile(self.inner.encode_images(images))


def test_known_names_are_loaded_once_on_demand_with_their_open_clip_spec(tiny_encoder) -> None:
    loads: list[str] = []

    def load(spec: str):
        loads.append(spec)
        return SizedEncoder(tiny_encoder)

    with TestClient(create_immich_ml_app(ImmichModels(load=load))) as c:
        for _ in range(2):
            reply = c.post("/predict", data={"entries": textual("ViT-B-32__laion2b-s34b-b79k"), "text": "cat"})
            assert vector_of(reply).shape == (512,)
    assert loads == ["ViT-B-32:laion2b_s34b_b79k"]  # immich's '-' tag, open_clip's '_'


class LanguageTokenizer:
    """An NLLB-like tokenizer over the tiny one: the source language it was set to leads each text."""

    def __init__(self, inner) -> None:
        self.inner, self.language, self.calls = inner, "eng_Latn", []

    def set_language(self, code: str) -> None:
        self.calls.append(code)
        self.language = code

    def __call__(self, texts, context_length=None):
        return self.inner([f"{self.language} {t}" for t in texts])


def test_language_reaches_nllb_tokenizers_and_cleaning_follows_the_model(tiny_encoder) -> None:
    tokenizer = LanguageTokenizer(tiny_encoder.tokenizer)
    nllb = Encoder(tiny_encoder.model, tiny_encoder.preprocess, tokenizer, spec="nllb-tiny")
    canonical = Encoder(tiny_encoder.model, tiny_encoder.preprocess, tiny_encoder.tokenizer, spec="siglip-tiny",
                        model_config={"text_cfg": {"tokenizer_kwargs": {"clean": "canonicalize"}}})
    models = {"nllb-clip-tiny__test": nllb, "siglip-tiny__test": canonical, TINY: tiny_encoder}
    with TestClient(create_immich_ml_app(models)) as c:
        def ask(model: str, text: str, **options) -> np.ndarray:
            return vector_of(c.post("/predict", data={"entries": textual(model, **options), "text": text}))

        tokenizer.calls.clear()
        for language, code in (("fr", "fra_Latn"), ("pt-BR", "por_Latn"), ("zh-TW", "zho_Hant"), ("xx", "eng_Latn")):
            assert np.array_equal(ask("nllb-clip-tiny__test", "un chat", language=language),
                                  tiny_encoder.encode_texts([f"{code} un chat"])[0])
        assert tokenizer.calls == ["fra_Latn", "eng_Latn", "por_Latn", "eng_Latn", "zho_Hant", "eng_Latn",
                                   "eng_Latn", "eng_Latn"]  # set, then put back after each request
        assert np.array_equal(ask("nllb-clip-tiny__test", "a cat"), tiny_encoder.encode_texts(["eng_Latn a cat"])[0])
        # Models without a language token ignore it.
        assert np.array_equal(ask(TINY, "a cat", language="fr"), tiny_encoder.encode_texts(["a cat"])[0])
        # SigLIP-style tokenizers: punctuation and case go, as immich's service cleans them.
        canonical_vector = tiny_encoder.encode_texts(["a red square"])[0]
        assert np.array_equal(ask("siglip-tiny__test", "A Red, Square!"), canonical_vector)
        assert not np.array_equal(ask(TINY, "A Red, Square!"), canonical_vector)


def test_malformed_requests_are_clear_errors(client) -> None:
    cases = [
        ({"entries": "not json", "text": "x"}, None, 422, "not JSON"),
        ({"entries": json.dumps({"clip": {"textual": {}}}), "text": "x"}, None, 422, "modelName"),
        ({"entries": json.dumps([]), "text": "x"}, None, 422, "JSON object"),
        ({"text": "x"}, None, 422, "entries"),
        ({"entries": textual(TINY)}, None, 400, "either image or text"),
        ({"entries": visual(TINY), "text": "x"}, None, 400, "needs an 'image'"),
        ({"entries": textual(TINY)}, blob(b"\x89PNG"), 400, "needs a 'text'"),
        ({"entries": visual(TINY)}, blob(b"not an image at all"), 422, "not usable"),
        ({"entries": visual(TINY)}, blob(b""), 422, "empty"),
    ]
    for data, files, status, words in cases:
        reply = client.post("/predict", data=data, files=files)
        assert reply.status_code == status, (data, reply.text)
        assert words in reply.json()["message"], (data, reply.json())


def test_body_cap_and_host_guard(tiny_encoder) -> None:
    app = create_immich_ml_app({TINY: tiny_encoder}, allowed_hosts=["127.0.0.1", "immich-ml"], max_upload_bytes=2048)
    with TestClient(app, base_url="http://immich-ml:3003") as c:
        assert c.get("/ping").text == "pong"
        big = c.post("/predict", data={"entries": visual(TINY)}, files=blob(b"\0" * 4096))
        assert big.status_code == 413
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/ping").status_code == 400


# -- the tables ------------------------------------------------------------------------------

# immich's CLIP models and the vector size its database expects for each (server/src/constants.ts,
# CLIP_MODEL_INFO), written out here independently of retrieval.immich_ml's grouped table.
IMMICH_DIMS = {
    "RN101__openai": 512, "RN101__yfcc15m": 512, "ViT-B-16__laion400m_e31": 512, "ViT-B-16__laion400m_e32": 512,
    "ViT-B-16__openai": 512, "ViT-B-32__laion2b-s34b-b79k": 512, "ViT-B-32__laion2b_e16": 512,
    "ViT-B-32__laion400m_e31": 512, "ViT-B-32__laion400m_e32": 512, "ViT-B-32__openai": 512,
    "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k": 512, "XLM-Roberta-Large-Vit-B-32": 512,
    "RN50x4__openai": 640, "ViT-B-16-plus-240__laion400m_e31": 640, "ViT-B-16-plus-240__laion400m_e32": 640,
    "XLM-Roberta-Large-Vit-B-16Plus": 640, "LABSE-Vit-L-14": 768, "RN50x16__openai": 768,
    "ViT-B-16-SigLIP-256__webli": 768, "ViT-B-16-SigLIP-384__webli": 768, "ViT-B-16-SigLIP-512__webli": 768,
    "ViT-B-16-SigLIP-i18n-256__webli": 768, "ViT-B-16-SigLIP__webli": 768, "ViT-L-14-336__openai": 768,
    "ViT-L-14-quickgelu__dfn2b": 768, "ViT-L-14__laion2b-s32b-b82k": 768, "ViT-L-14__laion400m_e31": 768,
    "ViT-L-14__laion400m_e32": 768, "ViT-L-14__openai": 768, "XLM-Roberta-Large-Vit-L-14": 768,
    "nllb-clip-base-siglip__mrl": 768, "nllb-clip-base-siglip__v1": 768, "RN50__cc12m": 1024, "RN50__openai": 1024,
    "RN50__yfcc15m": 1024, "RN50x64__openai": 1024, "ViT-H-14-378-quickgelu__dfn5b": 1024,
    "ViT-H-14-quickgelu__dfn5b": 1024, "ViT-H-14__laion2b-s32b-b79k": 1024, "ViT-L-16-SigLIP-256__webli": 1024,
    "ViT-L-16-SigLIP-384__webli": 1024, "ViT-g-14__laion2b-s12b-b42k": 1024,
    "XLM-Roberta-Large-ViT-H-14__frozen_laion5b_s13b_b90k": 1024, "ViT-SO400M-14-SigLIP-384__webli": 1152,
    "nllb-clip-large-siglip__mrl": 1152, "nllb-clip-large-siglip__v1": 1152, "ViT-B-16-SigLIP2__webli": 768,
    "ViT-B-32-SigLIP2-256__webli": 768, "ViT-L-16-SigLIP2-256__webli": 1024, "ViT-L-16-SigLIP2-384__webli": 1024,
    "ViT-L-16-SigLIP2-512__webli": 1024, "ViT-SO400M-14-SigLIP2__webli": 1152, "ViT-SO400M-14-SigLIP2-378__webli": 1152,
    "ViT-SO400M-16-SigLIP2-256__webli": 1152, "ViT-SO400M-16-SigLIP2-384__webli": 1152,
    "ViT-SO400M-16-SigLIP2-512__webli": 1152, "ViT-gopt-16-SigLIP2-256__webli": 1536,
    "ViT-gopt-16-SigLIP2-384__webli": 1536,
}


def test_every_immich_name_maps_to_an_open_clip_model_of_the_expected_size() -> None:
    open_clip = pytest.importorskip("open_clip")
    assert {n: m.dim for n, m in IMMICH_CLIP_MODELS.items()} == IMMICH_DIMS
    for name, model in IMMICH_CLIP_MODELS.items():
        if model.spec is None:
            assert "M-CLIP" in (model.unsupported or "")
            continue
        arch, tag = model.spec.split(":")
        assert tag in open_clip.list_pretrained_tags_by_model(arch), name
        assert open_clip.get_model_config(arch)["embed_dim"] == model.dim, name
    assert immich_names_for("ViT-B-32:openai") == ["ViT-B-32__openai"]
    assert immich_names_for("xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k") == [
        "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k"]
    assert immich_names_for("mmsearch-tiny") == []


def test_language_codes_are_nllb_tokens_and_names_and_texts_clean_as_immich_does() -> None:
    nllb = pytest.importorskip("transformers.models.nllb.tokenization_nllb")
    from retrieval.immich_models import _FLORES

    assert set(_FLORES.values()) <= set(nllb.FAIRSEQ_LANGUAGE_CODES)
    assert flores_code("nb-NO") == "nob_Latn" and flores_code("sr_Cyrl") == "srp_Cyrl"
    assert flores_code(None) == "eng_Latn" and flores_code("ZH-tw") == "zho_Hant"
    assert clean_model_name("immich-app/ViT-B-32__openai") == "ViT-B-32__openai"
    assert clean_model_name("ViT-B-32::openai") == "ViT-B-32__openai"
    assert clean_model_name("nllb-clip-base-siglip__v1.0") == "nllb-clip-base-siglip__v10"
    assert clean_text("  Hello,\t  World! ") == "Hello, World!"
    assert clean_text("  Hello,\t  World! ", canonicalize=True) == "hello world"
    vector = np.array([0.1, -1e-9, 0.3333333], dtype=np.float32)
    text = format_embedding(vector)
    assert text == "[0.1,-1e-09,0.3333333]" and np.array_equal(np.array(json.loads(text), dtype=np.float32), vector)


# -- the command ------------------------------------------------------------------------------


def test_serve_immich_ml_from_a_model_or_an_index(tiny_encoder, image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from retrieval.cli import app as cli_app

    monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
    seen: list[dict] = []

    def fake_run(app, **kwargs) -> None:  # instead of listening: drive the app it was given
        with TestClient(app, base_url=f"http://{kwargs['host']}:{kwargs['port']}") as c:
            kwargs["ping"] = c.get("/ping").text
            kwargs["vector"] = vector_of(c.post("/predict", data={"entries": textual(TINY), "text": "a red cup"}))
        seen.append(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    runner = CliRunner()
    expected = tiny_encoder.encode_texts(["a red cup"])[0]
    by_model = runner.invoke(cli_app, ["serve", "--immich-ml", "--model", "mmsearch-tiny", "--immich-name", TINY,
                                       "--port", "3003"])
    assert by_model.exit_code == 0, by_model.output
    assert seen[0]["port"] == 3003 and seen[0]["ping"] == "pong" and np.array_equal(seen[0]["vector"], expected)
    with create_index("tinyidx", encoder=tiny_encoder) as index:
        index.add_folder(image_folder)
    by_index = runner.invoke(cli_app, ["serve", "--immich-ml", "--index", "tinyidx", "--immich-name", TINY,
                                       "--host", "0.0.0.0"])
    assert by_index.exit_code == 0, by_index.output
    assert np.array_equal(seen[1]["vector"], expected) and "warning" in by_index.stderr and "no token" in by_index.stderr
    nameless = runner.invoke(cli_app, ["serve", "--immich-ml", "--model", "mmsearch-tiny"])
    assert nameless.exit_code == 1 and "--immich-name" in nameless.stderr
    wrong_size = runner.invoke(cli_app, ["serve", "--immich-ml", "--model", "mmsearch-tiny", "--immich-name",
                                         "ViT-B-32__openai"])
    assert wrong_size.exit_code == 1 and "512-d" in wrong_size.stderr and "Traceback" not in wrong_size.output
