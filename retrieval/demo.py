"""The offline demo (``make demo``): a synthetic shop, a bilingual model trained on it, real queries.

1. writes the synthetic catalogue under ``demo-data/catalogue`` (once), with
   English and Chinese captions (:mod:`retrieval.synthetic_zh`);
2. trains the small model on both languages into ``models/demo`` (once: later
   runs reuse it) for a fixed number of epochs (:data:`DEMO_EPOCHS`), seeded and
   on a fixed number of threads (:data:`DEMO_THREADS`), so that every machine
   trains the same model and prints the same answers: a busy machine only takes
   longer (the time it took is printed);
3. indexes the catalogue's pictures and answers Chinese queries next to their
   English twins (one of them a combination no training picture shows) and an
   image query, printing each hit's attributes so a reader can check it, and
   the share of hits that have every attribute their query asks for.

Nothing here needs the network. Run ``python -m retrieval.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TextIO

from . import synthetic as syn
from .synthetic_zh import DEMO_QUERIES

if TYPE_CHECKING:
    from .api import Index
    from .train import TrainCfg, TrainResult

DEMO_IMAGES = 4000  # tests/test_demo_bilingual.py trains this very model and checks its answers
DEMO_SEED = 0
DEMO_LANGUAGES = ("en", "zh")
# mmsearch-small with a 48-token context: CLIP's byte-level BPE spends about two tokens on a Chinese
# character, and the longest Chinese caption needs 41 (mmsearch-small's 20 would cut most of them).
DEMO_ARCH = "mmsearch-small-i18n"
# The model's input side: the catalogue is drawn at it, so resizing blurs no stripe or dot away.
DEMO_MODEL_INPUT: int = json.loads((Path(__file__).with_name("model_configs") / f"{DEMO_ARCH}.json")
                                   .read_text(encoding="utf-8"))["vision_cfg"]["image_size"]
DEMO_IMAGE_SIZE = DEMO_MODEL_INPUT
DEMO_EPOCHS = 18  # how long the demo model trains, in passes over the training pictures
DEMO_BATCH = 256  # contrastive negatives that differ only in pattern, size or position teach those words
DEMO_LR = 3e-3
DEMO_WARMUP = 20
# torch's CPU kernels split their sums by thread count, so the same seed on another number of threads
# trains a (slightly) different model: the demo always trains on this many, whatever the machine has.
DEMO_THREADS = 2
DEMO_K = 5
STAMP = "demo.json"  # written next to the model once training finished


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_catalogue(root: Path, n_images: int = DEMO_IMAGES) -> syn.Catalogue:
    """The demo's bilingual catalogue under ``root``, drawn unless it is already there."""
    if syn.catalogue_matches(root, n_images, DEMO_SEED, DEMO_IMAGE_SIZE, DEMO_LANGUAGES):
        _log(f"catalogue: reusing {root}")
        return syn.load_catalogue(root)
    _log(f"catalogue: drawing {n_images} product pictures with English and Chinese captions into {root} ...")
    return syn.generate_catalogue(root, n_images=n_images, seed=DEMO_SEED, image_size=DEMO_IMAGE_SIZE,
                                  languages=DEMO_LANGUAGES)


def _stamp(catalogue: syn.Catalogue, epochs: int) -> dict[str, object]:
    return {"n_images": len(catalogue.items), "seed": catalogue.seed, "image_size": catalogue.image_size,
            "languages": list(catalogue.languages), "arch": DEMO_ARCH, "epochs": epochs, "batch": DEMO_BATCH,
            "lr": DEMO_LR, "warmup": DEMO_WARMUP, "threads": DEMO_THREADS}


def demo_train_cfg(epochs: int = DEMO_EPOCHS, seed: int = DEMO_SEED) -> "TrainCfg":
    """The demo's training recipe: :data:`DEMO_ARCH` from scratch, a fixed number of epochs, seeded, on
    :data:`DEMO_THREADS` torch threads (the trainer would otherwise take one per CPU)."""
    from .train import TrainCfg

    return TrainCfg(arch=DEMO_ARCH, epochs=epochs, batch_size=DEMO_BATCH, lr=DEMO_LR, warmup_steps=DEMO_WARMUP,
                    augment=False, overwrite=True, seed=seed, threads=DEMO_THREADS)


def train_demo_model(catalogue: syn.Catalogue, model_dir: Path, epochs: int = DEMO_EPOCHS, seed: int = DEMO_SEED,
                     progress: TextIO | None = sys.stderr) -> "TrainResult":
    """Train the demo model on the catalogue's training pictures (both languages) into ``model_dir``.

    Deterministic: the same catalogue, ``epochs`` and ``seed`` give the same
    model on any machine with the same torch build and CPU kind, however busy
    it is. No validation pass (the epoch with the lowest training loss is kept):
    its time goes to training.
    """
    from .train import fit, read_pairs

    data = read_pairs(catalogue.captions_csv)  # every picture's captions in both languages: one drawn per step
    data.items = [item for item in data.items if item.split == "train"]
    return fit(data, model_dir, demo_train_cfg(epochs, seed), progress=progress)


