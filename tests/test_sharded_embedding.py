"""Row-wise sharded tables against an unsharded nn.Embedding reference, on 2 gloo processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eain_dist.distributed.sharded_embedding import RowShard, RowWiseAdagrad, RowWiseAdam, ShardedEmbeddingCollection
from eain_dist.model.embedding import TableConfig

pytestmark = pytest.mark.slow
ROWS, DIM, WORLD = 23, 4, 2
TABLE = TableConfig(name="item", num_embeddings=ROWS, embedding_dim=DIM, feature_names=("item", "hist_item"))


def batches() -> list[dict[str, torch.Tensor]]:
    """Rank 0: skewed with repeats; rank 1: an empty batch (its data ran out)."""
    return [
        {"item": torch.tensor([3, 3, 5, 22, 0]), "hist_item": torch.tensor([[0, 3, 7], [1, 1, 1], [0, 0, 5],
                                                                            [9, 11, 13], [2, 4, 6]])},
        {"item": torch.zeros(0, dtype=torch.long), "hist_item": torch.zeros(0, 3, dtype=torch.long)},
    ]


def weights_of_loss(rank: int, shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(100 + rank + shape.numel()))


def loss_of(out_embeddings: dict, l2: torch.Tensor, rank: int) -> torch.Tensor:
    total = 0.1 * l2
    for name, value in out_embeddings.items():
        total = total + (value * weights_of_loss(rank, value.shape)).sum()
    return total


# Result dicts come from a *spawned* manager: forking this process after the session's Ray
# instance started would break the driver's gRPC connection to Ray (later Ray calls hang).


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, optimizer_name: str, initial: torch.Tensor, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        optimizer = RowWiseAdagrad(lr=0.1) if optimizer_name == "adagrad" else RowWiseAdam(lr=0.1)
        collection = ShardedEmbeddingCollection([TABLE], sharded={"item"}, optimizer=optimizer)
        collection.load_shard_rows("item", torch.arange(ROWS), {"weight": initial, **_zero_state(optimizer)})
        for _ in range(2):  # two steps: the optimizer state must carry over
            out = collection(batches()[rank])
            loss_of(out.embeddings, out.l2, rank).backward()
            collection.step()
        out = collection(batches()[rank])
        state = collection.shard_state()["item"]
        results[rank] = {"rows": state["rows"], "weight": state["weight"],
                         "lookup": {k: v.detach() for k, v in out.embeddings.items()},
                         "bytes": collection.shard_bytes()["item"]}
    finally:
        dist.destroy_process_group()


def _zero_state(optimizer) -> dict[str, torch.Tensor]:
    return optimizer.state_for(ROWS, DIM)


def reference(optimizer_name: str, initial: torch.Tensor):
    """The same two steps on one unsharded table, with the row-wise update written out."""
    weight = initial.clone()
    sum_sq, m, v, steps = torch.zeros(ROWS), torch.zeros(ROWS, DIM), torch.zeros(ROWS, DIM), torch.zeros(ROWS)
    for _ in range(2):
        table = torch.nn.Embedding.from_pretrained(weight.clone(), freeze=False)
        total = 0.0
        touched = set()
        for rank, batch in enumerate(batches()):
            embeddings = {k: table(ids) for k, ids in batch.items()}
            unique = torch.unique(torch.cat([ids.reshape(-1) for ids in batch.values()]))
            unique = unique[unique != 0]
            touched |= set(torch.unique(torch.cat([ids.reshape(-1) for ids in batch.values()])).tolist())
            total = total + loss_of(embeddings, table(unique).square().sum(), rank)
        total.backward()
        grad = table.weight.grad
        for row in sorted(touched):
            g = grad[row]
            if optimizer_name == "adagrad":
                sum_sq[row] += g.square().mean()
                weight[row] -= 0.1 * g / (sum_sq[row].sqrt() + 1e-8)
            else:
                steps[row] += 1
                m[row] = 0.9 * m[row] + 0.1 * g
                v[row] = 0.999 * v[row] + 0.001 * g * g
                m_hat, v_hat = m[row] / (1 - 0.9 ** steps[row]), v[row] / (1 - 0.999 ** steps[row])
                weight[row] -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8)
    return weight


@pytest.mark.parametrize("optimizer_name", ["adagrad", "adam"])
def test_sharded_lookup_and_update_equal_unsharded(optimizer_name):
    initial = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(0))
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_worker, args=(_free_port(), optimizer_name, initial, results), nprocs=WORLD, join=True)
    expected = reference(optimizer_name, initial)

    gathered = torch.empty(ROWS, DIM)
    for rank in range(WORLD):
        gathered[results[rank]["rows"]] = results[rank]["weight"]
        assert torch.equal(results[rank]["rows"] % WORLD, torch.full_like(results[rank]["rows"], rank))
    torch.testing.assert_close(gathered, expected, rtol=1e-5, atol=1e-6)
    for name, ids in batches()[0].items():  # the lookup after training reads the updated rows
        torch.testing.assert_close(results[0]["lookup"][name], expected[ids])
    # Each rank holds ~1/W of the table.
    assert [results[r]["bytes"] for r in range(WORLD)] == [RowShard.rows_on(r, WORLD, ROWS) * DIM * 4 for r in range(WORLD)]
