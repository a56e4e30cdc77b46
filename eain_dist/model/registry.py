"""Build a model by name from a config and a prepared dataset's meta.json.

    tables = model_tables(cfg, meta)                       # what to build, local or sharded
    model = build_model(cfg, meta)                         # local tables
    model = build_model_with_embeddings(cfg, meta, sharded_collection)
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from eain_dist.model.baselines import DIN, DNN, LR, MF
from eain_dist.model.config import ModelConfig, validate_model_config
from eain_dist.model.eain import EAIN
from eain_dist.model.embedding import EmbeddingCollection, TableConfig

# Keys in the order of config.MODEL_NAMES (a test holds the two together).
MODEL_CLASSES: dict[str, type[nn.Module]] = {"lr": LR, "mf": MF, "dnn": DNN, "din": DIN, "eain": EAIN}


def model_tables(cfg: ModelConfig, meta: Mapping) -> list[TableConfig]:
    """The embedding tables model `cfg.name` looks up (names, rows, widths, features)."""
    validate_model_config(cfg)
    return MODEL_CLASSES[cfg.name].tables(cfg, meta)


def build_model(cfg: ModelConfig, meta: Mapping) -> nn.Module:
    """The model with local, unsharded tables."""
    return build_model_with_embeddings(cfg, meta, EmbeddingCollection(model_tables(cfg, meta)))


def build_model_with_embeddings(cfg: ModelConfig, meta: Mapping, embeddings: nn.Module) -> nn.Module:
    """The model around a given lookup (e.g. a sharded collection built from `model_tables`).

    `embeddings` must behave as `EmbeddingCollection`: `forward(features) -> EmbeddingOutput`
    and a `table_configs` list, which must match `model_tables(cfg, meta)`.
    """
    expected = model_tables(cfg, meta)
    if list(embeddings.table_configs) != expected:
        raise ValueError(f"model {cfg.name!r} needs tables {[t.name for t in expected]} as in model_tables(); "
                         f"the embeddings given have {[t.name for t in embeddings.table_configs]} or other shapes")
    if cfg.name == "eain":
        model = EAIN(cfg, embeddings=embeddings, max_history=meta["max_history"])
    else:
        model = MODEL_CLASSES[cfg.name](cfg, embeddings=embeddings)
    return init_dense_layers(model)


def init_dense_layers(model: nn.Module) -> nn.Module:
    """Xavier-normal weights and zero biases in every linear layer (FuxiCTR's initialisation).

    The training recipe (row-wise Adagrad + tables' L2, dense Adam) was chosen on validation AUC
    with this initialisation (benchmarks/results/peer-parity.md); embeddings keep their own.
    """
    for module in model.modules():
        if type(module) is nn.Linear:
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
