"""DDP under torchrun: NCCL on GPUs, gloo on CPU. Without torchrun everything degrades to one process."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_distributed(device: torch.device, timeout_minutes: float = 10.0) -> tuple[int, int]:
    """Initialise the process group when launched by torchrun; returns (rank, world size). A collective that
    waits longer than `timeout_minutes` (a rank stopped or dead) raises instead of hanging for gloo's 30 minutes."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size()


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because another rank is gone or silent. DDP's gradient all-reduce surfaces gloo's
    and NCCL's timeouts as a plain RuntimeError, so the backend's own words are what identify it."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return is_distributed() and any(s in text for s in ("Timed out", "Connection closed by peer",
                                                          "Connection reset by peer", "NCCL communicator was aborted",
                                                          "Watchdog caught collective operation timeout"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Make every rank hold rank 0's values (projections are computed once and shared)."""
    if is_distributed():
        for name in sorted(tensors):
            dist.broadcast(tensors[name], src=0)


def gather_objects(obj):
    """A list of every rank's `obj` (on every rank)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float]) -> list[float]:
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
