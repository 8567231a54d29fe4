"""The bilingual demo on a small trained world: Chinese queries answered at least as well as their English twins.

The demo's own world (its pictures, drawn at the model's input size, with
English and Chinese captions) and the demo's own training
(:func:`retrieval.demo.train_demo_model`: architecture, epochs, batch, learning
rate, seed and threads), so the model is the one ``make demo`` trains; the
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

WORLD_IMAGES = demo.DEMO_IMAGES  # the demo's own world and training: the test checks the model make demo shows
EPOCHS = demo.DEMO_EPOCHS


def test_wrong_hits_are_counted_by_the_attributes_they_miss() -> None:
    wanted = {"kind": "shoe", "colour": "green", "pattern": "striped"}
    judged = [
        ({"kind": "shoe", "colour": "green", "pattern": "dotted", "size": "small"}, wanted),
        ({"kind": "shoe", "colour": "red", "pattern": "plain"}, wanted),
        ({"kind": "shoe", "colour": "green", "pattern": "striped"}, wanted),  # right: counts nothing
        (None, {"colour": "red"}),  # not a catalogue picture
    ]
    assert demo.missed_attributes(judged) == {"pattern": 2, "colour": 2}
    assert not demo.missed_attributes([])


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
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[tuple[demo.Answer, demo.Answer]], str]]:
    """The demo queries' answers on the trained world, and how the training went (steps, time)."""
    root = tmp_path_factory.mktemp("bilingual-demo")
    catalogue = syn.generate_catalogue(root / "world", n_images=WORLD_IMAGES, seed=demo.DEMO_SEED,
                                       image_size=demo.DEMO_MODEL_INPUT, languages=demo.DEMO_LANGUAGES)
    result = demo.train_demo_model(catalogue, root / "model", epochs=EPOCHS, progress=None)
    how = (f"{result.n_train} training pictures, {result.steps} steps in {result.train_seconds:.0f} s, "
           f"{result.samples_per_s:.0f} samples/s on {demo.DEMO_THREADS} threads")
    index = demo.build_index(catalogue, root / "model", root / "indexes")
    try:
        yield demo.ask_bilingual(index, catalogue), how
    finally:
        index.close()


@pytest.fixture(scope="module")
def answers(trained) -> list[tuple[demo.Answer, demo.Answer]]:
    return trained[0]


def test_chinese_queries_are_answered_as_well_as_their_english_twins(trained, answers, capsys) -> None:
    summary = demo.precision_summary(answers)
    with capsys.disabled():  # what was measured, in the test log
        print(f"\nbilingual demo world ({trained[1]}): precision zh {summary['zh']:.3f}, en {summary['en']:.3f}, "
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