def ensure_model(catalogue: syn.Catalogue, model_dir: Path, epochs: int = DEMO_EPOCHS) -> Path:
    """Train the demo model unless ``model_dir`` already holds one trained on this catalogue."""
    from .train import is_complete

    stamp = model_dir / STAMP
    wanted = _stamp(catalogue, epochs)
    if is_complete(model_dir) and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        _log(f"model: reusing {model_dir} (delete it to train again)")
        return model_dir
    _log(f"model: training {DEMO_ARCH} from scratch on English and Chinese captions for {epochs} epochs "
         f"(seed {DEMO_SEED}, {DEMO_THREADS} threads) into {model_dir} ...")
    result = train_demo_model(catalogue, model_dir, epochs)
    samples = result.steps * min(DEMO_BATCH, result.n_train)
    _log(f"model: {result.epochs_run} epochs, {result.steps} steps, {samples} samples in "
         f"{result.train_seconds:.0f} s ({result.samples_per_s:.0f} samples/s); final loss "
         f"{result.history[-1]['train_loss']:.4f}")
    stamp.write_text(json.dumps(wanted) + "\n")
    return model_dir


def build_index(catalogue: syn.Catalogue, model_dir: Path, index_root: Path, name: str = "demo") -> "Index":
    """Index every picture of the catalogue with the model in ``model_dir`` (an index of another model is rebuilt)."""
    import retrieval

    from .encoder import load_encoder
    from .errors import IndexNotFoundError

    encoder = load_encoder(str(model_dir))
    try:  # an index built by an earlier demo model is rebuilt, never queried with the wrong model
        with retrieval.open_index(name, root=index_root) as old:
            stale = old.info().fingerprint != encoder.fingerprint
    except IndexNotFoundError:
        stale = False
    if stale:
        retrieval.delete_index(name, root=index_root)
    index = retrieval.open_or_create_index(name, model=str(model_dir), root=index_root, encoder=encoder)
    t0 = time.monotonic()
    report = index.add_folder(catalogue.images_dir)
    _log(f"index: {len(index)} pictures in {index.path} ({report.encoded} embedded in "
         f"{time.monotonic() - t0:.1f} s)")
    return index


@dataclass(frozen=True)
class Answer:
    """A text query's hits, each with the picture's attributes and whether it has every one the query names."""

    text: str
    wanted: dict[str, str]
    hits: list[tuple[Any, dict[str, str] | None, bool]]  # (hit, attributes, ok)
    held_out: bool  # the query names a (kind, colour) pair no training picture shows

    @property
    def precision(self) -> float:
        """Share of the hits shown that have every attribute the query names."""
        return sum(ok for _, _, ok in self.hits) / max(1, len(self.hits))


def ask(index: "Index", catalogue: syn.Catalogue, text: str, k: int = DEMO_K) -> Answer:
    """Search ``text`` and judge each hit by the catalogue's attributes.

    At most ``k`` hits, and no more than the catalogue has pictures with every
    attribute the query names (a small world may hold only three small yellow
    umbrellas on the left): precision is then over the hits that could be right.
    """
    wanted = syn.caption_attributes(text)
    relevant = sum(syn.satisfies(item.attributes, wanted) for item in catalogue.items)
    hits = index.search_text(text, k=max(1, min(k, relevant)))
    judged = []
    for hit in hits:
        attrs = catalogue.attributes_of(hit.path)
        judged.append((hit, attrs, attrs is not None and syn.satisfies(attrs, wanted)))
    return Answer(text, wanted, judged, (wanted.get("kind"), wanted.get("colour")) in catalogue.held_out)


def ask_bilingual(index: "Index", catalogue: syn.Catalogue, k: int = DEMO_K,
                  pairs: Sequence[tuple[str, str]] = DEMO_QUERIES) -> list[tuple[Answer, Answer]]:
    """(Chinese answer, English answer) for each pair of twin queries (the same attributes in both languages)."""
    return [(ask(index, catalogue, zh, k), ask(index, catalogue, en, k)) for zh, en in pairs]


def precision_summary(answers: Sequence[tuple[Answer, Answer]]) -> dict[str, float]:
    """Share of hits with every asked-for attribute: Chinese queries, English twins, both, held-out pairs."""

    def share(chosen: list[Answer]) -> float:
        return sum(sum(ok for _, _, ok in a.hits) for a in chosen) / max(1, sum(len(a.hits) for a in chosen))

    zh = [pair[0] for pair in answers]
    en = [pair[1] for pair in answers]
    held = [a for pair in answers for a in pair if a.held_out]
    return {"zh": share(zh), "en": share(en), "all": share(zh + en), "held_out": share(held)}


