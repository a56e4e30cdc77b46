"""Row-wise sharded tables against an unsharded nn.Embedding reference, on 2 gloo processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eain_dist.distributed.row_optimizers import RowWiseAdagrad, RowWiseAdam
from eain_dist.distributed.sharded_embedding import RowShard, ShardedEmbeddingCollection
from eain_dist.model.embedding import TableConfig

pytestmark = pytest.mark.slow
ROWS, DIM, WORLD = 23, 4, 2
TABLE = TableConfig(name="item", num_embeddings=ROWS, embedding_dim=DIM, feature_names=("item", "hist_item"))


STEPS, DECAY = 3, 0.2


def batches(step: int = 0) -> list[dict[str, torch.Tensor]]:
    """Rank 0: skewed with repeats; rank 1: an empty batch (its data ran out) in steps 0 and 1,
    then rows rank 0 also looks up (their L2 must count once, not once per rank) and new ones."""
    rank0 = {"item": torch.tensor([3, 3, 5, 22, 0]), "hist_item": torch.tensor([[0, 3, 7], [1, 1, 1], [0, 0, 5],
                                                                                [9, 11, 13], [2, 4, 6]])}
    if step < 2:
        return [rank0, {"item": torch.zeros(0, dtype=torch.long), "hist_item": torch.zeros(0, 3, dtype=torch.long)}]
    return [rank0, {"item": torch.tensor([3, 17]), "hist_item": torch.tensor([[5, 3, 3], [0, 0, 18]])}]


def weights_of_loss(rank: int, shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(100 + rank + shape.numel()))


def loss_of(out_embeddings: dict, rank: int) -> torch.Tensor:
    total = 0.0
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
        optimizer = (RowWiseAdagrad if optimizer_name == "adagrad" else RowWiseAdam)(lr=0.1, weight_decay=DECAY)
        collection = ShardedEmbeddingCollection([TABLE], sharded={"item"}, optimizer=optimizer)
        collection.load_shard_rows("item", torch.arange(ROWS), {"weight": initial, **_zero_state(optimizer)})
        for step in range(STEPS):  # the optimizer state must carry over
            out = collection(batches(step)[rank])
            loss_of(out.embeddings, rank).backward()
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
    """The same steps on one unsharded table, with the row-wise update written out: every rank's
    gradient summed, the L2 gradient λ e once per touched row, idle rows shrunk by their
    accumulator (row-wise Adagrad) or second moment (lazy Adam)."""
    weight = initial.clone()
    sum_sq, m, v, steps = torch.zeros(ROWS), torch.zeros(ROWS, DIM), torch.zeros(ROWS, DIM), torch.zeros(ROWS)
    for step in range(STEPS):
        table = torch.nn.Embedding.from_pretrained(weight.clone(), freeze=False)
        total = 0.0
        touched = set()
        for rank, batch in enumerate(batches(step)):
            embeddings = {k: table(ids) for k, ids in batch.items()}
            touched |= set(torch.unique(torch.cat([ids.reshape(-1) for ids in batch.values()])).tolist())
            total = total + loss_of(embeddings, rank)
        total.backward()
        grad = table.weight.grad
        for row in range(ROWS):
            if row not in touched:  # idle: the L2 step alone
                scale = sum_sq[row].sqrt() if optimizer_name == "adagrad" else (
                    v[row] / (1 - 0.999 ** max(steps[row].item(), 1))).sqrt()
                weight[row] = weight[row] * (1 - (0.1 * DECAY / (scale + 1e-8)).clamp(max=1.0))
                continue
            g = grad[row] + DECAY * weight[row]
            if optimizer_name == "adagrad":
                sum_sq[row] += g.square().mean()
                weight[row] -= 0.1 * g / (sum_sq[row].sqrt() + 1e-8)
            else:
                steps[row] += 1
                m[row] = 0.9 * m[row] + 0.1 * g
                v[row] = 0.999 * v[row] + 0.001 * g * g
                m_hat, v_hat = m[row] / (1 - 0.9 ** steps[row]), v[row] / (1 - 0.999 ** steps[row])
                weight[row] -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8)
    return weight, touched


@pytest.mark.parametrize("optimizer_name", ["adagrad", "adam"])
def test_sharded_lookup_and_update_equal_unsharded(optimizer_name):
    initial = torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(0))
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_worker, args=(_free_port(), optimizer_name, initial, results), nprocs=WORLD, join=True)
    expected, last_touched = reference(optimizer_name, initial)

    gathered = torch.empty(ROWS, DIM)
    for rank in range(WORLD):
        gathered[results[rank]["rows"]] = results[rank]["weight"]
        assert torch.equal(results[rank]["rows"] % WORLD, torch.full_like(results[rank]["rows"], rank))
    # Rows the last step touched carry every idle shrink; the others apply theirs when next touched.
    rows = sorted(last_touched)
    torch.testing.assert_close(gathered[rows], expected[rows], rtol=1e-5, atol=1e-6)
    for name, ids in batches(STEPS - 1)[0].items():  # the lookup after training reads the updated rows
        torch.testing.assert_close(results[0]["lookup"][name], expected[ids])
    # Each rank holds ~1/W of the table.
    assert [results[r]["bytes"] for r in range(WORLD)] == [RowShard.rows_on(r, WORLD, ROWS) * DIM * 4 for r in range(WORLD)]
