"""SE-Net over field embeddings, as in FiBiNET (Huang et al., 2019).

    z = mean_k E[:, f, k]                       squeeze: one statistic per field       B x F
    a = sigmoid(W_2 ReLU(W_1 z))                excitation, hidden width F / ratio     B x F
    V = a[:, f] * E[:, f, :]                    re-weight each field                   B x F x D
"""

from __future__ import annotations

from torch import Tensor, nn


class SENet(nn.Module):
    def __init__(self, num_fields: int, reduction_ratio: float) -> None:
        super().__init__()
        reduced = max(1, round(num_fields / reduction_ratio))
        # No biases, as FiBiNET: the excitation is a pure function of the squeezed fields.
        self.excitation = nn.Sequential(
            nn.Linear(num_fields, reduced, bias=False), nn.ReLU(),
            nn.Linear(reduced, num_fields, bias=False), nn.Sigmoid(),
        )

    def forward(self, fields: Tensor) -> Tensor:
        """fields B x F x D -> re-weighted B x F x D."""
        squeezed = fields.mean(dim=-1)  # B x F
        weights = self.excitation(squeezed)  # B x F
        return fields * weights.unsqueeze(-1)
