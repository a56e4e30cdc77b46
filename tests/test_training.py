"""Distributed training: 2 workers equal 1, checkpoints re-shard, a crashed worker is recovered."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from eain_dist.config import load_config
from eain_dist.distributed import checkpoint
from eain_dist.train import metrics
from eain_dist.train.evaluation import split_metrics
from eain_dist.data.loader import to_device, to_tensors
from eain_dist.train.worker import build_worker, synchronized_batches, train_step

pytestmark = pytest.mark.slow
MAX_HISTORY = 6
META = {"tables": {"user": 41, "item": 61, "category": 5, "hour": 24, "weekday": 7, "gap": 32},
        "features": {"user": "user", "item": "item", "hist_item": "item", "category": "category",
                     "hist_category": "category", "hour": "hour", "weekday": "weekday", "gap": "gap"},
        "max_history": MAX_HISTORY}


def global_batches(n_batches: int = 6, size: int = 32) -> list[pa.Table]:
    """Impressions whose label depends on the item and the history (learnable)."""
    rng = np.random.default_rng(0)
    tables = []
    for _ in range(n_batches):
        item = rng.integers(1, 61, size)
        hist = rng.integers(1, 61, (size, MAX_HISTORY))
        hist_len = rng.integers(0, MAX_HISTORY + 1, size)
        hist[np.arange(MAX_HISTORY)[None, :] < (MAX_HISTORY - hist_len)[:, None]] = 0
        label = ((item + hist[:, -1]) % 3 == 0).astype(np.float32)
        flat = pa.array(hist.reshape(-1))
        offsets = pa.array(np.arange(0, size * MAX_HISTORY + 1, MAX_HISTORY, dtype=np.int32))
        tables.append(pa.table({
            "label": label, "user": rng.integers(1, 41, size), "item": item, "category": item % 5,
            "hour": rng.integers(0, 24, size), "weekday": rng.integers(0, 7, size), "gap": rng.integers(0, 32, size),
            "hist_item": pa.ListArray.from_arrays(offsets, flat),
            "hist_category": pa.ListArray.from_arrays(offsets, pa.array(hist.reshape(-1) % 5)),
            "hist_len": hist_len.astype(np.int32), "request_id": np.arange(size), "position": np.zeros(size, np.int32),
            "timestamp": np.zeros(size, np.int64)}))
    return tables


def config(model: str = "eain"):
    # l2=0: the mini-batch-aware L2 covers the rows each *rank's* batch touched, so with L2 on,
    # 2 workers penalise a row seen by one rank half as much as 1 worker does (documented).
    return load_config(overrides=[f"model.name={model}", "model.dropout=0.0", "train.embedding_lr=0.05", "model.l2=0",
                                  "train.lr=0.003", "model.mlp_batch_norm=false"])


# Result dicts come from a *spawned* manager: forking this process after the session's Ray
# instance started would break the driver's gRPC connection to Ray (later Ray calls hang).


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _train_worker(rank: int, world: int, port: int, model: str, results, save_dir: str | None):
    _init(rank, world, port)
    try:
        worker = build_worker(config(model), META, torch.device("cpu"))
        _same_start(worker)
        losses = []
        for batch in global_batches():
            local = batch.slice(rank * len(batch) // world, len(batch) // world)  # this rank's half
            out = train_step(worker, to_device(to_tensors(local, MAX_HISTORY), worker.device))
            losses.append(out)
        result = {"losses": losses}
        if save_dir:
            checkpoint.save(save_dir, rank=rank, model=worker.model, dense_optimizer=worker.dense_optimizer,
                            collection=worker.collection, state={"steps": len(losses)})
            result["predictions"] = _predict(worker)
        results[rank] = result
    finally:
        dist.destroy_process_group()


def _same_start(worker) -> None:
    """Identical starting rows whatever the world size (each rank takes its own rows)."""
    for name, shard in worker.collection.shards.items():
        rows = shard.config.num_embeddings
        full = torch.randn(rows, shard.config.embedding_dim, generator=torch.Generator().manual_seed(1)) * 0.05
        worker.collection.load_shard_rows(name, torch.arange(rows),
                                          {"weight": full, **worker.collection.optimizer.state_for(rows, full.shape[1])})


def _predict(worker) -> list[float]:
    batch = to_tensors(global_batches(1, 40)[0], MAX_HISTORY)
    worker.ddp.eval()
    with torch.no_grad():
        return torch.sigmoid(worker.model(batch).logits).tolist()


def run(world: int, model: str = "eain", save_dir: str | None = None) -> dict:
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_train_worker, args=(world, _free_port(), model, results, save_dir), nprocs=world, join=True)
    return dict(results)


@pytest.mark.parametrize("model", ["eain", "din"])
def test_two_workers_reproduce_one_workers_losses(model):
    one = run(1, model)[0]["losses"]
    two = run(2, model)
    global_two = [(a + b) / 2 for a, b in zip(two[0]["losses"], two[1]["losses"])]  # equal halves
    np.testing.assert_allclose(global_two, one, rtol=2e-4, atol=2e-5)
    assert one[-1] < one[0]  # and it learns


def _restore_worker(rank: int, world: int, port: int, directory: str, results):
    _init(rank, world, port)
    try:
        worker = build_worker(config(), META, torch.device("cpu"))
        checkpoint.load(directory, model=worker.model, dense_optimizer=worker.dense_optimizer,
                        collection=worker.collection)
        results[rank] = _predict(worker)
    finally:
        dist.destroy_process_group()


def test_checkpoint_written_by_two_workers_restores_on_one_and_back(tmp_path):
    written = run(2, save_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.pt", "shards-rank=0.pt", "shards-rank=1.pt",
                                                         "state.json"]
    for world in (1, 2):
        results = mp.get_context("spawn").Manager().dict()
        mp.spawn(_restore_worker, args=(world, _free_port(), str(tmp_path), results), nprocs=world, join=True)
        np.testing.assert_allclose(results[0], written[0]["predictions"], rtol=1e-6)


def _empty_rank_worker(rank: int, port: int, results):
    _init(rank, 2, port)
    try:
        worker = build_worker(config(), META, torch.device("cpu"))
        mine = global_batches(5)[: 5 if rank == 0 else 2]  # rank 1's shard runs out after 2 batches
        seen = [len(b["label"]) for b in synchronized_batches(mine, worker) if train_step(worker, b) or True]
        results[rank] = seen
    finally:
        dist.destroy_process_group()


def test_uneven_shards_step_together_with_empty_batches():
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_empty_rank_worker, args=(_free_port(), results), nprocs=2, join=True)
    assert results[0] == [32] * 5
    assert results[1] == [32, 32, 0, 0, 0]


def _evaluation_worker(rank: int, port: int, parts: list, results):
    _init(rank, 2, port)
    try:
        results[rank] = split_metrics(parts[rank], torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_evaluate_exactly_what_one_process_does():
    """Uneven shares, every user and many tied logits on both ranks, logits past float32 sigmoid's 1.0."""
    rng = np.random.default_rng(3)
    n = 900
    logits = np.round(rng.normal(scale=8, size=n), 0).astype(np.float32)  # ties, and |logit| > 17
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits / 4))).astype(np.float32)
    users = rng.integers(0, 40, n)
    cut = 650
    parts = [{"logit": logits[:cut], "label": labels[:cut], "user": users[:cut]},
             {"logit": logits[cut:], "label": labels[cut:], "user": users[cut:]}]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_evaluation_worker, args=(_free_port(), parts, results), nprocs=2, join=True)
    expected = metrics.evaluate(logits, labels, users)
    assert results[0] == results[1]
    assert results[0] == pytest.approx(expected, rel=1e-12)


