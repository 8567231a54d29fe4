"""Heatmaps that say why a picture matched: every tower family, the crop geometry, queries, errors.

Tiny models of each family the engine runs are built here from configs
(open_clip ViT, ModifiedResNet, timm ConvNeXt, a SigLIP-style timm ViT with an
attention-pool head, and a ViT whose preprocessing squashes), each in well
under a second, with seeded random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from retrieval.encoder import Encoder
from retrieval.errors import ImageDecodeError, InvalidQueryError
from retrieval.explain import (
    METHODS, CropGeometry, Explanation, ExplainUnsupportedError, TermMap, explain, spread,
)
from retrieval.explain_overlay import crop_geometry, peak_boxes
from retrieval.explain_towers import tower_of
from retrieval.query import combine

# -- tiny towers -----------------------------------------------------------------------------


def _register_timm_test_models() -> None:
    """Two tiny timm trunks under our own names (TimmModel builds trunks by name)."""
    from timm.models import register_model
    from timm.models.convnext import ConvNeXt
    from timm.models.vision_transformer import VisionTransformer
    import timm

    def clean(kw: dict) -> dict:
        return {k: v for k, v in kw.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}

    if "mmsearch_test_convnext" not in timm.list_models("mmsearch_test_*"):
        @register_model
        def mmsearch_test_convnext(pretrained: bool = False, **kw):
            model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), **clean(kw))
            model.default_cfg = {}
            return model

        @register_model
        def mmsearch_test_vit_map(pretrained: bool = False, **kw):
            # SigLIP's shape: no class token, an attention-pool ("map") head.
            model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                      class_token=False, **clean(kw))
            model.default_cfg = {}
            return model


_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
CONFIGS = {
    "explain-test-vit": {"embed_dim": 16, "vision_cfg": {
        "image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}, "text_cfg": _TEXT},
    "explain-test-rn": {"embed_dim": 16, "vision_cfg": {
        "image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}, "text_cfg": _TEXT},
    "explain-test-convnext": {"embed_dim": 16, "vision_cfg": {
        "timm_model_name": "mmsearch_test_convnext", "timm_model_pretrained": False, "timm_pool": "",
        "timm_proj": "linear", "image_size": 64}, "text_cfg": _TEXT},
    "explain-test-vitmap": {"embed_dim": 32, "custom_text": True, "vision_cfg": {
        "timm_model_name": "mmsearch_test_vit_map", "timm_model_pretrained": False, "timm_pool": "map",
        "timm_proj": "none", "image_size": 32},
        "text_cfg": {**_TEXT, "no_causal_mask": True, "pool_type": "last", "proj_bias": True}},
}
FAMILIES = ["vit", "rn", "convnext", "vitmap", "vit-squash"]


def _build(name: str, seed: int = 0, **kwargs) -> Encoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    return Encoder(model, preprocess, open_clip.get_tokenizer(name), spec=name)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Encoder]:
    _register_timm_test_models()
    folder = tmp_path_factory.mktemp("explain-configs")
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    built = {name.removeprefix("explain-test-"): _build(name) for name in CONFIGS}
    built["vit-squash"] = _build("explain-test-vit", image_resize_mode="squash")
    return built


def _photo(size: tuple[int, int] = (120, 80), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _query(enc: Encoder, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(enc.dim).astype(np.float32)


# -- the cuts are the model -------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_each_cut_computes_the_models_own_embedding(encoders, family):
    enc = encoders[family]
    pixels = enc.preprocess(_photo()).unsqueeze(0)
    with torch.no_grad():
        expected = enc.model.encode_image(pixels)
        tower = tower_of(enc.model)
        a = tower.prefix(pixels)
        torch.testing.assert_close(tower.rest(a), expected, rtol=1e-5, atol=1e-5)
        if family != "convnext":  # ConvNeXt pools by averaging: no attention to take apart
            torch.testing.assert_close(tower.attention(a).embedding, expected, rtol=1e-5, atol=1e-5)


EXPECTED_GRIDS = {
    # tower grids: ViT 32/8 = 4x4; the ResNet's and ConvNeXt's layer4/stage 4 are 2x2 at 64 px,
    # so gradcam cuts one stage earlier (4x4); tokens and gradeclip read the last map.
    "vit": {"gradcam": (4, 4), "gradeclip": (4, 4), "tokens": (4, 4)},
    "vit-squash": {"gradcam": (4, 4), "gradeclip": (4, 4), "tokens": (4, 4)},
    "vitmap": {"gradcam": (4, 4), "gradeclip": (4, 4), "tokens": (4, 4)},
    "rn": {"gradcam": (4, 4), "gradeclip": (2, 2), "tokens": (2, 2)},
    "convnext": {"gradcam": (4, 4), "gradeclip": None, "tokens": (2, 2)},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_grid_shapes_and_work_counted(encoders, family, method):
    enc = encoders[family]
    wanted = {**EXPECTED_GRIDS[family], "occlusion": (7, 7), "rise": (14, 14), "intgrad": (14, 14)}[method]
    if wanted is None:
        with pytest.raises(ExplainUnsupportedError, match="gradcam"):
            explain(enc, _query(enc), _photo(), method=method)
        return
    e = explain(enc, _query(enc), _photo(), method=method)
    assert e.grid.shape == wanted and e.grid.dtype == np.float32
    assert np.all(np.isfinite(e.grid)) and np.abs(e.grid).max() > 0
    with torch.no_grad():
        cosine = float(enc.encode_images([_photo()])[0] @ (_query(enc) / np.linalg.norm(_query(enc))))
    assert e.score == pytest.approx(cosine, abs=1e-5)
    expected_forward = {"occlusion": 37, "rise": 97, "intgrad": 4}.get(method, 1)
    expected_backward = {"gradcam": 1, "gradeclip": 1, "intgrad": 3}.get(method, 0)
    assert e.passes == {"forward": expected_forward, "backward": expected_backward}
    assert e.method == method and e.tower


# -- geometry: the grid lands where the model looked -----------------------------------------


def _red_square_photo(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    img = Image.new("RGB", size, (128, 128, 128))
    img.paste((255, 0, 0), box)
    return img


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [(200, 120), (90, 300)])
def test_geometry_maps_model_pixels_back_onto_the_photo(tmp_path, encoders, resize_mode, size):
    enc = encoders["vit"] if resize_mode == "shortest" else _build("explain-test-vit", image_resize_mode=resize_mode)
    w, h = size
    square = (w // 2 - 12, h // 2 - 10, w // 2 + 14, h // 2 + 16)  # near the centre: inside every crop
    photo = _red_square_photo(size, square)
    geo = crop_geometry(enc.preprocess, size)
    pixels = enc.preprocess(photo)
    assert tuple(pixels.shape[-2:]) == (geo.input_size[1], geo.input_size[0])
    red = (pixels[0] > pixels[1] + 1.0) & (pixels[0] > pixels[2] + 1.0)
    ys, xs = np.nonzero(red.numpy())
    x0, y0, x1, y1 = geo.box
    sx, sy = (x1 - x0) / geo.input_size[0], (y1 - y0) / geo.input_size[1]
    found = (x0 + xs.min() * sx, y0 + ys.min() * sy, x0 + (xs.max() + 1) * sx, y0 + (ys.max() + 1) * sy)
    # Resampling blurs an edge by about one model pixel.
    for got, want, step in zip(found, square, (sx, sy, sx, sy)):
        assert abs(got - want) <= 1.5 * step, (found, square, geo)
    assert geo.mode == {"shortest": "crop", "squash": "squash", "longest": "pad"}[resize_mode]


def test_outside_note_names_the_cut_sides(encoders):
    enc = encoders["vit"]
    wide = explain(enc, _query(enc), _photo((300, 20)), method="tokens")
    # 300x20 -> 480x32, centre 32 columns: 140 photo pixels cut on each side.
    assert wide.geometry.box == pytest.approx((140.0, 0.0, 160.0, 20.0))
    assert wide.outside_note == "The left and right 47% of the photo were outside what the model saw"
    tall = explain(enc, _query(enc), _photo((20, 300)), method="tokens")
    assert tall.outside_note == "The top and bottom 47% of the photo were outside what the model saw"
    square = explain(enc, _query(enc), _photo((64, 64)), method="tokens")
    assert square.outside_note is None
    squashed = explain(encoders["vit-squash"], _query(enc), _photo((300, 20)), method="tokens")
    assert squashed.geometry.box == pytest.approx((0.0, 0.0, 300.0, 20.0))
    assert squashed.outside_note == "The model saw the whole photo squashed to 32x32"


def _save_with_orientation(path: Path, stored: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation", [6, 8])
def test_overlay_is_the_photo_as_the_user_sees_it(tmp_path, encoders, orientation):
    enc = encoders["rn"]
    path = tmp_path / f"rotated{orientation}.jpg"
    _save_with_orientation(path, _photo((160, 60)), orientation)  # stored landscape, shown portrait
    e = explain(enc, _query(enc), path)
    assert e.geometry.photo_size == (60, 160)
    assert e.outside_note.startswith("The top and bottom")
    overlay = e.overlay(path)
    assert overlay.size == (60, 160) and overlay.mode == "RGB"
    # A PIL image straight from Image.open still carries the tag: it is oriented the same way.
    with Image.open(path) as raw:
        assert raw.size == (160, 60)
        again = explain(enc, _query(enc), raw)
        assert again.overlay(raw).size == (60, 160)
    np.testing.assert_array_equal(again.grid, e.grid)
    for x0, y0, x1, y1 in e.boxes:
        assert 0 <= x0 < x1 <= 60 and 0 <= y0 < y1 <= 160


@pytest.mark.parametrize("size", [(600, 24), (24, 600), (1, 50)])
def test_overlay_keeps_very_elongated_photos_whole(encoders, size):
    enc = encoders["convnext"]
    photo = _photo(size)
    e = explain(enc, _query(enc), photo, method="occlusion")
    overlay = e.overlay(photo)
    assert overlay.size == size
    assert e.outside_note is not None and "outside what the model saw" in e.outside_note
    assert 0 <= e.peak[0] <= size[0] and 0 <= e.peak[1] <= size[1]
    assert e.overlay(photo, max_side=100).size[0] <= 100


def test_overlay_of_a_large_photo_is_full_size():
    geo = CropGeometry((6000, 4000), (1000.0, 0.0, 5000.0, 4000.0), (224, 224), "crop")
    grid = np.linspace(-1, 1, 49, dtype=np.float32).reshape(7, 7)
    e = Explanation(grid, "gradcam", geo, 0.3, (TermMap(None, 1.0, grid),), ((1000, 0, 2000, 600),), (0.0, 0.0), {},
                    "test")
    out = e.overlay(Image.new("RGB", (6000, 4000), (90, 120, 150)))
    assert out.size == (6000, 4000)
    # Strips join seamlessly: the map is smooth down a column that crosses strip borders.
    column = np.asarray(out)[:, 3000, 0].astype(int)
    assert np.abs(np.diff(column)).max() <= 3


def test_overlay_colours_pulls_red_pushes_blue_and_shades_the_unseen():
    geo = CropGeometry((120, 40), (40.0, 0.0, 80.0, 40.0), (32, 32), "crop")
    grid = np.array([[1.0, 0.0, -1.0]] * 3, dtype=np.float32)
    e = Explanation(grid, "gradcam", geo, 0.3, (TermMap(None, 1.0, grid),), (), (0.0, 0.0), {}, "test")
    out = np.asarray(e.overlay(Image.new("RGB", (120, 40), (128, 128, 128)), alpha=0.8)).astype(int)
    pull, push, outside = out[20, 42], out[20, 78], out[20, 10]
    assert pull[0] > pull[2] + 60 and push[2] > push[0] + 60
    assert outside.max() < 128 * 0.6  # shaded
    assert abs(int(out[20, 60][0]) - 128) < 12  # zero: the photo shows through


def test_peak_boxes_find_each_hot_region_strongest_first():
    geo = CropGeometry((80, 80), (0.0, 0.0, 80.0, 80.0), (32, 32), "exact")
    grid = np.zeros((8, 8), dtype=np.float32)
    grid[1:3, 1:3] = 1.0
    grid[5:7, 4:8] = 0.8  # larger: more total score
    assert peak_boxes(grid, geo) == [(40, 50, 80, 70), (10, 10, 30, 30)]
    assert peak_boxes(-np.ones((4, 4), dtype=np.float32), geo) == []


# -- queries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["intgrad", "gradcam", "occlusion", "tokens"])
def test_combined_query_adds_up_and_a_negative_term_pushes_away(encoders, method):
    enc = encoders["vit"]
    a, b = _query(enc, 1), _query(enc, 2)
    photo = _photo()
    e = explain(enc, [(a, 1.0, "a"), (b, -0.5, "b")], photo, method=method)
    assert [t.label for t in e.terms] == ["a", "b"] and [t.weight for t in e.terms] == [1.0, -0.5]
    np.testing.assert_allclose(e.grid, e.terms[0].grid + e.terms[1].grid, rtol=1e-5, atol=1e-7)
    combined = combine([a, b], [1.0, -0.5])
    assert e.score == pytest.approx(float(enc.encode_images([photo])[0] @ combined), abs=1e-5)
    # The negative term's share is its own map, flipped and scaled by -0.5 / |a - 0.5 b| (unit a, b).
    alone = explain(enc, b, photo, method=method)
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    coef = -0.5 / np.linalg.norm(ua - 0.5 * ub)
    np.testing.assert_allclose(e.terms[1].grid, coef * alone.grid, rtol=1e-4, atol=1e-6)
    # The same query as one vector gives the same total map.
    single = explain(enc, combined, photo, method=method)
    np.testing.assert_allclose(single.grid, e.grid, rtol=1e-4, atol=1e-6)


def test_text_query(tiny_encoder):
    e = explain(tiny_encoder, "red shoes", _photo(), method="gradcam")
    assert e.terms[0].label == "red shoes" and e.grid.shape == (4, 4)
    json.dumps(e.as_dict())


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(encoders, method):
    enc = encoders["vitmap"]
    first = explain(enc, _query(enc), _photo(), method=method)
    second = explain(enc, _query(enc), _photo(), method=method)
    np.testing.assert_array_equal(first.grid, second.grid)
    assert first.as_dict() == second.as_dict()


def test_rise_masks_follow_the_seed(encoders):
    enc = encoders["rn"]
    one = explain(enc, _query(enc), _photo(), method="rise", masks=32, seed=1)
    two = explain(enc, _query(enc), _photo(), method="rise", masks=32, seed=2)
    assert one.passes["forward"] == 33 and not np.array_equal(one.grid, two.grid)


def test_as_dict_is_json(encoders):
    enc = encoders["rn"]
    data = explain(enc, [(_query(enc, 1), 2.0), (_query(enc, 2), -1.0)], _photo(), method="gradcam").as_dict()
    text = json.dumps(data)
    back = json.loads(text)
    assert back["grid_shape"] == [4, 4] and len(back["terms"]) == 2 and back["method"] == "gradcam"
    assert set(back["geometry"]) == {"photo_size", "box", "input_size", "mode", "outside"}


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_a_typed_error(tmp_path, encoders):
    enc = encoders["vit"]
    q = _query(enc)
    with pytest.raises(ImageDecodeError, match="no pixels"):
        explain(enc, q, Image.new("RGB", (0, 0)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        explain(enc, q, broken)
    with pytest.raises(ImageDecodeError):
        explain(enc, q, tmp_path / "missing.png")
    with pytest.raises(InvalidQueryError, match="zero"):
        explain(enc, np.zeros(enc.dim, dtype=np.float32), _photo())
    with pytest.raises(InvalidQueryError, match="zero or not finite"):
        explain(enc, np.full(enc.dim, np.nan, dtype=np.float32), _photo())
    with pytest.raises(InvalidQueryError, match="dimensions"):
        explain(enc, np.ones(enc.dim + 1, dtype=np.float32), _photo())
    with pytest.raises(InvalidQueryError, match="positive weight"):
        explain(enc, [(q, -1.0)], _photo())
    with pytest.raises(InvalidQueryError, match="cancel"):
        explain(enc, [(q, 1.0), (q, -1.0)], _photo())
    with pytest.raises(InvalidQueryError, match="empty"):
        explain(enc, [], _photo())
    with pytest.raises(InvalidQueryError, match="unknown explain method"):
        explain(enc, q, _photo(), method="magic")
    with pytest.raises(InvalidQueryError, match="takes min_side"):
        explain(enc, q, _photo(), method="gradcam", masks=3)
    with pytest.raises(InvalidQueryError, match="takes batch, grid, window"):
        explain(enc, q, _photo(), method="occlusion", masks=3)
    with pytest.raises(InvalidQueryError, match="between 0 and 1"):
        explain(enc, q, _photo(), method="rise", p=1.5)
    with pytest.raises(InvalidQueryError, match="positive whole number"):
        explain(enc, q, _photo(), method="rise", masks=0)
    with pytest.raises(InvalidQueryError, match="window"):
        explain(enc, q, _photo(), method="occlusion", grid=3, window=4)
    with pytest.raises(InvalidQueryError, match="intgrad grid must be 1..32"):
        explain(enc, q, _photo(), method="intgrad", grid=33)
    with pytest.raises(InvalidQueryError, match="positive whole number"):
        explain(enc, q, _photo(), method="intgrad", steps=0)


def test_int8_towers_have_no_gradients_but_still_explain_by_forward_passes(encoders):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("explain-test-vit")
    enc = Encoder(model, preprocess, open_clip.get_tokenizer("explain-test-vit"), spec="x", precision="int8")
    for method in ("gradcam", "gradeclip", "intgrad"):
        with pytest.raises(ExplainUnsupportedError, match="int8"):
            explain(enc, _query(enc), _photo(), method=method)
    assert explain(enc, _query(enc), _photo(), method="tokens").grid.shape == (4, 4)


# -- can it point at all? -------------------------------------------------------------------------


def _pasted(patch: Image.Image, where: tuple[int, int]) -> Image.Image:
    scene = Image.new("RGB", (96, 96), (128, 128, 128))
    scene.paste(patch, where)
    return scene


@pytest.mark.parametrize("family,method", [("rn", "gradcam"), ("rn", "occlusion"), ("rn", "rise"),
                                           ("convnext", "gradcam"), *[(f, "intgrad") for f in FAMILIES]])
def test_peak_falls_on_the_patch_the_query_was_made_from(encoders, family, method):
    """Random weights, yet the query (the embedding of a noise patch) peaks where that patch was pasted.

    Observed for these (family, method) pairs at every corner; other pairs (ViT
    gradcam, ResNet tokens) do not localise with random weights, so nothing is
    claimed for them here: benchmarks/bench_explain.py measures them on trained models.
    """
    enc = encoders[family]
    patch = _photo((40, 40), seed=7)
    query = enc.encode_images([patch])[0]
    # intgrad's shares as the gradients give them: the default spreads each cell over its
    # neighbours (for trained models, chosen by the pointing game), which with random weights'
    # weak signal can move the peak one cell past the patch's edge.
    opts = {"spread_cells": 0} if method == "intgrad" else {}
    for x, y in [(4, 4), (52, 4), (4, 52), (52, 52)]:
        e = explain(enc, query, _pasted(patch, (x, y)), method=method, **opts)
        px, py = e.peak
        assert x <= px <= x + 40 and y <= py <= y + 40, (x, y, e.peak)
        x0, y0, x1, y1 = e.boxes[0]
        assert x0 < x + 40 and x1 > x and y0 < y + 40 and y1 > y  # the strongest box touches the patch


@pytest.mark.parametrize("family", FAMILIES)
def test_intgrad_shares_add_up_to_the_score_against_a_blank_picture(encoders, family):
    """Completeness (Sundararajan et al.): the cells' shares sum to cos(picture) - cos(its mean colour)."""
    enc = encoders[family]
    q = _query(enc)
    photo = _photo()
    e = explain(enc, q, photo, method="intgrad", steps=64)
    pixels = enc.preprocess(photo).unsqueeze(0)
    blank = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    with torch.no_grad():
        picture, mean_colour = enc.model.encode_image(torch.cat([pixels, blank])).numpy()
    unit = q / np.linalg.norm(q)
    gap = float(picture @ unit / np.linalg.norm(picture) - mean_colour @ unit / np.linalg.norm(mean_colour))
    # 64 midpoint steps: the path integral to within 1% of the gap.
    assert float(e.grid.sum()) == pytest.approx(gap, rel=0.01, abs=1e-6)
    # The default: three steps on the path (one batch of three forward and backward passes), and the
    # picture's own forward pass for its score.
    quick = explain(enc, q, photo, method="intgrad")
    assert quick.passes == {"forward": 4, "backward": 3}


