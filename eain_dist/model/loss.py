"""The CTR objective: BCE on logits plus L2 on the dense weights and on the embedding tables.

    total = mean BCE(sigmoid(logits), labels) + (λ / 2) Σ ||W||² + (λ_emb / 2) Σ_tables ||E||²

λ is `model.l2`, λ_emb `model.embedding_l2` (gradients λ W and λ_emb E, FuxiCTR's convention).
Dense weights are the parameters with two or more dimensions outside `model.embeddings` (Linear
weights, PAIM's cross matrices, learned positions). Biases, LayerNorm/BatchNorm affine
parameters and scalar gates are left out, as is usual for weight decay: they set offsets and
scales, not feature interactions, and shrinking them only biases the model.

The tables' term covers every row of every table at every step. The tables `model.embeddings`
holds as parameters (all of them in the local collection, the small replicated ones in the
sharded one) get it here. Row-wise sharded tables are plain tensors outside autograd: their
row-wise optimizer applies the same term, lazily, so that no step touches a whole 100M-row table
(eain_dist/distributed/row_optimizers.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ctr_loss(logits: Tensor, labels: Tensor, model: nn.Module, *, l2: float,
             embedding_l2: float) -> tuple[Tensor, Tensor]:
    """-> (total, bce). `model` must hold its lookup as `model.embeddings` (all models here do).

    An empty batch (a rank whose data ran out) has BCE 0, still connected to the lookups (the
    sharded tables' backward all-to-alls must run on every rank), and the same L2 as the others.
    """
    if len(labels) == 0:
        bce = logits.sum() * 0.0
    else:
        bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    total = bce
    if l2:
        total = total + l2 / 2 * squared_norm(dense_weights(model))
    if embedding_l2:
        total = total + embedding_l2 / 2 * squared_norm(list(model.embeddings.parameters()))
    return total, bce


def dense_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices the dense L2 term covers (see the module docstring)."""
    embedding_ids = {id(p) for p in model.embeddings.parameters()}
    return [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embedding_ids]


def squared_norm(weights: list[Tensor]) -> Tensor:
    if not weights:
        return torch.zeros(())
    return torch.stack([w.square().sum() for w in weights]).sum()
