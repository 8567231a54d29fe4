"""A procedural world of product pictures and their captions.

Every picture shows one product (a shoe, shirt, hat, bag, cup or umbrella) drawn
with PIL: a recognisable silhouette, a fill colour, a pattern (plain, striped,
dotted), a size and a horizontal position, on a plain or lightly tinted
background. Each picture gets several captions from templates and synonyms,
each naming a subset of its attributes ("red shoes", "a photo of a striped blue
shirt", "a small mug on the left").

The catalogue records each object's tight box, and two-object scenes ("a red
shoe on the left and a blue cup on the right") are drawn apart from it
(:func:`generate_scenes`): the renderer knows where everything is, so where a
model looks can be checked (docs/explain.md).

Some (kind, colour) combinations are *held out*: no training picture shows
them, so a model's generalisation to unseen combinations can be measured.

A catalogue may also carry Chinese captions (``languages=("en", "zh")``, from
:mod:`retrieval.synthetic_zh`: natural phrasing, several words per attribute),
drawn from their own random stream so that the pictures and English captions of
a seed do not change; :func:`caption_attributes` reads captions and queries in
either language.

Everything is deterministic given the seed. No torch here: the demo, the tests
and the benchmarks all build the world cheaply.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from PIL import Image, ImageDraw, ImageFilter

from .synthetic_zh import TEMPLATE_WEIGHTS, caption_attributes_zh, is_chinese, make_captions_zh

KINDS: tuple[str, ...] = ("shoe", "shirt", "hat", "bag", "cup", "umbrella")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 210, 25),
    "green": (35, 150, 55),
    "blue": (35, 75, 205),
    "purple": (125, 45, 165),
    "pink": (245, 125, 185),
    "black": (25, 25, 25),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "center", "right")
ATTRIBUTES: tuple[str, ...] = ("kind", "colour", "pattern", "size", "position")

# The (kind, colour) pairs that never appear in training: every kind and every
# colour is still seen, just not together. A Latin-square choice, so no kind or
# colour loses more than one partner.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("shoe", "green"),
        ("shirt", "purple"),
        ("hat", "blue"),
        ("bag", "yellow"),
        ("cup", "red"),
        ("umbrella", "pink"),
    }
)

# Words a caption may use for each attribute value (first = canonical). Plurals are
# listed explicitly so that parsing a free query ("red shoes") needs no stemmer.
KIND_WORDS: dict[str, tuple[str, ...]] = {
    "shoe": ("shoe", "shoes", "sneaker", "sneakers"),
    "shirt": ("shirt", "shirts", "t-shirt", "t-shirts", "tee", "tees"),
    "hat": ("hat", "hats"),
    "bag": ("bag", "bags", "handbag", "handbags"),
    "cup": ("cup", "cups", "mug", "mugs"),
    "umbrella": ("umbrella", "umbrellas"),
}
_KIND_SINGULAR: dict[str, tuple[str, ...]] = {
    "shoe": ("shoe", "sneaker"), "shirt": ("shirt", "t-shirt", "tee"), "hat": ("hat",),
    "bag": ("bag", "handbag"), "cup": ("cup", "mug"), "umbrella": ("umbrella",),
}
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "stripy", "stripes", "stripe"),
    "dotted": ("dotted", "polka-dot", "spotted", "dots", "dot"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left",),
    "center": ("center", "centre", "middle"),
    "right": ("right",),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS}
_VOCAB: dict[str, dict[str, tuple[str, ...]]] = {
    "kind": KIND_WORDS,
    "colour": COLOUR_WORDS,
    "pattern": PATTERN_WORDS,
    "size": SIZE_WORDS,
    "position": POSITION_WORDS,
}
_WORD_TO_ATTR: dict[str, tuple[str, str]] = {
    word: (attr, value) for attr, table in _VOCAB.items() for value, words in table.items() for word in words
}

SPLITS: tuple[str, ...] = ("train", "val", "test", "unseen")
LANGUAGES: tuple[str, ...] = ("en", "zh")  # caption languages a catalogue may carry; English always


@dataclass(frozen=True)
class SyntheticItem:
    """One picture of the world: its file (relative to the catalogue root), attributes and captions."""

    image: str
    attributes: dict[str, str]
    captions: tuple[str, ...]  # English
    split: str  # train | val | test (seen combinations) | unseen (held-out combinations)
    captions_zh: tuple[str, ...] = ()  # Chinese, in a catalogue generated with languages=("en", "zh")
    # Each object drawn: its attributes and "box" [x0, y0, x1, y1] (pixels, right/bottom exclusive).
    # One for a catalogue picture; empty for a catalogue written before boxes were recorded.
    objects: tuple[dict[str, object], ...] = ()

    @property
    def all_captions(self) -> tuple[str, ...]:
        """Every caption of the picture, in every language the catalogue carries."""
        return self.captions + self.captions_zh

    @property
    def label(self) -> str:
        """The class label used for zero-shot classification: the product kind."""
        return self.attributes["kind"]


@dataclass
class Catalogue:
    """A generated world on disk."""

    root: Path
    items: list[SyntheticItem]
    seed: int
    image_size: int
    held_out: frozenset[tuple[str, str]] = field(default_factory=lambda: HELD_OUT)
    languages: tuple[str, ...] = ("en",)

    @property
    def captions_csv(self) -> Path:
        return self.root / "captions.csv"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def split(self, *names: str) -> list[SyntheticItem]:
        return [item for item in self.items if item.split in names]

    def attributes_of(self, image_path: str | Path) -> dict[str, str] | None:
        """Attributes of the picture at ``image_path`` (absolute or relative to the root)."""
        if not hasattr(self, "_by_name"):
            self._by_name = {Path(item.image).name: item for item in self.items}
        item = self._by_name.get(Path(image_path).name)
        return dict(item.attributes) if item else None


# -- captions -----------------------------------------------------------------------


def caption_attributes(text: str) -> dict[str, str]:
    """The attributes a caption or query names, e.g. ``"red shoes"`` -> ``{kind: shoe, colour: red}``.

    Captions in Chinese (``"左边的小黄伞"``, simplified or traditional) are read
    with :func:`retrieval.synthetic_zh.caption_attributes_zh`, and English words
    in them fill what the Chinese ones leave (``"红色的 shoes"``). Words outside
    the world's vocabulary are ignored. When a caption names two values of one
    attribute, the first wins.
    """
    named: dict[str, str] = caption_attributes_zh(text) if is_chinese(text) else {}
    for word in re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower()):
        hit = _WORD_TO_ATTR.get(word)
        if hit is None and "-" in word:  # "polka-dot" is one word, "blue-striped" two
            for part in word.split("-"):
                hit = _WORD_TO_ATTR.get(part)
                if hit and hit[0] not in named:
                    named[hit[0]] = hit[1]
            continue
        if hit and hit[0] not in named:
            named[hit[0]] = hit[1]
    return named


def satisfies(attributes: Mapping[str, str], caption: str | Mapping[str, str]) -> bool:
    """True when a picture with ``attributes`` has every attribute the caption names.

    This is the "hit" of retrieval on this world: many pictures can match one
    caption ("red shoes"), and any of them is a correct answer.
    """
    named = caption_attributes(caption) if isinstance(caption, str) else caption
    return all(attributes.get(attr) == value for attr, value in named.items())


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pattern_adj(pattern: str, rng: random.Random) -> str:
    return rng.choice({"plain": ("plain", "solid"), "striped": ("striped", "stripy"),
                       "dotted": ("dotted", "polka-dot", "spotted")}[pattern])


def _position_phrase(position: str, rng: random.Random) -> str:
    if position == "center":
        return rng.choice(("in the center", "in the middle"))
    return f"on the {position}"


def make_captions(attributes: Mapping[str, str], rng: random.Random, n: int = 4) -> tuple[str, ...]:
    """``n`` distinct captions for a picture, each naming a different subset of its attributes."""
    kind, colour, pattern = attributes["kind"], attributes["colour"], attributes["pattern"]
    size, position = attributes["size"], attributes["position"]
    noun = rng.choice(_KIND_SINGULAR[kind])
    plural = rng.choice([w for w in KIND_WORDS[kind] if w.endswith("s") and w not in _KIND_SINGULAR[kind]])
    padj = _pattern_adj(pattern, rng)
    size_adj = rng.choice(SIZE_WORDS[size])
    with_pattern = {"plain": f"plain {colour} {noun}", "striped": f"{colour} {noun} with stripes",
                    "dotted": f"{colour} {noun} with dots"}[pattern]
    where = _position_phrase(position, rng)
    templates = [
        f"{colour} {plural}",
        f"{_article(colour)} {colour} {noun}",
        f"a photo of {_article(padj)} {padj} {colour} {noun}",
        f"{_article(with_pattern)} {with_pattern}",
        f"{_article(size_adj)} {size_adj} {colour} {noun}",
        f"{_article(colour)} {colour} {noun} {where}",
        f"{_article(size_adj)} {size_adj} {padj} {colour} {noun} {where}",
        f"{padj} {plural}",
        f"a picture of {_article(noun)} {noun}",
        f"{colour} {padj} {noun}",
    ]
    # Most captions name colour and kind together (that is what makes held-out pairs testable), and
    # the words for pattern, size and position are drawn as often: see TEMPLATE_WEIGHTS.
    weights = TEMPLATE_WEIGHTS
    chosen: list[str] = []
    while len(chosen) < min(n, len(templates)):
        pick = rng.choices(templates, weights=weights)[0]
        if pick not in chosen:
            chosen.append(pick)
    return tuple(chosen)


# -- drawing ------------------------------------------------------------------------

PATTERN_REPEATS = 4.5  # stripes or rows of dots across a product's side
PATTERN_MIN_STEP = 4.0  # pixels: the finest pattern period drawn


def _silhouette(kind: str, draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float]) -> None:
    """Draw the kind's silhouette filled with 255 into a mask, inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0

    def p(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * w, y0 + v * h)

    if kind == "shoe":  # side view of a sneaker: high heel collar, long toe, thick sole
        draw.polygon([p(0.02, 0.30), p(0.30, 0.30), p(0.42, 0.50), p(0.80, 0.58), p(0.98, 0.72),
                      p(0.98, 0.90), p(0.02, 0.90)], fill=255)
    elif kind == "shirt":  # a T: body plus two sleeves, with a neck notch
        draw.polygon([p(0.30, 0.05), p(0.42, 0.05), p(0.50, 0.15), p(0.58, 0.05), p(0.70, 0.05),
                      p(0.98, 0.30), p(0.86, 0.45), p(0.76, 0.38), p(0.76, 0.98), p(0.24, 0.98),
                      p(0.24, 0.38), p(0.14, 0.45), p(0.02, 0.30)], fill=255)
    elif kind == "hat":  # a wide brim and a tall rounded crown
        draw.ellipse([p(0.0, 0.62), p(1.0, 0.90)], fill=255)
        draw.rectangle([p(0.25, 0.25), p(0.75, 0.76)], fill=255)
        draw.ellipse([p(0.25, 0.10), p(0.75, 0.40)], fill=255)
    elif kind == "bag":  # a body with a handle ring on top
        draw.rectangle([p(0.08, 0.40), p(0.92, 0.95)], fill=255)
        draw.arc([p(0.25, 0.05), p(0.75, 0.70)], start=180, end=360, fill=255, width=max(2, int(w * 0.09)))
    elif kind == "cup":  # a tapered body with a side handle
        draw.polygon([p(0.10, 0.20), p(0.72, 0.20), p(0.64, 0.95), p(0.18, 0.95)], fill=255)
        draw.arc([p(0.55, 0.35), p(0.98, 0.75)], start=270, end=90, fill=255, width=max(2, int(w * 0.08)))
    elif kind == "umbrella":  # a scalloped canopy, a shaft and a hook
        draw.pieslice([p(0.0, 0.05), p(1.0, 0.85)], start=180, end=360, fill=255)
        for i in range(4):  # scallops cut out of the canopy's lower edge
            draw.ellipse([p(i * 0.25, 0.38), p((i + 1) * 0.25, 0.52)], fill=0)
        draw.rectangle([p(0.47, 0.42), p(0.53, 0.88)], fill=255)
        draw.arc([p(0.30, 0.78), p(0.53, 0.98)], start=0, end=180, fill=255, width=max(2, int(w * 0.06)))
    else:
        raise ValueError(f"unknown kind {kind!r}")


