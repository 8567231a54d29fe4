"""The demo trains the same model on every machine: a fixed number of epochs, seeded, on fixed threads.

Two short trainings of the demo's recipe on a tiny bilingual world, started
under different thread settings (as two machines would be), give the same
first-epoch loss and the same top-5 for a query; another seed gives another
model (so the comparison is not vacuous).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import demo
from retrieval import synthetic as syn

WORLD_IMAGES = 120
EPOCHS = 2
QUERY = "条纹蓝衬衫"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> syn.Catalogue:
    return syn.generate_catalogue(tmp_path_factory.mktemp("tiny-demo-world"), n_images=WORLD_IMAGES, seed=0,
                                  image_size=demo.DEMO_MODEL_INPUT, languages=demo.DEMO_LANGUAGES)


def _train(world: syn.Catalogue, model_dir: Path, seed: int, ambient_threads: int, epochs: int = EPOCHS) -> float:
    """Train the demo's recipe; the first epoch's loss."""
    before = torch.get_num_threads()
    torch.set_num_threads(ambient_threads)  # what the machine would give torch: the demo must not care
    try:
        result = demo.train_demo_model(world, model_dir, epochs=epochs, seed=seed, progress=None)
    finally:
        torch.set_num_threads(before)
    assert result.epochs_run == epochs
    return result.history[0]["train_loss"]


def _top5(world: syn.Catalogue, model_dir: Path) -> list[tuple[str, float]]:
    """The query's five best pictures of the world by the trained model, with their cosines."""
    from retrieval.encoder import load_encoder

    encoder = load_encoder(str(model_dir), precision="fp32")
    images = [Image.open(world.root / item.image).convert("RGB") for item in world.items]
    scores = encoder.encode_images(images) @ encoder.encode_texts([QUERY])[0]
    best = np.argsort(-scores, kind="stable")[:5]
    return [(world.items[i].image, float(scores[i])) for i in best]


def test_the_same_seed_trains_the_same_demo_model_whatever_the_threads(world, tmp_path: Path) -> None:
    loss_a = _train(world, tmp_path / "a", seed=demo.DEMO_SEED, ambient_threads=1)
    loss_b = _train(world, tmp_path / "b", seed=demo.DEMO_SEED, ambient_threads=3)
    assert loss_a == loss_b
    top_a = _top5(world, tmp_path / "a")
    top_b = _top5(world, tmp_path / "b")
    assert len(top_a) == 5
    assert top_a == top_b  # the same pictures, in the same order, with the same scores

    loss_c = _train(world, tmp_path / "c", seed=demo.DEMO_SEED + 1, ambient_threads=1, epochs=1)
    assert loss_c != loss_a  # the seed does reach the model's initialisation and the batches


def test_the_demo_trains_for_a_fixed_amount_not_a_time_budget() -> None:
    cfg = demo.demo_train_cfg()
    assert cfg.epochs == demo.DEMO_EPOCHS and cfg.max_minutes is None
    assert cfg.seed == demo.DEMO_SEED and cfg.arch == demo.DEMO_ARCH
