"""Chinese captions for the synthetic product world, and a parser back to its attributes.

The counterpart of the English vocabulary in :mod:`retrieval.synthetic`: the
same kinds, colours, patterns, sizes and positions, each with several natural
Chinese words (红色的鞋子 / 红鞋 / 一双红色的鞋, 条纹蓝衬衫, 左边的小黄伞 ...),
templates that name a subset of a picture's attributes as the English ones do,
and :func:`caption_attributes_zh`, which reads a Chinese caption or query back
into attributes (simplified or traditional characters, full-width letters).
:func:`retrieval.synthetic.caption_attributes` calls it for any caption with
Chinese characters, so one relevance function serves both languages (this
module imports nothing of the world's, so the world can import it).

Chinese has no spaces, so parsing scans for the longest vocabulary word at
each position: 粉红色 is pink, not red; 大号 is large; 橘色 is orange.
Everything is deterministic given the ``random.Random`` passed in; no torch.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Mapping

# Words for each attribute value (first = canonical). Colours have a long form (红色) and the
# short form that binds to a noun (红鞋); both are listed.
KIND_WORDS_ZH: dict[str, tuple[str, ...]] = {
    "shoe": ("鞋子", "鞋", "运动鞋", "球鞋"),
    "shirt": ("衬衫", "T恤", "短袖衫", "上衣"),
    "hat": ("帽子", "帽"),
    "bag": ("包", "包包", "手提包", "袋子"),
    "cup": ("杯子", "马克杯", "茶杯", "杯"),
    "umbrella": ("伞", "雨伞"),
}
COLOUR_WORDS_ZH: dict[str, tuple[str, ...]] = {
    "red": ("红色", "红"),
    "orange": ("橙色", "橘色", "橙", "橘"),
    "yellow": ("黄色", "黄"),
    "green": ("绿色", "绿"),
    "blue": ("蓝色", "蓝"),
    "purple": ("紫色", "紫"),
    "pink": ("粉色", "粉红色", "粉"),
    "black": ("黑色", "黑"),
}
PATTERN_WORDS_ZH: dict[str, tuple[str, ...]] = {
    "plain": ("纯色", "素色", "没有图案"),
    "striped": ("条纹", "有条纹", "带条纹"),
    "dotted": ("圆点", "波点", "带圆点", "点点"),
}
SIZE_WORDS_ZH: dict[str, tuple[str, ...]] = {"small": ("小号", "小"), "large": ("大号", "大")}
POSITION_WORDS_ZH: dict[str, tuple[str, ...]] = {
    "left": ("左边", "左侧", "靠左"),
    "center": ("中间", "正中间", "中央"),
    "right": ("右边", "右侧", "靠右"),
}
# The measure word that counts each kind: 一双鞋, 一件衬衫, 一顶帽子, 一个包, 一个杯子, 一把伞.
MEASURE_WORDS: dict[str, tuple[str, ...]] = {
    "shoe": ("双",), "shirt": ("件",), "hat": ("顶",), "bag": ("个",), "cup": ("个", "只"), "umbrella": ("把",),
}
_VOCAB_ZH: dict[str, dict[str, tuple[str, ...]]] = {
    "kind": KIND_WORDS_ZH, "colour": COLOUR_WORDS_ZH, "pattern": PATTERN_WORDS_ZH,
    "size": SIZE_WORDS_ZH, "position": POSITION_WORDS_ZH,
}
_WORD_TO_ATTR_ZH: dict[str, tuple[str, str]] = {
    word.lower(): (attr, value) for attr, table in _VOCAB_ZH.items() for value, words in table.items() for word in words
}
_LONGEST = max(len(word) for word in _WORD_TO_ATTR_ZH)
# Traditional forms of the characters the vocabulary uses, read as their simplified twins.
_TRADITIONAL = str.maketrans(
    "紅綠藍黃條紋圓點襯傘邊側號帶無圖雙頂個張馬間運動著擺幾隻這裡裏羅",
    "红绿蓝黄条纹圆点衬伞边侧号带无图双顶个张马间运动着摆几只这里里罗",
)


def _short_colour(colour: str, rng: random.Random) -> str:
    return COLOUR_WORDS_ZH[colour][-1] if colour != "orange" else rng.choice(("橙", "橘"))


def make_captions_zh(attributes: Mapping[str, str], rng: random.Random, n: int = 4) -> tuple[str, ...]:
    """``n`` distinct Chinese captions for a picture, each naming a different subset of its attributes.

    Templates and weights follow :func:`retrieval.synthetic.make_captions`, so a
    bilingual catalogue names the same attributes in both languages equally often.
    """
    kind, colour, pattern = attributes["kind"], attributes["colour"], attributes["pattern"]
    size, position = attributes["size"], attributes["position"]
    noun = rng.choice(KIND_WORDS_ZH[kind])
    short_noun = {"shoe": "鞋", "shirt": "衬衫", "hat": "帽子", "bag": "包", "cup": "杯子", "umbrella": "伞"}[kind]
    long_colour = COLOUR_WORDS_ZH[colour][0] if colour != "pink" else rng.choice(("粉色", "粉红色"))
    short_colour = _short_colour(colour, rng)
    measure = rng.choice(MEASURE_WORDS[kind])
    padj = rng.choice(PATTERN_WORDS_ZH[pattern][:2] if pattern != "dotted" else ("圆点", "波点"))
    with_pattern = {"plain": f"纯色的{long_colour}{noun}", "striped": f"带条纹的{long_colour}{noun}",
                    "dotted": f"带圆点的{long_colour}{noun}"}[pattern]
    size_word = rng.choice(SIZE_WORDS_ZH[size])
    where = rng.choice(POSITION_WORDS_ZH[position][:2])
    templates = [
        rng.choice((f"{long_colour}的{noun}", f"{short_colour}{short_noun}", f"{long_colour}{noun}")),  # red shoes
        f"一{measure}{long_colour}的{noun}",                                          # a red shoe
        f"一张{padj}{long_colour}{noun}的照片",                                        # a photo of a striped red shoe
        f"一{measure}{with_pattern}",                                                   # a red shoe with stripes
        f"一{measure}{size_word}{long_colour}{noun}",                                   # a small red shoe
        f"{where}的{long_colour}{noun}",                                                # a red shoe on the left
        f"{where}的{size_word}{padj}{short_colour}{short_noun}",                        # 左边的小号条纹红鞋
        f"{padj}{noun}",                                                                # striped shoes
        f"一张{noun}的图片",                                                            # a picture of a shoe
        f"{padj}{short_colour}{short_noun}",                                            # 条纹蓝衬衫
    ]
    weights = [3, 3, 3, 2, 2, 2, 2, 1, 1, 1]
    chosen: list[str] = []
    while len(chosen) < min(n, len(templates)):
        pick = rng.choices(templates, weights=weights)[0]
        if pick not in chosen:
            chosen.append(pick)
    return tuple(chosen)


def caption_attributes_zh(text: str) -> dict[str, str]:
    """The attributes a Chinese caption or query names, e.g. ``"左边的小黄伞"`` -> position, size, colour, kind.

    Traditional characters and full-width letters are read as their simplified
    and ASCII twins. The longest vocabulary word wins at each position; when a
    caption names two values of one attribute, the first wins (as in English).
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_TRADITIONAL)
    named: dict[str, str] = {}
    i = 0
    while i < len(text):
        for length in range(min(_LONGEST, len(text) - i), 0, -1):
            hit = _WORD_TO_ATTR_ZH.get(text[i:i + length])
            if hit is not None:
                if hit[0] not in named:
                    named[hit[0]] = hit[1]
                i += length
                break
        else:
            i += 1
    return named


def is_chinese(text: str) -> bool:
    """True when ``text`` has any CJK ideograph (the Chinese parser applies)."""
    return any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" or "\uf900" <= c <= "\ufaff" for c in text)


# Demo queries in Chinese with their English twins (same attributes); the last ones name held-out pairs.
DEMO_QUERIES: tuple[tuple[str, str], ...] = (
    ("红色的鞋子", "red shoes"),
    ("一双红色的鞋", "a red shoe"),
    ("条纹蓝衬衫", "a striped blue shirt"),
    ("左边的小黄伞", "a small yellow umbrella on the left"),
    ("带圆点的紫色杯子", "a purple cup with dots"),
    ("右边的黑帽子", "a black hat on the right"),
    ("一个大号的橙色包", "a large orange bag"),
    ("绿色的鞋子", "green shoes"),      # held out: no training picture shows a green shoe
    ("紫色的衬衫", "a purple shirt"),   # held out
)
