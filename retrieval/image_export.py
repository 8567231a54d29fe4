"""Export a model's image tower to ONNX (fp32 and int8), verify it against open_clip, and cache it.

The export is taken once per model fingerprint under
``<index root>/.cache/image/<fingerprint>/`` (beside the text export, see
:mod:`retrieval.image_onnx` for the layout). torch 2.14's TorchScript-based
exporter (``dynamo=False``) is used: the dynamo exporter needs ``onnxscript``,
which is not installed, and the TorchScript one handles open_clip's ViT and
ResNet towers offline; the batch dimension is dynamic. The int8 graph is
``onnxruntime.quantization.quantize_dynamic`` over every MatMul (attention's
included, unlike torch's Linear-only dynamic int8).

Each graph is run on probe images (pictures of the synthetic world and noise)
beside open_clip's torch fp32 tower, and its mean cosine recorded; it is used
only when that mean reaches its floor (:data:`FLOORS`). A tower the exporter
cannot handle gets ``unsupported.json``; a graph file that no longer matches
its record (truncated, altered) is exported again. Whatever fails, the caller
keeps the torch tower: never a wrong vector.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .image_onnx import (
    FORMAT,
    INPUT_NAME,
    ONNX_KINDS,
    RECORD_FILE,
    UNSUPPORTED_FILE,
    OnnxImageTower,
    file_digest,
    image_export_dir,
    load_verified_tower,
    onnx_file,
    read_json,
    verified_entry,
)
from .export_cache import mark_unsupported, staging_dir
from .manifest import write_json_atomic

if TYPE_CHECKING:
    from .encoder import Encoder  # duck-typed here: the encoder calls this module (no import cycle)

log = logging.getLogger(__name__)

# Mean cosine to open_clip's torch fp32 tower on the probe images that each numerics must keep.
FLOORS: dict[str, float] = {"fp32": 0.9999, "int8": 0.995}
EXPORTER = "image-onnx"  # names this exporter in unsupported.json
PROBE_PICTURES = 12
PROBE_NOISE = 4
PROBE_SEED = 1234


def probe_pixels(encoder: "Encoder") -> torch.Tensor:
    """Deterministic probe images through the model's own preprocessing: synthetic products, then noise."""
    from PIL import Image

    from .synthetic import render, sample_attributes

    rng = random.Random(PROBE_SEED)
    size = max(64, encoder.image_size)
    pictures = [render(sample_attributes(rng), size, rng) for _ in range(PROBE_PICTURES)]
    noise = np.random.default_rng(PROBE_SEED).integers(0, 256, size=(PROBE_NOISE, size, size, 3), dtype=np.uint8)
    pictures += [Image.fromarray(a, "RGB") for a in noise]
    return encoder.preprocess_images(pictures)


def reference_vectors(encoder: "Encoder", pixels: torch.Tensor) -> np.ndarray:
    """open_clip's torch fp32 image tower on ``pixels`` (the encoder must hold an fp32 image tower)."""
    with torch.inference_mode():
        feats = encoder.model.encode_image(pixels.to(encoder.device, torch.float32), normalize=True)
    out = feats.float().cpu().numpy()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def ensure_image_export(encoder: "Encoder", cache_root: Path, kind: str, threads: int = 1) -> OnnxImageTower | str:
    """The verified ONNX image tower of ``kind`` (exported now if needed), or why there is none.

    ``encoder`` must still hold its exact fp32 image tower (the reference).
    Never raises for a model the exporter cannot handle, a failed check or a
    full disk: the answer is then a one-line reason and the caller keeps torch.
    """
    if kind not in ONNX_KINDS:
        return f"unknown ONNX kind {kind!r}"
    directory = image_export_dir(cache_root, encoder.fingerprint)
    marker = read_json(directory / UNSUPPORTED_FILE)
    if marker is not None:
        return f"the image tower has no ONNX form ({marker.get('reason', '?')})"
    tower = load_verified_tower(directory, kind, threads)
    if tower is not None:
        _KNOWN[encoder.fingerprint] = directory
        return tower
    entry = verified_entry(directory, kind)
    if entry is not None and not entry.get("passed") and _file_matches(directory, kind, entry):
        return _below_floor(kind, entry)  # measured before, on this very file: do not export again
    copied = _copy_known_export(encoder.fingerprint, directory, kind, threads)
    if copied is not None:
        return copied
    try:
        import onnx  # noqa: F401 - torch's exporter writes the graph with it
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnx and onnxruntime are not installed"  # no marker: installing them enables the export
    try:
        record = _export(encoder, directory, threads)
    except OSError as exc:  # a full disk or a read-only folder says nothing about the model: try next time
        return f"could not write the export: {exc}"
    except Exception as exc:  # noqa: BLE001 - the exporter's many error types: the tower has no ONNX form
        why = f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        mark_unsupported(directory, UNSUPPORTED_FILE, why, EXPORTER)
        return why
    _KNOWN[encoder.fingerprint] = directory
    entry = record["kinds"][kind]
    if not entry["passed"]:
        return _below_floor(kind, entry)
    tower = load_verified_tower(directory, kind, threads)
    return tower if tower is not None else "the export just written could not be opened"


