"""Model architectures (EAIN and the baselines). No optimizers, devices or process groups here.

`eain_dist.config` imports `eain_dist.model.config`, which runs this file: the torch-backed
names are therefore resolved lazily (PEP 562), so reading a config never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from eain_dist.model.config import MODEL_NAMES, ModelConfig, validate_model_config

_LAZY = {
    "ModelOutput": "eain_dist.model.batch",
    "EmbeddingCollection": "eain_dist.model.embedding",
    "EmbeddingOutput": "eain_dist.model.embedding",
    "TableConfig": "eain_dist.model.embedding",
    "table_configs": "eain_dist.model.embedding",
    "ctr_loss": "eain_dist.model.loss",
    "build_model": "eain_dist.model.registry",
    "build_model_with_embeddings": "eain_dist.model.registry",
    "model_tables": "eain_dist.model.registry",
}

__all__ = ["MODEL_NAMES", "ModelConfig", "validate_model_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
