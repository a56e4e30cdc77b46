"""The CUDA / NCCL path of the sharded tables and the training step (skipped without a GPU).

CI has no GPU; these run on a lent GPU machine (see the closing notes of the issues). One GPU
means an NCCL world of one: NCCL refuses two ranks on one device. The checks are that every
tensor lives on the GPU through lookup, all-to-all, backward and the row-wise update, and that
the numbers equal the CPU (gloo) run.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the NCCL path); CI has none")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_in_group(backend: str, body):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        return body()
    finally:
        dist.destroy_process_group()


def _train(device: torch.device) -> tuple[list[float], torch.Tensor]:
    from test_training import META, MAX_HISTORY, _same_start, config, global_batches

    from eain_dist.data.loader import to_device, to_tensors
    from eain_dist.train.worker import build_worker, train_step

    worker = build_worker(config("eain"), META, device)
    _same_start(worker)
    losses = [train_step(worker, to_device(to_tensors(b, MAX_HISTORY), device))
              for b in global_batches()]
    for shard in worker.collection.shards.values():
        assert shard.weight.device.type == device.type and all(s.device.type == device.type for s in shard.state.values())
    return losses, worker.collection.shards["item"].weight.cpu()


def test_nccl_training_steps_match_gloo_on_cpu():
    cpu_losses, cpu_rows = _run_in_group("gloo", lambda: _train(torch.device("cpu")))
    gpu_losses, gpu_rows = _run_in_group("nccl", lambda: _train(torch.device("cuda", 0)))
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-3, atol=2e-4)
    torch.testing.assert_close(gpu_rows, cpu_rows, rtol=1e-3, atol=1e-4)


def test_nccl_sharded_lookup_and_adam_update_match_a_dense_reference():
    from eain_dist.distributed.row_optimizers import RowWiseAdam
    from eain_dist.distributed.sharded_embedding import ShardedEmbeddingCollection
    from eain_dist.model.embedding import TableConfig

    rows, dim = 1000, 8
    table = TableConfig(name="item", num_embeddings=rows, embedding_dim=dim, feature_names=("item",))
    initial = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([5, 5, 999, 0, 17, 17, 17, 400])

    def sharded():
        device = torch.device("cuda", 0)
        collection = ShardedEmbeddingCollection([table], sharded={"item"}, optimizer=RowWiseAdam(lr=0.1), device=device)
        collection.load_shard_rows("item", torch.arange(rows), {"weight": initial, **RowWiseAdam().state_for(rows, dim)})
        out = collection({"item": ids.to(device)}).embeddings["item"]
        torch.testing.assert_close(out.cpu(), initial[ids])
        out.square().sum().backward()
        collection.step()
        return collection.shards["item"].weight.cpu()

    updated = _run_in_group("nccl", sharded)
    reference = initial.clone()
    touched = torch.unique(ids)
    grad = torch.zeros(rows, dim).index_add_(0, ids, 2 * initial[ids])[touched]
    m_hat, v_hat = grad, grad * grad  # first Adam step: bias-corrected moments equal g and g^2
    reference[touched] -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8)
    torch.testing.assert_close(updated, reference, rtol=1e-5, atol=1e-6)
