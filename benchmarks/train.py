"""Steady-state EAIN training throughput: Ray Train (1 and 2 workers) beside a bare PyTorch loop.

Data: 2023-format reviews from `eain generate`, prepared once by `eain prepare` (history 50,
1 uniform negative, Skive-Above) under --work (train_data.py). Model: EAIN with the default
config (dim 16), batch 1024 per worker. Arms (train_arms.py), each in a fresh subprocess, each for
--epochs epochs:

- bare:      one process, no Ray, no torch.distributed: the train split's Parquet files read with
             pyarrow (re-batched to exactly 1024 rows), `to_tensors`, `build_model` (local tables),
             Adam on every parameter, `ctr_loss`; n = torch threads.
- worker:    the same reading, but the Ray worker's own pieces (`eain_dist.train.worker`: sharded
             tables with row-wise Adagrad, DDP, `synchronized_batches`, `train_step`) in a 1-process
             gloo group, no Ray: the worker loop's cost apart from Ray Data's and Ray's.
- ray:       `eain_dist.train.trainer.train`, n = train.num_workers, on a private local Ray
             instance; a wrapper around `train_loop_per_worker` records the worker's threads and
             times the parts of each epoch (train_step, Ray Data's iterator, any_rank, to_tensors).
- raynone:   ray with train.shuffle=none and train.shuffle_buffer=0: file order, no buffer.
- rayglobal: ray with train.shuffle=global and train.shuffle_buffer=0: Ray Data's random_shuffle
             of every row, every epoch (a global order) against ray's new file order + local buffer.

Throughput = training samples / seconds of the training part of an epoch (the trainer's own
per-epoch `samples_per_s` in metrics.json; the bare and worker arms time the same span). Ray
start-up, evaluation and checkpoints are outside the span. Epoch 1 is warm-up; reported: the
mean of epochs >= 2 (headline) and the best epoch >= 2.

    python benchmarks/train.py [--reviews 300000] [--epochs 3] [--arms bare:1,ray:1,...]
    python benchmarks/train.py --ablate      # + per-step cost of DDP / any_rank (no Ray), added to the results
    python benchmarks/train.py --profile     # cProfile (worker arm) and py-spy (Ray worker) summaries
    python benchmarks/train.py --render [--note ...]   # rewrite the markdown from the JSON

Writes benchmarks/results/train.json and train.md (not with --quick / --profile).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from common import RESULTS, ROOT, machine_info, write_results
from train_data import BATCH_SIZE, ensure_dataset
from train_report import add_ratios, print_profiles, summarize, to_markdown

RAY_ARMS = {"ray": (), "raynone": ("train.shuffle=none", "train.shuffle_buffer=0"),
            "rayglobal": ("train.shuffle=global", "train.shuffle_buffer=0")}
LABELS = {"bare": "bare PyTorch loop, {n} thread(s)", "worker": "eain_dist.train.worker, 1-process gloo, no Ray, "
          "{n} thread(s)", "ray": "Ray Train, {n} worker(s)", "raynone": "Ray Train, {n} worker(s), file order, no "
          "buffer (train.shuffle=none)", "rayglobal": "Ray Train, {n} worker(s), global row shuffle every epoch "
          "(train.shuffle=global)"}


def run_child(args: argparse.Namespace, arm: str, n: int) -> dict:
    out = args.work / f"result-{arm}-{n}.json"
    command = [sys.executable, __file__, "--child", arm, "--n", str(n), "--epochs", str(args.epochs),
               "--reviews", str(args.reviews), "--work", str(args.work), "--child-out", str(out)]
    if args.profile:
        command.append("--profile")
    print(f"\n$ {shlex.join(command)}", flush=True)
    load_before = os.getloadavg()[0]
    subprocess.run(command, check=True, cwd=ROOT)
    return {**json.loads(out.read_text()), "load_average_1m_before": load_before}


def child(args: argparse.Namespace, prepared: Path) -> dict:
    from train_ablation import ablation_arm
    from train_arms import bare_arm, ray_arm, worker_arm

    profiles = args.work / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    if args.child == "bare":
        return bare_arm(prepared, args.n, args.epochs)
    if args.child == "ablate":
        return ablation_arm(prepared, args.n)
    if args.child == "worker":
        return worker_arm(prepared, args.n, args.epochs, profiles / "worker.pstats" if args.profile else None)
    return ray_arm(prepared, args.n, args.epochs, args.work / "runs" / f"{args.child}-{args.n}w",
                   profiles / f"ray-{args.n}w.pyspy.txt" if args.profile else None, overrides=RAY_ARMS[args.child])


def measure(args: argparse.Namespace, prepared: Path) -> dict:
    machine = machine_info("torch", "ray", "pyarrow")
    meta = json.loads((prepared / "meta.json").read_text())
    rows = []
    for item in args.arms.split(","):
        arm, n = item.split(":")
        result = run_child(args, arm, int(n))
        threads = result["workers"][0]["torch_threads"] if arm.startswith("ray") else result["torch_threads"]
        rows.append({"arm": LABELS[arm].format(n=n), "kind": arm, "n": int(n), "threads": threads,
                     **summarize(result["history"]), **result})
    add_ratios(rows)
    machine["load_average_at_end"] = os.getloadavg()
    return {"machine": machine, "settings": {
        "command": " ".join(["python benchmarks/train.py", *map(shlex.quote, sys.argv[1:])]), "reviews": args.reviews,
        "epochs": args.epochs, "batch_size": BATCH_SIZE, "train_rows": meta["splits"]["train"],
        "tables": meta["tables"], "embedding_dim": 16, "mean_hist_len": mean_history_length(prepared)},
        "results": rows}


def mean_history_length(prepared: Path) -> float:
    import pyarrow.parquet as pq

    return float(pq.read_table(prepared / "train", columns=["hist_len"])["hist_len"].to_numpy().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work" / "train")
    parser.add_argument("--arms", default="bare:1,ray:1,worker:1,bare:2,ray:2,raynone:1,rayglobal:1",
                        help="comma-separated arm:n (bare/worker: n torch threads; ray*: n workers)")
    parser.add_argument("--quick", action="store_true", help="2 epochs; prints, keeps the results files")
    parser.add_argument("--profile", action="store_true", help="worker:1 under cProfile and ray:1 under py-spy")
    parser.add_argument("--ablate", action="store_true", help="per-step cost of DDP / any_rank, into train.json")
    parser.add_argument("--render", action="store_true", help="rewrite train.md from train.json, measure nothing")
    parser.add_argument("--note", action="append", default=[], help="with --render: a line added to the notes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=("bare", "worker", "ablate", *RAY_ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    prepared = args.work / f"prepared-{args.reviews}"
    if args.child:
        args.child_out.write_text(json.dumps(child(args, prepared)))
        return
    if args.render or args.ablate:
        report = json.loads((args.out / "train.json").read_text())
        if args.note:
            report["notes"] = args.note
        if args.ablate:
            ensure_dataset(args.work, args.reviews)
            report["step_ablation"] = {**run_child(args, "ablate", 1), "load_average_at_end": os.getloadavg(),
                                       "date": dt.datetime.now().isoformat(timespec="seconds"),
                                       "command": "python benchmarks/train.py --ablate"}
        add_ratios(report["results"])
        write_results("train", report, to_markdown(report), args.out)
        return
    if args.quick:
        args.epochs = 2
    if args.profile:
        args.arms = "worker:1,ray:1"
    ensure_dataset(args.work, args.reviews)
    report = measure(args, prepared)
    if args.profile:
        print_profiles(args.work / "profiles")
    print(to_markdown(report))
    if not (args.quick or args.profile):
        write_results("train", report, to_markdown(report), args.out)


if __name__ == "__main__":
    main()
