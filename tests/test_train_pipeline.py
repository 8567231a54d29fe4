"""Training on real-size data: shard formats, bounded memory, parallel decoding, skips, mid-epoch resume.

Every dataset here is written by the test (webdataset tar shards as img2dataset writes
them, Parquet tables of bytes, paths and Hugging Face image structs) and read back.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.cpu_threads import prefer_passive_waiting
from retrieval.errors import DataError
from retrieval.train import TrainCfg, fit, read_pairs
from retrieval.train import checkpoint as ckpt
from retrieval.train.data import PairItem, load_item
from retrieval.train.models import create_from_scratch
from retrieval.train.pipeline import PairLoader, epoch_order, plan_threads, rank_share
from retrieval.train.pixels import ImagePrep, PixelCache
from retrieval.train.shards import (
    BlobReader,
    expand_braces,
    shard_urls,
    write_tar_shard,
)
from retrieval.train.threads import ThreadTuner

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

TINY = "mmsearch-tiny"
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (20, 20, 20), (240, 240, 240)]
NAMES = ["red", "green", "blue", "yellow", "black", "white"]
BAD = (5, 50)  # samples of the `shards` fixture whose .jpg is not a JPEG (item index = sample number)


def _jpeg(i: int, size: tuple[int, int] = (56, 44)) -> bytes:
    """A distinct picture: a coloured square on a noisy background, seeded by ``i``."""
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 60, size=(size[1], size[0], 3), dtype=np.uint8)
    pixels[8:30, 10:34] = COLOURS[i % len(COLOURS)]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def _caption(i: int) -> str:
    return f"a {NAMES[i % len(NAMES)]} square number {i}"


def _write_shards(folder: Path, n_shards: int = 3, per_shard: int = 20, bad: tuple[int, ...] = ()) -> list[int]:
    """img2dataset's layout: KEY.jpg + KEY.txt + KEY.json per sample; returns the sample numbers written."""
    folder.mkdir(parents=True, exist_ok=True)
    numbers = []
    for s in range(n_shards):
        samples = []
        for k in range(per_shard):
            i = s * per_shard + k
            numbers.append(i)
            meta = {"url": f"https://example.org/{i}.jpg", "caption": _caption(i), "key": f"{s:05d}{k:04d}",
                    "status": "success"}
            members = {"jpg": b"\xff\xd8 not really a jpeg" if i in bad else _jpeg(i),
                       "txt": _caption(i).encode(), "json": json.dumps(meta).encode()}
            samples.append((f"{s:05d}{k:04d}", members))
        write_tar_shard(folder / f"{s:05d}.tar", samples)
    return numbers


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    _write_shards(folder, n_shards=4, per_shard=24, bad=BAD)
    return folder


def _prep(augment: bool) -> tuple[ImagePrep, object]:
    tm = create_from_scratch(TINY, seed=0, augment=augment)
    return ImagePrep(tm.model, tm.preprocess_train, augment), tm.tokenizer


# -- reading ---------------------------------------------------------------------------


