"""PyTorch DDP plumbing for ``torchrun``: gloo on CPU, NCCL on CUDA, a no-op in a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (it sets WORLD_SIZE/RANK/LOCAL_RANK)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | torch.device = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise describe a single process."""
    from ..device import resolve_device

    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, resolve_device(device))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and str(device) != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu"))


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """Wrap in DistributedDataParallel when running distributed."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a DDP-wrapped model (for saving state dicts)."""
    return getattr(model, "module", model)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
