"""MaskBlock and MaskNet (Wang et al., 2021): instance-guided masks over the feature embedding.

    V_mask   = W_2 ReLU(W_1 V_emb + b_1) + b_2      aggregation (wide) then projection layer
    V_masked = V_mask * LN(V_emb)                    first block: the embedding itself
             = V_mask * V_hidden                     later serial blocks: the previous output
    V_out    = ReLU(LN(W_h V_masked))                the block's hidden layer

The mask is always computed from the (flattened) feature embedding V_emb, which is what makes it
instance-guided. SerMaskNet chains blocks; ParaMaskNet runs them side by side and concatenates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskBlock(nn.Module):
    def __init__(self, embedding_width: int, input_width: int, hidden: int, reduction_ratio: float,
                 normalize_input: bool) -> None:
        super().__init__()
        aggregation = max(1, round(reduction_ratio * embedding_width))
        self.mask = nn.Sequential(
            nn.Linear(embedding_width, aggregation), nn.ReLU(), nn.Linear(aggregation, input_width),
        )
        # Only the embedding is normalised first; hidden inputs already leave a LayerNorm.
        self.input_norm = nn.LayerNorm(input_width) if normalize_input else nn.Identity()
        self.hidden = nn.Sequential(nn.Linear(input_width, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU())

    def forward(self, embedding: Tensor, block_input: Tensor) -> Tensor:
        """embedding B x E (guides the mask), block_input B x I -> B x hidden."""
        return self.hidden(self.mask(embedding) * self.input_norm(block_input))


class MaskNet(nn.Module):
    """`count` MaskBlocks, serial or parallel; output width in `output_width`."""

    def __init__(self, embedding_width: int, count: int, hidden: int, reduction_ratio: float, mode: str) -> None:
        super().__init__()
        self.serial = mode == "serial"
        blocks = []
        for index in range(count):
            first = index == 0 or not self.serial
            blocks.append(MaskBlock(embedding_width, embedding_width if first else hidden, hidden,
                                    reduction_ratio, normalize_input=first))
        self.blocks = nn.ModuleList(blocks)
        self.output_width = hidden if self.serial else count * hidden

    def forward(self, embedding: Tensor) -> Tensor:
        """embedding B x E -> B x output_width."""
        if self.serial:
            hidden = embedding
            for block in self.blocks:
                hidden = block(embedding, hidden)
            return hidden
        return torch.cat([block(embedding, embedding) for block in self.blocks], dim=1)
