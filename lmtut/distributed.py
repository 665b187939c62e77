"""Chapter 11: data-parallel training with ``torchrun`` and ``torch.distributed`` (NeMo's ``local_rank``).

``torchrun --nproc_per_node=N -m lmtut.train ...`` starts N processes and gives each the environment variables
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``init_distributed`` reads them,
joins the process group (NCCL on GPUs, Gloo on CPU) and picks this process's device. A plain ``python -m
lmtut.train`` has none of them and runs as a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmtut.device import default_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (rank info, this process's device).

    The device type defaults to :func:`lmtut.default_device`'s (``LMTUT_DEVICE=cpu`` trains on CPUs with Gloo on a
    GPU machine). The backend follows the device: ``nccl`` for CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
    ``gloo`` for CPU.
    """
    default = default_device()
    device_type = device_type or default.type
    if not launched_by_torchrun():
        return DistInfo(), default if default.type == device_type else torch.device(device_type)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs: "
                               "use --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device_type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend), device


def world() -> DistInfo:
    """The current process group's rank and size (a world of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a world of one)."""
    if world().world_size > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
