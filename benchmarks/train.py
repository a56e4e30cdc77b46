"""Steady-state EAIN training throughput: Ray Train (1 and 2 workers) beside a bare PyTorch loop.

Data: 2023-format reviews from `eain generate`, prepared once by `eain prepare` (history 50,
1 uniform negative, Skive-Above) under --work. Model: EAIN with the default config (dim 16),
batch 1024 per worker. Arms, each in a fresh subprocess, each for --epochs epochs:

- bare:  one process, no Ray, no torch.distributed. The train split's Parquet files read with
         pyarrow.parquet (re-batched to exactly 1024 rows), converted by
         `eain_dist.data.loader.to_tensors`, `build_model` (local `EmbeddingCollection`),
         torch.optim.Adam on every parameter, `ctr_loss`. torch.set_num_threads(1) and (2).
- steps: the same Parquet reading, but the worker's own pieces from `eain_dist.train.steps`
         (`build_worker`: sharded user/item tables with row-wise Adagrad, DDP, `synchronized_batches`,
         `train_step`) in a 1-process gloo group, no Ray: separates the worker-loop cost from
         Ray Data's and Ray's.
- ray:   `eain_dist.train.trainer.train` with train.num_workers 1 and 2 on a private local Ray
         instance (`init_ray`, 127.0.0.1). Workers keep the threads Ray gives them; a wrapper
         around `train_loop_per_worker` records torch.get_num_threads() and OMP_NUM_THREADS and
         times the parts of each epoch (train_step, Ray Data's iterator, any_rank, to_tensors).
         With 2 workers on 2 CPUs, train.cpus_per_worker is lowered to leave Ray Data 1 CPU (the
         trainer's own sizing hangs there; see ray_arm).
- raymat (experiment): ray, with the datasets materialized into the object store on the driver
         before `fit`, to measure Ray Data's per-epoch start-up.

Throughput = training samples / seconds of the training part of an epoch (the trainer's own
per-epoch `samples_per_s` in metrics.json; the bare and steps arms time the same span: batch
reading + conversion + steps). Ray start-up, evaluation and checkpoints are outside the span.
Epoch 1 is warm-up; reported: the mean of epochs >= 2 (headline) and the best epoch >= 2.

    python benchmarks/train.py [--reviews 300000] [--epochs 3] [--work benchmarks/work/train]
    python benchmarks/train.py --profile     # where a 1-worker step's time goes (py-spy + cProfile)

Writes benchmarks/results/train.json and benchmarks/results/train.md (not with --quick/--profile).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import glob
import json
import os
import platform
import pstats
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
EAIN = Path(sys.executable).parent / "eain"
BATCH_SIZE = 1024
TARGET_RATIO = 0.9  # Ray Train, 1 worker >= 0.9 x the bare loop at the same torch threads
PREPARE_SETTINGS = ["data.format=amazon2023", "data.max_history=50", "sampling.negatives=1",
                    "sampling.strategy=uniform", "sampling.skive_above=true", "data.vocab=exact"]


# ----------------------------------------------------------------------------- data


def ensure_dataset(work: Path, reviews: int) -> Path:
    """Generate and prepare (once) the input; a DONE file records the parameters."""
    shape = {"reviews": reviews, "users": reviews // 8, "items": reviews // 20, "files": 2,
             "prepare": PREPARE_SETTINGS}
    raw, prepared = work / f"input-{reviews}", work / f"prepared-{reviews}"
    done = prepared / "DONE"
    if done.exists() and json.loads(done.read_text()) == shape:
        return prepared
    print(f"generating {reviews:,} reviews in {raw} and preparing {prepared}", flush=True)
    subprocess.run([str(EAIN), "generate", "--out", str(raw), "--users", str(shape["users"]), "--items",
                    str(shape["items"]), "--reviews", str(reviews), "--files", "2"], check=True,
                   stdout=subprocess.DEVNULL)
    settings = [f"data.source={raw}/reviews", f"data.meta={raw}/meta", f"data.output={prepared}", "ray.num_cpus=2",
                *PREPARE_SETTINGS]
    subprocess.run([str(EAIN), "prepare", *[a for s in settings for a in ("--set", s)]], check=True)
    done.write_text(json.dumps(shape))
    return prepared


def parquet_batches(prepared: Path, split: str = "train", batch_size: int = BATCH_SIZE):
    """The split's rows in file order as Arrow tables of exactly `batch_size` rows (the last shorter),
    as Ray Data's iter_batches gives them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending, rows = [], 0
    for path in sorted(glob.glob(str(prepared / split / "*.parquet"))):
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            pending.append(record_batch)
            rows += record_batch.num_rows
            while rows >= batch_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_size)
                rest = table.slice(batch_size)
                pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