def _batch_norm_worker(rank: int, port: int, results):
    _init(rank, 1, port)
    try:
        cfg = load_config(overrides=["model.mlp_batch_norm=true", "model.dropout=0.0"])
        worker = build_worker(cfg, META, torch.device("cpu"))
        batch = global_batches(1, 33)[0]
        losses = [train_step(worker, to_tensors(part, MAX_HISTORY)) for part in (batch.slice(0, 32), batch.slice(32))]
        results[rank] = losses
    finally:
        dist.destroy_process_group()


def test_batch_norm_trains_on_a_last_batch_of_one_row():
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_batch_norm_worker, args=(_free_port(), results), nprocs=1, join=True)
    assert all(np.isfinite(results[0]))


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory, ray_local):
    from eain_dist.data.pipeline import prepare
    from eain_dist.data.synthetic import generate

    folder = tmp_path_factory.mktemp("tiny")
    generate(str(folder / "raw"), users=300, items=150, reviews=5000, categories=5, seed=3, files=1)
    cfg = load_config(overrides=[f"data.source={folder / 'raw/reviews'}", f"data.meta={folder / 'raw/meta'}",
                                 f"data.output={folder / 'prepared'}", "data.max_history=8", "data.format=amazon2023"])
    prepare(cfg, log=lambda message: None)
    return folder


