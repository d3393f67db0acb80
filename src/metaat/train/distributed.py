"""DistributedDataParallel glue for ``torchrun --nproc_per_node=N -m metaat.cli train ...``.

When ``WORLD_SIZE > 1`` the process group is initialised from torchrun's environment variables
(gloo on CPU, nccl on GPU, one GPU per local rank), the model is wrapped in
``DistributedDataParallel`` (gradients averaged across ranks at every backward), every rank takes
its own equal share of each epoch's permutation (the DistributedSampler rule: ``perm[rank::world]``
after trimming to a multiple of the world size), and rank 0 alone writes checkpoints, metrics and
the final model. Nothing here runs in a single process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down
    comm_device: str = "cpu"  # where collectives' tensors must live (cuda for nccl)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any); return this rank's info and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    comm = str(device) if dist.get_backend() == "nccl" else "cpu"
    return DistInfo(rank=rank, world_size=world, local_rank=local, owns_group=owns, comm_device=comm), device


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's share of an epoch's index permutation (equal sizes on every rank)."""
    if not info.enabled:
        return indices
    usable = len(indices) - len(indices) % info.world_size
    return indices[info.rank : usable : info.world_size]


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``values`` over ranks (a copy in a single process)."""
    if not info.enabled:
        return values.clone()
    out = values.to(info.comm_device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is true on at least one rank (every rank gets the same answer)."""
    if not info.enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)]), info).item() > 0)


def gather_tensor(value: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``value`` (same shape and dtype on every rank), in rank order."""
    if not info.enabled:
        return [value]
    local = value.to(info.comm_device).contiguous()
    out = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(out, local)
    return [t.to(value.device) for t in out]


def gather_json(value: Any, info: DistInfo) -> list[Any]:
    """Every rank's JSON-able ``value``, in rank order (sent as UTF-8 bytes, never pickled)."""
    if not info.enabled:
        return [value]
    data = torch.tensor(list(json.dumps(value).encode("utf-8")), dtype=torch.uint8)
    sizes = gather_tensor(torch.tensor([data.numel()]), info)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    return [
        json.loads(bytes(chunk[: int(n)].tolist()).decode("utf-8"))
        for chunk, n in zip(gather_tensor(padded, info), sizes, strict=True)
    ]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
