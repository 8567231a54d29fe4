"""The training input pipeline: bounded memory, decoding in parallel, batches ready before the model asks.

What it does for each sample, in a pool of decode threads:
  read the bytes (a file, a tar member, a Parquet row) -> reduced-size JPEG decode at
  the model's input size (as indexing does) -> the cached form, uint8 -> the sample's
  uint8 pixels (a seeded random crop with augmentation) -> a uint8 batch.
The float conversion and normalisation run once per batch on the training thread
(or on the GPU), so no float pixels are ever kept.

**Memory** is bounded by a budget (``--cache-mb``), not by the dataset: decoded
pictures are kept as uint8 at the model's input size (without augmentation, the
exact pixels the model sees; with it, the picture with its shorter side at the
input size, aspect capped at 2:1) until the budget is full; the rest are decoded
each time they are met. A fixed set beats an LRU here: every epoch is a new random
order, so any policy hits about budget/dataset of the time, and a fixed set never
churns. Nothing decodes the dataset before training: a bad image is counted when it
is first met and replaced in its batch by another item, drawn from a seeded stream.

**Determinism**: which caption a sample gets, its crop and any stand-in for a bad
image depend on (seed, epoch, item) alone, never on thread timing or on what is
cached, so a run with a small budget trains on exactly the batches of one with a
large budget, and a run resumed mid-epoch on exactly those of one never stopped.

**Order** (:func:`epoch_order`): a CSV/JSONL/folder is one seeded permutation per
epoch (what ``DistributedSampler`` draws); shards are visited shard by shard in a
seeded order, a window of shards at a time, with the samples of each round of
chunks shuffled together (webdataset's shard shuffle + shuffle buffer, but
deterministic), so a Parquet row group is read in ascending chunks, never at random.

**Threads** (see :func:`plan_threads`): decode threads release the GIL in Pillow;
torch's intra-op threads keep the cores. Why that matters on a busy machine is in
docs/training.md ("Training on a busy machine").
"""

from __future__ import annotations

import queue
import random
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .data import PairItem, load_item
from .pixels import ImagePrep, PixelCache
from .shards import BlobReader

__all__ = ["Batch", "PairLoader", "epoch_order", "plan_threads", "rank_share"]

WINDOW_BLOCKS = 8  # shards read at once: each batch mixes samples of this many shards
MAX_STANDIN_TRIES = 200


# -- the order of an epoch -----------------------------------------------------------


def epoch_order(items: Sequence[PairItem], seed: int, epoch: int, window: int = WINDOW_BLOCKS) -> list[int]:
    """Every item index once, in this epoch's order (before it is shared among processes).

    Items without shards: a uniform permutation, the one ``DistributedSampler`` draws
    (``torch.randperm`` seeded with seed + epoch). Shard items: shards in a seeded
    order; ``window`` shards at a time, their rows in ascending chunks interleaved, and
    the samples of each round of chunks (one chunk per shard) shuffled together.
    """
    if not any(item.blob is not None for item in items):
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        return torch.randperm(len(items), generator=g).tolist()
    blocks: dict[int, list[int]] = {}
    chunk_of: dict[int, int] = {}
    loose: list[int] = []
    for i, item in enumerate(items):
        if item.blob is None:
            loose.append(i)  # Parquet rows naming image files: no reading order to keep
            continue
        blocks.setdefault(item.blob.block, []).append(i)
        chunk_of[item.blob.block] = item.blob.chunk
    rng = np.random.default_rng([seed, epoch, 7])
    block_ids = list(blocks)
    rng.shuffle(block_ids)
    order: list[int] = []
    for start in range(0, len(block_ids), window):
        group = block_ids[start:start + window]
        chunks = [[blocks[b][k:k + chunk_of[b]] for k in range(0, len(blocks[b]), chunk_of[b])] for b in group]
        for r in range(max(len(c) for c in chunks)):
            round_ = [i for c in chunks if r < len(c) for i in c[r]]
            rng.shuffle(round_)
            order.extend(round_)
    if loose:
        # Loose items go to random places among the others.
        positions = rng.integers(0, len(order) + 1, size=len(loose))
        merged: list[int] = []
        extra = sorted(zip(positions.tolist(), rng.permutation(loose).tolist()))
        j = 0
        for p, i in enumerate(order + [-1]):
            while j < len(extra) and extra[j][0] == p:
                merged.append(extra[j][1])
                j += 1
            if i >= 0:
                merged.append(i)
        order = merged
    return order


