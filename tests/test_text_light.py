"""The torch-free text path: same tokens as open_clip, same embeddings as the model, used by cold queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.text_light import ClipBpeTokenizer, LightTextEncoder, export_dir, load_light_encoder

from .conftest import REPO, TINY_MODEL

TEXTS = [
    "red shoes",
    "A Striped BLUE shirt, size 42!",
    "  lots   of\twhitespace\n here  ",
    "café, naïve, Ünïcödé — “quotes” and ‘apostrophes’",
    "日本語のテキスト and 中文 mixed with English",
    "emoji 🐕🌊 on a beach 🏖️",
    "&amp;lt;html&amp;gt; entities &quot;twice&quot;",
    "it's they're we've I'm you'll he'd",
    "numbers 1234567 and 3.14159 and 1st 2nd",
    "snake_case_words and kebab-case-words",
    "<start_of_text> inside a caption <end_of_text>",
    "x",
    "",
    " ".join(f"word{i}" for i in range(200)),  # longer than any context: truncated
]


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_tokens_equal_open_clip(clean: str) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    for context in (77, 32):
        theirs = SimpleTokenizer(context_length=context, clean=clean)(TEXTS).numpy()
        ours = ClipBpeTokenizer(context_length=context, clean=clean)(TEXTS)
        assert ours.dtype == np.int64
        np.testing.assert_array_equal(ours, theirs)


def _encoder_with(tmp_path: Path, **text_cfg):
    """A tiny CLIP with text-tower variants the export must handle (QuickGELU, LayerScale, linear projection)."""
    import open_clip
    import torch

    from retrieval.encoder import Encoder

    quick = text_cfg.pop("quick_gelu", False)
    torch.manual_seed(1)
    cfg = open_clip.get_model_config(TINY_MODEL)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], {**cfg["text_cfg"], **text_cfg}, quick_gelu=quick)
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    return Encoder(model, preprocess, tokenizer, spec=f"variant-{tmp_path.name}", model_config={"v": str(text_cfg)})


@pytest.mark.parametrize("variant", [
    {},
    {"quick_gelu": True},
    {"ls_init_value": 0.5},
    {"proj_type": "linear", "proj_bias": True},
])
def test_export_reproduces_model_embeddings(tmp_path: Path, variant: dict, tiny_encoder) -> None:
    from retrieval.text_export import ensure_export

    encoder = tiny_encoder if not variant else _encoder_with(tmp_path, **dict(variant))
    assert ensure_export(encoder, tmp_path)
    light = load_light_encoder(tmp_path, encoder.fingerprint)
    assert isinstance(light, LightTextEncoder)
    texts = [t for t in TEXTS if t]
    reference = encoder.encode_texts(texts)
    ours = light.encode_texts(texts)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, reference, atol=2e-5)  # float32 rounding, not approximation
    # One text at a time (the query path) gives the same rows as the batch.
    np.testing.assert_allclose(light.encode_texts([texts[3]])[0], ours[3], atol=1e-6)


def test_unverifiable_model_is_marked_and_not_used(tmp_path: Path, tiny_encoder, monkeypatch) -> None:
    from retrieval import text_export

    monkeypatch.setattr(text_export, "_verify", lambda enc, d: "embeddings differ (forced)")
    assert not text_export.ensure_export(tiny_encoder, tmp_path)
    target = export_dir(tmp_path, tiny_encoder.fingerprint)
    assert json.loads((target / "unsupported.json").read_text())["reason"] == "embeddings differ (forced)"
    assert load_light_encoder(tmp_path, tiny_encoder.fingerprint) is None
    assert not text_export.ensure_export(tiny_encoder, tmp_path)  # the marker is remembered


def test_unwritable_root_is_not_an_error(tmp_path: Path, tiny_encoder) -> None:
    from retrieval.text_export import ensure_export

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert ensure_export(tiny_encoder, blocker) is False  # logged, and queries keep the torch path


def _make_index(image_folder: Path, root: Path) -> None:
    from typer.testing import CliRunner

    from retrieval.cli import app

    result = CliRunner().invoke(app, ["index", str(image_folder), "--model", TINY_MODEL, "--index-dir", str(root)])
    assert result.exit_code == 0, result.output


COLD_QUERY = """
import json, sys
from typer.testing import CliRunner
from retrieval.cli import app
r = CliRunner().invoke(app, ["query", "a red square", "--index-dir", sys.argv[1], "--json", "-k", "5", *sys.argv[2:]])
print(json.dumps({"code": r.exit_code, "out": r.stdout, "torch": "torch" in sys.modules}))
"""


def _cold_query(root: Path, *args: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", COLD_QUERY, str(root), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cold_query_skips_torch_and_matches_torch_path(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _make_index(image_folder, root)  # indexing writes the export, once per model
    assert list((root / ".cache" / "text").glob("*/meta.json"))
    light = _cold_query(root)
    heavy = _cold_query(root, "--precision", "fp32", MMSEARCH_LIGHT_TEXT="0")  # the exact torch path
    assert light["code"] == 0 and heavy["code"] == 0
    assert light["torch"] is False and heavy["torch"] is True
    a, b = json.loads(light["out"]), json.loads(heavy["out"])
    assert [h["path"] for h in a] == [h["path"] for h in b] and len(a) == 5
    np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-4)


@pytest.mark.parametrize("damage", ["meta", "weights"])
def test_damaged_export_falls_back_to_torch(image_folder: Path, tmp_path: Path, damage: str) -> None:
    root = tmp_path / "root"
    _make_index(image_folder, root)
    meta = next((root / ".cache" / "text").glob("*/meta.json"))
    if damage == "meta":
        meta.write_text("{ truncated")
    else:  # a weight file cut short: only its header survives
        weights = meta.parent / "l0.c_fc.weight.npy"
        weights.write_bytes(weights.read_bytes()[:200])
    out = _cold_query(root)
    assert out["code"] == 0 and out["torch"] is True and len(json.loads(out["out"])) == 5
    # That query loaded the model and wrote the export again: the next one is torch-free.
    assert _cold_query(root)["torch"] is False


def test_drop_removes_the_export_with_the_last_index_of_its_model(image_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retrieval.cli import app

    root = tmp_path / "root"
    for name in ("one", "two"):
        result = CliRunner().invoke(app, ["index", str(image_folder), "--model", TINY_MODEL, "--index", name,
                                          "--index-dir", str(root), "-q"])
        assert result.exit_code == 0, result.output
    exports = list((root / ".cache" / "text").iterdir())
    assert len(exports) == 1
    assert CliRunner().invoke(app, ["drop", "one", "--yes", "--index-dir", str(root)]).exit_code == 0
    assert exports[0].is_dir()  # "two" still uses it
    assert CliRunner().invoke(app, ["drop", "two", "--yes", "--index-dir", str(root)]).exit_code == 0
    assert not exports[0].exists()
