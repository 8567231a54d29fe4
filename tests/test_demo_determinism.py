"""The demo trains the same model on every machine: a fixed number of epochs, seeded, on fixed threads.

Two short trainings of the demo's recipe on a tiny bilingual world, started
under different thread settings (as two machines would be), give the same
first-epoch loss and the same top-5 for a query; another seed gives another
model (so the comparison is not vacuous).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retrieval import demo
from retrieval import synthetic as syn

WORLD_IMAGES = 160
EPOCHS = 2
QUERY = "条纹蓝衬衫"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> syn.Catalogue:
    return syn.generate_catalogue(tmp_path_factory.mktemp("tiny-demo-world"), n_images=WORLD_IMAGES, seed=0,
                                  image_size=demo.DEMO_MODEL_INPUT, languages=demo.DEMO_LANGUAGES)


def _train_and_ask(world: syn.Catalogue, root: Path, seed: int, ambient_threads: int
                   ) -> tuple[float, list[tuple[str, float]]]:
    before = torch.get_num_threads()
    torch.set_num_threads(ambient_threads)  # what the machine would give torch: the demo must not care
    try:
        result = demo.train_demo_model(world, root / "model", epochs=EPOCHS, seed=seed, progress=None)
    finally:
        torch.set_num_threads(before)
    assert result.epochs_run == EPOCHS
    index = demo.build_index(world, root / "model", root / "indexes")
    try:
        top = [(Path(hit.path).name, hit.score) for hit in index.search_text(QUERY, k=5)]
    finally:
        index.close()
    return result.history[0]["train_loss"], top


def test_the_same_seed_trains_the_same_demo_model_whatever_the_threads(world, tmp_path: Path) -> None:
    loss_a, top_a = _train_and_ask(world, tmp_path / "a", seed=demo.DEMO_SEED, ambient_threads=1)
    loss_b, top_b = _train_and_ask(world, tmp_path / "b", seed=demo.DEMO_SEED, ambient_threads=3)
    assert loss_a == loss_b
    assert [name for name, _ in top_a] == [name for name, _ in top_b]
    assert [score for _, score in top_a] == [score for _, score in top_b]
    assert len(top_a) == 5

    loss_c, _ = _train_and_ask(world, tmp_path / "c", seed=demo.DEMO_SEED + 1, ambient_threads=1)
    assert loss_c != loss_a  # the seed does reach the model's initialisation and the batches


def test_the_demo_trains_for_a_fixed_amount_not_a_time_budget() -> None:
    cfg = demo.demo_train_cfg()
    assert cfg.epochs == demo.DEMO_EPOCHS and cfg.max_minutes is None
    assert cfg.seed == demo.DEMO_SEED and cfg.arch == demo.DEMO_ARCH