def test_worker_crash_resumes_from_checkpoint_and_wandb_logs(tiny_prepared, ray_local):
    from eain_dist.train.trainer import train

    run_dir = tiny_prepared / "run"
    overrides = [f"data.output={tiny_prepared / 'prepared'}", f"train.run_dir={run_dir}", "data.max_history=8",
                 "train.epochs=2", "train.batch_size=128", "train.early_stopping_patience=5", "train.num_workers=2",
                 "model.mlp_hidden=[32]", "wandb.mode=offline"]
    train_rows = json.loads((tiny_prepared / "prepared/meta.json").read_text())["splits"]["train"]
    steps_per_epoch = -(-train_rows // (2 * 128))  # at least: ranks step together until both are done
    # In the middle of epoch 2, after epoch 1's checkpoint.
    result = train(load_config(overrides=overrides + ["train.inject_fault=[2,3]"]), log=lambda message: None)

    assert (run_dir / "fault-injected").read_text().startswith("worker died in epoch 2 at step 3")
    train_stats = result.metrics["train"]
    assert train_stats["restarts"] == 1 and train_stats["epochs"] == 2
    # Every step accounted for: epoch 2 was redone from epoch 1's checkpoint, every training row
    # was seen exactly once per epoch across the two workers, and no step was counted twice.
    history = result.metrics["history"]
    assert [h["samples"] for h in history] == [train_rows, train_rows]
    assert history[0]["steps"] >= steps_per_epoch and history[1]["steps"] - history[0]["steps"] >= steps_per_epoch
    assert train_stats["steps"] == history[1]["steps"]
    assert [h["epoch"] for h in result.metrics["history"]] == [1, 2]
    # Both ranks trained on about half of every epoch (equal shares; padding rows aside).
    for h in history:
        assert sum(h["samples_per_rank"]) == train_rows
        assert all(abs(n / train_rows - 0.5) <= 0.05 for n in h["samples_per_rank"])
    assert train_stats["samples_per_rank"] == history[-1]["samples_per_rank"]
    assert 0.5 < result.metrics["test"]["auc"] <= 1.0
    assert (run_dir / "curves.png").stat().st_size > 10_000
    written = json.loads((run_dir / "metrics.json").read_text())
    assert set(written) >= {"valid", "test", "train", "world_size", "model"}
    # W&B (offline) wrote real run files on rank 0 only: one per attempt (the crash restarted it).
    from wandb_records import read_run

    runs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2
    history, summary = read_run(runs[-1])
    assert summary["test_auc"] == pytest.approx(result.metrics["test"]["auc"])
    assert any("valid_auc" in row for row in history)
    assert any(row.get("curves/_type") == "image-file" for row in history)  # the curves plot


def test_evaluation_every_n_steps_with_an_all_positive_validation_split(tiny_prepared, ray_local, tmp_path):
    """An undefined validation AUC (one class) neither crashes the run nor hides the best
    checkpoint; patience 0 trains every epoch; batch norm copes with one-row batches."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from eain_dist.train.trainer import train

    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared / "prepared", prepared)
    for path in (prepared / "valid").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                        pc.cast(pc.add(pc.multiply(table["label"], 0), 1), pa.float32())), path)
    run_dir = tmp_path / "run"
    train_rows = json.loads((prepared / "meta.json").read_text())["splits"]["train"]
    batch = 256
    config = load_config(overrides=[
        f"data.output={prepared}", f"train.run_dir={run_dir}", "data.max_history=8", "train.epochs=2",
        f"train.batch_size={batch}", "train.eval_every_steps=5", "train.early_stopping_patience=0",
        "model.mlp_batch_norm=true", "model.mlp_hidden=[32]", "wandb.mode=disabled"])
    result = train(config, log=lambda message: None)

    history = result.metrics["history"]
    steps_per_epoch = -(-train_rows // batch)
    assert [h["steps"] for h in history if not h["epoch_done"]] == list(range(5, 2 * steps_per_epoch + 1, 5))
    assert [h["steps"] for h in history if h["epoch_done"]] == [steps_per_epoch, 2 * steps_per_epoch]
    assert [h["evaluation"] for h in history] == list(range(1, len(history) + 1))
    assert all(math.isnan(h["valid_auc"]) for h in history) and all(0 < h["test_auc"] < 1 for h in history)
    train_stats = result.metrics["train"]
    assert train_stats["epochs"] == 2 and train_stats["best_evaluation"] == 1 and train_stats["best_steps"] == 5
    assert math.isnan(result.metrics["valid"]["auc"]) and result.metrics["test"]["auc"] == history[0]["test_auc"]
    best = Path((run_dir / "checkpoints" / "BEST").read_text().strip())
    assert json.loads((best / "state.json").read_text())["steps"] == 5
    # config.yaml: only the sections a run reads (not generate, tune or compare).
    assert list(yaml.safe_load((run_dir / "config.yaml").read_text())) == ["data", "sampling", "model", "train",
                                                                           "wandb", "ray"]
