"""The collectives the training loop and the evaluation need besides DDP's and the tables' own."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when at least one rank says so: keeps every rank stepping until all are done."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_over_ranks(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Element-wise float64 sum of every rank's `values` (same shape on every rank)."""
    total = torch.from_numpy(np.asarray(values, dtype=np.float64).copy()).to(device)
    dist.all_reduce(total)
    return total.cpu().numpy()


def gather_from_ranks(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Every rank's `values` (same shape everywhere), stacked in rank order: W x ..."""
    mine = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.stack(parts).cpu().numpy()


def exchange_rows(arrays: dict[str, np.ndarray], destination: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Send row i of every (1-D) array to rank `destination[i]`; returns the rows this rank
    received, grouped by source rank. Every rank ends up holding only its own destination's rows."""
    world = dist.get_world_size()
    if world == 1:
        return arrays
    order = np.argsort(destination, kind="stable")
    send = torch.from_numpy(np.bincount(destination, minlength=world)).to(device)
    receive = torch.empty_like(send)
    dist.all_to_all_single(receive, send)
    send_splits, receive_splits = send.tolist(), receive.tolist()
    received = {}
    for name, values in arrays.items():
        outgoing = torch.from_numpy(np.ascontiguousarray(values[order])).to(device)
        incoming = outgoing.new_empty(sum(receive_splits))
        dist.all_to_all_single(incoming, outgoing, receive_splits, send_splits)
        received[name] = incoming.cpu().numpy()
    return received
