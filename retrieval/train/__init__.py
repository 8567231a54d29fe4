"""Contrastive training, fine-tuning and evaluation of dual encoders (imports torch: load on demand).

    from retrieval.train import read_pairs, fit, TrainCfg, evaluate_model
    data = read_pairs("captions.csv")                    # or 'shards/{00000..00099}.tar', or pairs.parquet
    result = fit(data, "models/mine", TrainCfg(epochs=5, cache_mb=1024, workers=4))
    metrics = evaluate_model("models/mine", data)
"""

from __future__ import annotations

from .checkpoint import is_complete, save_model
from .distributed import world_from_env
from .data import PairData, PairItem, heldout_items, load_item, read_pairs, split_items
from .evaluate import RetrievalMetrics, evaluate, format_metrics, retrieval_metrics
from .loop import TrainCfg, TrainResult, fit
from .models import DEFAULT_ARCH


def evaluate_model(spec: str, data: PairData, split: str = "heldout", batch_size: int = 64,
                   val_fraction: float = 0.1, seed: int = 0, device: str = "cpu") -> RetrievalMetrics:
    """Evaluate the model named by ``spec`` on ``data``.

    ``split``: ``heldout`` (default: what training did not use, the same deterministic
    split as ``fit``), ``all``, or a split name from the data's ``split`` column.
    """
    from ..encoder import load_encoder
    from ..errors import DataError

    if split == "heldout":
        items = heldout_items(data.items, val_fraction, seed)
    elif split == "all":
        items = list(data.items)
    else:
        items = [i for i in data.items if i.split == split]
    if not items:
        raise DataError(f"no items to evaluate in split {split!r} of {data.source} (use --split all?)")
    return evaluate(load_encoder(spec, device=device), items, batch_size=batch_size)


__all__ = [
    "DEFAULT_ARCH", "PairData", "PairItem", "RetrievalMetrics", "TrainCfg", "TrainResult", "evaluate",
    "evaluate_model", "fit", "format_metrics", "heldout_items", "is_complete", "load_item", "read_pairs",
    "retrieval_metrics", "save_model", "split_items", "world_from_env",
]
