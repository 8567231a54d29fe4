"""Cold and warm text-query time of a multilingual model (HF tokenizer + tower) beside a CLIP-BPE model.

    .venv/bin/python benchmarks/bench_multilingual_query.py                      # tiny offline models
    .venv/bin/python benchmarks/bench_multilingual_query.py \\
        --hf-model xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k --clip-model ViT-B-32-256:datacomp_s34b_b86k

For each model, in one run:

* the torch-free export, once (``retrieval.hf_text_export`` for the HF model, ``retrieval.text_export``
  for the CLIP one) and its size;
* warm: one query at a time through the loaded torch encoder and through the torch-free one (p50/p95);
* cold: a fresh process from start to the first query vector, on the torch path (import, load the model,
  encode) and on the torch-free path (import, open the export, encode), each phase timed; and whether the
  torch-free process imported torch or transformers.

The HF model is saved with ``retrieval.model_save`` into one folder first and loaded from there, so the
cold torch path is the offline one (``--model DIR``). Without ``--hf-model`` a tiny XLM-R-style model is
built offline (tests/tiny_multilingual.py): its numbers show the fixed costs (imports, session start),
not a real tower's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, machine, percentiles, print_table  # noqa: E402

QUERIES = [
    "海边的狗", "一只在沙发上睡觉的猫", "红色的鞋子", "左边的小黄伞", "ビーチの犬", "빨간 신발", "كلب على الشاطئ",
    "a dog on the beach", "a cat sleeping on a sofa", "red shoes", "sunset over the sea", "🐶🏖️",
    "iPhone 手机壳", "ＲＥＤ　ｓｈｏｅｓ", "собака на пляже", "une robe rouge",
]

COLD_TORCH = """
import json, sys, time
t = [time.perf_counter()]
from retrieval.encoder import load_encoder
from retrieval.model_save import load_model_folder
t.append(time.perf_counter())
model = {model!r}
enc = load_model_folder(model) if {is_folder!r} else load_encoder(model)
t.append(time.perf_counter())
enc.encode_texts([{query!r}])
t.append(time.perf_counter())
print(json.dumps({{"import": t[1] - t[0], "load": t[2] - t[1], "encode": t[3] - t[2]}}))
"""
COLD_LIGHT = """
import json, sys, time
t = [time.perf_counter()]
from retrieval.hf_text_light import load_any_light_encoder
t.append(time.perf_counter())
enc = load_any_light_encoder({root!r}, {fingerprint!r})
t.append(time.perf_counter())
enc.encode_texts([{query!r}])
t.append(time.perf_counter())
heavy = [m for m in ("torch", "transformers", "open_clip") if m in sys.modules]
print(json.dumps({{"import": t[1] - t[0], "load": t[2] - t[1], "encode": t[3] - t[2], "heavy": heavy}}))
"""


def _cold(script: str, repeats: int) -> dict[str, Any]:
    walls, phases = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"cold run failed:\n{done.stderr[-3000:]}")
        phases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(range(repeats), key=lambda i: walls[i])
    return {"wall_s": walls[best], **phases[best]}


def _warm(encode, n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        encode([QUERIES[i % len(QUERIES)]])
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def measure(label: str, encoder: Any, model_arg: str, is_folder: bool, root: Path, args: argparse.Namespace) -> dict:
    import numpy as np

    from retrieval.hf_text_export import ensure_hf_export, is_hf_tokenizer_model
    from retrieval.hf_text_light import load_any_light_encoder
    from retrieval.text_export import ensure_export
    from retrieval.text_light import export_dir

    t0 = time.perf_counter()
    exported = (ensure_hf_export if is_hf_tokenizer_model(encoder) else ensure_export)(encoder, root)
    export_s = time.perf_counter() - t0
    if not exported:
        raise SystemExit(f"{label}: the torch-free export was refused (see {export_dir(root, encoder.fingerprint)})")
    light = load_any_light_encoder(root, encoder.fingerprint)
    cosine = float(np.min(np.sum(light.encode_texts(QUERIES) * encoder.encode_texts(QUERIES), axis=1)))
    size_mb = sum(p.stat().st_size for p in export_dir(root, encoder.fingerprint).iterdir()) / 1e6
    query = QUERIES[0]
    return {
        "model": label, "export_s": export_s, "export_mb": size_mb, "min_cosine": cosine,
        "warm_torch": _warm(encoder.encode_texts, args.warm), "warm_light": _warm(light.encode_texts, args.warm),
        "cold_torch": _cold(COLD_TORCH.format(model=model_arg, is_folder=is_folder, query=query), args.cold),
        "cold_light": _cold(COLD_LIGHT.format(root=str(root), fingerprint=encoder.fingerprint, query=query),
                            args.cold),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-model", help="a multilingual spec or folder (default: a tiny offline XLM-R model)")
    parser.add_argument("--clip-model", default="mmsearch-tiny", help="a CLIP-BPE spec (default: mmsearch-tiny)")
    parser.add_argument("--warm", type=int, default=50, help="warm queries per path")
    parser.add_argument("--cold", type=int, default=3, help="fresh processes per cold path (the best is kept)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()

    from retrieval.encoder import load_encoder
    from retrieval.model_save import load_model_folder, save_model_folder

    work = Path(tempfile.mkdtemp(prefix="bench-multilingual-"))
    if args.hf_model:
        hf_label, source = args.hf_model, args.hf_model
    else:
        from tests.tiny_multilingual import build_tiny_multilingual

        tiny = build_tiny_multilingual(work / "tiny", families=("xlm-roberta",), prefix="bench-tiny")
        hf_label, source = "tiny XLM-R (offline)", tiny.archs["xlm-roberta"]
    folder = Path(source) if Path(source).is_dir() else save_model_folder(source, work / "hf-model")
    hf_encoder = load_model_folder(folder)
    rows = [
        measure(hf_label, hf_encoder, str(folder), True, work / "root", args),
        measure(args.clip_model, load_encoder(args.clip_model), args.clip_model, False, work / "root", args),
    ]
    print_table(
        "Text queries: torch path vs torch-free path (warm = p50 per query; cold = process start to vector)",
        ["model", "export s", "export MB", "min cos", "warm torch ms", "warm light ms", "cold torch s", "cold light s",
         "light imports"],
        [[r["model"], r["export_s"], r["export_mb"], r["min_cosine"], r["warm_torch"]["p50_ms"],
          r["warm_light"]["p50_ms"], r["cold_torch"]["wall_s"], r["cold_light"]["wall_s"],
          ",".join(r["cold_light"]["heavy"]) or "-"]
         for r in rows],
    )
    print_table(
        "Cold phases (seconds, in the fresh process)",
        ["model", "path", "import", "load", "first query"],
        [[r["model"], path, r[f"cold_{path}"]["import"], r[f"cold_{path}"]["load"], r[f"cold_{path}"]["encode"]]
         for r in rows for path in ("torch", "light")],
    )
    emit_json({"machine": machine(), "queries": QUERIES, "results": rows}, args.json)


if __name__ == "__main__":
    main()
