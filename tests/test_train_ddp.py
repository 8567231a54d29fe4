"""Multi-process training: ``mmsearch train`` under torchrun (2 CPU processes, gloo) and the global-batch loss.

Each spawned rank runs on one thread (OMP_NUM_THREADS=1), so two ranks fit on two cores.
Rendezvous is collision-free: torchrun ``--standalone`` picks a free port, the spawned
ranks of the loss test meet through a file.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retrieval import synthetic as syn

TINY = "mmsearch-tiny"
KINDS = ("clip", "siglip")
EPOCHS = 8
TIMEOUT_S = 180  # a deadlock fails the test instead of hanging the suite
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _rank_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 -m retrieval.cli ARGS``; the whole process group dies on timeout."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "retrieval.cli", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=_rank_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun timed out (deadlock?)\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> syn.Catalogue:
    return syn.generate_catalogue(tmp_path_factory.mktemp("ddp-world"), n_images=240, seed=3, image_size=32)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_torchrun_trains_resumes_and_saves_a_loadable_model(world: syn.Catalogue, tmp_path: Path) -> None:
    from PIL import Image

    from retrieval.encoder import Encoder, load_encoder
    from retrieval.train import TrainCfg, fit, read_pairs
    from retrieval.train import checkpoint as ckpt
    from retrieval.train.models import create_from_checkpoint, create_from_scratch

    out = tmp_path / "ddp"
    repo = Path(__file__).resolve().parents[1]
    common = [str(world.captions_csv), "--out", str(out), "--device", "cpu", "--json"]
    # 2 processes x batch 8: global batches of 16, two of them (--accum-steps) per optimizer step.
    run = _torchrun(["train", *common, "--model", TINY, "--epochs", str(EPOCHS), "--batch-size", "8",
                     "--accum-steps", "2", "--lr", "2e-3", "--no-augment"], repo)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout  # only rank 0 reports
    summary = json.loads(lines[0])
    assert summary["processes"] == 2 and summary["epochs_run"] == EPOCHS
    assert run.stderr.count("training mmsearch-tiny on cpu x 2 processes") == 1, run.stderr[-2000:]

    log = [json.loads(line) for line in (out / ckpt.METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))  # one writer: no line twice
    losses = [r["train_loss"] for r in log]
    # Below chance for 16 candidates (ln 16 = 2.77, where an untrained model settles): it learns.
    assert losses[-1] < 0.85 * math.log(16) and losses[-1] < 0.8 * losses[0], losses
    state = ckpt.load_state(out / ckpt.LAST_DIR)
    assert state["world_size"] == 2
    n_train = summary["n_train"]
    assert state["step"] == EPOCHS * ((n_train // 2) // 8 // 2)  # each rank takes half of every global batch

    # The saved model loads by its spec (no DDP "module." prefix) to the embeddings of the state
    # --resume restores, the best model loads too, and the weights are trained, not the seeded start.
    images = [Image.open(world.root / it.image).convert("RGB") for it in world.items[:6]]
    texts = ["red shoes", "a striped blue shirt"]
    enc_last = load_encoder(str(out / ckpt.LAST_DIR))
    assert all(k.split(".")[0] != "module" for k in enc_last.model.state_dict())
    tm = create_from_checkpoint(out / ckpt.LAST_DIR, augment=False)
    resumed = Encoder(tm.model, tm.preprocess_val, tm.tokenizer, spec="resumed", model_config=tm.model_cfg)
    np.testing.assert_array_equal(resumed.encode_images(images), enc_last.encode_images(images))
    np.testing.assert_array_equal(resumed.encode_texts(texts), enc_last.encode_texts(texts))
    best = load_encoder(str(out))
    np.testing.assert_allclose(np.linalg.norm(best.encode_images(images), axis=1), 1.0, atol=1e-5)
    if summary["best_epoch"] == EPOCHS:
        np.testing.assert_array_equal(best.encode_texts(texts), enc_last.encode_texts(texts))
    initial = create_from_scratch(TINY).model.state_dict()
    trained = tm.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if k.startswith("visual."))

    # --resume under torchrun, with a time budget that every rank must agree to stop at.
    run = _torchrun(["train", *common, "--resume", "--epochs", "50", "--max-minutes", "0.05"], repo)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["stopped_by"] == "time" and summary["epochs_run"] >= 1
    epochs = [json.loads(line)["epoch"] for line in (out / ckpt.METRICS_NAME).read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1 + summary["epochs_run"]))

    # A checkpoint written by 2 processes resumes in one: the schedule keeps its place in samples.
    before = ckpt.load_state(out / ckpt.LAST_DIR)
    single = fit(read_pairs(world.captions_csv), out,
                 TrainCfg(epochs=before["epoch"] + 1, resume=True, device="cpu"), progress=None)
    assert single.world_size == 1 and [h["epoch"] for h in single.history] == [before["epoch"] + 1]
    assert single.steps > before["step"]


# -- devices ---------------------------------------------------------------------------------


@pytest.fixture
def one_process(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_device_auto_prefers_cuda_then_mps_then_cpu(one_process: pytest.MonkeyPatch) -> None:
    from retrieval.train import TrainCfg
    from retrieval.train.distributed import setup

    assert TrainCfg().device == "auto"
    one_process.setattr(torch.cuda, "is_available", lambda: False)
    one_process.setattr(torch.backends.mps, "is_available", lambda: False)
    assert setup("auto").device == torch.device("cpu")
    one_process.setattr(torch.backends.mps, "is_available", lambda: True)
    assert setup("auto").device.type == "mps"
    one_process.setattr(torch.cuda, "is_available", lambda: True)
    env = setup("auto")
    assert env.device.type == "cuda" and not env.distributed


def test_multi_process_device_errors_are_explained(one_process: pytest.MonkeyPatch) -> None:
    from retrieval.errors import MMSearchError
    from retrieval.train.distributed import setup

    one_process.setenv("WORLD_SIZE", "2")
    one_process.setenv("RANK", "1")
    one_process.setenv("LOCAL_RANK", "1")
    one_process.setattr(torch.cuda, "is_available", lambda: True)
    one_process.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(MMSearchError, match="LOCAL_RANK 1 but only 1 CUDA GPU"):
        setup("cuda")
    with pytest.raises(MMSearchError, match="not MPS"):
        setup("mps")


# -- the global-batch loss ------------------------------------------------------------------


class _TwoTowers(torch.nn.Module):
    """A stand-in dual encoder returning what an open_clip model returns, small enough to compare exactly."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.image = torch.nn.Parameter(torch.randn(12, 16, generator=gen, dtype=torch.float64))
        self.text = torch.nn.Parameter(torch.randn(10, 16, generator=gen, dtype=torch.float64))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))
        # SigLIP learns a bias; ClipLoss has none (the loop freezes a model's bias for it).
        self.logit_bias = torch.nn.Parameter(torch.tensor(-2.0, dtype=torch.float64)) if kind == "siglip" else None

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {
            "image_features": torch.nn.functional.normalize(pixels @ self.image, dim=-1),
            "text_features": torch.nn.functional.normalize(tokens @ self.text, dim=-1),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 12, generator=gen, dtype=torch.float64), torch.randn(8, 10, generator=gen,
                                                                               dtype=torch.float64)