# ----------------------------------------------------------------------------- arms (children)


def bare_arm(prepared: Path, threads: int, epochs: int) -> dict:
    """Plain single-process PyTorch: local tables, Adam on everything."""
    import torch

    from eain_dist.config import Config
    from eain_dist.data.loader import to_tensors
    from eain_dist.model.loss import ctr_loss
    from eain_dist.model.registry import build_model

    torch.set_num_threads(threads)
    meta = json.loads((prepared / "meta.json").read_text())
    config = Config()
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    history = []
    for epoch in range(1, epochs + 1):
        samples, data_s, started = 0, 0.0, time.perf_counter()
        batches = parquet_batches(prepared)
        while True:
            fetch = time.perf_counter()
            table = next(batches, None)
            if table is None:
                break
            batch = to_tensors(table, meta["max_history"])
            data_s += time.perf_counter() - fetch
            model.train()
            out = model(batch)
            loss, bce = ctr_loss(out.logits, batch["label"], out.embedding_l2, model, config.model.l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(bce.detach())
            samples += len(batch["label"])
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
                        "data_fraction": data_s / seconds})
        print(f"bare {threads} thread(s) epoch {epoch}: {samples / seconds:,.0f} samples/s", flush=True)
    return {"torch_threads": torch.get_num_threads(), "history": history}


def steps_arm(prepared: Path, threads: int, epochs: int, profile_to: Path | None = None) -> dict:
    """The Ray worker's pieces (eain_dist.train.steps) in a 1-process gloo group, without Ray."""
    import torch
    import torch.distributed as dist

    from eain_dist.config import Config
    from eain_dist.train.steps import build_worker, synchronized_batches, train_step

    torch.set_num_threads(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    meta = json.loads((prepared / "meta.json").read_text())
    config = Config()
    worker = build_worker(config, meta, torch.device("cpu"))
    history = []
    profiler = cProfile.Profile() if profile_to else None
    for epoch in range(1, epochs + 1):
        samples, started = 0, time.perf_counter()
        if profiler and epoch == epochs:
            profiler.enable()
        for batch in synchronized_batches(parquet_batches(prepared), worker):
            train_step(worker, batch)
            samples += len(batch["label"])
        if profiler and epoch == epochs:
            profiler.disable()
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds})
        print(f"steps {threads} thread(s) epoch {epoch}: {samples / seconds:,.0f} samples/s", flush=True)
    dist.destroy_process_group()
    result = {"torch_threads": torch.get_num_threads(), "history": history}
    if profiler:
        profiler.dump_stats(str(profile_to))
        result["profile"] = str(profile_to)
    return result


