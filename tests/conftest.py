"""Shared fixtures: a private index root per test, a tiny seeded model, generated images."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

TINY_MODEL = "mmsearch-tiny"  # 32-d, 32x32 input, deterministic random weights: loads offline in ~0.2 s
REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = REPO.parent / "shared" / "datasets" / "sample-photos"


@pytest.fixture(autouse=True)
def _private_index_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test ever touches ./indexes or the user's $MMSEARCH_INDEX_DIR."""
    root = tmp_path / "index-root"
    monkeypatch.setenv("MMSEARCH_INDEX_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_encoder():
    from retrieval.encoder import load_encoder

    return load_encoder(TINY_MODEL)


def make_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A distinctive picture: random background colour, shapes and noise, all from ``seed``."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        x1, y1 = x0 + rng.randrange(8, 48), y0 + rng.randrange(8, 48)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    return img


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """12 distinct images in nested folders and several formats."""
    folder = tmp_path / "photos"
    (folder / "trip" / "day2").mkdir(parents=True)
    exts = [".jpg", ".png", ".webp"]
    for i in range(12):
        sub = folder if i < 4 else folder / "trip" if i < 8 else folder / "trip" / "day2"
        path = sub / f"img{i:02d}{exts[i % 3]}"
        make_image(i).save(path, quality=95) if path.suffix == ".jpg" else make_image(i).save(path)
    return folder


def one_line_error(result, *words: str) -> str:
    """A CLI result that failed cleanly: exit 1, no traceback, a last stderr line ``error: ...`` naming ``words``.

    Only the last line is checked: libraries (Ray) may warn on stderr before it.
    """
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error:"), result.stderr
    for word in words:
        assert word in message, message
    return message