def test_brace_expansion_as_webdataset_does_it() -> None:
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_tar_shards_by_braces_folder_glob_and_url_read_alike(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    _write_shards(folder, n_shards=3, per_shard=5)
    # One sample with only a .json caption, one with no caption, one with no image.
    write_tar_shard(folder / "00003.tar", [
        ("000300000", {"jpg": _jpeg(100), "json": json.dumps({"caption": "from the json"}).encode()}),
        ("000300001", {"jpg": _jpeg(101)}),
        ("000300002", {"txt": b"no picture"}),
    ])
    by_braces = read_pairs(str(folder / "{00000..00003}.tar"))
    assert len(by_braces.items) == 16 and by_braces.skipped_rows == 2
    assert by_braces.skip_reasons == {"samples without image or caption": 2}
    assert by_braces.items[0].captions == [_caption(0)] and by_braces.items[-1].captions == ["from the json"]
    assert by_braces.items[0].image_path.as_posix() == "00000.tar/000000000.jpg"
    for other in (str(folder), str(folder / "*.tar"), "file://" + str(folder) + "/{00000..00003}.tar"):
        again = read_pairs(other)
        assert [(i.image_path, i.captions) for i in again.items] == [(i.image_path, i.captions)
                                                                     for i in by_braces.items], other
    # The bytes read back are the bytes written, locally and through fsspec.
    url_data = read_pairs("file://" + str(folder / "{00000..00003}.tar"))
    reader = BlobReader()
    for local, remote in zip(by_braces.items[::4], url_data.items[::4]):
        assert reader.read(local.blob)[0] == reader.read(remote.blob)[0]
    assert reader.read(by_braces.items[7].blob)[0] == _jpeg(7)
    assert load_item(by_braces.items[7], reader, min_side=32).image.size == (56, 44)


def test_shard_errors_are_data_errors(tmp_path: Path) -> None:
    _write_shards(tmp_path / "s", n_shards=2, per_shard=3)
    with pytest.raises(DataError, match="does not exist"):
        shard_urls(str(tmp_path / "s" / "{00000..00004}.tar"))
    with pytest.raises(DataError, match="matches no shard"):
        read_pairs(str(tmp_path / "s" / "*.nothing.tar"))
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="compressed"):
        read_pairs(str(tmp_path / "x.tar.gz"))
    # A truncated shard (a download cut short) keeps the samples before the damage.
    raw = (tmp_path / "s" / "00001.tar").read_bytes()
    (tmp_path / "s" / "00001.tar").write_bytes(raw[:len(raw) // 2])
    data = read_pairs(str(tmp_path / "s" / "{00000..00001}.tar"))
    assert 3 <= len(data.items) < 6


def test_parquet_of_bytes_paths_and_hf_image_structs(tmp_path: Path) -> None:
    # img2dataset's Parquet: a jpg bytes column and a caption column, several row groups.
    table = pa.table({"key": [f"{i:09d}" for i in range(30)], "jpg": [_jpeg(i) for i in range(30)],
                      "caption": [_caption(i) for i in range(30)]})
    pq.write_table(table, tmp_path / "bytes.parquet", row_group_size=8)
    data = read_pairs(str(tmp_path / "bytes.parquet"))
    assert len(data.items) == 30 and data.items[9].captions == [_caption(9)]
    assert data.items[9].blob.row_group == 1 and data.items[9].blob.row == 1
    reader = BlobReader()
    # Rows in the order training visits them, then back to the start (the reader restarts).
    for i in epoch_order(data.items, seed=3, epoch=0) + [0, 29, 1]:
        assert reader.read(data.items[i].blob)[0] == _jpeg(i)

    # Paths relative to the file, and a list of captions per row.
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        (imgs / f"{i}.jpg").write_bytes(_jpeg(i))
    pq.write_table(pa.table({"filepath": [f"imgs/{i}.jpg" for i in range(4)] + ["imgs/missing.jpg"],
                             "captions": [[_caption(i), f"picture {i}"] for i in range(5)]}),
                   tmp_path / "paths.parquet")
    data = read_pairs(str(tmp_path / "paths.parquet"))
    assert [i.captions for i in data.items][0] == [_caption(0), "picture 0"]
    assert len(data.items) == 4 and data.skip_reasons == {"missing image files": 1}
    assert load_item(data.items[2]).image is not None

    # A Hugging Face `datasets` image column: a struct of bytes and path.
    struct = pa.array([{"bytes": _jpeg(i), "path": None} for i in range(6)],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct, "text": [_caption(i) for i in range(6)], "label": NAMES}),
                   tmp_path / "hf.parquet", row_group_size=4)
    data = read_pairs(str(tmp_path / "hf.parquet"))
    assert data.has_labels and data.items[5].blob.field == "bytes"
    assert BlobReader().read(data.items[5].blob)[0] == _jpeg(5)
    with pytest.raises(DataError, match="caption column"):
        pq.write_table(pa.table({"jpg": [_jpeg(0)]}), tmp_path / "nocap.parquet")
        read_pairs(str(tmp_path / "nocap.parquet"))


def test_epoch_order_reads_shards_in_chunks_and_shares_equally(shards: Path) -> None:
    data = read_pairs(str(shards))
    items = data.items
    for epoch in (0, 1):
        order = epoch_order(items, seed=0, epoch=epoch)
        assert sorted(order) == list(range(len(items))) and order != list(range(len(items)))
        # A batch mixes shards: the first 24 samples come from more than one of the 4 shards.
        assert len({items[i].blob.block for i in order[:24]}) > 1
    assert epoch_order(items, 0, 0) != epoch_order(items, 0, 1)
    shares = [rank_share(epoch_order(items, 0, 0), r, 3) for r in range(3)]
    assert len({len(s) for s in shares}) == 1 and not set(shares[0]) & set(shares[1])
    # A plain CSV keeps DistributedSampler's permutation.
    plain = [PairItem(Path(f"{i}.jpg"), ["x"]) for i in range(50)]
    g = torch.Generator()
    g.manual_seed(7 + 2)
    assert epoch_order(plain, 7, 2) == torch.randperm(50, generator=g).tolist()