def instrumented_loop(loop_config: dict) -> dict:
    """`train_loop_per_worker`, after noting this Ray worker's threads and wrapping a few of the
    loop's module-level names with timers (a few perf_counter calls per step; no package code
    changes): per epoch, the seconds in `train_step`, in Ray Data's iterator (and its first batch),
    in `any_rank` and `to_tensors`, and the epoch's own span."""
    import ray.train
    import torch

    import eain_dist.train.loop as loop
    import eain_dist.train.steps as steps

    rank = ray.train.get_context().get_world_rank()
    facts = {"rank": rank, "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
             "torch_interop_threads": torch.get_num_interop_threads(),
             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_affinity": len(os.sched_getaffinity(0))}
    Path(loop_config["run_dir"], f"worker-rank{rank}.json").write_text(json.dumps(facts))
    timers: Counter = Counter()
    epochs: list[dict] = []

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - started
                timers[name + "_calls"] += 1
        return wrapper

    def synchronized_batches(batches, worker):
        def ray_data():  # the Ray Data iterator itself
            iterator = iter(batches)
            while True:
                started = time.perf_counter()
                batch = next(iterator, None)
                timers["ray_data_next"] += time.perf_counter() - started
                timers.setdefault("first_batch", time.perf_counter() - started)  # the epoch's start-up
                if batch is None:
                    return
                yield batch

        iterator = original_batches(ray_data(), worker)
        while True:
            started = time.perf_counter()
            batch = next(iterator, None)
            timers["next_batch"] += time.perf_counter() - started
            if batch is None:
                return
            yield batch

    def train_epoch(*args, **kwargs):
        timers.clear()
        started = time.perf_counter()
        stats = original_epoch(*args, **kwargs)
        epochs.append({"epoch": len(epochs) + 1, "span_s": time.perf_counter() - started, **timers,
                       "samples_per_s": stats["samples_per_s"]})
        Path(loop_config["run_dir"], f"worker-rank{rank}-epochs.json").write_text(json.dumps(epochs))
        return stats

    original_batches, original_epoch = loop.synchronized_batches, loop._train_epoch
    loop.train_step = timed("train_step", loop.train_step)
    loop.synchronized_batches, loop._train_epoch = synchronized_batches, train_epoch
    steps.any_rank = timed("any_rank", steps.any_rank)  # called inside synchronized_batches
    steps.to_tensors = timed("to_tensors", steps.to_tensors)
    return loop.train_loop_per_worker(loop_config)


def ray_arm(prepared: Path, workers: int, epochs: int, run_dir: Path, py_spy_to: Path | None = None,
            materialize: bool = False) -> dict:
    """`eain_dist.train.trainer.train` on a private local Ray instance. `materialize`: an experiment,
    the trainer's datasets materialized into Ray's object store on the driver before `fit`."""
    import ray

    import eain_dist.train.trainer as trainer
    from eain_dist.config import RayConfig, load_config
    from eain_dist.runtime import init_ray

    for stale in run_dir.glob("worker-rank*.json"):  # also *-epochs.json
        stale.unlink()
    config = load_config(None, [f"data.output={prepared}", f"train.num_workers={workers}", f"train.epochs={epochs}",
                                f"train.early_stopping_patience={epochs + 1}", f"train.batch_size={BATCH_SIZE}",
                                f"train.run_dir={run_dir}", "wandb.mode=disabled"])
    started = time.perf_counter()
    init_ray(RayConfig())
    # The trainer leaves max(available - 0.5, 0.5) / N CPUs per worker: with 2 workers on 2 CPUs
    # that is 0.75 each, 0.5 CPU free, and Ray Data's read tasks (1 CPU each) never start (the run
    # hangs). Give the workers what leaves 1 whole CPU to Ray Data (threads stay 1 per worker).
    cpus, override = ray.cluster_resources().get("CPU", 1), None
    if cpus - workers * trainer._worker_resources(config)["CPU"] < 1:
        override = (cpus - 1) / workers
        config.train.cpus_per_worker = override
    trainer.train_loop_per_worker = instrumented_loop  # only records threads, then runs the real loop
    if materialize:
        read = trainer.datasets
        trainer.datasets = lambda cfg: {split: ds.materialize() for split, ds in read(cfg).items()}
    spy = threading.Thread(target=_py_spy_rank0, args=(run_dir, py_spy_to), daemon=True) if py_spy_to else None
    if spy:
        spy.start()
    try:
        result = trainer.train(config, log=lambda message: print(message, flush=True))
        resources = ray.cluster_resources()
    finally:
        ray.shutdown()
    if spy:
        spy.join(timeout=60)
    metrics = result.metrics
    history = [{"epoch": h["epoch"], "samples_per_s": h["samples_per_s"], "steps": h["steps"],
                "valid_auc": h["valid_auc"]} for h in metrics["history"]]
    workers_facts = [json.loads((run_dir / f"worker-rank{r}.json").read_text()) for r in range(workers)]
    for facts in workers_facts:
        facts["epochs"] = json.loads((run_dir / f"worker-rank{facts['rank']}-epochs.json").read_text())
    return {"history": history, "workers": workers_facts, "wall_s_including_startup_and_eval":
            time.perf_counter() - started, "cluster_cpus": resources.get("CPU"),
            "valid_auc_best": metrics["valid"]["auc"], "py_spy": str(py_spy_to) if py_spy_to else None,
            "cpus_per_worker_override": override}


def _py_spy_rank0(run_dir: Path, out: Path) -> None:
    """Sample rank 0's worker process for the whole run (raw collapsed stacks)."""
    facts = run_dir / "worker-rank0.json"
    while not facts.exists():
        time.sleep(0.2)
    pid = json.loads(facts.read_text())["pid"]
    subprocess.run(["py-spy", "record", "--pid", str(pid), "--rate", "50", "--format", "raw", "--nonblocking", "--idle",
                    "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


# ----------------------------------------------------------------------------- parent


def run_child(args: argparse.Namespace, arm: str, n: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", arm, "--n", str(n), "--epochs", str(args.epochs),
               "--reviews", str(args.reviews), "--work", str(args.work), "--child-out", str(out)]
    if args.profile:
        command.append("--profile")
    print(f"\n$ {shlex.join(command)}", flush=True)
    load_before = os.getloadavg()[0]
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["load_average_1m_before"] = load_before
    return result


def summarize(history: list[dict]) -> dict:
    steady = [h["samples_per_s"] for h in history if h["epoch"] >= 2] or [history[-1]["samples_per_s"]]
    return {"samples_per_s_mean_epochs_2plus": statistics.mean(steady), "samples_per_s_best_epoch_2plus": max(steady),
            "epochs_used": [h["epoch"] for h in history if h["epoch"] >= 2]}


def machine_info() -> dict:
    import pyarrow
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    return {"processor": cpu, "cpu_count": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1),
            "torch": torch.__version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version(), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "load_average_at_start": os.getloadavg()}


def to_markdown(report: dict) -> str:
    m, s, rows = report["machine"], report["settings"], report["results"]
    lines = [
        "# EAIN training throughput: Ray Train vs a bare PyTorch loop (CPU)",
        "",
        f"Date {m['date']}. Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['memory_gib']} GiB, "
        f"torch {m['torch']}, Ray {m['ray']}, pyarrow {m['pyarrow']}, Python {m['python']}.",
        "",
        f"Command: `{s['command']}`",
        "",
        f"Data: {s['reviews']:,} synthetic 2023-format reviews (`eain generate`), `eain prepare` with "
        f"{', '.join(PREPARE_SETTINGS)} -> {s['train_rows']:,} training impressions "
        f"(tables {s['tables']}). Model: EAIN, default config (dim {s['embedding_dim']}), batch {s['batch_size']} "
        f"per worker, {s['epochs']} epochs per arm, each arm a fresh process.",
        "",
        "samples/s = training samples / seconds of the training part of an epoch (reading + conversion + "
        "steps; Ray start-up, evaluation and checkpoints excluded). Epoch 1 is warm-up: 'mean' is the mean "
        "of epochs >= 2, 'best' the best of them. For Ray Train it is the trainer's own per-epoch "
        "`samples_per_s` (metrics.json history).",
        "",
        f"The machine is shared (other test suites were running): 1-minute load average "
        f"{m['load_average_at_start'][0]:.1f} at the start, {m['load_average_at_end'][0]:.1f} at the end; "
        "before each arm it is in the table. On 2 cores a load above 2 means the arms did not have the "
        "cores to themselves, so absolute numbers are low and noisy; arms that share threads ran back to back.",
        "",
        "| arm | torch threads (in the training process) | samples/s mean (epochs >= 2) | best epoch | "
        "per-epoch samples/s | vs bare, same threads | load before |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row['ratio_vs_bare']:.2f}x" if row.get("ratio_vs_bare") is not None else ""
        per_epoch = ", ".join(f"{h['samples_per_s']:,.0f}" for h in row["history"])
        lines.append(f"| {row['arm']} | {row['threads']} | {row['samples_per_s_mean_epochs_2plus']:,.0f} | "
                     f"{row['samples_per_s_best_epoch_2plus']:,.0f} | {per_epoch} | {ratio} | "
                     f"{row['load_average_1m_before']:.1f} |")
    lines += ["", *report["verdict"], ""]
    for row in rows:
        if row.get("workers"):
            facts = "; ".join(f"rank {w['rank']}: torch threads {w['torch_threads']}, OMP_NUM_THREADS "
                              f"{w['OMP_NUM_THREADS']}, interop {w['torch_interop_threads']}" for w in row["workers"])
            lines.append(f"- {row['arm']}: {facts}; Ray cluster CPUs {row['cluster_cpus']:.0f}; whole run incl. "
                         f"start-up and evaluation {row['wall_s_including_startup_and_eval']:.0f} s.")
            if row.get("cpus_per_worker_override"):
                lines.append(f"  - run with `--set train.cpus_per_worker={row['cpus_per_worker_override']:g}`: with "
                             "the trainer's own sizing (0.75 CPU per worker on 2 CPUs) only 0.5 CPU is left and Ray "
                             "Data's Parquet read tasks (1 CPU each) never start -- the run hangs (seen here).")
            for w in row["workers"]:
                b = epoch_breakdown(w)
                lines.append(f"  - rank {w['rank']}, where an epoch's training span goes (epochs >= 2): train_step "
                             f"{b['train_step']:.1%} ({b['train_step_ms']:.0f} ms/step), waiting for Ray Data's next "
                             f"batch {b['ray_data_wait']:.1%} (of which the epoch's first batch "
                             f"{b['first_batch']:.1%}, {b['first_batch_s']:.1f} s), to_tensors {b['to_tensors']:.1%}, "
                             f"any_rank (incl. waiting for the other ranks) {b['any_rank']:.1%}, "
                             f"other {b['other']:.1%}.")
    for r in rows:
        if r["kind"] == "bare":
            steady = [h for h in r["history"] if h["epoch"] >= 2] or r["history"]
            data = statistics.mean(h["data_fraction"] for h in steady)
            step_ms = statistics.mean(1000 * h["seconds"] * (1 - h["data_fraction"]) / -(-h["samples"] // BATCH_SIZE)
                                      for h in steady)
            lines.append(f"- {r['arm']}: reading Parquet + to_tensors {data:.1%} of the epoch, the step "
                         f"{1 - data:.1%} ({step_ms:.0f} ms/step).")
    lines += ["", *report.get("notes", []), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work" / "train")
    parser.add_argument("--arms", default="bare:1,ray:1,steps:1,raymat:1,bare:2,ray:2",
                        help="comma-separated arm:n (n = torch threads for bare/steps, workers for ray)")
    parser.add_argument("--quick", action="store_true", help="2 epochs; prints, keeps the results files")
    parser.add_argument("--profile", action="store_true",
                        help="steps:1 under cProfile and ray:1 under py-spy; prints where the time goes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=("bare", "steps", "ray", "raymat"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    prepared = args.work / f"prepared-{args.reviews}"

    if args.child:
        profile_dir = args.work / "profiles"
        profile_dir.mkdir(parents=True, exist_ok=True)
        if args.child == "bare":
            result = bare_arm(prepared, args.n, args.epochs)
        elif args.child == "steps":
            result = steps_arm(prepared, args.n, args.epochs, profile_dir / "steps.pstats" if args.profile else None)
        else:
            result = ray_arm(prepared, args.n, args.epochs, args.work / "runs" / f"{args.child}-{args.n}w",
                             profile_dir / f"ray-{args.n}w.pyspy.txt" if args.profile else None,
                             materialize=args.child == "raymat")
        args.child_out.write_text(json.dumps(result))
        return

    if args.quick:
        args.epochs = 2
    if args.profile:
        args.arms = "steps:1,ray:1"
    command = " ".join(["python benchmarks/train.py", *map(shlex.quote, sys.argv[1:])])
    ensure_dataset(args.work, args.reviews)
    machine = machine_info()
    meta = json.loads((prepared / "meta.json").read_text())
    rows = []
    for item in args.arms.split(","):
        arm, n = item.split(":")
        result = run_child(args, arm, int(n), args.work / f"result-{arm}-{n}.json")
        threads = result["workers"][0]["torch_threads"] if arm.startswith("ray") else result["torch_threads"]
        label = f"bare PyTorch loop, {n} thread(s)" if arm == "bare" else (
            f"eain_dist.train.steps, 1-process gloo, no Ray, {n} thread(s)" if arm == "steps" else
            f"Ray Train, {n} worker(s)" if arm == "ray" else
            f"Ray Train, {n} worker(s), datasets materialized first (experiment)")
        rows.append({"arm": label, "kind": arm, "n": int(n), "threads": threads, **summarize(result["history"]),
                     **result})
    for row in rows:
        bare = next((r for r in rows if r["kind"] == "bare" and r["threads"] == row["threads"]), None)
        if row["kind"].startswith("ray") and row["n"] == 2:
            bare = next((r for r in rows if r["kind"] == "bare" and r["n"] == 2), bare)  # 2 workers x 1 thread
        if bare is not None and row is not bare:
            row["ratio_vs_bare"] = row["samples_per_s_mean_epochs_2plus"] / bare["samples_per_s_mean_epochs_2plus"]
    machine["load_average_at_end"] = os.getloadavg()
    report = {"machine": machine, "settings": {
        "command": command, "reviews": args.reviews, "epochs": args.epochs, "batch_size": BATCH_SIZE,
        "train_rows": meta["splits"]["train"], "tables": meta["tables"], "embedding_dim": 16,
        "prepared": str(prepared.relative_to(ROOT) if prepared.is_relative_to(ROOT) else prepared)},
        "results": rows, "verdict": verdict(rows)}
    if args.profile:
        print_profiles(args.work / "profiles")
    if args.quick or args.profile:
        print(to_markdown(report))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "train.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {args.out / 'train.json'} and {args.out / 'train.md'}")


def verdict(rows: list[dict]) -> list[str]:
    one = next((r for r in rows if r["kind"] == "ray" and r["n"] == 1 and "ratio_vs_bare" in r), None)
    if one is None:
        return []
    met = "meets" if one["ratio_vs_bare"] >= TARGET_RATIO else "MISSES"
    return [f"Target: Ray Train with 1 worker >= {TARGET_RATIO}x the bare loop at the same torch threads "
            f"({one['threads']}): {one['ratio_vs_bare']:.2f}x (mean of epochs >= 2), {met} it."]


def print_profiles(directory: Path) -> None:
    steps = directory / "steps.pstats"
    if steps.exists():
        print("\n== cProfile of the steps arm's last epoch (cumulative, top 35) ==")
        pstats.Stats(str(steps)).sort_stats("cumulative").print_stats(35)
        print("== by own time (top 25) ==")
        pstats.Stats(str(steps)).sort_stats("tottime").print_stats(25)
    spy = directory / "ray-1w.pyspy.txt"
    if spy.exists():
        print("\n== py-spy of Ray Train rank 0 (share of samples whose stack contains the frame) ==")
        print_py_spy(spy)


def print_py_spy(path: Path, top: int = 45) -> None:
    """Aggregate py-spy's raw collapsed stacks (idle included) of the samples taken inside
    `_train_epoch`: the inclusive share of each function, and the leaf frames."""
    total, inclusive, leaf = 0, Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if "_train_epoch" not in frames and "train_epoch" not in frames:
            continue
        n = int(count)
        total += n
        for name in set(frames):
            inclusive[name] += n
        leaf[frames[-1]] += n
    print(f"{total} samples inside _train_epoch (idle included)")
    for name, n in inclusive.most_common(top):
        print(f"{n / total:6.1%}  {name}")
    print("-- leaf frames --")
    for name, n in leaf.most_common(25):
        print(f"{n / total:6.1%}  {name}")


def epoch_breakdown(worker: dict) -> dict:
    """Mean over epochs >= 2 of the instrumented shares of the training span."""
    rows = [e for e in worker["epochs"] if e["epoch"] >= 2] or worker["epochs"]
    share = lambda key: statistics.mean(e.get(key, 0.0) / e["span_s"] for e in rows)  # noqa: E731
    out = {"train_step": share("train_step"), "next_batch": share("next_batch"), "any_rank": share("any_rank"),
           "to_tensors": share("to_tensors"), "first_batch": share("first_batch"),
           "first_batch_s": statistics.mean(e.get("first_batch", 0.0) for e in rows)}
    out["ray_data_wait"] = share("ray_data_next")
    out["other"] = 1.0 - out["train_step"] - out["ray_data_wait"] - out["to_tensors"] - out["any_rank"]
    out["train_step_ms"] = statistics.mean(1000 * e["train_step"] / max(e.get("train_step_calls", 1), 1) for e in rows)
    return out


if __name__ == "__main__":
    main()
