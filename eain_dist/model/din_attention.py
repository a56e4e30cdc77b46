"""DIN's local activation unit (Zhou et al., 2018): target-aware pooling of the history.

    a_i = MLP([e_i, e_t, e_i - e_t, e_i * e_t])        one unnormalised weight per history item
    v_u = sum_i a_i e_i                                  over real (non-padded) items only

As in DIN the weights are not softmax-normalised by default, so the interest keeps a sense of
how much of the history matches the target; `softmax=True` normalises them over the real items
(BARS' tuned DIN on Amazon does), so the interest is a weighted mean whatever the history's
length. Item and category embeddings enter concatenated: e = [item; cat].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DinAttention(nn.Module):
    def __init__(self, dim: int, hidden: list[int], softmax: bool = False) -> None:
        super().__init__()
        self.dim, self.softmax = dim, softmax
        widths = [4 * dim, *hidden]
        # The first layer is applied in a fused form (see `first_layer`), the rest as usual.
        self.first = nn.Linear(widths[0], widths[1])
        deeper: list[nn.Module] = [nn.ReLU()]
        for fan_in, fan_out in zip(widths[1:-1], widths[2:]):
            deeper += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        deeper.append(nn.Linear(widths[-1], 1))
        self.rest = nn.Sequential(*deeper)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """target B x d, history B x L x d, mask B x L -> (interest B x d, weights B x L)."""
        scores = self.rest(self.first_layer(target, history)).squeeze(-1)  # B x L
        if self.softmax:  # over the real items; an empty history gets all-zero weights
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
        else:
            weights = scores.masked_fill(~mask, 0.0)  # padded positions weigh exactly 0
        # Multiply-and-sum, not bmm: CPU bmm over B tiny (1 x L) @ (L x d) products loops per row.
        interest = (weights.unsqueeze(-1) * history).sum(1)  # B x d
        return interest, weights

    def first_layer(self, target: Tensor, history: Tensor) -> Tensor:
        """W [e_i, e_t, e_i - e_t, e_i * e_t] + b without building the B x L x 4d input.

        Splitting W = [W_h, W_t, W_d, W_p] column-wise gives
            (W_h + W_d) e_i + W_p (e_i * e_t) + [(W_t - W_d) e_t + b],
        where the bracket depends on the target only: computed once per row, not per item.
        """
        w_h, w_t, w_d, w_p = self.first.weight.split(self.dim, dim=1)  # each H x d
        per_target = target @ (w_t - w_d).T + self.first.bias  # B x H
        # Both per-item terms in one GEMM over [e_i, e_i * e_t]: B x L x 2d times 2d x H.
        per_item_input = torch.cat([history, history * target.unsqueeze(1)], dim=-1)  # B x L x 2d
        per_item = per_item_input @ torch.cat([w_h + w_d, w_p], dim=1).T  # B x L x H
        return per_item + per_target.unsqueeze(1)  # B x L x H
