"""The row-wise optimizers' lazy L2 against a step-by-step update of every row."""

from __future__ import annotations

import pytest
import torch

from eain_dist.distributed.row_optimizers import RowWiseAdagrad, RowWiseAdam

ROWS, DIM, LR, DECAY, EPS = 12, 3, 0.05, 0.3, 1e-8


def touch_pattern(steps: int) -> list[torch.Tensor]:
    """Rows touched at each step: a frequent row, rare ones, one untouched until the last step;
    at the last step every row, so that every pending idle shrink has been applied."""
    g = torch.Generator().manual_seed(1)
    pattern = []
    for step in range(1, steps):
        rare = torch.randperm(ROWS - 2, generator=g)[:2] + 1
        pattern.append(torch.unique(torch.cat([torch.tensor([0]), rare[torch.rand(2, generator=g) < 0.4]])))
    return pattern + [torch.arange(ROWS)]


def gradient(step: int, rows: torch.Tensor) -> torch.Tensor:
    return torch.randn(len(rows), DIM, generator=torch.Generator().manual_seed(100 + step))


def lazy_run(optimizer, pattern) -> torch.Tensor:
    weight = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(0))
    state = optimizer.state_for(ROWS, DIM)
    for step, rows in enumerate(pattern, 1):
        optimizer.update(weight, state, rows, gradient(step, rows), step)
    return weight


def eager_adagrad(pattern) -> torch.Tensor:
    """Every row, every step: data rows take g + λe; idle rows take λe with G left as it is."""
    weight = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(0))
    sum_sq = torch.zeros(ROWS)
    for step, rows in enumerate(pattern, 1):
        touched = torch.zeros(ROWS, dtype=torch.bool)
        touched[rows] = True
        for row in range(ROWS):
            if touched[row]:
                g = gradient(step, rows)[(rows == row).nonzero().item()] + DECAY * weight[row]
                sum_sq[row] += g.square().mean()
                weight[row] = weight[row] - LR * g / (sum_sq[row].sqrt() + EPS)
            else:
                rate = min(LR * DECAY / (sum_sq[row].sqrt().item() + EPS), 1.0)
                weight[row] = weight[row] * (1 - rate)
    return weight


def eager_adam(pattern, betas=(0.9, 0.999)) -> torch.Tensor:
    """Lazy Adam's moments; idle rows take λe scaled by their (unchanged) second moment."""
    weight = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(0))
    m, v, count = torch.zeros(ROWS, DIM), torch.zeros(ROWS, DIM), torch.zeros(ROWS)
    for step, rows in enumerate(pattern, 1):
        for row in range(ROWS):
            if row in rows.tolist():
                g = gradient(step, rows)[(rows == row).nonzero().item()] + DECAY * weight[row]
                count[row] += 1
                m[row] = betas[0] * m[row] + (1 - betas[0]) * g
                v[row] = betas[1] * v[row] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[row] / (1 - betas[0] ** count[row]), v[row] / (1 - betas[1] ** count[row])
                weight[row] = weight[row] - LR * m_hat / (v_hat.sqrt() + EPS)
            else:
                v_hat = v[row] / (1 - betas[1] ** max(count[row].item(), 1))
                weight[row] = weight[row] * (1 - (LR * DECAY / (v_hat.sqrt() + EPS)).clamp(max=1.0))
    return weight


@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_lazy_l2_equals_updating_every_row_at_every_step(name):
    pattern = touch_pattern(steps=30)
    assert any(len(rows) < ROWS for rows in pattern)  # rows sit out steps
    if name == "adagrad":
        lazy, eager = lazy_run(RowWiseAdagrad(lr=LR, weight_decay=DECAY), pattern), eager_adagrad(pattern)
    else:
        lazy, eager = lazy_run(RowWiseAdam(lr=LR, weight_decay=DECAY), pattern), eager_adam(pattern)
    torch.testing.assert_close(lazy, eager, rtol=1e-5, atol=1e-6)


def test_a_row_never_updated_decays_to_zero_before_its_first_update():
    """No gradient yet: the idle steps' shrink is complete (the limit of lr λ / sqrt(G) -> inf)."""
    optimizer = RowWiseAdagrad(lr=LR, weight_decay=DECAY)
    weight = torch.ones(2, DIM)
    state = optimizer.state_for(2, DIM)
    optimizer.update(weight, state, torch.tensor([0]), torch.zeros(1, DIM), step=1)
    optimizer.update(weight, state, torch.tensor([1]), torch.zeros(1, DIM), step=5)
    assert torch.equal(weight[1], torch.zeros(DIM))
    # Updated at step 1, no idle steps: only its own L2 gradient λ·1, one Adagrad step of lr.
    torch.testing.assert_close(weight[0], torch.full((DIM,), 1.0 - LR))


def test_without_weight_decay_the_update_is_plain_row_wise_adagrad():
    optimizer = RowWiseAdagrad(lr=LR)
    weight = torch.ones(ROWS, DIM)
    state = optimizer.state_for(ROWS, DIM)
    rows, grad = torch.tensor([2, 5]), torch.full((2, DIM), 0.5)
    optimizer.update(weight, state, rows, grad, step=9)
    torch.testing.assert_close(weight[rows], torch.full((2, DIM), 1.0 - LR * 0.5 / 0.5))
    assert torch.equal(weight[[0, 1, 3]], torch.ones(3, DIM))
