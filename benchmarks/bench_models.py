"""Candidate default models: CPU throughput here, beside their published zero-shot quality.

    .venv/bin/python benchmarks/bench_models.py
    .venv/bin/python benchmarks/bench_models.py --models ViT-B-32-256,MobileCLIP2-S0

Weights are random (no network): speed depends on shapes only, so the
throughput is the real model's. Quality is not measured here: the table
quotes published ImageNet-1k zero-shot top-1 of the named pretrained weights,
marked "?" where we could not check the figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, machine, print_table  # noqa: E402

# (architecture, pretrained tag it would use, ImageNet zero-shot top-1 %, source)
CANDIDATES: list[tuple[str, str, str]] = [
    ("ViT-B-32-256", "datacomp_s34b_b86k", "72.8"),
    ("ViT-B-32", "laion2b_s34b_b79k", "66.6"),
    ("MobileCLIP-S1", "datacompdr", "72.6"),
    ("MobileCLIP-S2", "datacompdr", "74.4"),
    ("MobileCLIP-B", "datacompdr", "76.8"),
    ("MobileCLIP2-S0", "dfndr2b", "71.5?"),
    ("MobileCLIP2-S2", "dfndr2b", "77.2?"),
    ("ViT-B-16-SigLIP2-256", "webli", "79?"),  # its tokenizer needs `transformers` (not a dependency)
]


def measure(arch: str, batch: int, reps: int) -> dict[str, Any]:
    import torch

    from retrieval.encoder import load_encoder

    t0 = time.perf_counter()
    enc = load_encoder(arch)
    load_s = time.perf_counter() - t0
    reparam = _reparameterize(enc.model)
    params = sum(p.numel() for p in enc.model.visual.parameters()) / 1e6
    x = torch.randn(batch, 3, enc.image_size, enc.image_size)
    enc.encode_pixels(x[:2])
    best = min(_time(lambda: enc.encode_pixels(x)) for _ in range(reps))
    q = "a photo of a dog playing on the beach"
    enc.encode_texts([q])
    text_ms = min(_time(lambda: enc.encode_texts([q])) for _ in range(5)) * 1000
    return {"arch": arch, "image_size": enc.image_size, "dim": enc.dim, "visual_params_m": params,
            "images_per_s": batch / best, "text_query_ms": text_ms,
            "text_skips_padding": enc._text_tower is not None, "reparameterized": reparam, "load_s": load_s}


def _reparameterize(model: Any) -> bool:
    """MobileCLIP's FastViT image towers fold their training branches for inference."""
    try:
        from timm.utils.model import reparameterize_model
    except ImportError:
        return False
    if not any(hasattr(m, "reparameterize") for m in model.visual.modules()):
        return False
    model.visual = reparameterize_model(model.visual)
    return True


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(c[0] for c in CANDIDATES))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    quality = {a: (tag, top1) for a, tag, top1 in CANDIDATES}
    rows, out = [], []
    for arch in [m for m in args.models.split(",") if m]:
        try:
            r = measure(arch, args.batch_size, args.reps)
        except Exception as exc:  # noqa: BLE001 - one broken candidate must not hide the others
            print(f"{arch}: failed: {exc}", file=sys.stderr)
            continue
        tag, top1 = quality.get(arch, ("?", "?"))
        r.update(pretrained=tag, imagenet_zero_shot=top1)
        out.append(r)
        rows.append([f"{arch}:{tag}", r["image_size"], r["visual_params_m"], r["images_per_s"],
                     r["text_query_ms"], "yes" if r["text_skips_padding"] else "no", top1])
    import torch

    print_table(f"Candidate models on this CPU (image tower fp32, batch {args.batch_size}, "
                f"{torch.get_num_threads()} torch threads)",
                ["model", "input", "image params (M)", "images/s", "text query ms", "skips padding",
                 "ImageNet zero-shot %"], rows)
    result = {"machine": machine(), "models": out}
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
