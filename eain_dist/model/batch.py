"""What every model does with a batch before its own layers: the history mask and the lookup.

A batch is the data loader's dict of tensors (B = batch, L = history length):
`user`, `item`, `category`, `hour`, `weekday`, `gap`: B; `hist_item`, `hist_category`: B x L,
most recent last, left-padded; `hist_len`: B. Other columns (`label`, `position`, ...) are
ignored by the models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from eain_dist.model.embedding import EmbeddingCollection, EmbeddingOutput

TARGET_FEATURES = ("user", "item", "category", "hour", "weekday", "gap")
HISTORY_FEATURES = ("hist_item", "hist_category")
ALL_FEATURES = TARGET_FEATURES + HISTORY_FEATURES
NUM_FIELDS = len(TARGET_FEATURES) + 2  # + the pooled history's item and category halves


@dataclass
class ModelOutput:
    logits: Tensor  # B: pre-sigmoid click scores


def history_mask(hist_len: Tensor, length: int) -> Tensor:
    """B x L, True at real entries: the last `hist_len` positions (histories are left-padded).

    Derived from `hist_len`, not from id != 0, because id 0 is also a real out-of-vocabulary item.
    """
    slot = torch.arange(length, device=hist_len.device)  # L
    return slot >= (length - hist_len.to(slot.dtype)).unsqueeze(1)  # B x L


def lookup(embeddings: EmbeddingCollection, batch: Mapping[str, Tensor], features: Iterable[str],
           mask: Tensor | None) -> EmbeddingOutput:
    """Look up `features`, with history ids at padded positions (`mask` False) set to 0 first.

    Whatever a padded slot holds then changes nothing. `mask` may be
    None only when `features` has no history feature.
    """
    ids = {}
    for name in features:
        ids[name] = batch[name].masked_fill(~mask, 0) if name in HISTORY_FEATURES else batch[name]
    return embeddings(ids)


def masked_mean(history: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real history entries (0 for an empty history). B x L x D, B x L -> B x D."""
    weights = mask.to(history.dtype)  # B x L
    total = (weights.unsqueeze(-1) * history).sum(1)  # B x D; faster than bmm's per-row loop on CPU
    return total / weights.sum(1, keepdim=True).clamp(min=1.0)


def item_vectors(embedded: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """DIN's item representation, [item; category]: target B x 2D, history B x L x 2D."""
    target = torch.cat([embedded["item"], embedded["category"]], dim=-1)
    history = torch.cat([embedded["hist_item"], embedded["hist_category"]], dim=-1)
    return target, history


def stack_fields(embedded: Mapping[str, Tensor], interest: Tensor) -> Tensor:
    """The target's fields plus the pooled history (split back into item and category): B x F x D."""
    target_fields = [embedded[name] for name in TARGET_FEATURES]
    return torch.stack([*target_fields, *interest.chunk(2, dim=-1)], dim=1)

