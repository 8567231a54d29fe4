"""Explanations: seconds per heatmap per method on the CPU, and the pointing game on the synthetic world.

    .venv/bin/python benchmarks/bench_explain.py                                   # default model, timing only
    .venv/bin/python benchmarks/bench_explain.py --model models/demo --catalogue demo-data/catalogue
    .venv/bin/python benchmarks/bench_explain.py --model mmsearch-tiny --photos 2 --standin 12   # quick check

Speed: each method explains ``--photos`` photo-sized JPEGs (decode included),
``--repeat`` times; the table gives the median seconds per explanation, the
forward/backward passes it made, and the ratio to encoding the same photo once
(decode + embed): the issue asks for "a few" encodes, not hundreds.

Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
ECCV 2016): a heatmap hits when its peak falls inside the named object's box.
The baseline points at the centre of the photo. Scenes are read from a
catalogue's ``attributes.jsonl`` in the shape proposed for issue 21: each row
has ``objects``, a list of ``{"kind", "colour", ..., "box": [x0, y0, x1, y1]}``
(box in image pixels, right/bottom exclusive). Until ``retrieval.synthetic``
records boxes, ``--standin N`` draws N one-object and N two-object scenes with
``synthetic.render`` and reads each object's box off its pixels.
Each object is asked for as "a red shoe"; in two-object scenes a hit on the
named object counts, and ``other`` counts peaks on the other object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, machine, make_photo_folder, print_table

PHOTOS = Path(tempfile.gettempdir()) / "mmsearch-bench" / "photos-3000x2000"

Box = Sequence[float]


# -- the pointing game ---------------------------------------------------------------------


def _inside(point: Sequence[float], box: Box, tolerance: float = 0.0) -> bool:
    x, y = point
    x0, y0, x1, y1 = box
    return x0 - tolerance <= x < x1 + tolerance and y0 - tolerance <= y < y1 + tolerance


def pointing_game(explanations: Sequence[Any], boxes: Sequence[Box], tolerance: float = 0.0) -> float:
    """Fraction of explanations whose peak (``Explanation.peak``, photo pixels) falls inside its box.

    ``tolerance`` widens each box by that many pixels on every side (the
    original game allows 15 pixels on ~224-pixel images).
    """
    if len(explanations) != len(boxes):
        raise ValueError(f"{len(explanations)} explanations but {len(boxes)} boxes")
    if not boxes:
        return float("nan")
    return sum(_inside(e.peak, b, tolerance) for e, b in zip(explanations, boxes)) / len(boxes)


def centre_baseline(photo_sizes: Sequence[tuple[int, int]], boxes: Sequence[Box], tolerance: float = 0.0) -> float:
    """The pointing game of a heatmap that always peaks at the photo's centre."""
    if not boxes:
        return float("nan")
    return sum(_inside((w / 2, h / 2), b, tolerance) for (w, h), b in zip(photo_sizes, boxes)) / len(boxes)


# -- scenes in the proposed catalogue shape ---------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One picture and the objects in it, each with its attributes and box (image pixels)."""

    image: Path
    size: tuple[int, int]
    objects: tuple[dict[str, Any], ...]


def read_scenes(root: Path) -> list[Scene]:
    """Scenes from rows that carry ``objects`` with boxes (the proposed shape).

    Rows are read from ``root/attributes.jsonl`` (one-object pictures) and, when
    present, ``root/scenes.jsonl`` (the proposed two-object scenes).
    """
    from PIL import Image

    scenes = []
    lines = []
    for name in ("attributes.jsonl", "scenes.jsonl"):
        if (root / name).is_file():
            lines += (root / name).read_text(encoding="utf-8").splitlines()
    for line in lines:
        row = json.loads(line) if line.strip() else {}
        objects = row.get("objects")
        if not objects or any("box" not in o for o in objects):
            continue
        path = root / row["image"]
        with Image.open(path) as im:
            size = im.size
        scenes.append(Scene(path, size, tuple(objects)))
    if not scenes:
        raise SystemExit(f"{root} has no rows with object boxes: run with --standin N instead")
    return scenes


