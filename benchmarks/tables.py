"""Row-wise sharded tables side by side: this project's, TorchRec's, and one unsharded process.

Two tables, user and item (each half of --rows, dim 16), row-wise Adagrad (lr 0.05). A sample
looks up 1 user id and 51 item ids (a target and a history of 50), Zipf-distributed (exponent
1.05, hot ids scattered by a multiplicative hash); a small dense head (user ++ target ++ mean
of the history -> 64 -> 1, BCE, Adam) makes it a training step. Arms, each in fresh processes:

- eain:      `ShardedEmbeddingCollection`, 2 ranks x 1 torch thread (gloo over loopback), batch
             1024 per rank, head under DDP: the trainer's path (one exchange for both tables).
- unsharded: the same collection in a 1-rank group (tables whole, served locally), one process
             with 2 torch threads and batch 2048: the same samples per step on the same cores.
- torchrec:  TorchRec's `EmbeddingCollection` under `DistributedModelParallel`, ROW_WISE sharding,
             fused EXACT_ROWWISE_ADAGRAD (FBGEMM CPU kernels), 2 ranks x 1 thread, batch 1024 per
             rank, head under DDP. Runs in its own venv (never a dependency of the project):
                 python3 -m venv benchmarks/work/torchrec-venv
                 benchmarks/work/torchrec-venv/bin/pip install torch==2.13.0
                 benchmarks/work/torchrec-venv/bin/pip install --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 \\
                     torchmetrics==1.0.3 tensordict pyre-extensions typing-inspect mypy-extensions numpy
             (`pip install torchrec==1.8.*` alone also pulls fbgemm-gpu 1.9.0, a CUDA build whose files
             overwrite fbgemm-gpu-cpu's in the same package folder: `import fbgemm_gpu` then fails.)

samples/s = samples per step (2048) / seconds per step, over --steps timed steps after warm-up.
Memory: the table bytes each rank holds (weights + optimizer state) and its peak RSS.

    python benchmarks/tables.py [--rows 1000000,100000000] [--steps 50] [--arms eain,unsharded,torchrec]
    python benchmarks/tables.py --render --note "..."    # rewrite tables.md from tables.json

Writes benchmarks/results/tables.json and tables.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GIB, RESULTS, free_port, machine_info, peak_rss, write_results, zipf_ids  # noqa: E402

TORCHREC_PYTHON = Path(__file__).parent / "work" / "torchrec-venv" / "bin" / "python"
DIM, HISTORY, ZIPF, LR = 16, 50, 1.05, 0.05
TARGETS = {"torchrec": 2.5, "unsharded": 1.5}  # eain's samples/s must reach these multiples


def batches(rank: int, count: int, batch: int, rows: int) -> list[dict]:
    """`count` distinct batches of (user B, item B x 51, label B) ids for this rank."""
    import numpy as np
    import torch

    rng = np.random.default_rng(1000 + rank)
    return [{"user": torch.from_numpy(zipf_ids(rng, batch, rows, ZIPF)),
             "item": torch.from_numpy(zipf_ids(rng, (batch, HISTORY + 1), rows, ZIPF)),
             "label": torch.from_numpy(rng.integers(0, 2, batch).astype(np.float32))} for _ in range(count)]


def head():
    from torch import nn

    return nn.Sequential(nn.Linear(3 * DIM, 64), nn.ReLU(), nn.Linear(64, 1))


def features(user, items):
    """user B x D, items B x 51 x D -> the head's input B x 3D."""
    import torch

    return torch.cat([user, items[:, 0], items[:, 1:].mean(1)], dim=1)


def timed_steps(step, warmup: int, steps: int, barrier) -> float:
    for i in range(warmup):
        step(i)
    barrier()
    started = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    barrier()
    return (time.perf_counter() - started) / steps


def init_group(rank: int, world: int, port: int, threads: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)


# ----------------------------------------------------------------------------- arms (one rank each)