def test_the_aspect_rounding_of_a_resize_is_no_squash(tiny_encoder):
    """96x72 -> 42x32 (a shortest-side resize rounds 42.67 down): a crop, not a squash."""
    geo = crop_geometry(tiny_encoder.preprocess, (96, 72))
    assert geo.mode == "crop"
    assert geo.outside_note() == "The left and right 12% of the photo were outside what the model saw"


def test_gradients_work_when_called_inside_inference_mode(encoders):
    """A server handler may hold torch.inference_mode(); the gradient methods still run."""
    enc = encoders["vit"]
    expected = explain(enc, _query(enc), _photo(), method="gradcam").grid
    with torch.inference_mode():
        got = explain(enc, _query(enc), _photo(), method="gradcam").grid
    np.testing.assert_array_equal(got, expected)


def test_spread_keeps_the_total_and_shares_a_cell_with_its_neighbours():
    cells = np.zeros((5, 6), np.float32)
    cells[2, 3] = 9.0
    cells[0, 0] = 4.0
    out = spread(cells, 1)
    assert out.dtype == np.float32 and out.shape == cells.shape
    assert float(out.sum()) == pytest.approx(float(cells.sum()))
    assert np.allclose(out[1:4, 2:5], 1.0)  # an inner cell: 9 split over its 3x3 neighbourhood
    assert np.allclose(out[0:2, 0:2], 1.0)  # a corner cell has 4 neighbours (itself included)
    assert out[4, 0] == 0.0
    assert np.array_equal(spread(cells, 0), cells)