def missed_attributes(judged: Iterable[tuple[Mapping[str, str] | None, Mapping[str, str]]]) -> Counter[str]:
    """How often each asked-for attribute is wrong, over (hit's attributes, attributes asked for) pairs.

    A hit without attributes (not a catalogue picture) misses everything asked for.
    """
    missed: Counter[str] = Counter()
    for attrs, wanted in judged:
        missed.update(a for a, v in wanted.items() if attrs is None or attrs.get(a) != v)
    return missed


def _describe(attrs: dict[str, str] | None) -> str:
    if not attrs:
        return "?"
    where = "center" if attrs["position"] == "center" else attrs["position"]
    return f"{attrs['size']} {attrs['pattern']} {attrs['colour']} {attrs['kind']}, {where}"


def _width(text: str) -> int:
    """Columns a terminal gives ``text`` (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _cell(entry: tuple[Any, dict[str, str] | None, bool] | None, splits: dict[str, str]) -> str:
    if entry is None:
        return ""
    hit, attrs, ok = entry
    split = splits.get(Path(hit.path).name, "?")
    return f"{'ok' if ok else 'NO'} {hit.score:.3f} {_describe(attrs)} [{split}]"


def print_pair(zh: Answer, en: Answer, splits: dict[str, str]) -> None:
    """A Chinese query's hits next to its English twin's, rank by rank."""
    rows = max(len(zh.hits), len(en.hits))
    left = [_cell(zh.hits[r] if r < len(zh.hits) else None, splits) for r in range(rows)]
    right = [_cell(en.hits[r] if r < len(en.hits) else None, splits) for r in range(rows)]
    column = max([_width(cell) for cell in left] + [_width(f"query: “{zh.text}”") - 4, 30]) + 3
    note = "   (a combination never shown in training)" if zh.held_out else ""
    print(f"\n{_pad(f'query: “{zh.text}”', column + 4)}“{en.text}”{note}")
    for rank in range(rows):
        print(f"  {rank + 1:>2}. {_pad(left[rank], column)}{right[rank]}")


def run_queries(catalogue: syn.Catalogue, model_dir: Path, index_root: Path, k: int = DEMO_K) -> dict[str, float]:
    """Index the catalogue with the trained model and print the answers to the demo's queries."""
    index = build_index(catalogue, model_dir, index_root)
    splits = {Path(it.image).name: it.split for it in catalogue.items}
    answers = ask_bilingual(index, catalogue, k)
    for zh, en in answers:
        print_pair(zh, en, splits)
    precision = precision_summary(answers)
    # An image query: a held-out picture (never trained on); hits should share kind, colour and pattern.
    probe = next(it for it in catalogue.items if it.split == "unseen" and it.attributes["pattern"] == "striped")
    wanted = {a: probe.attributes[a] for a in ("kind", "colour", "pattern")}
    print(f"\nimage query: {probe.image}  ({_describe(probe.attributes)}, a held-out combination)")
    hits = [h for h in index.search_image(catalogue.root / probe.image, k=k + 1) if Path(h.path).name !=
            Path(probe.image).name][:k]
    good = 0
    for rank, hit in enumerate(hits, start=1):
        attrs = catalogue.attributes_of(hit.path)
        ok = attrs is not None and syn.satisfies(attrs, wanted)
        good += ok
        print(f"  {rank:>2}. {_cell((hit, attrs, ok), splits)}")
    precision["image"] = good / max(1, len(hits))
    index.close()
    judged = [(attrs, a.wanted) for pair in answers for a in pair for _, attrs, ok in a.hits if not ok]
    judged += [(catalogue.attributes_of(h.path), wanted) for h in hits]
    missed = missed_attributes(judged)
    if missed:  # what the wrong hits got wrong, and where the reason is written up
        print("\nwrong hits, by the attribute they miss: " + ", ".join(f"{a} {n}" for a, n in missed.most_common())
              + " (why: docs/training.md, \"What the demo still gets wrong\")")
    return precision


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("demo-data"), help="where the catalogue and index go")
    parser.add_argument("--model-dir", type=Path, default=Path("models/demo"))
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                        help="training epochs (the demo trains for a fixed amount, not a time budget)")
    parser.add_argument("--images", type=int, default=DEMO_IMAGES, help="pictures in the catalogue")
    parser.add_argument("-k", type=int, default=DEMO_K, help="hits per query")
    args = parser.parse_args(argv)

    from .errors import MMSearchError

    try:
        catalogue = ensure_catalogue(args.data / "catalogue", args.images)
        model_dir = ensure_model(catalogue, args.model_dir, args.epochs)
        precision = run_queries(catalogue, model_dir, args.data / "indexes", k=args.k)
    except MMSearchError as exc:
        _log(f"error: {exc}")
        return 1
    print(f"\nhits with every attribute their query asks for: Chinese queries {precision['zh']:.0%}, "
          f"their English twins {precision['en']:.0%}, all {precision['all']:.0%} (held-out combinations "
          f"{precision['held_out']:.0%}); image query {precision['image']:.0%}.")
    print("ok = the picture has them all; [split] says whether training saw it (unseen: a held-out combination).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