def test_parquet_rows_are_visited_in_ascending_chunks(tmp_path: Path) -> None:
    pq.write_table(pa.table({"jpg": [_jpeg(i, (8, 8)) for i in range(200)], "caption": ["c"] * 200}),
                   tmp_path / "t.parquet", row_group_size=100)
    items = read_pairs(str(tmp_path / "t.parquet")).items
    for it in items:
        it.blob = dataclasses.replace(it.blob, chunk=16)  # small chunks, so that a row group has several
    order = epoch_order(items, seed=1, epoch=0)
    last_chunk: dict[int, int] = {}
    for i in order:
        b = items[i].blob
        assert b.row // 16 >= last_chunk.get(b.row_group, 0)
        last_chunk[b.row_group] = b.row // 16


# -- the loader ------------------------------------------------------------------------


def _epoch_batches(loader: PairLoader, items: list[PairItem], epoch: int, batch: int = 8) -> list:
    order = epoch_order(items, seed=0, epoch=epoch)
    return list(loader.batches(order, epoch, batch))


@pytest.mark.parametrize("augment", [False, True])
def test_small_budget_streams_the_same_batches_as_a_cached_run(shards: Path, augment: bool) -> None:
    items = read_pairs(str(shards)).items
    prep, tokenizer = _prep(augment)
    per_item = 32 * 32 * 3 if not augment else 32 * 40 * 3  # shorter side at the input size
    small_budget = 20 * (per_item + PixelCache.OVERHEAD)
    runs = {}
    for name, budget, workers in (("cached", 1 << 30, 2), ("small", small_budget, 2), ("none", 0, 0)):
        with PairLoader(items, prep, tokenizer, PixelCache(budget), seed=0, workers=workers) as loader:
            runs[name] = [_epoch_batches(loader, items, e) for e in (0, 1)]
            if name == "cached":
                assert len(loader.cache) == len(items) - 2  # every good picture, once
                assert loader.cache.hits >= len(items) - 2  # the second epoch decoded nothing
            elif name == "small":
                assert loader.cache.used <= small_budget and 10 <= len(loader.cache) <= 20
            else:
                assert len(loader.cache) == 0
            assert sorted(loader.skipped) == list(BAD)
    for name in ("small", "none"):
        for epoch_a, epoch_b in zip(runs["cached"], runs[name]):
            for a, b in zip(epoch_a, epoch_b):
                assert a.items == b.items
                assert torch.equal(a.tokens, b.tokens)
                assert torch.equal(torch.as_tensor(a.pixels), torch.as_tensor(b.pixels))
    first = runs["cached"][0][0]
    assert first.pixels.dtype == torch.uint8 and tuple(first.pixels.shape) == (8, 32, 32, 3)
    if augment:  # the crop differs from epoch to epoch, seeded
        e0 = {i: p for b in runs["cached"][0] for i, p in zip(b.items, b.pixels)}
        e1 = {i: p for b in runs["cached"][1] for i, p in zip(b.items, b.pixels)}
        assert any(not torch.equal(e0[i], e1[i]) for i in e0 if i in e1)


def test_uint8_batches_become_exactly_the_transform_output(shards: Path) -> None:
    items = read_pairs(str(shards)).items[8:16]  # all decodable
    tm = create_from_scratch(TINY, seed=0, augment=False)
    prep = ImagePrep(tm.model, tm.preprocess_train, augment=False)
    assert prep.exact
    with PairLoader(items, prep, tm.tokenizer, PixelCache(1 << 20), workers=0) as loader:
        batch = next(loader.batches(list(range(8)), 0, 8))
    expected = torch.stack([tm.preprocess_train(load_item(it, min_side=32).image) for it in items])
    assert torch.equal(prep.to_pixels(batch.pixels), expected)


def test_bad_images_are_counted_when_met_and_stood_in_for(shards: Path) -> None:
    items = read_pairs(str(shards)).items
    bad = set(BAD)
    prep, tokenizer = _prep(False)
    seen = []
    for workers in (0, 3):
        with PairLoader(items, prep, tokenizer, PixelCache(0), seed=0, workers=workers) as loader:
            batches = _epoch_batches(loader, items, 0, batch=16)
            assert loader.skip_reasons() == {"undecodable images": 2}
            used = [i for b in batches for i in b.items]
            assert not set(used) & bad and all(len(set(b.items)) == 16 for b in batches)
            seen.append(used)
    assert seen[0] == seen[1]  # the stand-ins do not depend on thread timing


