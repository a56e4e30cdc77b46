"""Second-order feature interactions (EAIN 3.7.3): the element-wise product of every field pair.

    p_ij = v_i * v_j      for i < j          F (F - 1) / 2 vectors of size D, flattened
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PairwiseProducts(nn.Module):
    def __init__(self, num_fields: int) -> None:
        super().__init__()
        left, right = torch.triu_indices(num_fields, num_fields, offset=1)
        # Buffers, not parameters: the block has no weights and the pairs move with the model.
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        self.num_pairs = left.numel()

    def forward(self, fields: Tensor) -> Tensor:
        """fields B x F x D -> B x (P * D), P = F (F - 1) / 2, pairs in row-major (i, j) order."""
        # index_select, not fields[:, idx]: its backward is index_add, not a slow accumulating index_put.
        return (fields.index_select(1, self.left) * fields.index_select(1, self.right)).flatten(1)
