"""Cold and warm text-query time of a multilingual model (HF tokenizer + tower) beside a CLIP-BPE model.

    .venv/bin/python benchmarks/bench_multilingual_query.py                      # tiny offline models
    .venv/bin/python benchmarks/bench_multilingual_query.py \\
        --hf-model xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k --clip-model ViT-B-32-256:datacomp_s34b_b86k

For each model, in one run:

* the torch-free export, once (``retrieval.hf_text_export`` for the HF model, ``retrieval.text_export``
  for the CLIP one) and its size;
* warm: one query at a time through the loaded torch encoder and through the torch-free one (p50/p95);
* cold: a fresh process that imports the API, opens an index of the model and embeds one query
  (``open_index(...).embed_text``), as ``mmsearch query`` does: once with the torch-free path turned off
  (``MMSEARCH_LIGHT_TEXT=0``: torch loads the model) and once with it; each phase timed, with the path
  the query took and whether torch, transformers or open_clip were imported.

The HF model is saved with ``retrieval.model_save`` into one folder first and loaded from there, so the
cold torch path is the offline one (``--model DIR``). Without ``--hf-model`` a tiny XLM-R-style model is
built offline (tests/tiny_multilingual.py): its numbers show the fixed costs (imports, session start),
not a real tower's.
"""

from __future__ import annotations

import argparse
import json
import os
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

# A cold query as a user's process makes it: import the API, open the index, embed the text.
COLD = """
import json, sys, time
t = [time.perf_counter()]
from retrieval.api import open_index
t.append(time.perf_counter())
index = open_index({name!r}, root={root!r})
index.embed_text({query!r})
t.append(time.perf_counter())
heavy = [m for m in ("torch", "transformers", "open_clip") if m in sys.modules]
print(json.dumps({{"import": t[1] - t[0], "query": t[2] - t[1], "path": index.queries.text_path, "heavy": heavy}}))
"""


def _cold(script: str, repeats: int, torch_free: bool) -> dict[str, Any]:
    env = dict(os.environ, MMSEARCH_LIGHT_TEXT="1" if torch_free else "0")
    walls, phases = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
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


def measure(label: str, model: str, root: Path, args: argparse.Namespace) -> dict:
    """Export, warm and cold query times of one model, through an (empty) index of it under ``root``."""
    import numpy as np

    from retrieval.api import create_index
    from retrieval.encoder import load_encoder
    from retrieval.hf_text_light import load_any_light_encoder
    from retrieval.text_export import ensure_export
    from retrieval.text_light import export_dir

    encoder = load_encoder(model)
    t0 = time.perf_counter()
    exported = ensure_export(encoder, root)  # the ONNX export for HF tokenizers, the numpy one for CLIP's
    export_s = time.perf_counter() - t0
    if not exported:
        raise SystemExit(f"{label}: the torch-free export was refused (see {export_dir(root, encoder.fingerprint)})")
    name = f"bench-{encoder.fingerprint}"
    create_index(name, model=model, root=root, encoder=encoder).close()
    light = load_any_light_encoder(root, encoder.fingerprint)
    assert light is not None
    cosine = float(np.min(np.sum(light.encode_texts(QUERIES) * encoder.encode_texts(QUERIES), axis=1)))
    size_mb = sum(p.stat().st_size for p in export_dir(root, encoder.fingerprint).iterdir()) / 1e6
    script = COLD.format(name=name, root=str(root), query=QUERIES[0])
    return {
        "model": label, "spec": encoder.spec, "tokenizer": type(encoder.tokenizer).__name__, "export_s": export_s,
        "export_mb": size_mb, "min_cosine": cosine,
        "warm_torch": _warm(encoder.encode_texts, args.warm), "warm_light": _warm(light.encode_texts, args.warm),
        "cold_torch": _cold(script, args.cold, torch_free=False),
        "cold_light": _cold(script, args.cold, torch_free=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-model", help="a multilingual spec or folder (default: a tiny offline XLM-R model)")
    parser.add_argument("--clip-model", default="mmsearch-tiny", help="a CLIP-BPE spec (default: mmsearch-tiny)")
    parser.add_argument("--warm", type=int, default=50, help="warm queries per path")
    parser.add_argument("--cold", type=int, default=3, help="fresh processes per cold path (the best is kept)")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()

    from retrieval.model_save import save_model_folder

    work = Path(tempfile.mkdtemp(prefix="bench-multilingual-"))
    if args.hf_model:
        hf_label, source = args.hf_model, args.hf_model
    else:
        from tests.tiny_multilingual import build_tiny_multilingual

        tiny = build_tiny_multilingual(work / "tiny", families=("xlm-roberta",), prefix="bench-tiny")
        hf_label, source = "tiny XLM-R (offline)", tiny.archs["xlm-roberta"]
    # The HF model is loaded from its one folder, as an offline machine would (--model DIR).
    folder = Path(source) if Path(source).is_dir() else save_model_folder(source, work / "hf-model")
    rows = [
        measure(hf_label, str(folder), work / "root", args),
        measure(args.clip_model, args.clip_model, work / "root", args),
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
        "Cold phases (seconds, in the fresh process: import the API, then open the index and embed one query)",
        ["model", "path", "import", "open + first query", "text path", "heavy modules"],
        [[r["model"], path, r[f"cold_{path}"]["import"], r[f"cold_{path}"]["query"], r[f"cold_{path}"]["path"],
          ",".join(r[f"cold_{path}"]["heavy"]) or "-"]
         for r in rows for path in ("torch", "light")],
    )
    emit_json({"machine": machine(), "queries": QUERIES, "results": rows}, args.json)


if __name__ == "__main__":
    main()
