"""Training: data readers, metrics, a short real training run, checkpoints and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import synthetic as syn
from retrieval.errors import DataError, MMSearchError
from retrieval.train import TrainCfg, evaluate_model, fit, read_pairs, retrieval_metrics, split_items
from retrieval.train import checkpoint as ckpt
from retrieval.train.evaluate import attribute_recall, ranks_of_first_hit

TINY = "mmsearch-tiny"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> syn.Catalogue:
    return syn.generate_catalogue(tmp_path_factory.mktemp("world"), n_images=700, seed=1, image_size=40)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> syn.Catalogue:
    """For tests of the loop's mechanics, not of what it learns."""
    return syn.generate_catalogue(tmp_path_factory.mktemp("small"), n_images=200, seed=2, image_size=32)


@pytest.fixture(scope="module")
def trained(world: syn.Catalogue, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained for a few seconds; shared by the tests that only read it."""
    data = read_pairs(world.captions_csv)
    out = tmp_path_factory.mktemp("model") / "tiny"
    cfg = TrainCfg(arch=TINY, epochs=5, batch_size=32, lr=1e-3, augment=False)
    return data, out, fit(data, out, cfg, progress=None)


# -- data -----------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)


def test_csv_groups_captions_and_counts_what_it_skips(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "pairs.csv").write_text(
        "image,caption,label\n"
        "a.png,a red square,red\n"
        "a.png,crimson block,red\n"          # a second positive of the same image
        "b.png,another red square,red\n"
        "missing.png,gone,red\n"             # file does not exist
        "broken.png,undecodable,red\n"       # cannot be decoded
        ",no image here,red\n"               # bad row
        "b.png,too,many,fields\n"            # malformed row
    )
    data = read_pairs(tmp_path / "pairs.csv", images_dir=tmp_path / "imgs")
    # Reading decodes nothing: the broken file is counted when training meets it (tests/test_train_pipeline.py).
    assert [(i.image_path.name, i.captions) for i in data.items] == [
        ("a.png", ["a red square", "crimson block"]), ("b.png", ["another red square"]),
        ("broken.png", ["undecodable"])]
    assert data.skipped_rows == 2 and data.skipped_images == 1
    assert data.skip_reasons["missing image files"] == 1
    assert data.has_labels and "skipped 3" in data.summary()


def test_jsonl_and_sidecar_folder(tmp_path: Path) -> None:
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "x.png", "captions": ["one", "two"]}) + "\n{broken json\n"
        + json.dumps({"image": "y.png", "caption": "three", "split": "val"}) + "\n"
    )
    data = read_pairs(tmp_path / "pairs.jsonl")
    assert [i.captions for i in data.items] == [["one", "two"], ["three"]]
    assert data.skipped_rows == 1

    folder = tmp_path / "side"
    _png(folder / "cats" / "c1.png")
    (folder / "cats" / "c1.txt").write_text("a cat\n\na small cat\n")
    _png(folder / "cats" / "c2.png")  # no sidecar: skipped and counted
    data = read_pairs(folder)
    assert [(i.captions, i.label) for i in data.items] == [(["a cat", "a small cat"], "cats")]
    assert data.skipped_rows == 1


def test_no_usable_rows_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(DataError):
        read_pairs(tmp_path / "empty.csv")
    (tmp_path / "nohead.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(DataError, match="header"):
        read_pairs(tmp_path / "nohead.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "nope.csv")


def test_split_is_deterministic_and_order_free(world: syn.Catalogue) -> None:
    items = read_pairs(world.captions_csv).items
    for item in items:
        item.split = None  # pretend there is no split column
    a = split_items(items, val_fraction=0.2, seed=0)
    b = split_items(list(reversed(items)), val_fraction=0.2, seed=0)
    assert {i.image_path for i in a.val} == {i.image_path for i in b.val}
    assert 0.1 < len(a.val) / len(items) < 0.3
    assert not {i.image_path for i in a.val} & {i.image_path for i in a.train}


# -- metrics ----------------------------------------------------------------------------


def test_recall_uses_any_caption_protocol() -> None:
    images = np.eye(3, dtype=np.float32)
    # Captions 0,1 belong to image 0; caption 2 to image 1; caption 3 to image 2 but points at image 1.
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.6]], dtype=np.float32)
    m = retrieval_metrics(images, texts, [0, 0, 1, 2])
    assert m.text_to_image["R@1"] == pytest.approx(0.75)
    assert m.text_to_image_mean_rank == pytest.approx((1 + 1 + 1 + 2) / 4)
    # Image 2's only caption ranks behind caption 2 (0.8 > 0.6 for image 1... not for image 2).
    assert m.image_to_text["R@1"] == pytest.approx(1.0)
    assert ranks_of_first_hit(np.array([[0.1, 0.9]]), np.array([[True, False]])).tolist() == [2]


# -- training ------------------------------------------------------------------------


def _chance_recall_at(relevant: np.ndarray, k: int) -> float:
    """Expected text->image R@k of a random ranking: 1 - C(n - r, k) / C(n, k), averaged over queries."""
    from math import comb

    n = relevant.shape[1]
    return float(np.mean([1 - comb(n - int(r), k) / comb(n, k) for r in relevant.sum(axis=1)]))


def test_training_lowers_loss_and_beats_chance(trained, world: syn.Catalogue) -> None:
    from retrieval.encoder import load_encoder

    data, out, result = trained
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    # Held-out pictures of seen combinations; a hit is a picture with every attribute the caption names.
    encoder = load_encoder(str(out))
    seen = attribute_recall(encoder, world, query_splits=("test",))["test"]
    items = world.split("test")
    queries = [c for it in items for c in it.captions if {"kind", "colour"} <= set(syn.caption_attributes(c))]
    chance = _chance_recall_at(np.array(syn.relevance([it.attributes for it in items], queries)), 5)
    assert seen.n_texts == len(queries)
    assert seen.text_to_image["R@5"] > 3 * chance, (seen.text_to_image, chance)
    metrics = evaluate_model(str(out), data, split="test")
    assert metrics.zero_shot_classes == 6 and 0.0 <= (metrics.zero_shot_accuracy or 0.0) <= 1.0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 6))
    assert sum(r["is_best"] for r in log) >= 1 and log[0]["val"]["n_images"] > 0


def test_checkpoint_reloads_to_identical_embeddings(trained, world: syn.Catalogue) -> None:
    from retrieval.encoder import Encoder, load_encoder
    from retrieval.train.models import create_from_checkpoint

    _, out, result = trained
    assert ckpt.is_complete(out)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"} and cfg["model_cfg"]["embed_dim"] == 32
    # The best checkpoint, loaded the way an index loads it, twice.
    a, b = load_encoder(str(out)), load_encoder(f"local-dir:{out}")
    images = [Image.open(world.root / it.image).convert("RGB") for it in world.items[:8]]
    texts = ["red shoes", "a striped blue shirt"]
    np.testing.assert_array_equal(a.encode_images(images), b.encode_images(images))
    np.testing.assert_array_equal(a.encode_texts(texts), b.encode_texts(texts))
    # The in-memory model of the last epoch and its saved copy give the same vectors.
    tm = create_from_checkpoint(out / "last", augment=False)
    live = Encoder(tm.model, tm.preprocess_val, tm.tokenizer, spec="live", model_config=tm.model_cfg)
    ckpt.save_model(tm.model, tm.model_cfg, out.parent / "copy")
    saved = load_encoder(str(out.parent / "copy"))
    np.testing.assert_array_equal(live.encode_images(images), saved.encode_images(images))
    np.testing.assert_array_equal(live.encode_texts(texts), saved.encode_texts(texts))
    assert live.fingerprint == saved.fingerprint


def test_resume_continues_instead_of_restarting(small_world: syn.Catalogue, tmp_path: Path) -> None:
    data = read_pairs(small_world.captions_csv)
    out = tmp_path / "run"
    first = fit(data, out, TrainCfg(arch=TINY, epochs=2, batch_size=32, augment=False), progress=None)
    steps_per_epoch = first.steps // 2
    with pytest.raises(MMSearchError, match="--resume"):
        fit(data, out, TrainCfg(arch=TINY, epochs=2, batch_size=32), progress=None)
    second = fit(data, out, TrainCfg(epochs=3, resume=True), progress=None)
    assert [h["epoch"] for h in second.history] == [3]
    assert second.steps == 3 * steps_per_epoch
    # It starts where the first run stopped, not from a fresh model's loss.
    assert second.history[0]["train_loss"] < first.history[0]["train_loss"]
    log = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    with pytest.raises(MMSearchError, match="more --epochs"):
        fit(data, out, TrainCfg(epochs=3, resume=True), progress=None)


def test_time_budget_stops_training(small_world: syn.Catalogue, tmp_path: Path) -> None:
    data = read_pairs(small_world.captions_csv)
    result = fit(data, tmp_path / "t", TrainCfg(arch=TINY, max_minutes=0.03, batch_size=32), progress=None)
    assert result.stopped_by == "time" and result.steps >= 1
    assert ckpt.is_complete(tmp_path / "t")


def test_lock_image_siglip_and_fine_tune(trained, small_world: syn.Catalogue, tmp_path: Path) -> None:
    from retrieval.encoder import load_encoder

    _, base, _ = trained
    data = read_pairs(small_world.captions_csv)
    before = load_encoder(str(base)).model.state_dict()
    out = tmp_path / "lit"
    fit(data, out, TrainCfg(from_spec=str(base), epochs=1, batch_size=32, lock_image=True, loss="siglip",
                            lr=1e-3), progress=None)
    after = load_encoder(str(out)).model.state_dict()
    assert "logit_bias" in after  # SigLIP's bias was added and saved with the config
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("transformer."))