def test_fit_on_shards_with_a_small_budget_equals_the_cached_run(shards: Path, tmp_path: Path) -> None:
    data = read_pairs(str(shards))
    runs = []
    for cache_mb in (64, 0.02):  # everything cached; room for ~5 pictures
        cfg = TrainCfg(arch=TINY, epochs=2, batch_size=16, lr=1e-3, augment=True, cache_mb=cache_mb, workers=2,
                       val_fraction=0.15)
        runs.append(fit(data, tmp_path / f"m{cache_mb}", cfg, progress=None))
    cached, streamed = runs
    assert cached.cached_items > 5 * streamed.cached_items and streamed.cache_bytes <= 0.02 * 2**20
    assert [h["train_loss"] for h in cached.history] == [h["train_loss"] for h in streamed.history]
    assert cached.skipped_images == streamed.skipped_images == 2  # found while training, not before
    assert data.skipped_images == 0


def test_resume_mid_epoch_from_shards_after_a_crash(shards: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    data = read_pairs(str(shards))
    cfg = dict(arch=TINY, epochs=2, batch_size=8, lr=1e-3, augment=True, workers=2, checkpoint_steps=3,
               val_fraction=0.15)
    whole = fit(data, tmp_path / "whole", TrainCfg(**cfg), progress=None)
    steps_per_epoch = whole.steps // 2

    class Killed(BaseException):
        """Stands for kill -9 right after a checkpoint within the second epoch was written."""

    real_save = ckpt.save_last

    def save_then_die(model, model_cfg, state, out, tokenizer=None):
        path = real_save(model, model_cfg, state, out, tokenizer)
        if state["epoch"] == 1 and state["epoch_samples"] > 0:
            raise Killed
        return path

    monkeypatch.setattr(ckpt, "save_last", save_then_die)
    with pytest.raises(Killed):
        fit(data, tmp_path / "cut", TrainCfg(**cfg), progress=None)
    monkeypatch.setattr(ckpt, "save_last", real_save)
    state = torch.load(tmp_path / "cut" / "last" / ckpt.STATE_NAME, weights_only=False)
    done_in_epoch = state["step"] - steps_per_epoch
    assert state["epoch"] == 1 and 0 < done_in_epoch < steps_per_epoch and state["epoch_samples"] == done_in_epoch * 8
    resumed = fit(data, tmp_path / "cut", TrainCfg(epochs=2, resume=True, workers=0), progress=None)
    assert resumed.steps == whole.steps and [h["epoch"] for h in resumed.history] == [2]
    # The same batches, the same updates: the weights end where the uninterrupted run's did.
    a = load_file(str(tmp_path / "whole" / "last" / ckpt.WEIGHTS_NAME))
    b = load_file(str(tmp_path / "cut" / "last" / ckpt.WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_on_parquet_and_reports_skips_at_the_end(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from retrieval.cli.training import register

    rows = [_jpeg(i) if i != 7 else b"broken" for i in range(48)]
    pq.write_table(pa.table({"jpg": rows, "caption": [_caption(i) for i in range(48)]}),
                   tmp_path / "pairs.parquet", row_group_size=16)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "m"),
                                   "--model", TINY, "--epochs", "1", "--batch-size", "8", "--workers", "2",
                                   "--cache-mb", "1", "--val-fraction", "0", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["skipped_images"] == 1 and summary["skip_reasons"] == {"undecodable images": 1}
    assert summary["decode_workers"] == 2 and summary["cache_mb"] <= 1


# -- threads on a busy machine ------------------------------------------------------------


def test_openmp_threads_sleep_instead_of_spinning_unless_the_user_chose() -> None:
    env: dict[str, str] = {}
    assert prefer_passive_waiting(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}):
        env = dict(chosen)
        assert not prefer_passive_waiting(env) and env == chosen


def test_thread_plan_never_oversubscribes_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.encoder as encoder

    for cpus in (1, 2, 8, 64):
        monkeypatch.setattr(encoder, "available_cpus", lambda cpus=cpus: cpus)
        threads, workers = plan_threads(None, torch.device("cpu"))
        assert 1 <= threads <= cpus and 1 <= workers <= max(1, cpus // 2)
        threads, _ = plan_threads(None, torch.device("cpu"), local_processes=2)
        assert threads <= max(1, cpus // 2)
        assert plan_threads(3, torch.device("cpu"))[1] == 3


def test_cache_keeps_a_fixed_set_within_its_budget() -> None:
    cache = PixelCache(10 * (300 + PixelCache.OVERHEAD))
    rng = random.Random(0)
    for i in rng.sample(range(1000), 100):
        cache.put(i, np.zeros(300, dtype=np.uint8))
    assert len(cache) == 10 and cache.used <= cache.budget
    kept = set(cache._items)
    cache.put(5000, np.zeros(300, dtype=np.uint8))
    assert set(cache._items) == kept  # full: nothing is evicted, nothing churns


def test_thread_tuner_keeps_the_fastest_count_and_measures_again_when_the_load_changes() -> None:
    from retrieval.train.threads import ThreadTuner

    now = [0.0]
    applied: list[int] = []
    # Seconds per step by thread count: first a busy machine (barriers wait), then a quiet one.
    busy = {4: 0.50, 2: 0.35, 1: 0.25}
    quiet = {4: 0.10, 2: 0.15, 1: 0.25}
    tuner = ThreadTuner(4, probe_steps=3, hold_seconds=20.0, clock=lambda: now[0], set_threads=applied.append)
    assert tuner.candidates == [4, 2, 1] and applied == [4]

    def run(steps: int, cost: dict[int, float]) -> None:
        for _ in range(steps):
            tuner.before_step()
            now[0] += cost[tuner.current]
            tuner.after_step(cost[tuner.current])

    run(12, busy)  # 3 counts x (1 warm-up + 3 measured) steps
    assert tuner.choices == [1] and tuner.current == 1 and not tuner.probing
    assert applied == [4, 2, 1]
    run(79, quiet)  # holds 1 thread for 20 s of 0.25 s steps
    assert tuner.choices == [1] and tuner.current == 1
    run(12, quiet)  # then measures again, the held count first, and moves to 4
    assert tuner.choices == [1, 4] and tuner.current == 4 and applied == [4, 2, 1, 4, 2, 4]
    assert ThreadTuner(1, set_threads=lambda n: None).candidates == [1]


def _drive(tuner: ThreadTuner, now: list[float], steps: int, cost: Callable[[int], float]) -> None:
    """Run ``steps`` optimizer steps whose wall time is ``cost(thread count)`` on a fake clock."""
    for _ in range(steps):
        tuner.before_step()
        seconds = cost(tuner.current)
        now[0] += seconds
        tuner.after_step(seconds)


def test_thread_tuner_drops_a_lucky_choice_before_its_hold_ends() -> None:
    """Two threads look fast in their three probe steps, then run slower than one thread did: re-probed early."""
    now = [0.0]
    tuner = ThreadTuner(2, probe_steps=3, hold_seconds=30.0, clock=lambda: now[0], set_threads=lambda n: None)
    probe_2 = iter([0.9, 0.20, 0.20, 0.20])  # a warm-up step, then a lucky streak
    _drive(tuner, now, 4, lambda n: next(probe_2))
    _drive(tuner, now, 4, lambda n: 0.30)  # one thread: warm-up + 3 steps
    assert tuner.choices == [2] and tuner.current == 2
    steady = {2: 0.45, 1: 0.30}  # what the load really gives
    _drive(tuner, now, 6, steady.__getitem__)  # six held steps show it
    assert tuner.probing and now[0] < 10.0  # long before the 30 s hold was over
    _drive(tuner, now, 8, steady.__getitem__)
    assert tuner.choices == [2, 1] and tuner.current == 1


def test_thread_tuner_holds_a_clear_choice_and_rechecks_a_close_call_sooner() -> None:
    def rounds_within(cost: dict[int, float], seconds: float) -> int:
        now = [0.0]
        tuner = ThreadTuner(2, probe_steps=3, hold_seconds=30.0, clock=lambda: now[0], set_threads=lambda n: None)
        while now[0] < seconds:
            _drive(tuner, now, 1, cost.__getitem__)
        return len(tuner.choices)

    assert rounds_within({2: 0.30, 1: 0.45}, 29.0) == 1  # one thread is 50% slower: held the full 30 s
    assert rounds_within({2: 0.30, 1: 0.33}, 29.0) >= 2  # 10% apart: measured again after 10 s
    assert rounds_within({2: 0.30, 1: 0.33}, 9.0) == 1


def test_thread_tuner_measures_again_when_asked() -> None:
    """The trainer asks once its first epoch's decoding is over (the cached epochs load the CPU less)."""
    now = [0.0]
    tuner = ThreadTuner(2, probe_steps=3, hold_seconds=30.0, clock=lambda: now[0], set_threads=lambda n: None)
    decoding = {2: 0.50, 1: 0.30}  # our own decode threads take a core
    _drive(tuner, now, 8, decoding.__getitem__)
    assert tuner.choices == [1] and not tuner.probing
    tuner.remeasure()
    cached = {2: 0.20, 1: 0.30}
    _drive(tuner, now, 8, cached.__getitem__)
    assert tuner.choices == [1, 2] and tuner.current == 2 and now[0] < 10.0
