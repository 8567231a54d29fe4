"""Two-object scenes of the synthetic world: "a red shoe on the left and a blue cup on the right".

Each scene records both objects' tight boxes, so a heatmap's peak can be checked
against the object a query names (the pointing game of ``benchmarks/bench_explain.py``,
issue 21). Scenes live apart from a catalogue's ``captions.csv``: training and the
retrieval evaluation never see them. No torch here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .synthetic import COLOURS, KINDS, _article, _background, _draw_object, sample_attributes

__all__ = ["SCENE_CENTRES", "SyntheticScene", "generate_scenes", "load_scenes", "scene_captions"]


# Where the two objects of a scene stand: small ones (frames <= 0.40 of the side) at these
# centres, with no horizontal jitter, so their frames are always >= 0.10 of the side apart.
SCENE_CENTRES: dict[str, float] = {"left": 0.25, "right": 0.75}


@dataclass(frozen=True)
class SyntheticScene:
    """A picture with two objects, left and right, each with its attributes and tight ``box``."""

    image: str
    objects: tuple[dict[str, object], ...]
    captions: tuple[str, ...]
    split: str = "scenes"


def _object_phrase(obj: Mapping[str, object]) -> str:
    colour, kind = str(obj["colour"]), str(obj["kind"])
    return f"{_article(colour)} {colour} {kind}"


def scene_captions(objects: Sequence[Mapping[str, object]]) -> tuple[str, ...]:
    """The pair in both orders, then each object alone: "a red shoe on the left and a blue cup on the right", ..."""
    left, right = objects
    pair = (f"{_object_phrase(left)} on the left and {_object_phrase(right)} on the right",
            f"{_object_phrase(right)} on the right and {_object_phrase(left)} on the left")
    return pair + (_object_phrase(left), _object_phrase(right))


def generate_scenes(out_dir: str | Path, n: int = 200, seed: int = 0, image_size: int = 96) -> list[SyntheticScene]:
    """Write ``n`` two-object scenes under ``out_dir`` and return them.

    Each scene has one background and two small objects, one on the left and
    one on the right, of different kinds and different colours, with any
    pattern; their frames never touch. Files written: ``scenes/NNNNNN.png`` and
    ``scenes.jsonl`` (image, objects with their boxes, captions, split
    ``"scenes"``). Nothing goes into ``captions.csv``: training and the
    retrieval evaluation are unchanged. The same arguments always produce the
    same files (the random stream is the seed's own, apart from the catalogue's).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    root = Path(out_dir)
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"scenes-{seed}")
    scenes = []
    for i in range(n):
        left = {**sample_attributes(rng), "size": "small", "position": "left"}
        right = {**sample_attributes(rng), "size": "small", "position": "right"}
        while right["kind"] == left["kind"] or right["colour"] == left["colour"]:
            right["kind"], right["colour"] = rng.choice(KINDS), rng.choice(tuple(COLOURS))
        image = _background(image_size, rng)
        objects = tuple({**attrs, "box": list(_draw_object(image, attrs, rng, centres=SCENE_CENTRES, jitter=0.0))}
                        for attrs in (left, right))
        name = f"scenes/{i:06d}.png"
        image.save(root / name, optimize=False, compress_level=1)
        scenes.append(SyntheticScene(image=name, objects=objects, captions=scene_captions(objects)))
    with (root / "scenes.jsonl").open("w", encoding="utf-8") as f:
        for scene in scenes:
            f.write(json.dumps({"image": scene.image, "objects": list(scene.objects), "captions": list(scene.captions),
                                "split": scene.split}) + "\n")
    return scenes


def load_scenes(root: str | Path) -> list[SyntheticScene]:
    """Read back the scenes written by :func:`generate_scenes` (none when ``root`` has no ``scenes.jsonl``)."""
    path = Path(root) / "scenes.jsonl"
    if not path.is_file():
        return []
    scenes = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                scenes.append(SyntheticScene(image=row["image"], objects=tuple(row["objects"]),
                                             captions=tuple(row["captions"]), split=row.get("split", "scenes")))
    return scenes
