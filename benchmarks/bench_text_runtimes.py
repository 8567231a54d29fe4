"""Text-tower runtimes for one query: today's numpy path beside torch and ONNX Runtime fp32 / int8 (issue 17).

    .venv/bin/python benchmarks/bench_text_runtimes.py [--model ViT-B-32] [--threads 1,2]

Issue 17 asks for an ONNX Runtime text tower "where it beats today's numpy path"
(:mod:`retrieval.text_light`, what ``mmsearch query`` and the server use once a model's
text tower is exported). For each thread count, one table row per runtime:

  * warm ms: the median of 30 single-query encodes after one warm-up (a query is one text);
  * cold ms: a fresh process's imports, loading the tower and encoding one query, median of 3
    (the numpy row loads the export; the ONNX rows also load the same export's tokenizer);
  * mean cosine to open_clip (torch fp32) on four queries, one of them Chinese.

The ONNX graph is open_clip's ``encode_text`` exported with ``torch.onnx.export`` (fixed
context, as open_clip pads every text to it); int8 is ``quantize_dynamic`` over it. Random
weights are enough for speed (it depends on shapes only); the cosine of int8 on random
weights is a best case (trained weights quantise worse, as the image tower showed).
Prints the table and one JSON object; compare runs only on a quiet machine (load average shown).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit_json, machine, print_table  # noqa: E402

QUERIES = ["red shoes", "a photo of a dog on the beach at sunset", "条纹蓝衬衫", "a striped blue shirt with a small logo"]

_COLD_NUMPY = """import time
t = time.perf_counter()
from retrieval.text_light import load_light_encoder
light = load_light_encoder({root!r}, {fingerprint!r})
light.encode_texts(["red shoes"])
print(time.perf_counter() - t)
"""
_COLD_ORT = """import time
t = time.perf_counter()
import numpy as np, onnxruntime as ort
from retrieval.text_light import load_light_encoder
light = load_light_encoder({root!r}, {fingerprint!r})
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = {threads}, 1
session = ort.InferenceSession({graph!r}, options, providers=["CPUExecutionProvider"])
session.run(None, {{"tokens": np.asarray(light.tokenizer(["red shoes"])).astype(np.int64)}})
print(time.perf_counter() - t)
"""


def median_ms(fn: Callable[[], Any], n: int = 30) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def cold_ms(code: str, runs: int = 3) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    times = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(times) * 1000


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)


def export_graphs(model: torch.nn.Module, tokens: torch.Tensor, folder: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = folder / "text.onnx", folder / "text-int8.onnx"
    torch.onnx.export(_TextTower(model).eval(), (tokens[:1],), str(fp32), input_names=["tokens"],
                      output_names=["embedding"], dynamic_axes={"tokens": {0: "batch"}, "embedding": {0: "batch"}},
                      opset_version=17, dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return {"ort-fp32": fp32, "ort-int8": int8}


def measure(model_spec: str, threads: int, work: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort

    from retrieval.encoder import load_encoder
    from retrieval.text_export import ensure_export
    from retrieval.text_light import export_dir, load_light_encoder

    torch.set_num_threads(threads)
    encoder = load_encoder(model_spec, precision="fp32", threads=threads)
    if not ensure_export(encoder, work):
        raise SystemExit(f"error: {model_spec}'s text tower has no numpy export")
    light = load_light_encoder(work, encoder.fingerprint)
    reference = encoder.encode_texts(QUERIES)
    tokens = torch.from_numpy(np.asarray(light.tokenizer(QUERIES))).long()
    graphs = export_graphs(encoder.model, tokens, export_dir(work, encoder.fingerprint))

    def cosine(vectors: np.ndarray) -> float:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return float(np.mean(np.sum(vectors * reference, axis=1)))

    rows = [
        {"runtime": "numpy (today)", "warm_ms": median_ms(lambda: light.encode_texts(QUERIES[:1])),
         "cold_ms": cold_ms(_COLD_NUMPY.format(root=str(work), fingerprint=encoder.fingerprint)),
         "cosine": cosine(light.encode_texts(QUERIES))},
        {"runtime": "torch fp32", "warm_ms": median_ms(lambda: encoder.encode_texts(QUERIES[:1])),
         "cold_ms": None, "cosine": 1.0},
    ]
    one = tokens[:1].numpy()
    for name, graph in graphs.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        rows.append({"runtime": name, "warm_ms": median_ms(lambda s=session: s.run(None, {"tokens": one})),
                     "cold_ms": cold_ms(_COLD_ORT.format(root=str(work), fingerprint=encoder.fingerprint,
                                                         threads=threads, graph=str(graph))),
                     "cosine": cosine(session.run(None, {"tokens": tokens.numpy()})[0])})
    for row in rows:
        row["threads"] = threads
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="model spec (an architecture: random weights)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--json", help="also write the JSON object here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            rows += measure(args.model, threads, Path(tmp) / f"t{threads}")
    load_after = os.getloadavg()[0]
    print_table(f"{args.model} text tower, one query (load average {load_before:.2f} -> {load_after:.2f})",
                ["threads", "runtime", "warm ms", "cold ms (process)", "cosine to torch fp32"],
                [[r["threads"], r["runtime"], f"{r['warm_ms']:.1f}",
                  "-" if r["cold_ms"] is None else f"{r['cold_ms']:.0f}", f"{r['cosine']:.5f}"] for r in rows])
    emit_json({"machine": machine(), "model": args.model, "load_avg": [load_before, load_after], "rows": rows},
              args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
