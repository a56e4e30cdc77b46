"""Exact metrics of a split spread over the ranks, without any rank holding all of it.

Each rank scores its own rows (float32 logits), then the rows travel twice, each rank keeping
about 1/W of them (metrics.py says why these partitions make the sums exact):

    by user:   row -> rank user % W           gAUC and logloss parts
    by logit:  row -> the rank of its range   AUC parts; ranges from every rank's quantiles,
                                              equal logits always on one rank (ties stay exact)

and one all-reduce adds the parts. Memory per rank: its share of the rows, ~17 bytes each.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from eain_dist.distributed.collectives import exchange_rows, gather_from_ranks, sum_over_ranks
from eain_dist.train.metrics import Parts, auc_parts, gauc_parts, logloss_sum
from eain_dist.train.worker import Worker, synchronized_batches

QUANTILES_PER_RANK = 64


@torch.no_grad()
def evaluate(worker: Worker, batches: Iterable[pa.Table]) -> dict[str, float]:
    """AUC, gAUC and logloss of every rank's batches together (every rank gets the same figures)."""
    worker.ddp.eval()
    parts: dict[str, list[np.ndarray]] = {"logit": [], "label": [], "user": []}
    for batch in synchronized_batches(batches, worker):
        parts["logit"].append(worker.model(batch).logits.float().cpu().numpy())
        parts["label"].append(batch["label"].float().cpu().numpy())
        parts["user"].append(batch["user"].cpu().numpy())
    dtypes = {"logit": np.float32, "label": np.float32, "user": np.int64}
    rows = {k: np.concatenate(v).astype(dtypes[k], copy=False) if v else np.zeros(0, dtypes[k])
            for k, v in parts.items()}
    return split_metrics(rows, worker.device)


def split_metrics(rows: dict[str, np.ndarray], device: torch.device) -> dict[str, float]:
    """The metrics of the union of every rank's `rows` (logit, label, user)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    by_user = exchange_rows(rows, rows["user"] % world, device)
    parts = Parts()
    parts.gauc_weighted, parts.gauc_weight = gauc_parts(by_user["logit"], by_user["label"], by_user["user"])
    parts.logloss_sum, parts.rows = logloss_sum(by_user["logit"], by_user["label"]), len(by_user["label"])
    del by_user
    scored = {"logit": rows["logit"], "label": rows["label"]}
    by_logit = exchange_rows(scored, _logit_range(rows["logit"], world, device), device)
    negatives = gather_from_ranks(np.array([np.sum(by_logit["label"] <= 0.5)], dtype=np.int64), device)[:, 0]
    auc = auc_parts(by_logit["logit"], by_logit["label"], negatives_below=float(negatives[:rank].sum()))
    parts.u, parts.positives, parts.negatives = auc.u, auc.positives, auc.negatives
    return Parts.from_array(sum_over_ranks(parts.to_array(), device)).metrics()


def _logit_range(logits: np.ndarray, world: int, device: torch.device) -> np.ndarray:
    """For each row, the rank whose logit range holds it: range r lies below range r + 1."""
    if world == 1:
        return np.zeros(len(logits), dtype=np.int64)
    points = np.linspace(0.0, 1.0, QUANTILES_PER_RANK)
    mine = np.quantile(logits, points) if len(logits) else np.full(QUANTILES_PER_RANK, np.nan)
    pooled = gather_from_ranks(mine.astype(np.float64), device).ravel()
    pooled = pooled[~np.isnan(pooled)]
    if len(pooled) == 0:
        return np.zeros(len(logits), dtype=np.int64)
    bounds = np.quantile(pooled, np.arange(1, world) / world)
    return np.searchsorted(bounds, logits.astype(np.float64), side="right").astype(np.int64)
