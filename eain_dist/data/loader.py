"""Prepared-dataset batches (Arrow) to the models' dict of tensors.

Ray Data's `iter_torch_batches` converts list columns row by row; reading the Arrow buffers
directly is several times faster (benchmarks/train.py), so workers iterate Arrow batches and
convert them here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch

# Arrow buffers are read-only and the tensors made from them are never written to.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

INT_COLUMNS = ("user", "item", "category", "hour", "weekday", "gap", "hist_len", "position", "request_id")
LIST_COLUMNS = ("hist_item", "hist_category")


def to_tensors(batch: pa.Table, max_history: int) -> dict[str, torch.Tensor]:
    """Columns -> tensors: B for scalars, B x L for the fixed-length history lists."""
    tensors = {"label": torch.from_numpy(_numpy(batch["label"]).astype(np.float32, copy=False))}
    for name in INT_COLUMNS:
        tensors[name] = torch.from_numpy(_numpy(batch[name]).astype(np.int64, copy=False))
    for name in LIST_COLUMNS:
        values = pa.chunked_array(batch[name]).combine_chunks().flatten()  # honours slicing offsets
        tensors[name] = torch.from_numpy(_numpy(values).astype(np.int64, copy=False).reshape(-1, max_history))
    return tensors


def empty_batch(max_history: int) -> dict[str, torch.Tensor]:
    """A batch of zero rows: what a worker whose shard ran out steps with."""
    batch = {"label": torch.zeros(0)}
    batch.update({name: torch.zeros(0, dtype=torch.long) for name in INT_COLUMNS})
    batch.update({name: torch.zeros(0, max_history, dtype=torch.long) for name in LIST_COLUMNS})
    return batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def _numpy(column) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)
