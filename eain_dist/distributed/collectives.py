"""The collectives the training loop needs besides DDP's and the sharded tables' own."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when at least one rank says so: keeps every rank stepping until all are done."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_over_ranks(value: float, device: torch.device) -> float:
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())


def all_gather_arrays(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, np.ndarray]:
    """Concatenate every rank's 1-D arrays (uneven lengths) on every rank, in rank order."""
    world = dist.get_world_size()
    length = torch.tensor([len(next(iter(arrays.values())))], device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    gathered = {}
    for name, values in arrays.items():
        padded = torch.zeros(max(sizes), dtype=torch.float64, device=device)
        padded[: len(values)] = torch.from_numpy(values.astype(np.float64)).to(device)
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered[name] = np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes)])
    return gathered