# Verified exports this process has seen, by fingerprint: a model used under several index roots
# (a server, a test suite) copies the graphs instead of exporting and verifying them again.
_KNOWN: dict[str, Path] = {}


def _copy_known_export(fingerprint: str, directory: Path, kind: str, threads: int) -> OnnxImageTower | None:
    source = _KNOWN.get(fingerprint)
    if source is None or source == directory or load_verified_tower(source, kind, threads) is None:
        return None
    try:
        with staging_dir(directory) as tmp:
            directory.mkdir(parents=True, exist_ok=True)
            for name in [f"{k}.onnx" for k in ONNX_KINDS]:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
                    os.replace(tmp / name, directory / name)
            shutil.copyfile(source / RECORD_FILE, tmp / RECORD_FILE)
            os.replace(tmp / RECORD_FILE, directory / RECORD_FILE)  # last: the graphs are in place
    except OSError:
        return None
    return load_verified_tower(directory, kind, threads)  # checks the copies' hashes against the record


def _below_floor(kind: str, entry: dict[str, Any]) -> str:
    return (f"its {kind} graph's mean cosine to torch fp32 is {entry.get('mean_cosine', 0.0):.5f}, "
            f"below the floor {FLOORS[kind]}")


def _file_matches(directory: Path, kind: str, entry: dict[str, Any]) -> bool:
    path = onnx_file(directory, kind)
    try:
        return path.stat().st_size == entry.get("size") and file_digest(path) == entry.get("sha256")
    except OSError:
        return False


def _export(encoder: "Encoder", directory: Path, threads: int) -> dict[str, Any]:
    """Write both graphs and their verification record (replacing any there); returns the record."""
    with staging_dir(directory) as tmp:
        fp32 = tmp / "fp32.onnx"
        export_fp32(encoder, fp32)
        quantize_int8(fp32, tmp / "int8.onnx")
        pixels = probe_pixels(encoder)
        reference = reference_vectors(encoder, pixels)
        kinds: dict[str, Any] = {}
        for kind in ONNX_KINDS:
            path = tmp / f"{kind}.onnx"
            ours = OnnxImageTower(path, kind, threads).encode(pixels.numpy())
            cosines = np.sum(ours * reference, axis=1)
            mean = float(np.mean(cosines))
            kinds[kind] = {
                "size": path.stat().st_size, "sha256": file_digest(path), "mean_cosine": round(mean, 6),
                "min_cosine": round(float(np.min(cosines)), 6), "floor": FLOORS[kind],
                "passed": bool(mean >= FLOORS[kind]),
            }
        # File by file, not one folder rename: auto.json (this machine's choice) lives beside the graphs.
        # The record is written last and names each graph's hash, so a graph without its record is never used.
        directory.mkdir(parents=True, exist_ok=True)
        for kind in ONNX_KINDS:
            os.replace(tmp / f"{kind}.onnx", onnx_file(directory, kind))
        record = {"format": FORMAT, "model": encoder.spec, "fingerprint": encoder.fingerprint,
                  "probes": int(pixels.shape[0]), "kinds": kinds}
        write_json_atomic(directory / RECORD_FILE, record)
        return record


class _ImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


def export_fp32(encoder: "Encoder", path: Path) -> None:
    """Write the fp32 image tower as an ONNX graph with a dynamic batch dimension."""
    example = torch.zeros(2, 3, encoder.image_size, encoder.image_size, device=encoder.device)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings are about the exporter, not the user
        # nn.MultiheadAttention's fused inference kernel has no ONNX form; the plain path computes the same.
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            torch.onnx.export(
                _ImageTower(encoder.model).eval(), (example,), str(path), dynamo=False,
                input_names=[INPUT_NAME], output_names=["embedding"],
                dynamic_axes={INPUT_NAME: {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
            )
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of every MatMul (weights int8 per tensor, activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint to the root logger on every call
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
