"""GPU (CUDA / NCCL) throughput of the sharded tables and of EAIN's training step.

    python benchmarks/gpu.py [--out DIR] [--rows 100000000]

One GPU: an NCCL world of one (NCCL refuses two ranks on one device), so these are the
single-rank figures of the same code the cluster runs: lookups/s and row-wise updates/s of a
100M x 16 table (the full Amazon 2023 user + item vocabulary) held on the GPU, and EAIN
samples/s. Writes gpu.json and gpu.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eain_dist.config import load_config  # noqa: E402
from eain_dist.distributed.row_optimizers import RowWiseAdagrad  # noqa: E402
from eain_dist.distributed.sharded_embedding import ShardedEmbeddingCollection  # noqa: E402
from eain_dist.model.embedding import TableConfig  # noqa: E402
from eain_dist.data.loader import to_device  # noqa: E402
from eain_dist.train.worker import build_worker, train_step  # noqa: E402
from common import free_port, write_results  # noqa: E402


def _timed(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def table_throughput(rows: int, dim: int, ids_per_step: int, device) -> dict:
    table = TableConfig(name="item", num_embeddings=rows, embedding_dim=dim, feature_names=("item",))
    started = time.perf_counter()
    collection = ShardedEmbeddingCollection([table], sharded={"item"}, optimizer=RowWiseAdagrad(lr=0.05), device=device)
    torch.cuda.synchronize()
    init_s = time.perf_counter() - started
    zipf = np.random.default_rng(0).zipf(1.2, size=(20, ids_per_step)) % rows
    batches = [torch.from_numpy(z).to(device) for z in zipf]
    state = {"i": 0}

    def lookup():
        with torch.no_grad():
            collection({"item": batches[state["i"] % 20]})
        state["i"] += 1

    def train():
        out = collection({"item": batches[state["i"] % 20]})
        out.embeddings["item"].sum().backward()
        collection.step()
        state["i"] += 1

    for fn in (lookup, train):
        fn()
    lookup_s, train_s = _timed(lookup, 50), _timed(train, 50)
    return {"rows": rows, "dim": dim, "ids_per_step": ids_per_step, "init_s": init_s,
            "table_and_state_gib": torch.cuda.memory_allocated() / 2**30,
            "lookup_ids_per_s": ids_per_step / lookup_s, "train_steps_per_s": 1 / train_s,
            "train_ids_per_s": ids_per_step / train_s}


def eain_throughput(batch_size: int, device) -> dict:
    meta = {"tables": {"user": 2_000_001, "item": 2_000_001, "category": 1001, "hour": 24, "weekday": 7, "gap": 32},
            "features": {"user": "user", "item": "item", "hist_item": "item", "category": "category",
                         "hist_category": "category", "hour": "hour", "weekday": "weekday", "gap": "gap"},
            "max_history": 50}
    worker = build_worker(load_config(), meta, device)
    rng = np.random.default_rng(0)
    batch = {
        "label": torch.from_numpy(rng.integers(0, 2, batch_size).astype(np.float32)),
        **{k: torch.from_numpy(rng.integers(1, meta["tables"][t], batch_size)) for k, t in
           (("user", "user"), ("item", "item"), ("category", "category"))},
        "hour": torch.from_numpy(rng.integers(0, 24, batch_size)), "weekday": torch.from_numpy(rng.integers(0, 7, batch_size)),
        "gap": torch.from_numpy(rng.integers(0, 32, batch_size)),
        "hist_item": torch.from_numpy(rng.integers(1, 2_000_001, (batch_size, 50))),
        "hist_category": torch.from_numpy(rng.integers(1, 1001, (batch_size, 50))),
        "hist_len": torch.from_numpy(rng.integers(0, 51, batch_size)),
        "position": torch.zeros(batch_size, dtype=torch.long), "request_id": torch.zeros(batch_size, dtype=torch.long),
    }
    batch = to_device(batch, device)
    for _ in range(3):
        train_step(worker, batch)
    seconds = _timed(lambda: train_step(worker, batch), 30)
    return {"batch_size": batch_size, "samples_per_s": batch_size / seconds, "step_ms": seconds * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--rows", type=int, default=100_000_000)
    args = parser.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    device = torch.device("cuda", 0)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "eain": [eain_throughput(b, device) for b in (1024, 4096)],
               "table": table_throughput(args.rows, 16, 1024 * 51, device)}
    dist.destroy_process_group()
    lines = [f"# GPU (NCCL, one rank): {results['device']}, torch {results['torch']}", "",
             "`python benchmarks/gpu.py` on a lent GPU machine (CI has none).", "",
             "| what | figure |", "|---|---:|"]
    for row in results["eain"]:
        lines.append(f"| EAIN train step, batch {row['batch_size']}, dim 16 | {row['samples_per_s']:,.0f} samples/s |")
    t = results["table"]
    lines += [f"| {t['rows']:,} x {t['dim']} table + row-wise Adagrad state on the GPU | {t['table_and_state_gib']:.1f} GiB (init {t['init_s']:.1f} s) |",
              f"| lookups ({t['ids_per_step']:,} Zipf ids per call) | {t['lookup_ids_per_s']:,.0f} ids/s |",
              f"| lookup + backward + row-wise update | {t['train_steps_per_s']:,.1f} steps/s ({t['train_ids_per_s']:,.0f} ids/s) |"]
    print("\n".join(lines))
    write_results("gpu", results, "\n".join(lines) + "\n", Path(args.out))


if __name__ == "__main__":
    main()
