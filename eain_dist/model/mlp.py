"""The prediction tower: Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer, then one logit.

Models return logits; the sigmoid lives in the loss (BCE with logits) for numerical stability.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, input_width: int, hidden: list[int], dropout: float, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([input_width, *hidden[:-1]], hidden):
            layers.append(nn.Linear(fan_in, fan_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden[-1] if hidden else input_width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """B x input_width -> logits B."""
        return self.layers(x).squeeze(-1)
