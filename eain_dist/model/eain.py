"""EAIN: Enhanced Attention and Interaction Network.

    e_t = [item; category],  e_i = [hist_item_i; hist_category_i]           target, history
    e_i <- e_i + p_{r(i)}                                        PAIM positions  (use_paim)
    v_u = Σ_i a(e_i, e_t) e_i   or   mean_i e_i             DIN attention  (use_din_attention)
    V   = [user, item, category, hour, weekday, gap, v_u]        fields, F x D
    V   <- SENet(V)                                                          (use_senet)
    h   = MaskNet(flatten V)   or   flatten V                                (use_mask_block)
    s   = [v_i * v_j for i < j]                          second order        (use_second_order)
    c   = CrossLayers(v_u)                                   PAIM crosses    (use_paim)
    logit = MLP([h, s, c])

A switched-off block is absent: no module, no parameters, no computation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from eain_dist.model.baselines import DNN
from eain_dist.model.batch import (
    ALL_FEATURES, NUM_FIELDS, ModelOutput, history_mask, item_vectors, lookup, masked_mean, stack_fields,
)
from eain_dist.model.config import ModelConfig
from eain_dist.model.din_attention import DinAttention
from eain_dist.model.embedding import EmbeddingCollection, TableConfig
from eain_dist.model.interactions import PairwiseProducts
from eain_dist.model.mask_block import MaskNet
from eain_dist.model.mlp import MLP
from eain_dist.model.paim import PAIM
from eain_dist.model.senet import SENet


class EAIN(nn.Module):
    def __init__(self, config: ModelConfig, *, embeddings: EmbeddingCollection, max_history: int) -> None:
        super().__init__()
        dim = config.embedding_dim
        item_dim = 2 * dim  # item and category concatenated
        self.embeddings = embeddings
        self.paim = (PAIM(item_dim, max_history, config.positional_encoding, config.cross_layers)
                     if config.use_paim else None)
        self.attention = DinAttention(item_dim, config.attention_hidden, config.attention_softmax) if config.use_din_attention else None
        self.senet = SENet(NUM_FIELDS, config.senet_reduction_ratio) if config.use_senet else None
        self.mask_net = (MaskNet(NUM_FIELDS * dim, config.mask_block_count, config.mask_block_hidden,
                                 config.mask_reduction_ratio, config.mask_block_mode)
                         if config.use_mask_block else None)
        self.second_order = PairwiseProducts(NUM_FIELDS) if config.use_second_order else None

        tower_width = self.mask_net.output_width if self.mask_net is not None else NUM_FIELDS * dim
        if self.second_order is not None:
            tower_width += self.second_order.num_pairs * dim
        if self.paim is not None and config.cross_layers > 0:
            tower_width += item_dim
        self.mlp = MLP(tower_width, config.mlp_hidden, config.dropout, config.mlp_batch_norm)

    @staticmethod
    def tables(config: ModelConfig, meta: Mapping) -> list[TableConfig]:
        return DNN.tables(config, meta)  # the same features, one width

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        mask = history_mask(batch["hist_len"], batch["hist_item"].shape[1])  # B x L
        looked_up = lookup(self.embeddings, batch, ALL_FEATURES, mask)
        target, history = item_vectors(looked_up.embeddings)  # B x 2D, B x L x 2D
        interest = self.user_interest(target, history, mask)  # B x 2D
        fields = stack_fields(looked_up.embeddings, interest)  # B x F x D
        if self.senet is not None:
            fields = self.senet(fields)
        tower_input = [self.mask_net(fields.flatten(1)) if self.mask_net is not None else fields.flatten(1)]
        if self.second_order is not None:
            tower_input.append(self.second_order(fields))  # B x (P * D)
        if self.paim is not None and len(self.paim.cross_layers) > 0:
            tower_input.append(self.paim.cross(interest))  # B x 2D
        return ModelOutput(logits=self.mlp(torch.cat(tower_input, dim=1)))

    def user_interest(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        """The pooled history, position-aware when PAIM is on: B x 2D."""
        if self.paim is not None:
            history = self.paim.encode_positions(history)
        if self.attention is not None:
            interest, _ = self.attention(target, history, mask)
            return interest
        return masked_mean(history, mask)
