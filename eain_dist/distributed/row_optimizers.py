"""Row-wise optimizers of sharded embedding tables, with the tables' L2 applied lazily.

The objective's embedding term is (λ/2) Σ_r ||e_r||² over *every* row of every table, at every
step: the L2 regulariser of dense CTR training (FuxiCTR's `embedding_regularizer`). Its gradient
λ e_r is non-zero for every row, yet a step looks up only the rows of its batch, and touching
every row of a 100M-row table at every step is out of the question. So each row remembers the
step it was last updated at; when a step touches it again, the steps it sat out are applied
first, in closed form, then the step itself with the gradient g + λ e:

    Adagrad (one accumulator G per row):  an idle step moves e by -lr λ e / sqrt(G), so k idle
        steps multiply the row by (1 - lr λ / sqrt(G))^k.
    Adam (moments m, v per coordinate):  the same with sqrt(v̂) per coordinate.

G (or v) is what the row's data gradients left: a frequent row has a large one and keeps its
values, a row seen once long ago is pulled to zero, towards the other rarely seen rows. That
frequency-dependent shrinkage is what makes the regulariser work on long-tailed ids (on Grocery
it lifts DNN's test AUC by about 0.03, benchmarks/results/peer-parity.md). A row never updated
has no accumulated gradient, and its initial values decay to zero before its first update (the
limit of the idle steps' shrink). The idle steps' own λ² e² contributions to G (or v) are left
out: they are tiny next to a data gradient's.

With λ = 0 these are plain row-wise Adagrad (TorchRec's) and lazy Adam.

Example (an optimizer applied by the sharded collection after backward; `step` counts from 1):

    optimizer = RowWiseAdagrad(lr=0.05, weight_decay=0.005)
    state = optimizer.state_for(rows=1000, dim=16)
    optimizer.update(weight, state, rows=touched_rows, grad=their_gradients, step=7)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def idle_steps(state: dict[str, Tensor], rows: Tensor, step: int) -> Tensor:
    """Steps each row sat out since its last update (then marks `step` as its last one)."""
    idle = (step - 1 - state["last_step"][rows]).to(torch.float32)
    state["last_step"][rows] = step
    return idle


def shrink_for_idle_steps(weight: Tensor, rows: Tensor, rate: Tensor, idle: Tensor) -> None:
    """rows *= (1 - rate)^idle: the idle steps' L2 updates; a rate >= 1 zeroes the row."""
    factor = (1.0 - rate.clamp(max=1.0)).pow(idle.view(-1, *[1] * (rate.dim() - 1)))
    weight[rows] = weight[rows] * factor


@dataclass(kw_only=True)
class RowWiseAdagrad:
    """Adagrad with one accumulator per row (mean of the squared gradient), as TorchRec's."""

    lr: float = 0.05
    eps: float = 1e-8
    weight_decay: float = 0.0  # λ of the tables' L2 (see the module docstring)

    def state_for(self, rows: int, dim: int) -> dict[str, Tensor]:
        return {"sum_sq": torch.zeros(rows), "last_step": torch.zeros(rows, dtype=torch.int32)}

    def update(self, weight: Tensor, state: dict[str, Tensor], rows: Tensor, grad: Tensor, step: int) -> None:
        sum_sq = state["sum_sq"]
        if self.weight_decay:
            idle = idle_steps(state, rows, step)
            rate = self.lr * self.weight_decay / (sum_sq[rows].sqrt() + self.eps)  # R
            shrink_for_idle_steps(weight, rows, rate[:, None], idle)
            grad = grad + self.weight_decay * weight[rows]
        sum_sq.index_add_(0, rows, grad.square().mean(dim=1))
        scale = self.lr / (sum_sq[rows].sqrt() + self.eps)
        weight.index_add_(0, rows, -scale[:, None] * grad)


@dataclass(kw_only=True)
class RowWiseAdam:
    """Lazy Adam: moments and step counts advance only for the rows a step touched."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # λ of the tables' L2 (see the module docstring)

    def state_for(self, rows: int, dim: int) -> dict[str, Tensor]:
        return {"m": torch.zeros(rows, dim), "v": torch.zeros(rows, dim), "step": torch.zeros(rows),
                "last_step": torch.zeros(rows, dtype=torch.int32)}

    def update(self, weight: Tensor, state: dict[str, Tensor], rows: Tensor, grad: Tensor, step: int) -> None:
        beta1, beta2 = self.betas
        row_steps = state["step"][rows]
        if self.weight_decay:
            idle = idle_steps(state, rows, step)
            v_hat = state["v"][rows] / (1 - beta2 ** row_steps.clamp(min=1))[:, None]
            shrink_for_idle_steps(weight, rows, self.lr * self.weight_decay / (v_hat.sqrt() + self.eps), idle)
            grad = grad + self.weight_decay * weight[rows]
        row_steps = row_steps + 1
        state["step"][rows] = row_steps
        m = state["m"][rows].mul_(beta1).add_(grad, alpha=1 - beta1)
        v = state["v"][rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["m"][rows], state["v"][rows] = m, v
        m_hat = m / (1 - beta1 ** row_steps)[:, None]
        v_hat = v / (1 - beta2 ** row_steps)[:, None]
        weight[rows] -= self.lr * m_hat / (v_hat.sqrt() + self.eps)