def _loss_and_grads(model: torch.nn.Module, loss_fn: torch.nn.Module, kind: str,
                    micro: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimizer step's loss and gradients, by the training loop's own step."""
    from retrieval.train.steps import accumulate

    loss = accumulate(model, loss_fn, kind, micro, len(micro), torch.device("cpu"))
    inner = getattr(model, "module", model)
    grads = {n: p.grad.detach().clone() for n, p in inner.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss, grads


def _micro_batches(accum: int, rank: int = 0, world_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed batch of 8 as ``accum`` global micro-batches; this rank's share of each."""
    pixels, tokens = _fixed_batch()
    size = len(pixels) // accum // world_size
    starts = [a * size * world_size + rank * size for a in range(accum)]
    return [(pixels[i:i + size], tokens[i:i + size]) for i in starts]


def _rank_worker(rank: int, world_size: int, rdzv: str, result_dir: str) -> None:
    """One of 2 ranks: its half of the fixed batch through DDP and the loss the training loop builds."""
    import torch.distributed as dist

    from retrieval.train.distributed import create_loss, setup, teardown

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", init_method=rdzv, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    env = setup("cpu")  # finds the group made above and uses it
    assert env.rank == rank and env.world_size == world_size and not env.owns_group
    result: dict[str, dict[int, dict[str, Any]]] = {}
    for kind in KINDS:
        model = torch.nn.parallel.DistributedDataParallel(_TwoTowers(kind))
        loss_fn = create_loss(kind, env)
        result[kind] = {}
        for accum in (1, 2):  # 2: the first micro-batch's backward runs under no_sync
            loss, grads = _loss_and_grads(model, loss_fn, kind, _micro_batches(accum, rank, world_size))
            result[kind][accum] = {"loss": loss, "mean_loss": env.mean(loss), "grads": grads}
    torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    dist.barrier()
    teardown(env)
    dist.destroy_process_group()


def test_distributed_loss_equals_single_process_loss_of_the_global_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.multiprocessing as mp

    from retrieval.train.distributed import create_loss

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks

    ctx = mp.start_processes(_rank_worker, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=0.2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("ranks did not finish (deadlock?)")
    ranks: list[dict[str, dict[int, dict[str, Any]]]] = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for kind, accum in itertools.product(KINDS, (1, 2)):
        loss, grads = _loss_and_grads(_TwoTowers(kind), create_loss(kind), kind, _micro_batches(accum))
        got = [r[kind][accum] for r in ranks]
        expected = {"image", "text", "logit_scale"} | ({"logit_bias"} if kind == "siglip" else set())
        # Each rank's loss covers its own rows against all columns: their mean is the global loss ...
        assert got[0]["mean_loss"] == pytest.approx(loss, rel=1e-9)
        assert got[0]["loss"] != pytest.approx(got[1]["loss"])  # (really different halves)
        # ... and DDP's averaged gradient is the global loss's gradient, the same on both ranks.
        assert set(grads) == expected
        for r in got:
            assert set(r["grads"]) == expected
            for name in expected:
                torch.testing.assert_close(r["grads"][name], grads[name], rtol=1e-9, atol=1e-12)
