"""DistributedDataParallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

``torchrun --nproc_per_node 2 -m train fit ...`` starts one process per device; gloo on CPU,
nccl on GPU. Without torchrun's variables everything is a single process (rank 0 of 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's CUDA device when there is one, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    from .errors import FerlensError

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise FerlensError(f"Unknown --device '{name}'; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise FerlensError(f"--device {name} needs a CUDA GPU, but torch sees none on this machine; "
                               "use --device cpu (or auto).")
        if dev.index is not None and dev.index >= n:
            raise FerlensError(f"--device {name} does not exist: this machine has {n} CUDA device(s) "
                               f"(cuda:0 to cuda:{n - 1}); pick one of those or --device auto.")
    elif dev.type not in ("cpu", "mps"):
        raise FerlensError(f"--device {name} is not supported by ferlens; use auto, cpu, cuda or cuda:N.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise FerlensError(f"--device {name} needs Apple's MPS backend, which this machine lacks; use --device cpu.")
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (no-op for a single process).

    Args:
        device: ``auto``, ``cpu`` or ``cuda[:i]`` (under torchrun CUDA uses LOCAL_RANK).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        dev = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only when ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
