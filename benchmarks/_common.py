"""Shared helpers of the benchmark scripts: machine description, tables, JSON, test photos.

Each script prints a table for people and one JSON object (last line, or
``--json PATH``) for machines. Speed is always compared inside one run
(ratios), because a shared machine's absolute numbers drift.
"""

from __future__ import annotations

import io
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = REPO.parent / "shared" / "datasets" / "sample-photos"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "python": platform.python_version(),
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if "torch" in sys.modules:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}"
        if abs(value) >= 0.995 and abs(value) < 1.0:
            return f"{value:.5f}"  # cosines: the interesting digits are far right
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def emit_json(data: dict[str, Any], path: str | None) -> None:
    text = json.dumps(data, indent=2, default=float)
    if path:
        Path(path).write_text(text + "\n")
        print(f"\nJSON written to {path}")
    print("\nJSON: " + json.dumps(data, default=float))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000, "n": len(ordered)}


def make_photo_folder(folder: Path, count: int, size: tuple[int, int] = (3000, 2000), quality: int = 90) -> Path:
    """``count`` distinct photo-sized JPEGs, made once and reused (by name) on later runs.

    Built from the real sample photos when they are present (random crops,
    flips and tints, so every file differs), else from a procedural scene;
    either way the content is smooth like a photo, with sensor-like noise,
    so JPEG sizes (~1 MB) and decode costs are those of camera pictures.
    """
    from PIL import Image, ImageDraw, ImageFilter, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    sources: list[Path] = []
    if SAMPLE_PHOTOS.is_dir():
        for p in sorted(SAMPLE_PHOTOS.rglob("*.jp*g")):
            try:
                with Image.open(p) as im:
                    if min(im.size) >= 300:
                        sources.append(p)
            except OSError:
                continue
    rng = random.Random(1234)
    noise = Image.effect_noise(size, 12).convert("RGB")
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        if path.exists():
            continue
        if sources:
            with Image.open(sources[i % len(sources)]) as src:
                base = ImageOps.exif_transpose(src).convert("RGB")
            w, h = base.size
            cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
            x0, y0 = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
            img = base.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                img = ImageOps.mirror(img)
            tint = Image.new("RGB", img.size, tuple(rng.randrange(256) for _ in range(3)))
            img = Image.blend(img, tint, rng.uniform(0.0, 0.25))
        else:
            img = Image.new("RGB", (300, 200), tuple(rng.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            for _ in range(25):
                x, y = rng.randrange(300), rng.randrange(200)
                r = rng.randrange(5, 60)
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
            img = img.filter(ImageFilter.GaussianBlur(3))
        img = img.resize(size, Image.BICUBIC)
        img = Image.blend(img, noise, 0.08)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.rename(path)
    return folder