def rank_share(order: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's share of ``order``: every ``world_size``-th item from ``rank``, all shares equal
    (``DistributedSampler`` with ``drop_last``)."""
    usable = (len(order) // world_size) * world_size
    return list(order[rank:usable:world_size])


# -- the loader ------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch: uint8 pixels (N, H, W, 3) or float pixels (N, 3, H, W), token ids, the items used."""

    pixels: np.ndarray | torch.Tensor
    tokens: torch.Tensor
    items: list[int]


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class PairLoader:
    """Samples of ``items`` prepared by ``workers`` decode threads (0: on the calling thread).

    ``batches()`` yields an epoch's batches in order while the next ones are decoded;
    ``pictures()`` serves validation. Undecodable items are recorded in ``skipped``
    (index -> reason) the first time they are met.
    """

    def __init__(self, items: Sequence[PairItem], prep: ImagePrep, tokenizer: Callable[..., torch.Tensor] | None,
                 cache: PixelCache, *, seed: int = 0, workers: int = 0, prefetch: int = 2,
                 reader: BlobReader | None = None, pin_memory: bool = False) -> None:
        self.items = list(items)
        self.prep = prep
        self.tokenizer = tokenizer
        self.cache = cache
        self.seed = seed
        self.workers = max(0, workers)
        self.prefetch = max(1, prefetch)
        self.reader = reader or BlobReader()
        self.pin_memory = pin_memory
        self.skipped: dict[int, str] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmsearch-train-decode") \
            if self.workers else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.reader.close()

    def __enter__(self) -> "PairLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one item

    def cached_form(self, index: int) -> np.ndarray | None:
        """The item's cached form (from the cache, or decoded and cached if there is room); None if bad."""
        value = self.cache.get(index)
        if value is not None:
            return value
        if index in self.skipped:
            return None
        loaded = load_item(self.items[index], self.reader, min_side=self.prep.min_side)
        if loaded.image is None:
            self._skip(index, _reason(loaded.error))
            return None
        try:
            value = self.prep.cached_form(loaded.image)
        except Exception as exc:  # an odd picture (a 1-pixel strip, a broken mode) must not end the run
            self._skip(index, "images that failed preprocessing")
            del exc
            return None
        self.cache.put(index, value)
        return value

    def sample(self, index: int, epoch: int) -> np.ndarray | torch.Tensor | None:
        """The model's pixels for ``index`` in ``epoch`` (its seeded crop), or None when it cannot be decoded."""
        cached = self.cached_form(index)
        if cached is None:
            return None
        return self.prep.sample(cached, random.Random(f"crop/{self.seed}/{epoch}/{index}"))

    def caption(self, index: int, epoch: int) -> str:
        captions = self.items[index].captions
        if len(captions) == 1:
            return captions[0]
        return random.Random(f"caption/{self.seed}/{epoch}/{index}").choice(captions)

    def _skip(self, index: int, reason: str) -> None:
        self.skipped.setdefault(index, reason)

    def skip_reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.skipped.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    # -- batches

    def describe(self, torch_threads: int) -> str:
        """One line for the progress output: threads, and how much of the data the cache holds."""
        per_item = self.prep.size[0] * self.prep.size[1] * 3 * (1 if self.prep.exact else 1.5)
        fits = min(len(self.items), int(self.cache.budget // max(1.0, per_item)))
        share = "all" if fits >= len(self.items) else f"about {fits} of {len(self.items)}"
        crop = ", cropped per sample" if self.prep.augment else ""
        return (f"input: {self.workers} decode thread(s), {torch_threads} torch thread(s); "
                f"cache {self.cache.budget / 2**20:.0f} MiB holds {share} pictures "
                f"({self.prep.size[1]}x{self.prep.size[0]} uint8{crop})")

    def batches(self, order: Sequence[int], epoch: int, batch_size: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``order`` (``len(order) // batch_size`` of them) from batch ``start`` on.

        With workers, a feeder thread keeps ``prefetch`` batches ready and the decoding of
        the ones after them under way; closing the generator stops it.
        """
        n_batches = len(order) // batch_size
        if self._pool is None:
            for b in range(start, n_batches):
                indices = list(order[b * batch_size:(b + 1) * batch_size])
                yield self._assemble(indices, epoch, b, [self.sample(i, epoch) for i in indices])
            return
        yield from self._threaded(order, epoch, batch_size, start, n_batches)

    def _threaded(self, order: Sequence[int], epoch: int, batch_size: int, start: int,
                  n_batches: int) -> Iterator[Batch]:
        assert self._pool is not None
        pool = self._pool
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(value: Any) -> None:
            while not stop.is_set():
                try:
                    ready.put(value, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def feed() -> None:
            pending: deque[tuple[int, list[int], list[Future[Any]]]] = deque()
            try:
                nxt = start
                while nxt < n_batches or pending:
                    # Decoding runs a batch further ahead than the ready queue holds.
                    while nxt < n_batches and len(pending) <= self.prefetch:
                        indices = list(order[nxt * batch_size:(nxt + 1) * batch_size])
                        pending.append((nxt, indices, [pool.submit(self.sample, i, epoch) for i in indices]))
                        nxt += 1
                    b, indices, futures = pending.popleft()
                    put(self._assemble(indices, epoch, b, [f.result() for f in futures]))
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the training thread, which re-raises it
                put(_Failure(exc))
            finally:
                for _, _, futures in pending:
                    for f in futures:
                        f.cancel()
                put(_END)

        feeder = threading.Thread(target=feed, name="mmsearch-train-feeder", daemon=True)
        feeder.start()
        try:
            while True:
                value = ready.get()
                if value is _END:
                    return
                if isinstance(value, _Failure):
                    raise value.exc
                yield value
        finally:
            stop.set()
            feeder.join()

    def _assemble(self, indices: list[int], epoch: int, batch_no: int,
                  pixels: list[np.ndarray | torch.Tensor | None]) -> Batch:
        used = list(indices)
        for p, value in enumerate(pixels):
            if value is None:
                used[p], pixels[p] = self._stand_in(p, used, epoch, batch_no)
        captions = [self.caption(i, epoch) for i in used]
        tokens = self.tokenizer(captions) if self.tokenizer is not None else torch.zeros(0)
        if isinstance(pixels[0], torch.Tensor):
            stacked: np.ndarray | torch.Tensor = torch.stack(pixels)  # type: ignore[arg-type]
        else:
            stacked = torch.from_numpy(np.stack(pixels))  # type: ignore[arg-type]
            if self.pin_memory:
                stacked = stacked.pin_memory()
        return Batch(stacked, tokens, used)

    def _stand_in(self, position: int, used: list[int], epoch: int,
                  batch_no: int) -> tuple[int, np.ndarray | torch.Tensor]:
        """Another item for an undecodable one: a seeded draw, so every run picks the same."""
        rng = random.Random(f"stand-in/{self.seed}/{epoch}/{batch_no}/{position}")
        taken = set(used)
        for _ in range(MAX_STANDIN_TRIES):
            candidate = rng.randrange(len(self.items))
            if candidate in taken or candidate in self.skipped:
                continue
            value = self.sample(candidate, epoch)
            if value is not None:
                return candidate, value
        raise DataError(f"{len(self.skipped)} images could not be decoded and no stand-in was found in "
                        f"{MAX_STANDIN_TRIES} tries: is the data readable? ({self._skip_summary()})")

    def _skip_summary(self) -> str:
        return ", ".join(f"{n} {why}" for why, n in sorted(self.skip_reasons().items()))

    # -- validation

    def pictures(self, indices: Sequence[int]) -> list[Image.Image | None]:
        """Decoded pictures (cached forms) of ``indices``, decoded in parallel; None for a bad one."""
        if self._pool is None:
            forms = [self.cached_form(i) for i in indices]
        else:
            forms = list(self._pool.map(self.cached_form, indices))
        return [self.prep.to_image(f) if f is not None else None for f in forms]


def _reason(error: str | None) -> str:
    """A skip reason in the words of the reading pass's summary."""
    if not error:
        return "undecodable images"
    if error.startswith(("missing", "rows without", "unreadable")):
        return error
    if error.startswith("file disappeared") or "No such file" in error:
        return "missing image files"
    return "undecodable images"


# -- threads -------------------------------------------------------------------------


def plan_threads(workers: int | None, device: torch.device, local_processes: int = 1) -> tuple[int, int]:
    """(torch intra-op threads, decode threads) for training in this process.

    torch keeps one thread per CPU this process may use (its share when several
    processes train on one machine): more threads than CPUs make every parallel op wait
    for a descheduled thread. Decode threads default to half the CPUs (at least one,
    at most eight), as indexing does: with reduced-size decoding a picture costs a
    fraction of what the model spends on it, and they only run while there is
    decoding to do (a dataset that fits the cache needs none after its first epoch).
    On a GPU the model needs no CPU threads beyond one, so decoding gets every core.
    """
    from ..encoder import available_cpus

    cpus = max(1, available_cpus() // max(1, local_processes))
    if device.type == "cpu":
        torch_threads = min(torch.get_num_threads(), cpus)
        decode = workers if workers is not None else max(1, min(8, cpus // 2))
    else:
        torch_threads = min(torch.get_num_threads(), cpus)
        decode = workers if workers is not None else max(1, min(16, cpus - 1))
    return torch_threads, max(0, decode)
