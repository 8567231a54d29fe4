"""Chinese captions for the synthetic world: natural phrasing, several words per attribute, parsed back exactly."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from retrieval import synthetic as syn
from retrieval.synthetic_zh import (
    COLOUR_WORDS_ZH,
    DEMO_QUERIES,
    KIND_WORDS_ZH,
    PATTERN_WORDS_ZH,
    POSITION_WORDS_ZH,
    SIZE_WORDS_ZH,
    caption_attributes_zh,
    is_chinese,
    make_captions_zh,
)
from retrieval.text_light import ClipBpeTokenizer

TABLES = {"kind": KIND_WORDS_ZH, "colour": COLOUR_WORDS_ZH, "pattern": PATTERN_WORDS_ZH, "size": SIZE_WORDS_ZH,
          "position": POSITION_WORDS_ZH}


def test_vocabulary_covers_the_world() -> None:
    assert set(KIND_WORDS_ZH) == set(syn.KINDS) and set(COLOUR_WORDS_ZH) == set(syn.COLOURS)
    assert set(PATTERN_WORDS_ZH) == set(syn.PATTERNS) and set(SIZE_WORDS_ZH) == set(syn.SIZES)
    assert set(POSITION_WORDS_ZH) == set(syn.POSITIONS)
    for attr, table in TABLES.items():
        for value, words in table.items():
            assert len(words) >= 2, (attr, value)  # several words per value, as the English side has
            for word in words:  # each word alone reads back as its value
                assert caption_attributes_zh(word) == {attr: value}, word


@pytest.mark.parametrize("text, expected", [
    ("红色的鞋子", {"colour": "red", "kind": "shoe"}),
    ("红鞋", {"colour": "red", "kind": "shoe"}),
    ("一双红色的鞋", {"colour": "red", "kind": "shoe"}),
    ("条纹蓝衬衫", {"pattern": "striped", "colour": "blue", "kind": "shirt"}),
    ("左边的小黄伞", {"position": "left", "size": "small", "colour": "yellow", "kind": "umbrella"}),
    ("粉红色的杯子", {"colour": "pink", "kind": "cup"}),          # 粉红色 is pink, not red
    ("一个大号的橘色包包", {"size": "large", "colour": "orange", "kind": "bag"}),
    ("正中间的波点帽子", {"position": "center", "pattern": "dotted", "kind": "hat"}),
    ("紅色的鞋子", {"colour": "red", "kind": "shoe"}),            # traditional characters
    ("左邊的小黃傘", {"position": "left", "size": "small", "colour": "yellow", "kind": "umbrella"}),
    ("條紋藍襯衫", {"pattern": "striped", "colour": "blue", "kind": "shirt"}),
    ("ｔ恤", {"kind": "shirt"}),                                  # full-width letters
    ("一张照片", {}),                                              # nothing of the world named
])
def test_parse(text: str, expected: dict[str, str]) -> None:
    assert caption_attributes_zh(text) == expected


def test_generated_captions_read_back_and_vary() -> None:
    rng = random.Random(0)
    forms: dict[tuple[str, str], set[str]] = {}
    lengths = []
    tokenizer = ClipBpeTokenizer()
    for _ in range(600):
        attributes = syn.sample_attributes(rng)
        captions = make_captions_zh(attributes, rng, 4)
        assert len(set(captions)) == 4
        for caption in captions:
            named = caption_attributes_zh(caption)
            assert named and all(attributes[a] == v for a, v in named.items()), (caption, attributes)
            assert syn.satisfies(attributes, caption)
            assert is_chinese(caption)
            lengths.append(len(tokenizer.encode(caption)) + 2)
            for attr, table in TABLES.items():
                for word in table[attributes[attr]]:
                    if word in caption:
                        forms.setdefault((attr, attributes[attr]), set()).add(word)
    # Every colour and kind appears under at least two of its words.
    for attr in ("kind", "colour"):
        for value in TABLES[attr]:
            assert len(forms.get((attr, value), ())) >= 2, (attr, value)
    # CLIP's byte-level BPE needs ~2 tokens per Chinese character: the demo model's context must hold that.
    assert max(lengths) <= 41


def test_same_seed_same_captions() -> None:
    attributes = {"kind": "umbrella", "colour": "yellow", "pattern": "plain", "size": "small", "position": "left"}
    assert make_captions_zh(attributes, random.Random(3), 6) == make_captions_zh(attributes, random.Random(3), 6)


def test_templates_name_attributes_as_often_as_english() -> None:
    """Kind and colour are named together in most captions, in both languages (held-out pairs stay testable)."""
    rng_en, rng_zh = random.Random(1), random.Random(1)
    counts: dict[str, Counter] = {"en": Counter(), "zh": Counter()}
    for _ in range(2000):
        attributes = syn.sample_attributes(rng_en)
        rng_zh.random()
        for caption in syn.make_captions(attributes, rng_en, 4):
            counts["en"][frozenset(syn.caption_attributes(caption))] += 1
        for caption in make_captions_zh(attributes, rng_zh, 4):
            counts["zh"][frozenset(caption_attributes_zh(caption))] += 1
    both = {lang: sum(n for k, n in c.items() if {"kind", "colour"} <= k) / sum(c.values())
            for lang, c in counts.items()}
    assert both["zh"] >= 0.6 and abs(both["zh"] - both["en"]) < 0.1


def test_demo_queries_are_twins() -> None:
    for zh, en in DEMO_QUERIES:
        assert caption_attributes_zh(zh) == syn.caption_attributes(en), (zh, en)
        assert syn.caption_attributes(zh) == syn.caption_attributes(en)
    held_out = [(zh, en) for zh, en in DEMO_QUERIES
                if (caption_attributes_zh(zh).get("kind"), caption_attributes_zh(zh).get("colour")) in syn.HELD_OUT]
    assert held_out  # the demo shows a combination no training picture has, in both languages


def test_mixed_language_queries() -> None:
    assert syn.caption_attributes("红色的 shoes") == {"colour": "red", "kind": "shoe"}
    assert syn.caption_attributes("striped 衬衫 on the left") == {"kind": "shirt", "pattern": "striped",
                                                                  "position": "left"}
    assert syn.caption_attributes("red shoes") == {"colour": "red", "kind": "shoe"}
    assert not syn.satisfies({"kind": "shoe", "colour": "blue"}, "红色的鞋子")
