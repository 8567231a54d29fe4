"""The offline demo (``make demo``): a synthetic shop, a model trained on it, real queries.

1. writes the synthetic catalogue under ``demo-data/catalogue`` (once);
2. trains the small model into ``models/demo`` (once: later runs reuse it);
3. indexes the catalogue's pictures and answers text and image queries, printing
   each hit's attributes so a reader can check it.

Nothing here needs the network. Run ``python -m retrieval.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from . import synthetic as syn

DEMO_IMAGES = 8000
DEMO_IMAGE_SIZE = 96
DEMO_SEED = 0
DEMO_ARCH = "mmsearch-small"
DEMO_MINUTES = 5.0
DEMO_BATCH = 128
DEMO_LR = 2e-3
DEMO_WARMUP = 50
STAMP = "demo.json"  # written next to the model once training finished

TEXT_QUERIES = (
    "red shoes",
    "a striped blue shirt",
    "green shoes",  # a held-out combination: no green shoe was ever shown in training
    "a small yellow umbrella on the left",
)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_catalogue(root: Path, n_images: int = DEMO_IMAGES) -> syn.Catalogue:
    if syn.catalogue_matches(root, n_images, DEMO_SEED, DEMO_IMAGE_SIZE):
        _log(f"catalogue: reusing {root}")
        return syn.load_catalogue(root)
    _log(f"catalogue: drawing {n_images} product pictures into {root} ...")
    return syn.generate_catalogue(root, n_images=n_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE)


def _stamp(catalogue: syn.Catalogue, minutes: float) -> dict[str, object]:
    return {"n_images": len(catalogue.items), "seed": catalogue.seed, "image_size": catalogue.image_size,
            "arch": DEMO_ARCH, "minutes": minutes, "batch": DEMO_BATCH, "lr": DEMO_LR}


def ensure_model(catalogue: syn.Catalogue, model_dir: Path, minutes: float = DEMO_MINUTES) -> Path:
    """Train the demo model unless ``model_dir`` already holds one trained on this catalogue."""
    from .train import TrainCfg, fit, is_complete, read_pairs

    stamp = model_dir / STAMP
    wanted = _stamp(catalogue, minutes)
    if is_complete(model_dir) and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        _log(f"model: reusing {model_dir} (delete it to train again)")
        return model_dir
    _log(f"model: training {DEMO_ARCH} from scratch for {minutes:g} minutes into {model_dir} ...")
    data = read_pairs(catalogue.captions_csv)
    # The budget is CPU time / threads: on two idle cores that is wall time; on a busy machine the
    # model still gets the same amount of work (and quality), it just takes longer.
    cfg = TrainCfg(arch=DEMO_ARCH, max_minutes=minutes, batch_size=DEMO_BATCH, lr=DEMO_LR, warmup_steps=DEMO_WARMUP,
                   augment=False, overwrite=True, budget_clock="cpu")
    result = fit(data, model_dir, cfg)
    _log(f"model: {result.steps} steps in {result.train_seconds:.0f} s, {result.samples_per_s:.0f} samples/s")
    stamp.write_text(json.dumps(wanted) + "\n")
    return model_dir


def _describe(attrs: dict[str, str] | None) -> str:
    if not attrs:
        return "?"
    where = "in the center" if attrs["position"] == "center" else f"on the {attrs['position']}"
    return f"{attrs['size']} {attrs['pattern']} {attrs['colour']} {attrs['kind']} {where}"


def _print_hits(catalogue: syn.Catalogue, hits: Sequence[object], wanted: dict[str, str], splits: dict[str, str]) -> int:
    good = 0
    for rank, hit in enumerate(hits, start=1):
        attrs = catalogue.attributes_of(hit.path)  # type: ignore[attr-defined]
        ok = attrs is not None and syn.satisfies(attrs, wanted)
        good += ok
        name = Path(hit.path).name  # type: ignore[attr-defined]
        split = splits.get(name, "?")
        print(f"   {rank:>2}. {'ok ' if ok else 'NO '} {hit.score:.3f}  {name}  "  # type: ignore[attr-defined]
              f"{_describe(attrs)}  [{split}]")
    return good


def run_queries(catalogue: syn.Catalogue, model_dir: Path, index_root: Path, k: int = 5) -> dict[str, float]:
    """Index the catalogue with the trained model and print the answers to the demo's queries."""
    import retrieval

    from .encoder import load_encoder
    from .errors import IndexNotFoundError

    name = "demo"
    encoder = load_encoder(str(model_dir))
    try:  # an index built by an earlier demo model is rebuilt, never queried with the wrong model
        if retrieval.open_index(name, root=index_root).info().fingerprint != encoder.fingerprint:
            retrieval.delete_index(name, root=index_root)
    except IndexNotFoundError:
        pass
    index = retrieval.open_or_create_index(name, model=str(model_dir), root=index_root, encoder=encoder)
    t0 = time.monotonic()
    report = index.add_folder(catalogue.images_dir)
    _log(f"index: {len(index)} pictures in {index.path} ({report.encoded} embedded in "
         f"{time.monotonic() - t0:.1f} s)")
    splits = {Path(it.image).name: it.split for it in catalogue.items}
    precision: dict[str, float] = {}
    for text in TEXT_QUERIES:
        wanted = syn.caption_attributes(text)
        note = "  (a combination never shown in training)" if (
            (wanted.get("kind"), wanted.get("colour")) in catalogue.held_out) else ""
        print(f'\nquery: "{text}"{note}')
        precision[text] = _print_hits(catalogue, index.search_text(text, k=k), wanted, splits) / k
    # An image query: a held-out picture (never trained on); hits should share kind, colour and pattern.
    probe = next(it for it in catalogue.items if it.split == "unseen" and it.attributes["pattern"] == "striped")
    wanted = {a: probe.attributes[a] for a in ("kind", "colour", "pattern")}
    print(f"\nimage query: {probe.image}  ({_describe(probe.attributes)}, a held-out combination)")
    hits = [h for h in index.search_image(catalogue.root / probe.image, k=k + 1) if Path(h.path).name !=
            Path(probe.image).name][:k]
    precision[f"image:{probe.image}"] = _print_hits(catalogue, hits, wanted, splits) / k
    return precision


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("demo-data"), help="where the catalogue and index go")
    parser.add_argument("--model-dir", type=Path, default=Path("models/demo"))
    parser.add_argument("--minutes", type=float, default=DEMO_MINUTES, help="training time budget")
    parser.add_argument("--images", type=int, default=DEMO_IMAGES, help="pictures in the catalogue")
    parser.add_argument("-k", type=int, default=5, help="hits per query")
    args = parser.parse_args(argv)

    from .errors import MMSearchError

    try:
        catalogue = ensure_catalogue(args.data / "catalogue", args.images)
        model_dir = ensure_model(catalogue, args.model_dir, args.minutes)
        precision = run_queries(catalogue, model_dir, args.data / "indexes", k=args.k)
    except MMSearchError as exc:
        _log(f"error: {exc}")
        return 1
    mean = sum(precision.values()) / len(precision)
    print(f"\n{mean:.0%} of the hits shown have every attribute their query asks for "
          "(ok = has them all; [split] says whether training saw the picture).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
