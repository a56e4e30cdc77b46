"""EAIN and the baselines: shapes, padding invariance, gradients, ablations, and fitting."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_helpers import auc, fake_meta, learnable_batch, random_batch
from torch import nn

from eain_dist.model import (
    MODEL_NAMES, EmbeddingCollection, ModelConfig, build_model, build_model_with_embeddings, ctr_loss, model_tables,
)
from eain_dist.model.din_attention import DinAttention
from eain_dist.model.interactions import PairwiseProducts
from eain_dist.model.mask_block import MaskNet
from eain_dist.model.paim import PAIM
from eain_dist.model.registry import MODEL_CLASSES
from eain_dist.model.senet import SENet

torch.set_num_threads(2)

META = fake_meta()
ABLATIONS = {  # flag -> (attribute, block type) it removes
    "use_din_attention": ("attention", DinAttention),
    "use_mask_block": ("mask_net", MaskNet),
    "use_senet": ("senet", SENet),
    "use_paim": ("paim", PAIM),
    "use_second_order": ("second_order", PairwiseProducts),
}
VARIANTS = {
    **{name: ModelConfig(name=name, dropout=0.0) for name in MODEL_NAMES},
    "eain-learned-positions": ModelConfig(positional_encoding="learned", dropout=0.0),
    "eain-parallel-masknet": ModelConfig(mask_block_mode="parallel", dropout=0.0),
    **{f"eain-no-{flag[4:]}": ModelConfig(dropout=0.0, **{flag: False}) for flag in ABLATIONS},
}


def build(name: str) -> nn.Module:
    # Seed 0 happens to start SE-Net's 4 hidden units all dead on this tiny fake schema (its two
    # numeric fields dominate the squeeze while the id rows start at std 1e-4).
    torch.manual_seed(1)
    return build_model(VARIANTS[name], META)


def dense_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embeddings."))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_model_returns_one_logit_per_row(name):
    model = build(name)
    out = model(random_batch(META, 6, seed=1))
    assert out.logits.shape == (6,) and out.logits.dtype == torch.float32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_takes_an_empty_batch(name):
    """A rank whose data ran out keeps stepping with empty batches (DESIGN.md)."""
    model = build(name)
    out = model(random_batch(META, 0, seed=1))
    assert out.logits.shape == (0,)
    out.logits.sum().backward()


@pytest.mark.parametrize("name", VARIANTS)
def test_ids_at_padded_history_positions_change_nothing(name):
    model = build(name).eval()
    batch = random_batch(META, 16, seed=2)
    garbage = dict(batch)
    padded = torch.arange(META["max_history"]) < (META["max_history"] - batch["hist_len"]).unsqueeze(1)
    g = torch.Generator().manual_seed(3)
    garbage["hist_item"] = torch.where(padded, torch.randint(1, 200, padded.shape, generator=g), batch["hist_item"])
    garbage["hist_category"] = torch.where(padded, torch.randint(1, 12, padded.shape, generator=g),
                                           batch["hist_category"])
    assert not torch.equal(garbage["hist_item"], batch["hist_item"])
    with torch.no_grad():
        clean, dirty = model(batch), model(garbage)
    torch.testing.assert_close(dirty.logits, clean.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_amount_of_left_padding_changes_nothing(name):
    model = build(name).eval()
    short_length = 8
    batch = random_batch({**META, "max_history": short_length}, 16, seed=3)
    longer = dict(batch)
    pad = torch.zeros(16, META["max_history"] - short_length, dtype=torch.int64)
    longer["hist_item"] = torch.cat([pad, batch["hist_item"]], dim=1)
    longer["hist_category"] = torch.cat([pad, batch["hist_category"]], dim=1)
    with torch.no_grad():
        short, long = model(batch), model(longer)
    torch.testing.assert_close(long.logits, short.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_every_parameter(name):
    model = build(name)
    out = model(random_batch(META, 64, seed=4, min_history=1))
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(5)).float()
    total, _ = ctr_loss(out.logits, labels, model, l2=0.0, embedding_l2=0.0)  # data gradients only
    total.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("flag", ABLATIONS)
def test_each_ablation_removes_its_block(flag):
    attribute, block_type = ABLATIONS[flag]
    full, ablated = build("eain"), build(f"eain-no-{flag[4:]}")
    assert isinstance(getattr(full, attribute), block_type)
    assert getattr(ablated, attribute) is None
    assert not any(isinstance(module, block_type) for module in ablated.modules())
    assert dense_parameter_count(ablated) < dense_parameter_count(full)


def test_eain_with_every_block_off_is_a_dnn():
    flags = {flag: False for flag in ABLATIONS}
    torch.manual_seed(0)
    bare = build_model(ModelConfig(dropout=0.0, **flags), META)
    assert [type(m).__name__ for m in bare.children()] == ["EmbeddingCollection", "MLP"]
    torch.manual_seed(0)
    dnn = build_model(ModelConfig(name="dnn", dropout=0.0), META)
    batch = random_batch(META, 8, seed=6)
    torch.testing.assert_close(bare(batch).logits, dnn(batch).logits)


def test_every_configurable_name_has_a_model():
    assert tuple(MODEL_CLASSES) == MODEL_NAMES


def test_models_list_their_tables_and_reject_mismatched_embeddings():
    lr_tables = model_tables(ModelConfig(name="lr"), META)
    assert {t.embedding_dim for t in lr_tables} == {1}
    mf_tables = model_tables(ModelConfig(name="mf", embedding_dim=8), META)
    assert [(t.name, t.embedding_dim) for t in mf_tables] == [("user", 9), ("item", 9)]
    eain_tables = model_tables(ModelConfig(embedding_dim=8), META)
    assert build_model(ModelConfig(embedding_dim=8), META).embeddings.table_configs == eain_tables
    collection = EmbeddingCollection(eain_tables)
    assert build_model_with_embeddings(ModelConfig(name="din", embedding_dim=8), META, collection).embeddings \
        is collection
    with pytest.raises(ValueError, match="needs tables"):
        build_model_with_embeddings(ModelConfig(name="din", embedding_dim=4), META, collection)


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "xgboost"}, "model.name must be one of"),
    ({"positional_encoding": "rotary"}, "model.positional_encoding"),
    ({"mask_block_mode": "diagonal"}, "model.mask_block_mode"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"mlp_hidden": [64, 0]}, "model.mlp_hidden"),
    ({"attention_hidden": []}, "model.attention_hidden"),
])
def test_bad_config_values_are_rejected_in_one_line(change, message):
    with pytest.raises(ValueError, match=message) as error:
        build_model(dataclasses.replace(ModelConfig(), **change), META)
    assert "\n" not in str(error.value)


def test_reading_the_model_config_does_not_import_torch():
    code = "import sys, eain_dist.config, eain_dist.model; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_fits_a_learnable_signal(name):
    """512 fixed samples: the loss at least halves; the deep models separate them (AUC > 0.99)."""
    batch = learnable_batch(META, 512, seed=7)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, dropout=0.0, l2=1e-6, embedding_l2=1e-6), META)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first_bce = None
    for _ in range(100):
        out = model(batch)
        total, bce = ctr_loss(out.logits, batch["label"], model, l2=1e-6, embedding_l2=1e-6)
        first_bce = bce.item() if first_bce is None else first_bce
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(batch)
        _, final_bce = ctr_loss(out.logits, batch["label"], model, l2=0.0, embedding_l2=0.0)
    assert final_bce.item() <= first_bce / 2
    if name in ("dnn", "din", "eain"):
        assert auc(batch["label"].numpy(), out.logits.numpy()) > 0.99


def test_auc_helper_matches_pair_counting():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 60), rng.integers(0, 5, 60).astype(float)  # many ties
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert auc(labels, scores) == pytest.approx(expected)
