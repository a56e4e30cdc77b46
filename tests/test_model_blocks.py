"""The model's building blocks against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import fake_meta, random_batch
from torch import nn

from eain_dist.model.batch import history_mask, masked_mean
from eain_dist.model.din_attention import DinAttention
from eain_dist.model.embedding import EmbeddingCollection, TableConfig, table_configs
from eain_dist.model.interactions import PairwiseProducts
from eain_dist.model.loss import ctr_loss
from eain_dist.model.mask_block import MaskBlock, MaskNet
from eain_dist.model.mlp import MLP
from eain_dist.model.paim import PAIM, CrossLayer
from eain_dist.model.senet import SENet

torch.set_num_threads(2)


# -- embedding tables ---------------------------------------------------------------------------


def test_table_configs_group_features_sharing_a_table_in_meta_order():
    configs = table_configs(fake_meta(items=50), 8)
    assert [c.name for c in configs] == ["user", "item", "category", "hour", "weekday", "gap"]
    item = configs[1]
    assert item == TableConfig(name="item", num_embeddings=51, embedding_dim=8, feature_names=("item", "hist_item"))


def test_table_configs_keep_only_the_features_asked_for():
    configs = table_configs(fake_meta(), 4, ["item", "user"])
    assert [(c.name, c.feature_names) for c in configs] == [("user", ("user",)), ("item", ("item",))]


def test_table_configs_reject_an_unknown_feature():
    with pytest.raises(ValueError, match="'price' is not in meta.json"):
        table_configs(fake_meta(), 4, ["price"])


def test_lookup_gives_each_feature_its_rows_in_its_own_shape():
    meta = fake_meta()
    collection = EmbeddingCollection(table_configs(meta, 6))
    batch = random_batch(meta, 5, seed=0)
    features = {name: batch[name] for name in meta["features"]}
    out = collection(features)
    weight = collection.tables["item"].weight
    assert out.embeddings["hist_item"].shape == (5, meta["max_history"], 6)
    assert torch.equal(out.embeddings["hist_item"], weight[batch["hist_item"]])
    assert torch.equal(out.embeddings["item"], weight[batch["item"]])
    assert torch.equal(out.embeddings["hour"], collection.tables["hour"].weight[batch["hour"]])


def test_lookup_names_a_missing_feature():
    collection = EmbeddingCollection(table_configs(fake_meta(), 4, ["item", "hist_item"]))
    with pytest.raises(KeyError, match="hist_item"):
        collection({"item": torch.tensor([1])})


def test_gradients_flow_only_to_looked_up_rows():
    collection = EmbeddingCollection(table_configs(fake_meta(), 4, ["item", "hist_item"]))
    out = collection({"item": torch.tensor([3]), "hist_item": torch.tensor([[0, 3, 5]])})
    (out.embeddings["item"].sum() + out.embeddings["hist_item"].sum()).backward()
    grad = collection.tables["item"].weight.grad
    touched = grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [0, 3, 5]
    assert torch.equal(grad[3], torch.full((4,), 2.0))  # looked up twice, across two features


# -- history helpers ----------------------------------------------------------------------------


def test_history_mask_marks_the_last_hist_len_positions():
    mask = history_mask(torch.tensor([0, 2, 4], dtype=torch.int32), 4)
    assert mask.tolist() == [[False] * 4, [False, False, True, True], [True] * 4]


def test_masked_mean_averages_real_entries_and_is_zero_for_an_empty_history():
    history = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[False, True, True], [False, False, False]])
    out = masked_mean(history, mask)
    torch.testing.assert_close(out, torch.tensor([[(2 + 4) / 2, (3 + 5) / 2], [0.0, 0.0]]))


# -- DIN attention ------------------------------------------------------------------------------


def test_din_attention_zeroes_padded_positions_and_does_not_normalise():
    torch.manual_seed(0)
    attention = DinAttention(dim=4, hidden=[8, 4])
    target, history = torch.randn(3, 4), torch.randn(3, 5, 4)
    mask = history_mask(torch.tensor([5, 2, 0]), 5)
    interest, weights = attention(target, history, mask)
    assert torch.all(weights[~mask] == 0)
    assert torch.all(weights[mask] != 0)
    assert not torch.allclose(weights.sum(1)[:2], torch.ones(2))
    torch.testing.assert_close(interest, (weights.unsqueeze(-1) * history).sum(1))
    assert torch.all(interest[2] == 0)  # an empty history has no interest


def test_din_attention_fused_first_layer_equals_the_concatenated_input():
    torch.manual_seed(1)
    attention = DinAttention(dim=3, hidden=[6])
    target, history = torch.randn(2, 3), torch.randn(2, 4, 3)
    expanded = target.unsqueeze(1).expand_as(history)
    din_input = torch.cat([history, expanded, history - expanded, history * expanded], dim=-1)  # B x L x 4d
    rows = torch.arange(2).repeat_interleave(4)  # history flattened to (B L) x d entries
    torch.testing.assert_close(attention.first_layer(target, history.reshape(8, 3), rows),
                               attention.first(din_input).reshape(8, 6))


# -- SE-Net -------------------------------------------------------------------------------------


def test_senet_reweights_fields_as_squeeze_excitation_by_hand():
    torch.manual_seed(2)
    senet = SENet(num_fields=4, reduction_ratio=2.0)
    fields = torch.randn(3, 4, 5)
    w_1, w_2 = senet.excitation[0].weight.detach(), senet.excitation[2].weight.detach()  # 2 x 4, 4 x 2
    expected = torch.empty_like(fields)
    for b in range(3):
        z = [fields[b, f].mean() for f in range(4)]
        hidden = [max(0.0, sum(w_1[h, f] * z[f] for f in range(4))) for h in range(2)]
        for f in range(4):
            a = 1 / (1 + math.exp(-sum(w_2[f, h] * hidden[h] for h in range(2))))
            expected[b, f] = a * fields[b, f]
    torch.testing.assert_close(senet(fields), expected)


# -- PAIM ---------------------------------------------------------------------------------------


def test_cross_layer_equals_the_explicit_outer_product_form():
    torch.manual_seed(3)
    dim = 3
    layer = CrossLayer(dim)
    x_0, x_l = torch.randn(2, dim), torch.randn(2, dim)
    w = layer.weight.weight  # d x d²
    for b in range(2):
        outer = torch.zeros(dim * dim)  # the paper's x_0 ⊗ x_l, index i d + j
        for i in range(dim):
            for j in range(dim):
                outer[i * dim + j] = x_0[b, i] * x_l[b, j]
        expected = torch.relu(w @ outer) + x_l[b]
        torch.testing.assert_close(layer(x_0, x_l)[b], expected)


def test_cross_layers_feed_x0_to_every_layer():
    torch.manual_seed(4)
    paim = PAIM(dim=4, max_history=6, encoding="sinusoidal", cross_layers=2)
    x_0 = torch.randn(3, 4)
    first, second = paim.cross_layers
    torch.testing.assert_close(paim.cross(x_0), second(x_0, first(x_0, x_0)))


def test_sinusoidal_positions_follow_the_transformer_formula_counted_from_the_most_recent():
    paim = PAIM(dim=4, max_history=5, encoding="sinusoidal", cross_layers=0)
    history = torch.zeros(1, 5, 4)
    encoded = paim.encode_positions(history)[0] / paim.positions.scale.detach()
    for slot in range(5):
        r = 4 - slot
        expected = [math.sin(r), math.cos(r), math.sin(r / 100), math.cos(r / 100)]
        torch.testing.assert_close(encoded[slot], torch.tensor(expected))


@pytest.mark.parametrize("encoding", ["sinusoidal", "learned"])
def test_positional_encoding_does_not_depend_on_the_amount_of_left_padding(encoding):
    torch.manual_seed(5)
    paim = PAIM(dim=6, max_history=10, encoding=encoding, cross_layers=0)
    history = torch.randn(2, 10, 6)
    long, short = paim.encode_positions(history), paim.encode_positions(history[:, 4:])
    torch.testing.assert_close(long[:, 4:], short)


# -- MaskBlock / MaskNet ------------------------------------------------------------------------


def test_mask_block_multiplies_the_instance_mask_with_the_normalised_embedding():
    torch.manual_seed(6)
    block = MaskBlock(embedding_width=6, input_width=6, hidden=4, reduction_ratio=2.0, normalize_input=True)
    embedding = torch.randn(3, 6)
    aggregation, projection = block.mask[0], block.mask[2]
    assert aggregation.out_features == 12 and projection.out_features == 6  # aggregation wider than projection
    mask = projection(torch.relu(aggregation(embedding)))
    masked = mask * F.layer_norm(embedding, (6,), block.input_norm.weight, block.input_norm.bias)
    expected = torch.relu(block.hidden[1](masked @ block.hidden[0].weight.T))
    torch.testing.assert_close(block(embedding, embedding), expected)


def test_serial_mask_net_chains_blocks_guided_by_the_embedding():
    torch.manual_seed(7)
    net = MaskNet(embedding_width=8, count=3, hidden=5, reduction_ratio=1.5, mode="serial")
    embedding = torch.randn(2, 8)
    first, second, third = net.blocks
    expected = third(embedding, second(embedding, first(embedding, embedding)))
    torch.testing.assert_close(net(embedding), expected)
    assert net.output_width == 5 and isinstance(second.input_norm, nn.Identity)


def test_parallel_mask_net_concatenates_blocks_on_the_embedding():
    torch.manual_seed(8)
    net = MaskNet(embedding_width=8, count=2, hidden=5, reduction_ratio=2.0, mode="parallel")
    embedding = torch.randn(2, 8)
    expected = torch.cat([block(embedding, embedding) for block in net.blocks], dim=1)
    torch.testing.assert_close(net(embedding), expected)
    assert net.output_width == 10


# -- second order, tower ------------------------------------------------------------------------


def test_pairwise_products_cover_every_field_pair_once():
    fields = torch.randn(2, 4, 3)
    expected = torch.cat([fields[:, i] * fields[:, j] for i in range(4) for j in range(i + 1, 4)], dim=1)
    torch.testing.assert_close(PairwiseProducts(4)(fields), expected)


def test_mlp_has_no_batch_norm_or_dropout_unless_asked_and_returns_one_logit_per_row():
    plain = MLP(6, [5, 4], dropout=0.0)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in plain.modules())
    assert [m.out_features for m in plain.modules() if isinstance(m, nn.Linear)] == [5, 4, 1]
    assert plain(torch.randn(7, 6)).shape == (7,)
    full = MLP(6, [5], dropout=0.2, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in full.modules()) == 1
    assert sum(isinstance(m, nn.Dropout) for m in full.modules()) == 1


# -- loss ---------------------------------------------------------------------------------------


class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = EmbeddingCollection(
            [TableConfig(name="item", num_embeddings=6, embedding_dim=2, feature_names=("item",))]
        )
        self.dense = nn.Linear(2, 1)
        self.norm = nn.LayerNorm(2)


def test_ctr_loss_is_bce_plus_half_l2_of_dense_weights_and_whole_tables():
    torch.manual_seed(9)
    model = _TinyModel()
    ids = torch.tensor([0, 3, 3, 5])
    out = model.embeddings({"item": ids})
    logits = model.dense(model.norm(out.embeddings["item"])).squeeze(-1)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    total, bce = ctr_loss(logits, labels, model, l2=0.1, embedding_l2=0.2)

    expected_bce = F.binary_cross_entropy(torch.sigmoid(logits), labels)
    table_l2 = model.embeddings.tables["item"].weight.square().sum()  # every row, looked up or not
    dense_l2 = model.dense.weight.square().sum()  # no biases, no LayerNorm, no tables
    torch.testing.assert_close(bce, expected_bce)
    torch.testing.assert_close(total, expected_bce + 0.1 / 2 * dense_l2 + 0.2 / 2 * table_l2)


def test_ctr_loss_without_l2_is_the_bce():
    model = _TinyModel()
    logits, labels = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0])
    total, bce = ctr_loss(logits, labels, model, l2=0.0, embedding_l2=0.0)
    torch.testing.assert_close(total, F.binary_cross_entropy(torch.sigmoid(logits), labels))
    assert total is bce


def test_ctr_loss_of_an_empty_batch_is_the_l2_alone_and_stays_connected():
    """A rank whose data ran out: zero BCE (not NaN), the same L2, a graph back to the lookup."""
    model = _TinyModel()
    out = model.embeddings({"item": torch.zeros(0, dtype=torch.long)})
    logits = model.dense(out.embeddings["item"]).squeeze(-1)
    total, bce = ctr_loss(logits, torch.zeros(0), model, l2=0.1, embedding_l2=0.2)
    assert bce.item() == 0.0 and bce.grad_fn is not None
    expected = 0.1 / 2 * model.dense.weight.square().sum() + 0.2 / 2 * model.embeddings.tables["item"].weight.square().sum()
    torch.testing.assert_close(total, expected)
