"""The synthetic world knows where it drew each object: tight boxes, two-object scenes, unchanged catalogues."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import synthetic as syn
from retrieval import synthetic_scenes as scenes_mod

# sha256 of the pixels of 40 pictures drawn by syn.render (attributes from sample_attributes, one
# random.Random(5) for both, 64 px), computed with the renderer as it was before boxes were recorded
# (main at 86b3b1e): recording boxes must not move a single pixel. (Catalogues as a whole changed on
# purpose since: captions name pattern, size and position more often, which draws the rng differently.)
PICTURES_BEFORE_BOXES = "12582eee0dd1a49df3c457499fe6a805db5a14b0dc5265108bb3a82bf6cbb132"


def _changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(np.any(before != after, axis=-1))
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int] | list[int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def test_recording_boxes_draws_the_same_pixels() -> None:
    rng = random.Random(5)
    h = hashlib.sha256()
    for _ in range(40):
        attributes = syn.sample_attributes(rng)
        h.update(syn.render(attributes, 64, rng).tobytes())
    assert h.hexdigest() == PICTURES_BEFORE_BOXES


@pytest.mark.parametrize("size", [48, 96, 160])
def test_the_box_holds_every_pixel_the_object_changed_and_no_more(size: int) -> None:
    rng = random.Random(size)
    for _ in range(60):
        attrs = syn.sample_attributes(rng)
        canvas = Image.new("RGB", (size, size), (3, 7, 11))  # a colour no object is drawn in
        before = np.asarray(canvas).copy()
        box = syn._draw_object(canvas, attrs, rng)
        changed = _changed_box(before, np.asarray(canvas))
        assert changed is not None, attrs
        assert _inside(changed, box), (attrs, changed, box)
        # Tight: an outline pixel pasted at a faint edge value may round back to the background.
        assert all(abs(a - b) <= 1 for a, b in zip(changed, box)), (attrs, changed, box)
        assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size


def test_catalogue_rows_record_each_pictures_object_and_box(tmp_path: Path) -> None:
    world = syn.generate_catalogue(tmp_path, n_images=40, seed=2, image_size=64)
    rows = [json.loads(line) for line in (tmp_path / "attributes.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    for row, item in zip(rows, world.items):
        (obj,) = row["objects"]
        assert {k: obj[k] for k in syn.ATTRIBUTES} == {k: row[k] for k in syn.ATTRIBUTES}
        pixels = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"))
        # The top row is background: objects sit at least 0.13 of the side below the top edge.
        assert (pixels[0] == pixels[0, 0]).all()
        background = np.broadcast_to(pixels[0, 0], pixels.shape)
        changed = _changed_box(background, pixels)
        assert changed is not None and _inside(changed, obj["box"]), (row["image"], changed, obj["box"])
        assert item.objects == (obj,)
    assert syn.load_catalogue(tmp_path).items == world.items


def test_a_catalogue_written_before_boxes_still_loads(tmp_path: Path) -> None:
    syn.generate_catalogue(tmp_path, n_images=5, seed=1, image_size=32)
    path = tmp_path / "attributes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "objects"}) + "\n" for r in rows))
    assert all(item.objects == () for item in syn.load_catalogue(tmp_path).items)


def test_two_object_scenes(tmp_path: Path) -> None:
    syn.generate_catalogue(tmp_path, n_images=10, seed=0, image_size=96)
    captions_before = (tmp_path / "captions.csv").read_bytes()
    scenes = scenes_mod.generate_scenes(tmp_path, n=40, seed=0, image_size=96)
    assert (tmp_path / "captions.csv").read_bytes() == captions_before  # scenes never reach training
    assert scenes_mod.load_scenes(tmp_path) == scenes and len(scenes) == 40
    for scene in scenes:
        left, right = scene.objects
        assert (left["position"], right["position"]) == ("left", "right")
        assert left["size"] == right["size"] == "small"
        assert left["kind"] != right["kind"] and left["colour"] != right["colour"]
        assert left["box"][2] < right["box"][0]  # apart, with background between them
        pixels = np.asarray(Image.open(tmp_path / scene.image).convert("RGB"))
        background = np.broadcast_to(pixels[0, 0], pixels.shape)
        drawn = np.any(pixels != background, axis=-1)
        inside = np.zeros_like(drawn)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj["box"]
            inside[y0:y1, x0:x1] = True
            assert drawn[y0:y1, x0:x1].mean() > 0.15, (scene.image, obj)  # the object is really there
        assert not (drawn & ~inside).any(), scene.image
        a, b = f"a {left['colour']} {left['kind']}", f"a {right['colour']} {right['kind']}"
        for caption, named in zip(scene.captions, ((left, right), (right, left), (left,), (right,))):
            for obj in named:
                assert obj["colour"] in caption and obj["kind"] in caption
        assert any(c.endswith("on the right") and "on the left and" in c for c in scene.captions)
        assert scene.captions[2].replace("an ", "a ") == a and scene.captions[3].replace("an ", "a ") == b


def test_scenes_are_deterministic(tmp_path: Path) -> None:
    one = scenes_mod.generate_scenes(tmp_path / "a", n=6, seed=4, image_size=64)
    two = scenes_mod.generate_scenes(tmp_path / "b", n=6, seed=4, image_size=64)
    other = scenes_mod.generate_scenes(tmp_path / "c", n=6, seed=5, image_size=64)
    assert one == two and one != other
    for scene in one:
        assert (tmp_path / "a" / scene.image).read_bytes() == (tmp_path / "b" / scene.image).read_bytes()
    with pytest.raises(ValueError):
        scenes_mod.generate_scenes(tmp_path / "d", n=0)