def _contrast(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (40, 40, 40) if luminance > 150 else (245, 245, 245)


def render(attributes: Mapping[str, str], size: int, rng: random.Random) -> Image.Image:
    """Draw one picture with the given attributes (jittered by ``rng``)."""
    return render_with_box(attributes, size, rng)[0]


def render_with_box(attributes: Mapping[str, str], size: int, rng: random.Random
                    ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """:func:`render`, and the drawn object's tight box ``[x0, y0, x1, y1]`` (pixels, right/bottom exclusive)."""
    image = _background(size, rng)
    box = _draw_object(image, attributes, rng)
    return image, box


def _background(size: int, rng: random.Random) -> Image.Image:
    if rng.random() < 0.5:
        bg = (255, 255, 255)
    else:
        bg = tuple(rng.randint(215, 250) for _ in range(3))
    return Image.new("RGB", (size, size), bg)


# Horizontal centre of an object at each position, as a fraction of the side.
_CENTRES: dict[str, float] = {"left": 0.27, "center": 0.5, "right": 0.73}


def _draw_object(image: Image.Image, attributes: Mapping[str, str], rng: random.Random, *,
                 centres: Mapping[str, float] = _CENTRES, jitter: float = 0.04) -> tuple[int, int, int, int]:
    """Draw one object onto the square ``image`` (jittered by ``rng``) and return its tight box.

    The box ``(x0, y0, x1, y1)`` covers every pixel the object changed (its
    filled silhouette and the dark outline around it), clipped to the canvas,
    right/bottom exclusive. ``jitter`` is the random horizontal shift (a
    fraction of the side); 0 draws no random number for it. With the defaults
    the random numbers are drawn in the order :func:`render` always drew them,
    so catalogues stay byte-identical.
    """
    size = image.width
    frac = rng.uniform(0.34, 0.40) if attributes["size"] == "small" else rng.uniform(0.58, 0.66)
    side = frac * size
    cx = centres[attributes["position"]] * size
    if jitter:
        cx += rng.uniform(-jitter, jitter) * size
    cy = size * 0.5 + rng.uniform(-0.12, 0.12) * size * (1 - frac)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    mask = Image.new("L", (size, size), 0)
    _silhouette(attributes["kind"], ImageDraw.Draw(mask), box)

    base = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLOURS[attributes["colour"]])
    fill = Image.new("RGB", (size, size), base)
    pat = ImageDraw.Draw(fill)
    other = _contrast(base)  # stripes and dots must show on every colour
    step = max(PATTERN_MIN_STEP, side / PATTERN_REPEATS)  # coarse enough to survive a small model input
    if attributes["pattern"] == "striped":
        angle = rng.choice((0.0, math.pi / 4, math.pi / 2))  # horizontal, diagonal or vertical
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-2 * size // int(step) - 2, 2 * size // int(step) + 2):
            ox, oy = box[0] + k * step * dy, box[1] - k * step * dx  # offset across the stripes
            pat.line([(ox - dx * 2 * size, oy - dy * 2 * size), (ox + dx * 2 * size, oy + dy * 2 * size)],
                     fill=other, width=max(1, int(step * 0.45)))
    elif attributes["pattern"] == "dotted":
        r = max(1.0, step * 0.28)
        y = box[1] + step / 2
        row = 0
        while y < box[3]:
            x = box[0] + step / 2 + (step / 2 if row % 2 else 0)
            while x < box[2]:
                pat.ellipse([x - r, y - r, x + r, y + r], fill=other)
                x += step
            y += step
            row += 1
    image.paste(fill, (0, 0), mask)
    # A thin dark outline keeps the silhouette readable on any background.
    edge = mask.point(lambda v: 255 if v else 0).filter(_EDGE_FILTER)
    image.paste((20, 20, 20), (0, 0), edge)
    # The tight box: where the fill (mask) or the outline (edge) touched the picture. getbbox is
    # already clipped to the canvas and right/bottom exclusive.
    drawn = [b for b in (mask.getbbox(), edge.getbbox()) if b is not None]
    if not drawn:  # cannot happen for the world's sizes; a box must still be a box
        return (0, 0, 0, 0)
    return (min(b[0] for b in drawn), min(b[1] for b in drawn), max(b[2] for b in drawn), max(b[3] for b in drawn))


_EDGE_FILTER = ImageFilter.FIND_EDGES


# -- the catalogue ------------------------------------------------------------------


def sample_attributes(rng: random.Random) -> dict[str, str]:
    return {
        "kind": rng.choice(KINDS),
        "colour": rng.choice(tuple(COLOURS)),
        "pattern": rng.choice(PATTERNS),
        "size": rng.choice(SIZES),
        "position": rng.choice(POSITIONS),
    }


def _split_for(attributes: Mapping[str, str], rng: random.Random, val_fraction: float, test_fraction: float) -> str:
    if (attributes["kind"], attributes["colour"]) in HELD_OUT:
        return "unseen"
    u = rng.random()
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def _check_languages(languages: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(languages))
    unknown = [lang for lang in chosen if lang not in LANGUAGES]
    if unknown or "en" not in chosen:
        raise ValueError(f"caption languages must include 'en' and be among {', '.join(LANGUAGES)} (got {chosen})")
    return tuple(lang for lang in LANGUAGES if lang in chosen)


def generate_catalogue(
    out_dir: str | Path,
    n_images: int = 2000,
    seed: int = 0,
    image_size: int = 96,
    captions_per_image: int = 4,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    languages: Iterable[str] = ("en",),
) -> Catalogue:
    """Write a synthetic catalogue under ``out_dir`` and return it.

    Files written:
      ``images/NNNNNN.png``  the pictures;
      ``captions.csv``       ``image,caption,label,split``, one row per caption in every language
                             (image paths relative to ``out_dir``, so ``mmsearch train out_dir/captions.csv``
                             works, and trains on every language);
      ``attributes.jsonl``   one line per picture: image, attributes, captions (``captions_zh`` too), split,
                             and ``objects``: each object drawn with its attributes and tight ``box``
                             ``[x0, y0, x1, y1]`` in pixels (right/bottom exclusive);
      ``catalogue.json``     seed, sizes, languages, held-out pairs, vocabulary.

    ``languages``: ``("en",)`` or ``("en", "zh")``: ``captions_per_image``
    captions in each. Chinese captions come from a random stream of their own,
    so a seed gives the same pictures and English captions either way.
    Splits: ``train``/``val``/``test`` hold seen (kind, colour) pairs; ``unseen`` holds
    every picture of a held-out pair (never used for training or validation).
    The same arguments always produce the same files.
    """
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    langs = _check_languages(languages)
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rng_zh = random.Random(f"captions-zh:{seed}")
    items: list[SyntheticItem] = []
    for i in range(n_images):
        attributes = sample_attributes(rng)
        split = _split_for(attributes, rng, val_fraction, test_fraction)
        captions = make_captions(attributes, rng, captions_per_image)
        captions_zh = make_captions_zh(attributes, rng_zh, captions_per_image) if "zh" in langs else ()
        name = f"images/{i:06d}.png"
        image, box = render_with_box(attributes, image_size, rng)
        image.save(root / name, optimize=False, compress_level=1)
        items.append(SyntheticItem(image=name, attributes=attributes, captions=captions, split=split,
                                   captions_zh=captions_zh, objects=({**attributes, "box": list(box)},)))

    with (root / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label", "split"])
        for item in items:
            for caption in item.all_captions:
                writer.writerow([item.image, caption, item.label, item.split])
    with (root / "attributes.jsonl").open("w", encoding="utf-8") as f:
        for item in items:
            row = {"image": item.image, **item.attributes, "captions": list(item.captions), "split": item.split}
            if item.captions_zh:
                row["captions_zh"] = list(item.captions_zh)
            row["objects"] = list(item.objects)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta = {
        "seed": seed, "n_images": n_images, "image_size": image_size, "languages": list(langs),
        "captions_per_image": captions_per_image,
        "held_out": sorted([list(p) for p in HELD_OUT]),
        "kinds": list(KINDS), "colours": list(COLOURS), "patterns": list(PATTERNS),
        "sizes": list(SIZES), "positions": list(POSITIONS),
    }
    (root / "catalogue.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Catalogue(root=root, items=items, seed=seed, image_size=image_size, languages=langs)


def load_catalogue(root: str | Path) -> Catalogue:
    """Read back a catalogue written by :func:`generate_catalogue`."""
    root = Path(root)
    meta = json.loads((root / "catalogue.json").read_text(encoding="utf-8"))
    items = []
    with (root / "attributes.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            items.append(SyntheticItem(
                image=row["image"], attributes={a: row[a] for a in ATTRIBUTES},
                captions=tuple(row["captions"]), split=row["split"], captions_zh=tuple(row.get("captions_zh", ())),
                objects=tuple(row.get("objects", ())),
            ))
    return Catalogue(root=root, items=items, seed=int(meta["seed"]), image_size=int(meta["image_size"]),
                     held_out=frozenset(tuple(p) for p in meta["held_out"]),
                     languages=tuple(meta.get("languages", ("en",))))


def catalogue_matches(root: str | Path, n_images: int, seed: int, image_size: int,
                      languages: Iterable[str] = ("en",)) -> bool:
    """True when ``root`` already holds the catalogue these arguments would generate."""
    try:
        meta = json.loads((Path(root) / "catalogue.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = (n_images, seed, image_size, list(_check_languages(languages)))
    found = (meta.get("n_images"), meta.get("seed"), meta.get("image_size"), meta.get("languages", ["en"]))
    return found == wanted and all((Path(root) / f"images/{i:06d}.png").is_file() for i in (0, n_images - 1))


def relevance(attributes: Iterable[Mapping[str, str]], captions: Iterable[str]) -> list[list[bool]]:
    """``[t][i]``: does picture ``i`` satisfy every attribute caption ``t`` names?"""
    attrs = list(attributes)
    return [[satisfies(a, named) for a in attrs] for named in (caption_attributes(c) for c in captions)]
