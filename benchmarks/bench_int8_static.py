"""Static (calibrated) against dynamic int8 for the image tower under ONNX Runtime (issue 17).

    .venv/bin/python benchmarks/bench_int8_static.py [--model models/demo] [--catalogue demo-data/catalogue]

Issue 17 allows static int8 "with calibration on the user's own images if that is more
accurate" than the dynamic int8 that ``--precision onnx-int8`` ships
(``retrieval.image_export.quantize_int8``: every MatMul, activations ranged at run time).
This builds, from one fp32 export: dynamic over MatMul (shipped), dynamic over every
op ORT quantises (convolutions too), and static QDQ graphs (uint8 activations, int8
per-channel weights) calibrated on 256 of the catalogue's *training* pictures with MinMax
and with the 99.99th percentile. Then:

  * accuracy on the trained model (``--model``, default the demo's): mean and minimum
    cosine to the fp32 graph and recall@10 of held-out captions on the catalogue's
    held-out pictures (the same queries as :mod:`retrieval.image_accuracy`);
  * speed on ViT-B-32-256 with random weights (speed depends on shapes), batch 16,
    2 threads, best of 3, and its cosine to fp32 (random calibration pixels).

Prints two JSON objects and the load average; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from PIL import Image  # noqa: E402

from retrieval import synthetic as syn  # noqa: E402
from retrieval.encoder import Encoder, load_encoder  # noqa: E402
from retrieval.image_accuracy import held_out, recall_at_k, relevance  # noqa: E402
from retrieval.image_export import INPUT_NAME, export_fp32  # noqa: E402

CALIBRATION_PICTURES = 256
THREADS = 2


class _Batches(CalibrationDataReader):
    """Calibration batches for ``quantize_static``."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter([{INPUT_NAME: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def build_graphs(encoder: Encoder, tag: str, calibration: list[np.ndarray], work: Path) -> dict[str, Path]:
    """fp32, the two dynamic int8 variants and the two static ones, from one export."""
    fp32 = work / f"{tag}-fp32.onnx"
    export_fp32(encoder, fp32)
    graphs = {"fp32": fp32}
    graphs["dynamic MatMul (shipped)"] = work / f"{tag}-dynamic.onnx"
    quantize_dynamic(str(fp32), str(graphs["dynamic MatMul (shipped)"]), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    graphs["dynamic, all ops"] = work / f"{tag}-dynamic-all.onnx"
    quantize_dynamic(str(fp32), str(graphs["dynamic, all ops"]), weight_type=QuantType.QInt8)
    for method, extra in ((CalibrationMethod.MinMax, {}), (CalibrationMethod.Percentile, {"CalibPercentile": 99.99})):
        name = f"static {method.name}, per channel"
        graphs[name] = work / f"{tag}-static-{method.name}.onnx"
        quantize_static(str(fp32), str(graphs[name]), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=method, extra_options=extra)
    return graphs


def session(graph: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def embed(runner: ort.InferenceSession, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    out = np.concatenate([runner.run(None, {INPUT_NAME: pixels[i:i + batch]})[0]
                          for i in range(0, len(pixels), batch)])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def accuracy(model: str, catalogue_root: Path, work: Path) -> dict[str, Any]:
    """Each graph's cosine to fp32 and recall@10 on the catalogue's held-out pictures and captions."""
    encoder = load_encoder(model)
    catalogue = syn.load_catalogue(catalogue_root)
    items, captions = held_out(catalogue)
    relevant = np.asarray(relevance([item.attributes for item in items], captions), dtype=bool)

    def pixels_of(chosen: list[syn.SyntheticItem]) -> np.ndarray:
        pictures = [Image.open(catalogue.root / item.image).convert("RGB") for item in chosen]
        return encoder.preprocess_images(pictures).numpy()

    gallery = pixels_of(items)
    calibration = pixels_of([item for item in catalogue.items if item.split == "train"][:CALIBRATION_PICTURES])
    texts = encoder.encode_texts(captions)
    graphs = build_graphs(encoder, "trained", [calibration[i:i + 32] for i in range(0, len(calibration), 32)], work)
    reference = embed(session(graphs["fp32"]), gallery)
    rows = {}
    for name, graph in graphs.items():
        vectors = embed(session(graph), gallery)
        cosines = np.sum(vectors * reference, axis=1)
        rows[name] = {"mean_cosine": float(np.mean(cosines)), "min_cosine": float(np.min(cosines)),
                      "recall_at_10": recall_at_k(vectors, texts, relevant, 10)}
    return {"model": model, "gallery": len(items), "queries": len(captions), "rows": rows}


def speed(work: Path) -> dict[str, Any]:
    """Images/s of each graph of ViT-B-32-256 (random weights and calibration pixels), batch 16."""
    encoder = load_encoder("ViT-B-32-256")
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, 3, 256, 256)).astype(np.float32) for _ in range(4)]
    graphs = build_graphs(encoder, "vit-b-32-256", calibration, work)
    batch = rng.standard_normal((16, 3, 256, 256)).astype(np.float32)
    reference = embed(session(graphs["fp32"]), batch)
    rows = {}
    for name, graph in graphs.items():
        runner = session(graph)
        runner.run(None, {INPUT_NAME: batch})
        times = []
        for _ in range(3):
            t = time.perf_counter()
            runner.run(None, {INPUT_NAME: batch})
            times.append(time.perf_counter() - t)
        rows[name] = {"images_per_s": len(batch) / min(times),
                      "mean_cosine": float(np.mean(np.sum(embed(runner, batch) * reference, axis=1)))}
    return {"model": "ViT-B-32-256 (random weights)", "batch": len(batch), "threads": THREADS, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "demo"), help="a trained model (folder or spec)")
    parser.add_argument("--catalogue", type=Path, default=REPO / "demo-data" / "catalogue",
                        help="the synthetic catalogue the model was trained on")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's pre-processing hints
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        print(json.dumps(accuracy(args.model, args.catalogue, Path(tmp)), indent=1), flush=True)
        result = speed(Path(tmp))
    result["load_avg"] = [load_before, os.getloadavg()[0]]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