def eain_rank(rank: int, world: int, port: int, args: dict, out_dir: str) -> None:
    """This project's collection; world 1 with 2 threads is the unsharded arm."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from eain_dist.distributed.sharded_embedding import RowWiseAdagrad, ShardedEmbeddingCollection
    from eain_dist.model.embedding import TableConfig

    init_group(rank, world, port, threads=2 if world == 1 else 1)
    per_table = args["rows"] // 2
    tables = [TableConfig(name=name, num_embeddings=per_table, embedding_dim=DIM, feature_names=(name,))
              for name in ("user", "item")]
    collection = ShardedEmbeddingCollection(tables, sharded={"user", "item"}, optimizer=RowWiseAdagrad(lr=LR),
                                            process_group=dist.new_group(), seed=0)
    model = DistributedDataParallel(head())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(rank, 8, args["batch"] * (2 // world), per_table)

    def step(i: int) -> None:
        b = data[i % len(data)]
        out = collection({"user": b["user"], "item": b["item"]}).embeddings
        loss = F.binary_cross_entropy_with_logits(model(features(out["user"], out["item"])).squeeze(1), b["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        collection.step(grad_scale=1.0 / world)

    seconds = timed_steps(step, args["warmup"], args["steps"], dist.barrier)
    table_bytes = sum(s.weight.numel() * 4 + sum(t.numel() * 4 for t in s.state.values())
                      for s in collection.shards.values())
    _write_rank(out_dir, rank, seconds, table_bytes)
    dist.destroy_process_group()


def torchrec_rank(rank: int, world: int, port: int, args: dict, out_dir: str) -> None:
    """TorchRec's row-wise sharded EmbeddingCollection with fused row-wise Adagrad."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingType

    init_group(rank, world, port, threads=1)
    per_table = args["rows"] // 2
    batch = args["batch"]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = EmbeddingCollection(device=torch.device("meta"), tables=[
                EmbeddingConfig(name=name, embedding_dim=DIM, num_embeddings=per_table, feature_names=[name])
                for name in ("user", "item")])
            self.head = head()

        def forward(self, ids):
            out = self.tables(ids)
            items = out["item"].values().view(batch, HISTORY + 1, DIM)
            return self.head(features(out["user"].values(), items)).squeeze(1)

    sharder = EmbeddingCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                                                       "learning_rate": LR})
    constraints = {name: ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value]) for name in ("user", "item")}
    model = Model()
    plan = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device="cpu"),
                                    constraints=constraints).collective_plan(model, [sharder], dist.GroupMember.WORLD)
    sharded = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=[sharder])
    optimizer = torch.optim.Adam([p for name, p in sharded.named_parameters() if "tables" not in name], lr=1e-3)
    lengths = torch.cat([torch.ones(batch, dtype=torch.int32), torch.full((batch,), HISTORY + 1, dtype=torch.int32)])
    data = [(KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.cat([b["user"], b["item"].reshape(-1)]),
                                                 lengths=lengths), b["label"])
            for b in batches(rank, 8, batch, per_table)]

    def step(i: int) -> None:
        ids, label = data[i % len(data)]
        loss = F.binary_cross_entropy_with_logits(sharded(ids), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the tables' fused Adagrad updates their rows here
        optimizer.step()

    seconds = timed_steps(step, args["warmup"], args["steps"], dist.barrier)
    table_bytes = sum(t.numel() * t.element_size() for t in sharded.state_dict().values()
                      if hasattr(t, "local_shards") for s in t.local_shards() for t in [s.tensor])
    _write_rank(out_dir, rank, seconds, table_bytes)
    dist.destroy_process_group()


def _write_rank(out_dir: str, rank: int, seconds: float, table_bytes: int) -> None:
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "seconds_per_step": seconds, "table_bytes": table_bytes, "peak_rss": peak_rss()}))


# ----------------------------------------------------------------------------- parent


def child(arm: str, args: dict) -> dict:
    """One arm in fresh processes (torch.multiprocessing spawn); its ranks' figures."""
    import torch.multiprocessing as mp

    world = 1 if arm == "unsharded" else 2
    target = torchrec_rank if arm == "torchrec" else eain_rank
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(target, args=(world, free_port(), args, out_dir), nprocs=world, join=True)
        ranks = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
    seconds = max(r["seconds_per_step"] for r in ranks)
    return {"arm": arm, "ranks": ranks, "seconds_per_step": seconds,
            "samples_per_s": 2 * args["batch"] / seconds}