def _foreground_box(image: Any) -> tuple[tuple[int, int, int, int], Any]:
    """The box and mask of pixels unlike the background (read at the top-left corner).

    ``synthetic.render`` keeps every object clear of the top rows (its centre
    is at least ~0.13 of the side below the top edge), so the corner is always background.
    """
    from PIL import Image, ImageChops

    bg = image.getpixel((0, 0))
    diff = ImageChops.difference(image, Image.new("RGB", image.size, bg)).convert("L")
    mask = diff.point(lambda v: 255 if v > 8 else 0)
    box = mask.getbbox()
    if box is None:
        raise ValueError("the object was not drawn")
    return box, mask


def standin_scenes(root: Path, n: int, size: int = 96, seed: int = 0) -> list[Scene]:
    """N one-object and N two-object scenes drawn with ``synthetic.render``, boxes read off the pixels.

    A stand-in until ``retrieval.synthetic`` records each object's box. Two-object
    scenes put a small object on the left and another kind, in another colour,
    on the right, by pasting the right one's pixels onto the left one's picture.
    Their frames (<= 0.40 of the side, centres 0.27 and 0.73, each +-0.04) can
    touch by a pixel or two; a peak there counts for both objects.
    """
    from retrieval import synthetic as syn

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes, rows = [], []
    for i in range(n):
        attrs = syn.sample_attributes(rng)
        image = syn.render(attrs, size, rng)
        box, _ = _foreground_box(image)
        name = f"one_{i:04d}.png"
        image.save(root / name)
        objects = ({**attrs, "box": list(box)},)
        scenes.append(Scene(root / name, image.size, objects))
        rows.append({"image": name, "objects": list(objects)})
    for i in range(n):
        left = {**syn.sample_attributes(rng), "size": "small", "position": "left"}
        right = {**syn.sample_attributes(rng), "size": "small", "position": "right"}
        while right["kind"] == left["kind"] or right["colour"] == left["colour"]:
            right.update(kind=rng.choice(syn.KINDS), colour=rng.choice(tuple(syn.COLOURS)))
        image = syn.render(left, size, rng)
        other = syn.render(right, size, rng)
        box_l, _ = _foreground_box(image)
        box_r, mask_r = _foreground_box(other)
        image.paste(other, (0, 0), mask_r)
        name = f"two_{i:04d}.png"
        image.save(root / name)
        objects = ({**left, "box": list(box_l)}, {**right, "box": list(box_r)})
        scenes.append(Scene(root / name, image.size, objects))
        rows.append({"image": name, "objects": list(objects)})
    (root / "attributes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return scenes


def object_query(obj: dict[str, Any]) -> str:
    """How the game names an object: "a red shoe", "an orange cup"."""
    colour, kind = obj["colour"], obj["kind"]
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {kind}"


def play(encoder: Any, scenes: Sequence[Scene], methods: Sequence[str], tolerance: float) -> list[dict[str, Any]]:
    """The pointing game per method, for one-object and two-object scenes separately, with the centre baseline."""
    from retrieval.explain import ExplainUnsupportedError, explain

    texts = sorted({object_query(o) for s in scenes for o in s.objects})
    vectors = dict(zip(texts, encoder.encode_texts(texts)))
    results = []
    for group, wanted in (("one object", 1), ("two objects", 2)):
        chosen = [s for s in scenes if len(s.objects) == wanted]
        if not chosen:
            continue
        asks = [(s, o) for s in chosen for o in s.objects]
        boxes = [o["box"] for _, o in asks]
        sizes = [s.size for s, _ in asks]
        results.append({"group": group, "method": "centre point", "n": len(asks),
                        "hit": centre_baseline(sizes, boxes, tolerance), "other": None, "s_each": None})
        for method in methods:
            t0 = time.perf_counter()
            try:
                found = [explain(encoder, vectors[object_query(o)], s.image, method=method) for s, o in asks]
            except ExplainUnsupportedError as exc:
                results.append({"group": group, "method": method, "n": len(asks), "hit": None, "other": None,
                                "s_each": None, "skipped": str(exc)})
                continue
            seconds = (time.perf_counter() - t0) / len(asks)
            other = None
            if wanted == 2:
                others = [next(x for x in s.objects if x is not o)["box"] for s, o in asks]
                other = pointing_game(found, others, tolerance)
            results.append({"group": group, "method": method, "n": len(asks),
                            "hit": pointing_game(found, boxes, tolerance), "other": other, "s_each": seconds})
    return results


# -- speed -----------------------------------------------------------------------------------------


def time_methods(encoder: Any, photos: Sequence[Path], methods: Sequence[str], repeat: int) -> list[dict[str, Any]]:
    """Median seconds per explanation (decode included) per method, against one decode + encode."""
    from retrieval.explain import ExplainUnsupportedError, explain
    from retrieval.loading import load_image

    query = encoder.encode_texts(["a photo of a dog on the beach"])[0]
    encode = []
    for _ in range(repeat):
        for path in photos:
            t0 = time.perf_counter()
            loaded = load_image(path, min_side=encoder.image_size)
            encoder.encode_images([loaded.image])
            encode.append(time.perf_counter() - t0)
    encode_s = statistics.median(encode)
    rows = [{"method": "encode (reference)", "s_each": encode_s, "encodes": 1.0, "forward": 1, "backward": 0}]
    for method in methods:
        try:
            explain(encoder, query, photos[0], method=method)  # warm-up (first-call allocations)
        except ExplainUnsupportedError as exc:
            rows.append({"method": method, "s_each": None, "encodes": None, "forward": None, "backward": None,
                         "skipped": str(exc)})
            continue
        samples, passes = [], {}
        for _ in range(repeat):
            for path in photos:
                t0 = time.perf_counter()
                e = explain(encoder, query, path, method=method)
                samples.append(time.perf_counter() - t0)
                passes = e.passes
        s = statistics.median(samples)
        rows.append({"method": method, "s_each": s, "encodes": s / encode_s, **passes})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from retrieval.config import DEFAULT_MODEL
    from retrieval.explain import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: the project's default model)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--precision", default="fp32", help="fp32 or bf16 (int8 has no gradients)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--photos", type=int, default=5, help="photo-sized JPEGs to time on (0: skip timing)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--catalogue", type=Path, help="a synthetic catalogue whose attributes.jsonl has object boxes")
    ap.add_argument("--standin", type=int, default=0, help="draw N one- and N two-object stand-in scenes")
    ap.add_argument("--image-size", type=int, default=96, help="stand-in scene size in pixels")
    ap.add_argument("--tolerance", type=float, default=0.0, help="pointing-game tolerance in pixels")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)

    from retrieval.encoder import load_encoder

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown methods: {', '.join(unknown)}")
    encoder = load_encoder(args.model, precision=args.precision, threads=args.threads)
    out: dict[str, Any] = {"model": args.model, "precision": args.precision, "machine": machine()}

    if args.photos > 0:
        folder = make_photo_folder(PHOTOS, args.photos)
        photos = sorted(folder.glob("photo_*.jpg"))[:args.photos]
        speed = time_methods(encoder, photos, methods, args.repeat)
        out["speed"] = speed
        print_table(f"Seconds per explanation, {args.model}, {len(photos)} photos x {args.repeat} (median)",
                    ["method", "s each", "x encode", "forward", "backward"],
                    [[r["method"], r["s_each"] if r["s_each"] is not None else "n/a",
                      r["encodes"] if r["encodes"] is not None else r.get("skipped", "")[:60],
                      r["forward"], r["backward"]] for r in speed])

    scenes: list[Scene] = []
    if args.catalogue:
        scenes = read_scenes(args.catalogue)
    elif args.standin:
        scenes = standin_scenes(Path(tempfile.mkdtemp(prefix="explain-standin-")), args.standin, args.image_size)
    if scenes:
        game = play(encoder, scenes, methods, args.tolerance)
        out["pointing_game"] = game
        out["scenes"] = "catalogue" if args.catalogue else "stand-in (boxes read off the pixels)"
        print_table(f"Pointing game ({out['scenes']}): peak inside the named object's box",
                    ["scenes", "method", "asks", "hit rate", "on the other object", "s each"],
                    [[r["group"], r["method"], r["n"], r["hit"] if r["hit"] is not None else "n/a",
                      r["other"] if r["other"] is not None else "", r["s_each"] if r["s_each"] else ""]
                     for r in game])
    emit_json(out, args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
