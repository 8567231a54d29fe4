"""The fast paths give the same answers as the plain ones.

Text encoding that skips the padding, batched preprocessing, reduced-size JPEG
decoding in the pipeline, and the lower-precision image towers. Correctness
only; speed lives in benchmarks/.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.embed import ImagePipeline
from retrieval.encoder import Encoder, load_encoder
from retrieval.fast_paths import CausalTextTower
from retrieval.sources import FileEntry

from .conftest import TINY_MODEL, make_image

TEXTS = [
    "dog",
    "a photo of a red car",
    "",
    "an aerial photograph of a small fishing village beside a frozen lake at dawn, with mist",
    "sunset, mountains; 2019!",
    "word " * 100,  # longer than the context: the tokenizer truncates it, nothing is skipped
]


@pytest.fixture(scope="module")
def vit_b32() -> Encoder:
    # The real default architecture with seeded random weights: same shapes, same code path.
    return load_encoder("ViT-B-32-256")


@pytest.fixture(params=["tiny", "vit-b-32-256"])
def encoder(request: pytest.FixtureRequest, tiny_encoder: Encoder) -> Encoder:
    return tiny_encoder if request.param == "tiny" else request.getfixturevalue("vit_b32")


def test_text_skipping_padding_equals_full_context(encoder: Encoder) -> None:
    assert encoder._text_tower is not None, "a causal CLIP text tower must take the fast path"
    full = encoder.encode_tokens_full(encoder.tokenizer(TEXTS))
    fast_batch = encoder.encode_texts(TEXTS)
    np.testing.assert_allclose(fast_batch, full, atol=1e-5, rtol=0)
    # One at a time, as queries come: each runs on its own tokens only.
    for i in (0, 1, 3):
        np.testing.assert_allclose(encoder.encode_texts([TEXTS[i]])[0], full[i], atol=1e-5, rtol=0)


def test_text_buckets_keep_input_order(tiny_encoder: Encoder) -> None:
    texts = [f"{'very ' * (i % 13)}item number {i}" for i in range(150)]  # > one bucket, mixed lengths
    full = tiny_encoder.encode_tokens_full(tiny_encoder.tokenizer(texts))
    np.testing.assert_allclose(tiny_encoder.encode_texts(texts), full, atol=1e-5, rtol=0)


def test_short_query_runs_only_its_own_tokens(tiny_encoder: Encoder) -> None:
    tower = tiny_encoder._text_tower
    assert tower is not None
    seen: list[int] = []
    hook = tower.transformer.register_forward_pre_hook(lambda _m, args, *_: seen.append(args[0].shape[1]))
    try:
        tiny_encoder.encode_texts(["a dog"])  # <start> a dog <end>
    finally:
        hook.remove()
    assert seen == [4]


def test_bidirectional_text_tower_takes_the_full_path() -> None:
    import open_clip

    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    causal = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    bidir = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg={**text, "no_causal_mask": True})
    assert CausalTextTower.of(causal) is not None
    assert CausalTextTower.of(bidir) is None  # padding changes a bidirectional tower's output
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    pre = open_clip.image_transform(32, is_train=False)
    enc = Encoder(bidir, pre, tok, spec="bidir")
    full = enc.encode_tokens_full(tok(TEXTS[:3]))
    np.testing.assert_allclose(enc.encode_texts(TEXTS[:3]), full, atol=1e-6, rtol=0)


def test_batched_preprocessing_is_bit_identical(encoder: Encoder) -> None:
    images = [make_image(i, (40 + 37 * i, 30 + 23 * i)) for i in range(5)] + [make_image(9, (20, 10))]
    reference = encoder.preprocess_images(images)
    fast = encoder.pixels_from_prepared([encoder.prepare_image(img) for img in images])
    assert fast.shape == reference.shape
    assert torch.equal(fast, reference)


def _jpeg(path: Path, seed: int, size: tuple[int, int]) -> FileEntry:
    # Smooth content (upscaled from a small drawing), as photos are: not pure noise.
    make_image(seed).resize(size, Image.BICUBIC).save(path, quality=92)
    st = path.stat()
    return FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def test_pipeline_matches_plain_encoding_in_order(tmp_path: Path, tiny_encoder: Encoder) -> None:
    entries = [_jpeg(tmp_path / f"{i}.jpg", i, (1200, 800)) for i in range(7)]
    entries.insert(3, FileEntry(path=tmp_path / "missing.jpg", size=0, mtime_ns=0))
    full = ImagePipeline(tiny_encoder, batch_size=3, workers=2, min_side=0)
    draft = ImagePipeline(tiny_encoder, batch_size=3, workers=2)
    out_full = [e for batch in full.run(entries) for e in batch]
    out_draft = [e for batch in draft.run(entries) for e in batch]
    assert [e.entry.path for e in out_full] == [e.path for e in entries]
    assert [e.entry.path for e in out_draft] == [e.path for e in entries]
    assert out_full[3].vector is None and out_full[3].error
    good = [i for i in range(len(entries)) if i != 3]
    # Full decode through the pipeline == the plain, sequential path.
    plain = tiny_encoder.encode_images([Image.open(entries[i].path).convert("RGB") for i in good])
    np.testing.assert_allclose(np.stack([out_full[i].vector for i in good]), plain, atol=1e-5, rtol=0)
    # Reduced-size decoding: original sizes reported, embeddings nearly unchanged.
    assert all((out_draft[i].width, out_draft[i].height) == (1200, 800) for i in good)
    cos = np.sum(np.stack([out_draft[i].vector for i in good]) * plain, axis=1)
    assert cos.min() > 0.99


def test_reduced_decode_really_decodes_smaller(tiny_encoder: Encoder) -> None:
    from retrieval.loading import load_image

    buf = io.BytesIO()
    make_image(1).resize((1200, 800)).save(buf, "JPEG", quality=90)
    pipe = ImagePipeline(tiny_encoder)
    assert pipe.min_side == tiny_encoder.image_size
    loaded = load_image(buf.getvalue(), min_side=pipe.min_side)
    assert loaded.image is not None and min(loaded.image.size) == 100  # 1/8 scale keeps >= 32


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precision_keeps_embeddings_and_fingerprint(precision: str, tiny_encoder: Encoder) -> None:
    low = load_encoder(TINY_MODEL, precision=precision)
    assert low.fingerprint == tiny_encoder.fingerprint  # same weights: an fp32 index stays queryable
    assert low.dim == tiny_encoder.dim
    images = [make_image(i) for i in range(8)]
    a, b = tiny_encoder.encode_images(images), low.encode_images(images)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(np.mean(np.sum(a * b, axis=1))) >= 0.99
    ta, tb = tiny_encoder.encode_texts(TEXTS), low.encode_texts(TEXTS)
    if precision == "int8":  # int8 quantises the image tower only: text stays exact
        np.testing.assert_allclose(tb, ta, atol=1e-6, rtol=0)
    else:  # bf16 lowers the text tower too (a query reads half the bytes): close, not equal
        assert tb.dtype == np.float32 and low.text_dtype != tiny_encoder.text_dtype
        assert float(np.mean(np.sum(ta * tb, axis=1))) >= 0.99
        assert not np.allclose(ta, tb, atol=1e-6, rtol=0)


def test_unknown_precision_is_a_clear_error() -> None:
    from retrieval.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="precision"):
        load_encoder(TINY_MODEL, precision="fp8")


def test_text_query_cache_returns_the_same_vector_once_encoded(tiny_encoder: Encoder, tmp_path: Path) -> None:
    import retrieval

    calls: list[list[str]] = []

    class Counting:
        def __getattr__(self, name: str):
            return getattr(tiny_encoder, name)

        def encode_texts(self, texts):
            calls.append(list(texts))
            return tiny_encoder.encode_texts(texts)

    with retrieval.create_index("cache", root=tmp_path / "root", encoder=Counting()) as idx:  # type: ignore[arg-type]
        first = idx.embed_text("a red car")
        first[:] = 0  # a caller scribbling on its copy must not poison the cache
        again = idx.embed_text("  a red car ")
        assert calls == [["a red car"]]
        np.testing.assert_allclose(again, tiny_encoder.encode_texts(["a red car"])[0], atol=1e-6)


def test_extreme_aspect_ratio_is_cropped_before_preprocessing(tmp_path, tiny_encoder) -> None:
    """A 1x60000 strip must not be blown up to gigabytes by the short-side resize."""
    import resource

    from PIL import Image

    from retrieval.embed import MAX_ASPECT, ImagePipeline, _clip_aspect
    from retrieval.sources import FileEntry

    strip = Image.new("RGB", (60000, 3), (200, 10, 10))
    cropped = _clip_aspect(strip)
    assert cropped.size == (3 * MAX_ASPECT, 3)
    normal = Image.new("RGB", (300, 200))
    assert _clip_aspect(normal) is normal
    path = tmp_path / "strip.png"
    strip.save(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (out,) = next(iter(ImagePipeline(tiny_encoder, batch_size=1).run([FileEntry(path, path.stat().st_size, 0)])))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out.vector is not None and out.error is None
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


def test_fp16_is_for_gpus_and_keeps_embeddings_close() -> None:
    """auto means fp16 on GPUs; its lowering keeps cosine >= 0.99 (run here on the CPU, which torch emulates)."""
    import copy

    import torch

    from retrieval.encoder import default_precision
    from retrieval.errors import ModelLoadError
    from retrieval.fast_paths import lower_image_tower, lower_text_tower

    assert default_precision("cuda") == "fp16" and default_precision("mps") == "fp16"
    with pytest.raises(ModelLoadError, match="fp16 is for GPUs"):
        load_encoder(TINY_MODEL, precision="fp16")
    exact = load_encoder(TINY_MODEL)
    half = copy.deepcopy(exact.model)
    image_dtype = lower_image_tower(half, "fp16", torch.device("cpu"))
    assert lower_text_tower(half, "fp16") == torch.float16 == image_dtype
    pixels = exact.preprocess_images([make_image(i) for i in range(6)])
    tokens = exact.tokenizer(TEXTS)
    with torch.inference_mode():
        img = torch.nn.functional.normalize(half.encode_image(pixels.to(image_dtype)).float(), dim=-1).numpy()
        txt = torch.nn.functional.normalize(half.encode_text(tokens).float(), dim=-1).numpy()
    assert float(np.mean(np.sum(img * exact.encode_pixels(pixels), axis=1))) >= 0.99
    assert float(np.mean(np.sum(txt * exact.encode_texts(TEXTS), axis=1))) >= 0.99
