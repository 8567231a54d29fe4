"""``mmsearch duplicates`` and ``Index.duplicates`` end to end, with an encoder whose vectors are constructed.

A tiny random model places pictures arbitrarily, so the encoder here is a
perceptual one: a photo's vector is its 16x16 colour thumbnail, centred and
unit length. Under it a resized, re-encoded or slightly cropped copy, and the
frames of a burst, stay within a small angle of the photo (cosine > 0.97),
while other photos of the same kind of scene (beaches with a sky, sea and
sand, different things on the sand) sit at ~0.75-0.85: alike, not the same.
The test checks those cosines first, so the grouping checks below mean what
they say. The photos are decoded by the real pipeline (files on disk, EXIF
capture times), and grouping runs through the CLI and the API.
"""

from __future__ import annotations

import html.parser
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

import retrieval
from retrieval.cli import app

from .conftest import one_line_error
from .test_photo_meta import make_exif

runner = CliRunner()


class ThumbnailEncoder:
    """Constructed embeddings: the 16x16 RGB thumbnail of a picture, mean-centred and unit length."""

    spec = "fake-thumbnail"
    fingerprint = "thumb0001"
    image_size = 16
    logit_scale = 100.0
    dim = 16 * 16 * 3

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32).reshape(-1)

    def pixels_from_prepared(self, prepared) -> np.ndarray:
        return np.stack(list(prepared))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        centred = pixels - pixels.mean(axis=1, keepdims=True)
        return (centred / np.linalg.norm(centred, axis=1, keepdims=True)).astype(np.float32)

    def encode_images(self, images) -> np.ndarray:
        return self.encode_pixels(np.stack([self.preprocess(i) for i in images]))

    def encode_texts(self, texts) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        v = rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def scene(kind: str, seed: int, *, size: tuple[int, int] = (480, 360), shift: tuple[int, int] = (0, 0)) -> Image.Image:
    """A beach (sky, sea, sand) or a garden (hedge, lawn) with five things placed by ``seed``; ``shift`` moves them."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    if kind == "beach":
        draw.rectangle([0, 0, w, h * 0.45], fill=(110, 170, 230))
        draw.rectangle([0, h * 0.45, w, h * 0.6], fill=(40, 110, 170))
        draw.rectangle([0, h * 0.6, w, h], fill=(225, 200, 150))
    else:
        draw.rectangle([0, 0, w, h * 0.5], fill=(150, 190, 120))
        draw.rectangle([0, h * 0.5, w, h], fill=(60, 120, 50))
    palette = [(230, 60, 50), (250, 220, 40), (250, 250, 250), (40, 40, 40)]
    for _ in range(5):
        r = rng.randrange(h // 16, h // 10)
        x, y = rng.randrange(w) + shift[0], rng.randrange(h // 2, h) + shift[1]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rng.choice(palette))
    return img.filter(ImageFilter.GaussianBlur(4))


def save(img: Image.Image, path: Path, taken: str, *, quality: int = 95) -> None:
    img.save(path, "JPEG", quality=quality, exif=make_exif(make="Canon", model="EOS R5", original=taken).tobytes())


BEACH_GROUP = ["beach-1.jpg", "beach-1-copy.jpg", "beach-1-q35.jpg", "beach-1-crop.jpg", "beach-1-small.jpg"]
BURST_GROUP = [f"burst-{k}.jpg" for k in range(4)]
LONE = ["beach-2.jpg", "beach-3.jpg", "beach-4.jpg", "beach-5.jpg", "garden-2.jpg", "garden-3.jpg"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(photo folder, index root): copies of one beach, a burst in a garden, and other beaches and gardens."""
    base = tmp_path_factory.mktemp("duplicates")
    photos = base / "photos"
    (photos / "copies").mkdir(parents=True)
    beach = scene("beach", 1)
    w, h = beach.size
    save(beach, photos / "beach-1.jpg", "2023:07:14 10:00:00")
    shutil.copyfile(photos / "beach-1.jpg", photos / "copies" / "beach-1-copy.jpg")  # byte for byte
    save(beach.resize((w // 2, h // 2), Image.LANCZOS), photos / "copies" / "beach-1-small.jpg", "2023:07:14 10:00:00")
    save(beach, photos / "copies" / "beach-1-q35.jpg", "2023:07:14 10:00:00", quality=35)
    crop = beach.crop((int(w * 0.04), int(h * 0.04), int(w * 0.96), int(h * 0.96)))
    save(crop, photos / "copies" / "beach-1-crop.jpg", "2023:07:14 10:00:00")
    for k in range(4):  # four frames a second apart, things moving a little
        save(scene("garden", 1, shift=(4 * k, k)), photos / f"burst-{k}.jpg", f"2023:05:01 12:00:0{k}")
    for seed in (2, 3, 4, 5):
        save(scene("beach", seed), photos / f"beach-{seed}.jpg", f"2023:07:1{seed} 10:00:00")
    for seed in (2, 3):
        save(scene("garden", seed), photos / f"garden-{seed}.jpg", f"2023:05:0{seed} 12:00:00")
    root = base / "indexes"
    with retrieval.create_index(encoder=ThumbnailEncoder(), root=root) as idx:
        report = idx.add_folder(photos)
        assert report.added == len(BEACH_GROUP) + len(BURST_GROUP) + len(LONE) and report.failed == 0
    return photos, root


def name(path: str) -> str:
    return Path(path).name


def test_the_constructed_space_puts_copies_close_and_similar_scenes_apart(library) -> None:
    photos, root = library
    with retrieval.open_index(root=root, encoder=ThumbnailEncoder()) as idx:
        def vector(rel: str) -> np.ndarray:
            return idx.store.vector(idx.find_item(next(photos.rglob(rel))))

        original = vector("beach-1.jpg")
        assert all(float(original @ vector(rel)) > 0.97 for rel in BEACH_GROUP[1:])
        first = vector("burst-0.jpg")
        assert all(float(first @ vector(rel)) > 0.97 for rel in BURST_GROUP[1:])
        same_kind = [float(original @ vector(f"beach-{s}.jpg")) for s in (2, 3, 4, 5)]
        same_kind += [float(first @ vector(f"garden-{s}.jpg")) for s in (2, 3)]
        assert all(0.7 < c < 0.9 for c in same_kind), same_kind  # alike, but not the same photo


def test_duplicates_cli_groups_copies_and_bursts_keep_first(library) -> None:
    photos, root = library
    result = runner.invoke(app, ["duplicates", "--json", "--index-dir", str(root)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["threshold"] == 0.95
    groups = [[name(m["path"]) for m in g["members"]] for g in data["groups"]]
    assert len(groups) == 2
    beach, burst = groups
    # The copy to keep: most pixels, then the earliest capture, then the larger (less compressed) file.
    assert beach[0] == "beach-1.jpg" and sorted(beach) == sorted(BEACH_GROUP)
    assert beach.index("beach-1-small.jpg") == len(beach) - 1  # fewest pixels last
    assert burst == BURST_GROUP  # same size: earliest frame first, then by time
    members = {name(m["path"]): m for g in data["groups"] for m in g["members"]}
    assert members["beach-1-copy.jpg"]["exact_copy_of"] == members["beach-1.jpg"]["id"]
    assert members["beach-1-q35.jpg"]["exact_copy_of"] is None and members["beach-1-q35.jpg"]["similarity"] > 0.99
    assert members["burst-0.jpg"]["taken_at"] == "2023-05-01T12:00:00"
    assert not any(n in members for n in LONE)

    text = runner.invoke(app, ["duplicates", "--index-dir", str(root)])
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "group 1: 5 near-duplicates" and lines[1].split()[0] == "keep"
    copy_line = next(line for line in lines if "beach-1-copy.jpg" in line)
    assert copy_line.split()[0] == "exact" and f"same bytes as {photos / 'beach-1.jpg'}" in copy_line
    assert "2 groups, 7 photos beside the copies to keep (nothing was deleted)" in text.stderr
    assert all(p.is_file() for p in photos.rglob("*.jpg"))  # nothing deleted


def test_threshold_and_folder_narrow_the_groups(library) -> None:
    photos, root = library

    def groups(*options: str) -> list[list[str]]:
        result = runner.invoke(app, ["duplicates", "--json", "--index-dir", str(root), *options])
        assert result.exit_code == 0, result.output
        return [[name(m["path"]) for m in g["members"]] for g in json.loads(result.stdout)["groups"]]

    strict = groups("--threshold", "0.999")  # the byte copy and the re-encoded one, not the resized or cropped
    assert strict == [["beach-1.jpg", "beach-1-copy.jpg", "beach-1-q35.jpg"]]
    copies = groups("--under", str(photos / "copies"))
    assert copies == [["beach-1-copy.jpg", "beach-1-q35.jpg", "beach-1-crop.jpg", "beach-1-small.jpg"]]
    loose = groups("--threshold", "0.5")
    assert len(loose) >= 1 and sum(len(g) for g in loose) > len(BEACH_GROUP) + len(BURST_GROUP)
    for bad in ("0", "1.5", "nan"):
        one_line_error(runner.invoke(app, ["duplicates", "--threshold", bad, "--index-dir", str(root)]), bad)


def test_duplicates_html_shows_each_group_side_by_side(library, tmp_path: Path) -> None:
    _, root = library
    page = tmp_path / "dups.html"
    result = runner.invoke(app, ["duplicates", "--html", str(page), "--index-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert f"wrote {page}" in result.stderr

    class Collect(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.images: list[str] = []
            self.sections = 0
            self.badges: list[str] = []
            self._badge = False

        def handle_starttag(self, tag, attrs) -> None:  # type: ignore[no-untyped-def]
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            self.sections += tag == "section"
            self._badge = tag == "b"

        def handle_data(self, data: str) -> None:
            if self._badge:
                self.badges.append(data)
                self._badge = False

    parsed = Collect()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert parsed.sections == 2 and len(parsed.images) == len(BEACH_GROUP) + len(BURST_GROUP)
    assert all(src.startswith("data:image/jpeg;base64,") for src in parsed.images)
    assert parsed.badges.count("keep") == 2 and parsed.badges.count("exact copy") == 1
    one_line_error(runner.invoke(app, ["duplicates", "--html", str(tmp_path), "--index-dir", str(root)]), "folder")


def test_duplicates_through_the_api(library) -> None:
    photos, root = library
    with retrieval.open_index(root=root, encoder=ThumbnailEncoder()) as idx:
        groups = idx.duplicates()
        assert [name(g.keep.facts.path) for g in groups] == ["beach-1.jpg", "burst-0.jpg"]
        assert not groups[0].all_exact and groups[0].as_dict()["keep"] == groups[0].keep.id
        with pytest.raises(retrieval.MMSearchError, match="threshold"):
            idx.duplicates(0)
