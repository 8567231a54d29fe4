"""The bilingual demo on a small trained world: Chinese queries answered at least as well as their English twins.

A world of :data:`WORLD_IMAGES` pictures with English and Chinese captions; the
demo's architecture trained from scratch on both languages for a fixed number
of epochs (seeded, so the result does not depend on the machine's speed); the
demo's own query pairs (:data:`retrieval.synthetic_zh.DEMO_QUERIES`, two of them
held-out combinations) asked through the index, as ``make demo`` asks them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

import pytest

from retrieval import demo
from retrieval import synthetic as syn
from retrieval.synthetic_zh import DEMO_QUERIES, make_captions_zh

WORLD_IMAGES = 4000
WORLD_SIZE = 48  # the demo model's input size: drawn at it, nothing is lost
EPOCHS = 18
BATCH = 256  # contrastive negatives that differ only in pattern or position are what teach those words
LR = 3e-3


def test_every_demo_caption_fits_the_demo_context() -> None:
    """No caption is cut in training: CLIP's BPE spends ~2 tokens a Chinese character."""
    from retrieval.text_light import ClipBpeTokenizer

    config = json.loads((Path(demo.__file__).with_name("model_configs") / f"{demo.DEMO_ARCH}.json").read_text())
    context = config["text_cfg"]["context_length"]
    tokenizer = ClipBpeTokenizer()
    rng = random.Random(0)
    longest = 0
    for _ in range(2000):
        attributes = syn.sample_attributes(rng)
        for caption in syn.make_captions(attributes, rng, 4):
            longest = max(longest, len(tokenizer.encode(caption)) + 2)
        for caption in make_captions_zh(attributes, rng, 4):
            longest = max(longest, len(tokenizer.encode(caption)) + 2)
    for zh, en in DEMO_QUERIES:
        longest = max(longest, len(tokenizer.encode(zh)) + 2, len(tokenizer.encode(en)) + 2)
    assert longest <= context
    assert longest > 20  # mmsearch-small's context would cut them


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[demo.Answer, demo.Answer]]]:
    from retrieval.train import TrainCfg, fit, read_pairs

    root = tmp_path_factory.mktemp("bilingual-demo")
    catalogue = syn.generate_catalogue(root / "world", n_images=WORLD_IMAGES, seed=0, image_size=WORLD_SIZE,
                                       languages=demo.DEMO_LANGUAGES)
    data = read_pairs(catalogue.captions_csv)
    data.items = [item for item in data.items if item.split == "train"]  # no per-epoch validation: time goes to training
    cfg = TrainCfg(arch=demo.DEMO_ARCH, epochs=EPOCHS, batch_size=BATCH, lr=LR, warmup_steps=20, augment=False,
                   seed=0)
    fit(data, root / "model", cfg, progress=None)
    index = demo.build_index(catalogue, root / "model", root / "indexes")
    try:
        yield demo.ask_bilingual(index, catalogue)
    finally:
        index.close()


def test_chinese_queries_are_answered_as_well_as_their_english_twins(answers, capsys) -> None:
    summary = demo.precision_summary(answers)
    with capsys.disabled():  # what was measured, in the test log
        print(f"\nbilingual demo world: precision zh {summary['zh']:.3f}, en {summary['en']:.3f}, "
              f"all {summary['all']:.3f}, held-out {summary['held_out']:.3f}")
    assert any(zh.held_out for zh, _ in answers)  # the held-out combinations are among the queries
    assert all(len(zh.hits) == len(en.hits) > 0 for zh, en in answers)
    assert summary["zh"] >= summary["en"]
    assert summary["all"] >= 0.9


def test_the_demo_prints_each_chinese_query_next_to_its_english_twin(answers, capsys) -> None:
    zh, en = next(pair for pair in answers if pair[0].held_out)
    splits = {Path(hit.path).name: "unseen" for hit, _, _ in zh.hits + en.hits}
    demo.print_pair(zh, en, splits)
    lines = capsys.readouterr().out.strip().splitlines()
    assert zh.text in lines[0] and en.text in lines[0] and "never shown in training" in lines[0]
    assert len(lines) == 1 + max(len(zh.hits), len(en.hits))
    for line, (hit, attrs, ok) in zip(lines[1:], zh.hits):
        assert line.split()[1] == ("ok" if ok else "NO") and f"{attrs['colour']} {attrs['kind']}" in line
