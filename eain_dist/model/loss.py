"""The CTR objective: BCE on logits plus λ times a squared L2 penalty.

    total = mean BCE(sigmoid(logits), labels) + λ (Σ ||W||² over dense weight matrices + embedding_l2)

Dense weights are the parameters with two or more dimensions outside `model.embeddings`
(Linear weights, PAIM's cross matrices, learned positions). Biases, LayerNorm/BatchNorm
affine parameters and scalar gates are left out, as is usual for weight decay: they set offsets
and scales, not feature interactions, and shrinking them only biases the model. Embedding tables
are never summed whole; `embedding_l2` is the lookup's sum over the unique rows a batch touched
(DIN's mini-batch aware regulariser), so the loss costs O(batch) even with 100M-row tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ctr_loss(logits: Tensor, labels: Tensor, embedding_l2: Tensor, model: nn.Module,
             l2_weight: float) -> tuple[Tensor, Tensor]:
    """-> (total, bce). `model` must hold its lookup as `model.embeddings` (all models here do)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if l2_weight == 0:
        return bce, bce
    return bce + l2_weight * (dense_l2(model) + embedding_l2), bce


def dense_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices the dense L2 term covers (see the module docstring)."""
    embedding_ids = {id(p) for p in model.embeddings.parameters()}
    return [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embedding_ids]


def dense_l2(model: nn.Module) -> Tensor:
    weights = dense_weights(model)
    if not weights:
        return torch.zeros(())
    return torch.stack([w.square().sum() for w in weights]).sum()
