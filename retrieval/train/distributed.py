"""Where training runs: the device, the process group under ``torchrun``, and the loss that spans it.

``mmsearch train`` launched by ``torchrun --nproc_per_node N`` finds torchrun's
``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` in its environment and joins a process
group (gloo on CPU, nccl on CUDA, each rank on ``cuda:LOCAL_RANK``), as
``open_clip_train.distributed`` does. Without them it is one process and none of
this costs anything: every collective below is a no-op for a world of one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss, SigLipLoss

from ..encoder import resolve_device
from ..errors import MMSearchError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run. ``world_size == 1``: a plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process created the process group, so it destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, writes checkpoints and metrics and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_main(self, values: Sequence[float]) -> list[float]:
        """Rank 0's ``values`` on every rank: decisions every rank must take alike (stop now, schedule length).

        Each rank reads its own clock; acting on its own reading would let one rank start a
        step the others skip, and the next collective would wait forever.
        """
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (each rank's loss covers its own rows of the global batch)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


    def sum_counts(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Counts by name (e.g. skipped images by reason) added up over ranks; every rank gets the sum."""
        if not self.distributed:
            return dict(counts)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, dict(counts))
        total: dict[str, int] = {}
        for part in gathered:
            for key, value in (part or {}).items():
                total[key] = total.get(key, 0) + int(value)
        return total


def world_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun (or ``torch.distributed.launch``) sets them; (0, 0, 1) otherwise."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
    except ValueError as exc:
        raise MMSearchError(f"RANK / LOCAL_RANK / WORLD_SIZE must be integers (as torchrun sets them): {exc}") from exc


def setup(device: str = "auto") -> DistEnv:
    """Resolve ``device`` (``auto``: CUDA, then MPS, then CPU) and, under torchrun, join the process group.

    A process group that already exists (the caller made it) is used and left alone;
    one made here is destroyed by :func:`teardown`.
    """
    rank, local_rank, world_size = world_from_env()
    dev = resolve_device(device)
    if world_size <= 1:
        return DistEnv(device=dev)
    if not dist.is_available():
        raise MMSearchError("this torch build has no torch.distributed: run one process, without torchrun")
    if dev.type == "mps":
        raise MMSearchError("multi-process training runs on CUDA GPUs or CPUs, not MPS: use --device cpu "
                            "or run one process")
    if dev.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise MMSearchError(f"process {rank} has LOCAL_RANK {local_rank} but only {visible} CUDA GPU(s) are "
                                "visible: start at most that many processes per node (--nproc_per_node)")
        # One GPU per process, chosen by torchrun's local rank; an index in --device would only collide.
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        if dev.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=dev)
        else:
            dist.init_process_group(backend="gloo")
    if dist.get_world_size() != world_size:
        raise MMSearchError(f"the process group has {dist.get_world_size()} processes but WORLD_SIZE says "
                            f"{world_size}")
    return DistEnv(rank=dist.get_rank(), local_rank=local_rank, world_size=world_size, device=dev, owns_group=owns)


def teardown(env: DistEnv) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def create_loss(name: str, env: DistEnv | None = None) -> torch.nn.Module:
    """open_clip's ``ClipLoss`` (``clip``) or ``SigLipLoss`` (``siglip``), spanning ``env``'s processes.

    Every rank's negatives are the whole global batch. ``ClipLoss`` is set up as
    ``open_clip_train`` is with ``--local-loss --gather-with-grad``: each rank scores its own
    rows against all gathered features, and gradients flow back through the gather. The
    mean of the ranks' losses is then the single-process loss of the global batch, and
    DDP's gradient averaging gives exactly its gradient. ``SigLipLoss`` passes text
    features around the ring of ranks with gradients, to the same effect.
    """
    env = env or DistEnv()
    if name == "clip":
        return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=env.rank,
                        world_size=env.world_size)
    if name == "siglip":
        return SigLipLoss(rank=env.rank, world_size=env.world_size)
    raise MMSearchError(f"unknown loss {name!r}: use clip or siglip")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA GPUs that support bf16; fp32 everywhere else.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 would, and is not
    used (older GPUs train in fp32). CPU and MPS stay fp32: bf16 training there is faster
    only on some hardware and is not what the tests here exercise.
    """
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, skip: bool) -> Iterator[None]:
    """DDP's ``no_sync`` when ``skip`` (a gradient-accumulation step that is not the last)."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield
