"""DDP wiring for ``torchrun``: one process per device, gloo on CPU and nccl on CUDA.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op, so the same
training script serves 1 CPU, 1 GPU and N GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hagrid_edge.errors import HagridEdgeError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str | None = None) -> Dist:
    """Join the process group ``torchrun`` describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise HagridEdgeError("--device cuda: PyTorch sees no CUDA device here")
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean(value: float, d: Dist) -> float:
    """The mean of ``value`` over all processes."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's decision (e.g. early stop), seen by every process."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.broadcast(t, 0)
    return bool(t.item())
