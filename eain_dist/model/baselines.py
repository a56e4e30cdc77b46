"""The paper's baselines: LR, MF, DNN and DIN.

Each takes its embedding lookup at construction and says which tables it needs with
`tables(config, meta)`, so the trainer can build sharded ones of the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from eain_dist.model.batch import (
    ALL_FEATURES, NUM_FIELDS, TARGET_FEATURES, ModelOutput, history_mask, item_vectors, lookup, masked_mean,
    stack_fields,
)
from eain_dist.model.config import ModelConfig
from eain_dist.model.din_attention import DinAttention
from eain_dist.model.embedding import EmbeddingCollection, TableConfig, table_configs
from eain_dist.model.mlp import MLP


class LR(nn.Module):
    """Logistic regression on the impression's own features: logit = b + Σ_f w_f.

    Each feature's weight is a 1-dim embedding. The behaviour sequence stays out: through the
    shared item weights it would only add each user's mean item weight to all of the user's
    candidates alike, a per-user offset that ranks nothing (on Grocery it cost 0.09 test AUC).
    """

    def __init__(self, config: ModelConfig, *, embeddings: EmbeddingCollection) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.bias = nn.Parameter(torch.zeros(()))

    @staticmethod
    def tables(config: ModelConfig, meta: Mapping) -> list[TableConfig]:
        return table_configs(meta, 1, TARGET_FEATURES)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        looked_up = lookup(self.embeddings, batch, TARGET_FEATURES, mask=None)
        weights = torch.cat([looked_up.embeddings[name] for name in TARGET_FEATURES], dim=-1)  # B x F
        return ModelOutput(logits=self.bias + weights.sum(-1))


class MF(nn.Module):
    """Matrix factorisation: logit = <p_u, q_i> + b_u + b_i + b.

    One table per entity of width D + 1, the last column being the bias: one lookup (and, when
    sharded, one exchange) per entity instead of two.
    """

    FEATURES = ("user", "item")

    def __init__(self, config: ModelConfig, *, embeddings: EmbeddingCollection) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.bias = nn.Parameter(torch.zeros(()))

    @staticmethod
    def tables(config: ModelConfig, meta: Mapping) -> list[TableConfig]:
        return table_configs(meta, config.embedding_dim + 1, MF.FEATURES)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        looked_up = lookup(self.embeddings, batch, self.FEATURES, mask=None)
        user, item = looked_up.embeddings["user"], looked_up.embeddings["item"]  # B x (D + 1)
        p_u, b_u = user[:, :-1], user[:, -1]
        q_i, b_i = item[:, :-1], item[:, -1]
        logits = (p_u * q_i).sum(-1) + b_u + b_i + self.bias  # B
        return ModelOutput(logits=logits)


class DNN(nn.Module):
    """Embedding + MLP: the target's fields and the mean of the real history go through a tower."""

    def __init__(self, config: ModelConfig, *, embeddings: EmbeddingCollection) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.mlp = MLP(NUM_FIELDS * config.embedding_dim, config.mlp_hidden, config.dropout, config.mlp_batch_norm)

    @staticmethod
    def tables(config: ModelConfig, meta: Mapping) -> list[TableConfig]:
        return table_configs(meta, config.embedding_dim, ALL_FEATURES)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        mask = history_mask(batch["hist_len"], batch["hist_item"].shape[1])  # B x L
        looked_up = lookup(self.embeddings, batch, ALL_FEATURES, mask)
        _, history = item_vectors(looked_up.embeddings)  # B x L x 2D
        fields = stack_fields(looked_up.embeddings, masked_mean(history, mask))  # B x F x D
        return ModelOutput(logits=self.mlp(fields.flatten(1)))


class DIN(nn.Module):
    """Deep Interest Network: DNN with the history pooled by DIN's target-aware attention."""

    def __init__(self, config: ModelConfig, *, embeddings: EmbeddingCollection) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.attention = DinAttention(2 * config.embedding_dim, config.attention_hidden,
                                      config.attention_softmax)
        self.mlp = MLP(NUM_FIELDS * config.embedding_dim, config.mlp_hidden, config.dropout, config.mlp_batch_norm)

    @staticmethod
    def tables(config: ModelConfig, meta: Mapping) -> list[TableConfig]:
        return table_configs(meta, config.embedding_dim, ALL_FEATURES)

    def forward(self, batch: Mapping[str, Tensor]) -> ModelOutput:
        mask = history_mask(batch["hist_len"], batch["hist_item"].shape[1])  # B x L
        looked_up = lookup(self.embeddings, batch, ALL_FEATURES, mask)
        target, history = item_vectors(looked_up.embeddings)  # B x 2D, B x L x 2D
        interest, _ = self.attention(target, history, mask)  # B x 2D
        fields = stack_fields(looked_up.embeddings, interest)  # B x F x D
        return ModelOutput(logits=self.mlp(fields.flatten(1)))