def run_arm(arm: str, args: argparse.Namespace, rows: int) -> dict:
    python = str(TORCHREC_PYTHON) if arm == "torchrec" else sys.executable
    if arm == "torchrec" and not TORCHREC_PYTHON.exists():
        return {"arm": arm, "error": f"{TORCHREC_PYTHON} not found (see the module docstring)"}
    settings = json.dumps({"rows": rows, "batch": args.batch, "steps": args.steps, "warmup": args.warmup})
    load = os.getloadavg()[0]
    done = subprocess.run([python, __file__, "--child", arm, "--settings", settings], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0:
        return {"arm": arm, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed",
                "load_average_1m_before": load}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{rows:,} rows, {arm}: {result['samples_per_s']:,.0f} samples/s", flush=True)
    return {**result, "load_average_1m_before": load}


def to_markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = ["# Row-wise sharded tables: eain-dist vs TorchRec vs one unsharded process (CPU)", "",
             f"Date {m['date']}, eain_dist at {m['code']}. Machine: {m['processor']}, {m['cpu_count']} CPUs, "
             f"{m['memory_gib']} GiB, torch {m['torch']}, Python {m['python']}; TorchRec {s['torchrec_version']}.", "",
             f"Command: `{s['command']}`", "",
             f"Two tables (user, item), each half the rows, dim {DIM}, row-wise Adagrad; per sample 1 user id + "
             f"{HISTORY + 1} item ids, Zipf {ZIPF}; 2 x {s['batch']} samples per step; {s['steps']} timed steps "
             f"after {s['warmup']} warm-up. 1-minute load average {m['load_average_at_start'][0]:.1f} at the "
             f"start, {m['load_average_at_end'][0]:.1f} at the end (2 cores); before each arm in the table.", "",
             "| rows (both tables) | arm | processes x threads | samples/s | ms/step | table GB per rank | "
             "peak RSS GB per rank | eain vs arm | load before |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for rows, arms in report["results"].items():
        eain = next((a for a in arms if a["arm"] == "eain" and "error" not in a), None)
        for a in arms:
            if "error" in a:
                lines.append(f"| {int(rows):,} | {a['arm']} | | failed: {a['error']} | | | | | |")
                continue
            shape = "1 x 2" if a["arm"] == "unsharded" else "2 x 1"
            ratio = f"{eain['samples_per_s'] / a['samples_per_s']:.2f}x" if eain and a is not eain else ""
            lines.append(f"| {int(rows):,} | {a['arm']} | {shape} | {a['samples_per_s']:,.0f} | "
                         f"{1000 * a['seconds_per_step']:.1f} | "
                         f"{max(r['table_bytes'] for r in a['ranks']) / GIB:.2f} | "
                         f"{max(r['peak_rss'] for r in a['ranks']) / GIB:.2f} | {ratio} | "
                         f"{a['load_average_1m_before']:.1f} |")
    lines += ["", *verdicts(report), *[f"- {note}" for note in report.get("notes", [])], ""]
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    lines = []
    for rows, arms in report["results"].items():
        by_arm = {a["arm"]: a for a in arms if "error" not in a}
        if "eain" not in by_arm:
            continue
        for other, target in TARGETS.items():
            if other in by_arm:
                ratio = by_arm["eain"]["samples_per_s"] / by_arm[other]["samples_per_s"]
                lines.append(f"- {int(rows):,} rows: eain {ratio:.2f}x {other} (target >= {target}x: "
                             f"{'met' if ratio >= target else 'MISSED'}).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,100000000", help="comma-separated totals over both tables")
    parser.add_argument("--arms", default="eain,unsharded,torchrec")
    parser.add_argument("--batch", type=int, default=1024, help="samples per rank per step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="rewrite tables.md from tables.json, measure nothing")
    parser.add_argument("--note", action="append", default=[], help="with --render: a line added under the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.settings))))
        return
    if args.render:
        report = json.loads((args.out / "tables.json").read_text())
        report["notes"] = args.note or report.get("notes", [])
        write_results("tables", report, to_markdown(report), args.out)
        return
    machine = machine_info("torch")
    version = subprocess.run([str(TORCHREC_PYTHON), "-c", "import importlib.metadata as m; print(m.version('torchrec'))"],
                             capture_output=True, text=True, check=False).stdout.strip() if TORCHREC_PYTHON.exists() else None
    results = {rows: [run_arm(arm, args, int(rows)) for arm in args.arms.split(",")] for rows in args.rows.split(",")}
    machine["load_average_at_end"] = os.getloadavg()
    report = {"machine": machine, "settings": {
        "command": " ".join(["python benchmarks/tables.py", *map(shlex.quote, sys.argv[1:])]), "batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "torchrec_version": version}, "results": results}
    markdown = to_markdown(report)
    print(markdown)
    write_results("tables", report, markdown, args.out)


if __name__ == "__main__":
    main()
