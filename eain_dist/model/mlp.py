"""The prediction tower: Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer, then one logit.

Models return logits; the sigmoid lives in the loss (BCE with logits) for numerical stability.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, input_width: int, hidden: list[int], dropout: float, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([input_width, *hidden[:-1]], hidden):
            layers.append(nn.Linear(fan_in, fan_out))
            if batch_norm:
                layers.append(BatchNormAnyBatch(fan_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden[-1] if hidden else input_width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """B x input_width -> logits B."""
        return self.layers(x).squeeze(-1)


class BatchNormAnyBatch(nn.BatchNorm1d):
    """BatchNorm1d that also trains on a batch of one row (a rank's last batch can be that small).

    One row has no variance to normalise by: it is normalised with the running statistics, as in
    evaluation, and leaves them unchanged. Larger batches behave exactly as BatchNorm1d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                                eps=self.eps)
        return super().forward(x)
