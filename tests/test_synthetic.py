"""The procedural product world: deterministic, held-out combinations, captions that tell the truth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from retrieval import synthetic as syn


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> syn.Catalogue:
    return syn.generate_catalogue(tmp_path_factory.mktemp("world"), n_images=400, seed=3, image_size=48)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_world_other_seed_other_world(tmp_path: Path) -> None:
    a = syn.generate_catalogue(tmp_path / "a", n_images=40, seed=7, image_size=32)
    b = syn.generate_catalogue(tmp_path / "b", n_images=40, seed=7, image_size=32)
    c = syn.generate_catalogue(tmp_path / "c", n_images=40, seed=8, image_size=32)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)


def test_files_and_round_trip(world: syn.Catalogue) -> None:
    assert len(list((world.root / "images").glob("*.png"))) == 400
    header = world.captions_csv.read_text().splitlines()[0]
    assert header == "image,caption,label,split"
    again = syn.load_catalogue(world.root)
    assert again.items == world.items
    assert again.held_out == syn.HELD_OUT
    assert syn.catalogue_matches(world.root, 400, 3, 48)
    assert not syn.catalogue_matches(world.root, 400, 4, 48)


def test_held_out_combinations_never_reach_training(world: syn.Catalogue) -> None:
    for item in world.items:
        pair = (item.attributes["kind"], item.attributes["colour"])
        assert (item.split == "unseen") == (pair in syn.HELD_OUT)
    train = world.split("train")
    # Every kind and every colour is still seen in training, just not in the held-out pairs.
    assert {i.attributes["kind"] for i in train} == set(syn.KINDS)
    assert {i.attributes["colour"] for i in train} == set(syn.COLOURS)
    assert {s for s in (i.split for i in world.items)} == {"train", "val", "test", "unseen"}
    for kind in syn.KINDS:  # one held-out colour per kind
        assert sum(1 for k, _ in syn.HELD_OUT if k == kind) == 1


def test_every_caption_is_true_of_its_picture(world: syn.Catalogue) -> None:
    for item in world.items:
        assert len(set(item.captions)) == len(item.captions) == 4
        for caption in item.captions:
            named = syn.caption_attributes(caption)
            assert "kind" in named, caption
            assert syn.satisfies(item.attributes, named), (caption, item.attributes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("red shoes", {"kind": "shoe", "colour": "red"}),
        ("a striped blue shirt", {"kind": "shirt", "colour": "blue", "pattern": "striped"}),
        ("a photo of a polka-dot pink tee", {"kind": "shirt", "colour": "pink", "pattern": "dotted"}),
        ("a big black mug with stripes on the left",
         {"kind": "cup", "colour": "black", "pattern": "striped", "size": "large", "position": "left"}),
        ("a little umbrella in the middle", {"kind": "umbrella", "size": "small", "position": "center"}),
        ("sunset over the sea", {}),
    ],
)
def test_caption_attributes(text: str, expected: dict[str, str]) -> None:
    assert syn.caption_attributes(text) == expected


def test_satisfies_counts_every_named_attribute() -> None:
    shoe = {"kind": "shoe", "colour": "red", "pattern": "plain", "size": "small", "position": "left"}
    assert syn.satisfies(shoe, "red shoes")
    assert syn.satisfies(shoe, "a small sneaker on the left")
    assert not syn.satisfies(shoe, "red shoes on the right")
    assert not syn.satisfies(shoe, "a striped red shoe")
    assert syn.relevance([shoe], ["red shoes", "blue shoes"]) == [[True], [False]]


def test_render_puts_the_product_where_the_attributes_say() -> None:
    import random

    for position, side in (("left", 0), ("right", 1)):
        attrs = {"kind": "bag", "colour": "black", "pattern": "plain", "size": "small", "position": position}
        img = syn.render(attrs, 64, random.Random(0)).convert("L")
        dark = [x for x in range(64) for y in range(64) if img.getpixel((x, y)) < 60]
        centre = sum(dark) / len(dark)
        assert (centre < 32) == (side == 0)
