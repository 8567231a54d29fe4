"""Train the demo model on the synthetic world and measure it; compare with open_clip_train.

    .venv/bin/python benchmarks/bench_train.py [--minutes 5] [--images 8000] [--skip-reference]
    .venv/bin/python benchmarks/bench_train.py --pipeline [--photos 200] [--pairs 12000,100000]
    .venv/bin/python benchmarks/bench_train.py --load N [--policies passive,spin] [--index]

``--pipeline`` (issue 23) and ``--load N`` (issue 17) are described in
benchmarks/_train_pipeline.py and benchmarks/_train_load.py; the rest of this
docstring is about the default comparison with open_clip_train.

What it prints (a table, then one JSON object):
  - training samples/s and wall time of our trainer (``retrieval.train.fit``);
  - held-out recall@1/5/10 in both directions, separately for pictures of
    (kind, colour) combinations never shown in training ("unseen") and for
    held-out pictures of seen combinations ("seen");
  - the same for open_clip's reference trainer (``python -m open_clip_train.main``)
    given the same training rows, model config, batch size, learning rate,
    weight decay, warmup and time budget, evaluated by the same code.

How a hit is counted (many pictures can match one caption in this world):
  gallery = every held-out picture (``test`` + ``unseen`` splits, never trained on);
  queries = those pictures' captions that name both kind and colour.
  text->image: a hit at K when one of the top K pictures has *every* attribute the
  caption names (kind, colour, and pattern/size/position when named).
  image->text: a hit at K when one of the top K captions (among all queries) names
  only attributes the picture has.
Held-out recall of a single run moves by a few points with the training seed (108
unseen pictures), so compare trainers over several seeds: ``--seeds 0,1,2``; runs
made in separate processes (one per core, ``--threads 1 --clock cpu``) are put
together with ``--combine A/results.json B/results.json``.
The open_clip_train run needs ``pip install -e '.[bench]'`` (pandas, webdataset, braceexpand).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from retrieval import synthetic as syn  # noqa: E402

ARCH = "mmsearch-small"
BATCH = 128
LR = 2e-3
WD = 0.2
WARMUP = 50

_LAUNCHER = """\
import sys
import open_clip
import torch
torch.set_num_threads(int(sys.argv.pop(1)))
open_clip.add_model_config(sys.argv[1])  # our mmsearch-* configs join open_clip's registry
from open_clip_train.main import main
main(sys.argv[2:])
"""


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _attribute_recall(encoder, catalogue) -> dict[str, dict]:
    from retrieval.train.evaluate import attribute_recall

    return {k: v.to_dict() for k, v in attribute_recall(encoder, catalogue).items()}


def run_ours(catalogue: syn.Catalogue, out: Path, minutes: float, clock: str, seed: int = 0,
             augment: bool = True) -> dict:
    from retrieval.encoder import load_encoder
    from retrieval.train import TrainCfg, fit, read_pairs

    data = read_pairs(catalogue.captions_csv)
    cfg = TrainCfg(arch=ARCH, max_minutes=minutes, batch_size=BATCH, lr=LR, weight_decay=WD, warmup_steps=WARMUP,
                   augment=augment, overwrite=True, budget_clock=clock, seed=seed,
                   device="cpu")  # compared with open_clip_train on the CPU
    t0, c0 = time.monotonic(), time.process_time()
    result = fit(data, out, cfg)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    return {
        "trainer": "retrieval.train.fit", "seed": seed, "augment": augment, "wall_s": wall, "cpu_s": cpu, "samples_per_s": result.samples_per_s,
        "samples_per_cpu_s": result.steps * BATCH / max(cpu, 1e-9),
        "samples": result.steps * BATCH, "steps": result.steps,
        "recall": _attribute_recall(load_encoder(str(out)), catalogue),
    }


def _session_cpu_seconds(sid: int) -> float:
    """CPU seconds used by every live process of session ``sid`` and the children they reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: session id
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def run_open_clip_train(catalogue: syn.Catalogue, work: Path, minutes: float, samples: int, clock: str,
                        seed: int = 0, epochs: int | None = None, crops: bool = True) -> dict:
    """open_clip_train on the same training rows; stopped at the same budget (wall or CPU clock)."""
    import torch

    work = work.resolve()  # the trainer runs with work as its cwd
    work.mkdir(parents=True, exist_ok=True)
    rows = work / "train.csv"
    n_rows = 0
    with rows.open("w", newline="") as f:  # open_clip_train opens paths as given: make them absolute
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for item in catalogue.split("train"):
            for caption in item.captions:
                writer.writerow([str((catalogue.root / item.image).resolve()), caption])
                n_rows += 1
    launcher = work / "launch_open_clip_train.py"
    launcher.write_text(_LAUNCHER)
    # It has no time budget: ask for as many epochs as our trainer's samples need, stop it at the budget.
    if epochs is None:
        epochs = max(1, -(-samples // n_rows))  # at least as many samples as ours; the budget stops it
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    cmd = [
        sys.executable, str(launcher), str(torch.get_num_threads()), str(REPO / "retrieval" / "model_configs"),
        "--train-data", str(rows), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title",
        "--model", ARCH, "--batch-size", str(BATCH), "--lr", str(LR), "--wd", str(WD),
        "--warmup", str(WARMUP), "--epochs", str(epochs), "--workers", "1", "--precision", "fp32",
        "--device", "cpu", "--grad-clip-norm", "1.0", "--seed", str(seed),
        "--logs", str(logs), "--name", "ref", "--save-frequency", "1", "--save-most-recent",
        "--zeroshot-frequency", "0", "--val-frequency", "0", "--report-to", "", "--log-every-n-steps", "20",
    ]
    if not crops:  # RandomResizedCrop at full scale falls back to the centre (whole) image: no crops
        cmd += ["--aug-cfg", "scale=(1.0,1.0)"]
    _log(f"open_clip_train: {epochs} epoch(s) of {n_rows} rows, budget {minutes:g} min")
    t0 = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout or []), daemon=True)
    reader.start()
    threads = torch.get_num_threads()
    stopped_by, cpu = "epochs", 0.0
    while proc.poll() is None:
        cpu = max(cpu, _session_cpu_seconds(proc.pid))
        used = cpu / threads if clock == "cpu" else time.monotonic() - t0
        if used >= minutes * 60:
            os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its loader worker
            proc.wait(timeout=60)
            stopped_by = "time"
            break
        time.sleep(1.0)
    reader.join(timeout=10)
    wall = time.monotonic() - t0
    lines = "".join(chunks).splitlines()
    (work / "open_clip_train.log").write_text("\n".join(lines) + "\n")
    # "Train Epoch: E [  n/N (p%)] Data (t): .. Batch (t): 0.456, 280.7/s, ..."
    progress = [re.search(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*?Batch \(t\): [\d.]+, ([\d.]+)/s", l)
                for l in lines]
    progress = [m for m in progress if m]
    samples_done = (int(progress[-1][1]) * n_rows + int(progress[-1][2])) if progress else 0
    ckpts = sorted((logs / "ref" / "checkpoints").glob("epoch_*.pt"), key=lambda p: p.stat().st_mtime)
    result = {"trainer": "open_clip_train" if crops else "open_clip_train (no crops)", "seed": seed, "wall_s": wall, "cpu_s": cpu, "stopped_by": stopped_by,
              "epochs_asked": epochs,
              "samples": samples_done, "samples_per_s": float(progress[-1][4]) if progress else None,
              "samples_per_cpu_s": samples_done / max(cpu, 1e-9),
              "checkpoint": str(ckpts[-1]) if ckpts else None, "recall": None}
    if not ckpts:
        _log("open_clip_train saved no checkpoint within the budget (see open_clip_train.log)")
        return result
    result["recall"] = _attribute_recall(_open_clip_train_encoder(str(ckpts[-1])), catalogue)
    return result


def _open_clip_train_encoder(checkpoint: str):
    import open_clip
    import torch

    from retrieval.encoder import Encoder

    model, _, preprocess = open_clip.create_model_and_transforms(ARCH)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return Encoder(model, preprocess, open_clip.get_tokenizer(ARCH), spec="open_clip_train")


def _recall_of_saved(result: dict, catalogue: syn.Catalogue, out: Path) -> dict | None:
    from retrieval.encoder import load_encoder

    if result["trainer"].startswith("open_clip_train"):
        return _attribute_recall(_open_clip_train_encoder(result["checkpoint"]), catalogue) \
            if result.get("checkpoint") else None
    return _attribute_recall(load_encoder(str(out / f"ours-seed{result.get('seed', 0)}")), catalogue)


def _table(results: list[dict]) -> str:
    head = ("| trainer | samples/s | wall s | split | t->i R@1 | R@5 | R@10 | i->t R@1 | R@5 | R@10 |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in results:
        for split, label in (("unseen", "unseen combos"), ("test", "seen combos")):
            m = (r.get("recall") or {}).get(split)
            if m is None:
                rows.append(f"| {r['trainer']} | - | {r['wall_s']:.0f} | {label} | (no checkpoint) | | | | | |")
                continue
            t2i, i2t = m["text_to_image"], m["image_to_text"]
            rate = f"{r['samples_per_s']:.0f}" if r.get("samples_per_s") else "-"
            rows.append(f"| {r['trainer']} | {rate} | {r['wall_s']:.0f} | {label} | "
                        + " | ".join(f"{t2i[k]:.3f}" for k in ("R@1", "R@5", "R@10")) + " | "
                        + " | ".join(f"{i2t[k]:.3f}" for k in ("R@1", "R@5", "R@10")) + " |")
    return "\n".join(rows)


def _summary_table(results: list[dict]) -> str:
    """Mean and spread over seeds of each trainer's held-out recall@1 (one run is one sample: seeds vary a lot)."""
    import statistics

    head = ("| trainer | runs | samples/CPU-s | split | t->i R@1 mean (sd) | i->t R@1 mean (sd) |\n"
            "|---|---|---|---|---|---|")
    rows = [head]
    for trainer in dict.fromkeys(r["trainer"] for r in results):
        runs = [r for r in results if r["trainer"] == trainer and r.get("recall")]
        if not runs:
            continue
        speed = statistics.mean(r["samples_per_cpu_s"] for r in runs)
        for split, label in (("unseen", "unseen combos"), ("test", "seen combos")):
            cells = []
            for direction in ("text_to_image", "image_to_text"):
                vals = [r["recall"][split][direction]["R@1"] for r in runs]
                sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
                cells.append(f"{statistics.mean(vals):.3f} ({sd:.3f})")
            rows.append(f"| {trainer} | {len(runs)} | {speed:.0f} | {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget for each trainer")
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "train")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="budget by wall time, or by CPU time / threads (fair on a shared, busy machine)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both trainers [default: torch's choice]; with --clock cpu the "
                             "budget is CPU seconds / threads")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds; each trainer runs once per seed")
    parser.add_argument("--trainers", default="ours,reference", help="ours, reference (open_clip_train) or both")
    parser.add_argument("--reference-epochs", type=int, default=0,
                        help="epochs for open_clip_train's schedule [default: enough for our run's samples]; "
                             "its cosine spans them, so size them to what fits the budget")
    parser.add_argument("--reference-crops", action=argparse.BooleanOptionalAction, default=True,
                        help="open_clip_train's default random crops (scale 0.9-1) [on]; off: whole images, as ours")
    parser.add_argument("--catalogue", type=Path, help="synthetic catalogue folder [default: OUT/catalogue]")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                        help="random crops for ours too [default: off, so its transformed pixels are cached; "
                             "open_clip_train always crops, scale 0.9-1]")
    parser.add_argument("--eval-only", action="store_true",
                        help="re-measure recall of the models a previous run left in --out (no training)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run open_clip_train")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="print the table of several runs' results.json together (no training)")
    io = parser.add_argument_group("--pipeline: the input pipeline, its training speed and its memory (issue 23)")
    io.add_argument("--pipeline", action="store_true", help="run this benchmark instead of the trainer comparison")
    io.add_argument("--photos", type=int, default=200, help="3000x2000 JPEGs for the speed measurements")
    io.add_argument("--batch", type=int, default=32, help="batch of the speed measurements")
    io.add_argument("--train-steps", type=int, default=4, help="timed ViT-B-32 steps per pipeline (0: skip)")
    io.add_argument("--pairs", default="12000,100000", help="pair counts whose one-epoch peak memory is measured")
    io.add_argument("--distinct", type=int, default=1000, help="distinct 800x600 JPEGs behind those pairs")
    io.add_argument("--small-cache-mb", type=float, default=256, help="the second, small --cache-mb measured")
    io.add_argument("--memory-timeout", type=float, default=0, help="stop each memory run after this many s")
    io.add_argument("--workers", type=int, default=0, help="decode threads [default: the trainer's choice]")
    io.add_argument("--memory-child", help=argparse.SUPPRESS)
    io.add_argument("--cache-mb", type=float, help=argparse.SUPPRESS)
    load = parser.add_argument_group("--load N: training and indexing beside N busy processes (issue 17)")
    load.add_argument("--load", type=int, default=0, metavar="N", help="competing CPU-bound processes")
    load.add_argument("--policies", default="passive,spin", help="OpenMP waiting: passive (mmsearch's default), "
                                                                  "spin (GNU OpenMP's default)")
    load.add_argument("--load-epochs", type=int, default=3)
    load.add_argument("--rounds", type=int, default=1,
                      help="run every condition this many times, interleaved; the table gives medians")
    load.add_argument("--load-batch", type=int, default=128)
    load.add_argument("--budget-minutes", type=float, default=60.0,
                      help="train with --max-minutes this (tuned threads); 0: a fixed thread count")
    load.add_argument("--index", action="store_true", help="also time `mmsearch index` in each condition")
    load.add_argument("--index-photos", type=int, default=150, help="1600x1200 JPEGs indexed")
    args = parser.parse_args()

    if args.memory_child:
        from _train_pipeline import peak_memory_child

        peak_memory_child(args.memory_child, args.cache_mb, args.workers or None, str(args.out))
        return 0
    if args.pipeline or args.load:
        from _common import emit_json, machine

        args.out.mkdir(parents=True, exist_ok=True)
        if args.pipeline:
            from _train_pipeline import run_pipeline

            summary = {"machine": machine(), **run_pipeline(args)}
            (args.out / "pipeline.json").write_text(json.dumps(summary, indent=1) + "\n")
        else:
            from _train_load import run_load

            if args.images == 8000:
                args.images = 3000  # a smaller world: each condition trains its own model
            summary = {"machine": machine(), **run_load(args)}
            (args.out / "load.json").write_text(json.dumps(summary, indent=1) + "\n")
        emit_json(summary, None)
        return 0

    if args.combine:
        results = [r for path in args.combine for r in json.loads(path.read_text())["results"]]
        print(_table(results))
        print()
        print(_summary_table(results))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.catalogue or args.out / "catalogue"
    if syn.catalogue_matches(root, args.images, 0, 96):
        catalogue = syn.load_catalogue(root)
    else:
        catalogue = syn.generate_catalogue(root, n_images=args.images, seed=0, image_size=96)
    _log(f"catalogue: {len(catalogue.items)} pictures, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    trainers = {t.strip() for t in args.trainers.split(",") if t.strip()}
    if args.skip_reference:
        trainers.discard("reference")
    results: list[dict] = []
    if args.eval_only:
        previous = json.loads((args.out / "results.json").read_text())
        results = previous["results"]
        for r in results:
            r["recall"] = _recall_of_saved(r, catalogue, args.out)
        args.minutes, args.clock = previous["minutes"], previous["clock"]
    else:
        for seed in [int(x) for x in args.seeds.split(",") if x.strip()]:
            samples = 0
            if "ours" in trainers:
                results.append(run_ours(catalogue, args.out / f"ours-seed{seed}", args.minutes, args.clock, seed,
                                        augment=args.augment))
                samples = results[-1]["samples"]
            if "reference" in trainers:
                try:
                    # Without our run to size it, ask for enough epochs that the budget is what stops it.
                    results.append(run_open_clip_train(catalogue, args.out / f"open_clip_train-seed{seed}",
                                                       args.minutes, samples or 2_000_000, args.clock, seed,
                                                       epochs=args.reference_epochs or None,
                                                       crops=args.reference_crops))
                except ImportError as exc:
                    _log(f"open_clip_train comparison skipped: {exc} (pip install -e '.[bench]')")
    print(_table(results))
    print()
    print(_summary_table(results))
    summary = {"minutes": args.minutes, "clock": args.clock, "load_avg": os.getloadavg(), "images": args.images,
               "arch": ARCH, "batch": BATCH, "lr": LR, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
