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
- rayfile: ray with train.shuffle_buffer=0 (file order every epoch), beside ray's default per-epoch
         re-shuffle through the local shuffle buffer: the buffer's cost.
- raymat (experiment): ray, with the datasets materialized into the object store on the driver
         before `fit`, to measure Ray Data's per-epoch start-up.

Throughput = training samples / seconds of the training part of an epoch (the trainer's own
per-epoch `samples_per_s` in metrics.json; the bare and steps arms time the same span: batch
reading + conversion + steps). Ray start-up, evaluation and checkpoints are outside the span.
Epoch 1 is warm-up; reported: the mean of epochs >= 2 (headline) and the best epoch >= 2.

    python benchmarks/train.py [--reviews 300000] [--epochs 3] [--work benchmarks/work/train] [--arms ...]
    python benchmarks/train.py --ablate      # + per-step cost of DDP / all-to-alls / any_rank (no Ray)
    python benchmarks/train.py --profile     # prints cProfile (steps arm) and py-spy (Ray worker) summaries
    python benchmarks/train.py --render [--earlier OLD.json --earlier-note ...] [--note ...]

Writes benchmarks/results/train.json and benchmarks/results/train.md (not with --quick/--profile);
--ablate adds its table to the existing ones, --render rewrites the markdown from the JSON.
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
            loss, bce = ctr_loss(out.logits, batch["label"], model, l2=config.model.l2,
                             embedding_l2=config.model.embedding_l2)
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


def single_process_group(threads: int) -> None:
    """A 1-rank gloo group on a free loopback port, torch at `threads` threads: what the worker's
    pieces (eain_dist.train.steps) need to run without Ray."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def steps_arm(prepared: Path, threads: int, epochs: int, profile_to: Path | None = None) -> dict:
    """The Ray worker's pieces (eain_dist.train.steps) in a 1-process gloo group, without Ray."""
    import torch
    import torch.distributed as dist

    from eain_dist.config import Config
    from eain_dist.train.steps import build_worker, synchronized_batches, train_step

    single_process_group(threads)
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


def ablation_arm(prepared: Path, threads: int, batches: int = 20, rounds: int = 7) -> dict:
    """ms per training step of the bare step and of `steps.train_step` with its distributed pieces
    switched off one at a time (1-process gloo group, pre-converted batches, variants interleaved
    round by round so that a burst of load hits them all)."""
    import torch
    import torch.distributed as dist

    import eain_dist.train.steps as steps
    from eain_dist.config import Config
    from eain_dist.data.loader import to_tensors
    from eain_dist.model.loss import ctr_loss
    from eain_dist.model.registry import build_model

    single_process_group(threads)
    meta = json.loads((prepared / "meta.json").read_text())
    config = Config()
    source = parquet_batches(prepared)
    data = [to_tensors(next(source), meta["max_history"]) for _ in range(batches)]

    torch.manual_seed(config.train.seed)
    model = build_model(config.model, meta)
    adam = torch.optim.Adam(model.parameters(), lr=config.train.lr)

    def bare(batch):
        model.train()
        out = model(batch)
        loss, bce = ctr_loss(out.logits, batch["label"], model, l2=config.model.l2,
                             embedding_l2=config.model.embedding_l2)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        float(bce.detach())

    def worker_variant(ddp: bool, collectives: bool, any_rank: bool):
        worker = steps.build_worker(config, meta, torch.device("cpu"))
        if not ddp:
            worker.ddp = worker.model  # the step calls worker.ddp(batch)
        if not collectives:  # world size 1: serve the rows locally, same leaf + pending bookkeeping
            collection = worker.collection

            def local_lookup(shard, ids):
                served = shard.weight[ids].detach().requires_grad_(torch.is_grad_enabled())
                if served.requires_grad:
                    shard.pending.append((ids, served))
                return served
            collection._sharded_lookup = local_lookup

        def step(batch):
            if any_rank:
                steps.any_rank(True, worker.device)
            steps.train_step(worker, batch)
        return step

    variants = {
        "bare loop step (local tables, Adam on all)": bare,
        "steps.train_step + any_rank (as in the loop)": worker_variant(True, True, True),
        "  without DDP": worker_variant(False, True, True),
        "  without the all-to-alls (rows served locally)": worker_variant(True, False, True),
        "  without any_rank": worker_variant(True, True, False),
        "  without DDP, all-to-alls and any_rank": worker_variant(False, False, False),
    }
    for fn in variants.values():
        for batch in data[:3]:
            fn(batch)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for batch in data:
                fn(batch)
            wall[name].append(1000 * (time.perf_counter() - w0) / len(data))
            cpu[name].append(1000 * (time.process_time() - c0) / len(data))
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in data:
        variants["steps.train_step + any_rank (as in the loop)"](batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    top = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in stats.stats.items()), reverse=True)[:12]
    dist.destroy_process_group()
    return {"torch_threads": torch.get_num_threads(), "batches": batches, "rounds": rounds,
            "variants": [{"variant": name, "ms_per_step_median": statistics.median(wall[name]),
                          "ms_per_step_min": min(wall[name]), "cpu_ms_per_step_median": statistics.median(cpu[name])}
                         for name in variants],
            "profile_tottime_ms_per_step": [{"function": f, "ms": 1000 * t / batches} for t, f in top]}


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
            materialize: bool = False, shuffle_buffer: int | None = None) -> dict:
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
                                f"train.run_dir={run_dir}", "wandb.mode=disabled",
                                *([f"train.shuffle_buffer={shuffle_buffer}"] if shuffle_buffer is not None else [])])
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
            "load_average_at_start": os.getloadavg(), "code": code_version()}


def code_version() -> str:
    """The commit the package code came from, '+dirty' when eain_dist/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "eain_dist") else "")


def to_markdown(report: dict) -> str:
    m, s, rows = report["machine"], report["settings"], report["results"]
    lines = [
        "# EAIN training throughput: Ray Train vs a bare PyTorch loop (CPU)",
        "",
        f"Date {m['date']}, eain_dist at {m.get('code', 'unknown')}. Machine: {m['processor']}, {m['cpu_count']} "
        f"CPUs, {m['memory_gib']} GiB, torch {m['torch']}, Ray {m['ray']}, pyarrow {m['pyarrow']}, "
        f"Python {m['python']}.",
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
        *results_table(rows),
        "",
        *verdict(rows),
        "",
    ]
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
    for earlier in report.get("earlier_runs", []):
        one = next((r for r in earlier["results"] if r["kind"] == "ray" and r["n"] == 1), None)
        if one is not None:
            start, end = earlier["load_average_at_start"][0], earlier["load_average_at_end"][0]
            lines.append(f"- An earlier full run ({earlier['date']}, load average {start:.1f} at the start, "
                         f"{end:.1f} at the end; {earlier['note']}): Ray "
                         f"Train 1 worker {one['samples_per_s_mean_epochs_2plus']:,.0f} samples/s, "
                         f"{one['ratio_vs_bare']:.2f}x / {one['ratio_best_vs_bare']:.2f}x the bare loop (mean / best).")
    if "step_ablation" in report:
        lines += ["", *ablation_table(report["step_ablation"])]
    lines += ["", *findings(report), ""]
    return "\n".join(lines)


def ablation_table(a: dict) -> list[str]:
    base = next(v for v in a["variants"] if v["variant"].startswith("bare"))["ms_per_step_median"]
    lines = ["## Where a 1-worker step's time goes (no Ray)", "",
             f"`{a['command']}` ({a['date']}, load average {a['load_average_1m_before']:.1f} before, "
             f"{a['load_average_at_end'][0]:.1f} after): {a['batches']} pre-converted batches of 1024, each variant a "
             f"pass over them, variants interleaved, {a['rounds']} rounds; median ms per step, torch threads "
             f"{a['torch_threads']}, a 1-process gloo group.", "",
             "| variant | ms/step (median) | min | CPU ms/step | vs bare step |", "|---|---:|---:|---:|---:|"]
    for v in a["variants"]:
        lines.append(f"| {v['variant'].strip()}{' (ablation)' if v['variant'].startswith('  ') else ''} | "
                     f"{v['ms_per_step_median']:.1f} | {v['ms_per_step_min']:.1f} | "
                     f"{v['cpu_ms_per_step_median']:.1f} | {v['ms_per_step_median'] / base:.2f}x |")
    top = ", ".join(f"{_function_name(t['function'])} {t['ms']:.1f}" for t in a["profile_tottime_ms_per_step"][:8])
    lines += ["", f"cProfile of `steps.train_step` + any_rank, own time in ms/step: {top}."]
    return lines


def results_table(rows: list[dict]) -> list[str]:
    lines = ["| arm | torch threads (in the training process) | samples/s mean (epochs >= 2) | best epoch >= 2 | "
             "per-epoch samples/s | vs bare, same threads (mean / best) | load before |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for row in rows:
        ratio = (f"{row['ratio_vs_bare']:.2f}x / {row['ratio_best_vs_bare']:.2f}x"
                 if row.get("ratio_vs_bare") is not None else "")
        per_epoch = ", ".join(f"{h['samples_per_s']:,.0f}" for h in row["history"])
        lines.append(f"| {row['arm']} | {row['threads']} | {row['samples_per_s_mean_epochs_2plus']:,.0f} | "
                     f"{row['samples_per_s_best_epoch_2plus']:,.0f} | {per_epoch} | {ratio} | "
                     f"{row['load_average_1m_before']:.1f} |")
    return lines


def _function_name(label: str) -> str:
    """cProfile's "~:<method 'run_backward' of ...>" -> "run_backward"; "file.py:name" stays."""
    if label.startswith("~:") and "'" in label:
        return label.split("'")[1]
    if label.startswith("~:<built-in method "):
        return label.removeprefix("~:<built-in method ").rstrip(">")
    return label


def findings(report: dict) -> list[str]:
    """Where a Ray Train epoch's time goes, and what would shorten it (from this run's numbers)."""
    rows = report["results"]
    one = next((r for r in rows if r["kind"] == "ray" and r["n"] == 1), None)
    mat = next((r for r in rows if r["kind"] == "raymat" and r["n"] == 1), None)
    bare = next((r for r in rows if r["kind"] == "bare" and r["n"] == 1), None)
    if one is None or bare is None:
        return []
    b = epoch_breakdown(one["workers"][0])
    steady = [h for h in bare["history"] if h["epoch"] >= 2] or bare["history"]
    bare_ms = statistics.mean(1000 * h["seconds"] * (1 - h["data_fraction"]) / -(-h["samples"] // BATCH_SIZE)
                              for h in steady)
    lines = ["## Findings", "",
             f"- Ray Train with 1 worker runs at {one['ratio_vs_bare']:.2f}x the bare loop. Of an epoch's training "
             f"span, {b['train_step']:.0%} is `train_step` and {b['ray_data_wait']:.0%} is waiting for Ray Data, "
             f"almost all of it ({b['first_batch_s']:.1f} s) for the epoch's first batch: `streaming_split` re-runs "
             "the read plan every epoch (a SplitCoordinator starts the executor, Parquet read tasks are scheduled, "
             "the first block is a whole file). After that the iterator keeps up (prefetch 2); `to_tensors`, "
             "`any_rank` and the loop itself are about 1% or less each. The step itself is also slower than the "
             f"bare loop's: {b['train_step_ms']:.0f} vs {bare_ms:.0f} ms"]
    if mat is not None:
        m = epoch_breakdown(mat["workers"][0])
        lines[-1] += (f", but {m['train_step_ms']:.0f} ms when nothing is read during the epoch (next point): on 2 "
                      "cores the epoch's Parquet read tasks compete with the worker for CPU.")
        lines.append(f"- Materializing the datasets on the driver before `fit` (experiment, `raymat` arm) brings "
                     f"Ray Train to {mat['ratio_vs_bare']:.2f}x: the first-batch wait drops to "
                     f"{m['first_batch_s']:.1f} s and `train_step` is {m['train_step']:.0%} of the span. Suggestion "
                     "for `trainer.datasets` (the lead's call): `.materialize()` the splits when they fit in the "
                     "object store (meta.json has the row counts; this train split is ~224k rows), keep streaming "
                     "otherwise. Smaller Parquet files / row groups from `eain prepare` might shorten the first-batch "
                     "wait when streaming (untested).")
    else:
        lines[-1] += "."
    ablation = report.get("step_ablation")
    if ablation:
        v = {x["variant"].strip(): x["ms_per_step_median"] for x in ablation["variants"]}
        base = v["bare loop step (local tables, Adam on all)"]
        as_is = v["steps.train_step + any_rank (as in the loop)"]
        lines.append(f"- The worker's own distributed pieces are not where the time goes: without Ray, "
                     f"`steps.train_step` + `any_rank` takes {as_is:.0f} ms/step against the bare step's {base:.0f} "
                     f"({as_is / base:.2f}x); removing DDP, the all-to-alls or `any_rank` changes it by a few percent "
                     "at most (table above). Nothing to gain there at world size 1.")
    two = next((r for r in rows if r["kind"] == "ray" and r["n"] == 2), None)
    if two is not None and two.get("ratio_vs_bare") is not None:
        t = epoch_breakdown(two["workers"][0])
        lines.append(f"- 2 workers (1 thread each) run at {two['ratio_vs_bare']:.2f}x the 2-thread bare loop and "
                     f"{two['samples_per_s_mean_epochs_2plus'] / one['samples_per_s_mean_epochs_2plus']:.2f}x one "
                     f"worker; the per-epoch first-batch wait is the same ~{t['first_batch_s']:.0f} s, now "
                     f"{t['first_batch']:.0%} of a shorter epoch, so materializing would help them more.")
    lines += [
        "- The machine is shared: run-to-run noise from other test suites can exceed these overheads (the load "
        "averages are in the table); the 2-thread bare loop is the most sensitive arm (OpenMP threads on a loaded "
        "2-core machine).",
    ]
    every_row = rows + [r for e in report.get("earlier_runs", []) for r in e["results"]]
    if any(r.get("cpus_per_worker_override") for r in every_row):
        lines.append("- A trainer that sizes 2 workers on 2 CPUs at 0.75 CPU each leaves 0.5 CPU, and Ray Data's "
                     "Parquet read tasks (1 CPU each) never start: the run hangs at epoch 1 ('Cluster resources are "
                     "not enough to run any task from ReadFilesParquetV2'). The benchmark then lowers "
                     "train.cpus_per_worker to leave 1 CPU (an earlier run needed it; the trainer now does this "
                     "itself and reads with 0.5 CPU per task).")
    lines += [f"- {note}" for note in report.get("notes", [])]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work" / "train")
    parser.add_argument("--arms", default="bare:1,ray:1,steps:1,raymat:1,bare:2,ray:2",
                        help="comma-separated arm:n (bare/steps: n torch threads; ray/rayfile/raymat: n workers)")
    parser.add_argument("--quick", action="store_true", help="2 epochs; prints, keeps the results files")
    parser.add_argument("--profile", action="store_true",
                        help="steps:1 under cProfile and ray:1 under py-spy; prints where the time goes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="rewrite train.md from train.json, measure nothing")
    parser.add_argument("--earlier", type=Path, action="append", default=[],
                        help="with --render: add this earlier train.json's Ray Train 1-worker result (repeatable)")
    parser.add_argument("--earlier-note", action="append", default=[], help="with --earlier: how that run differed")
    parser.add_argument("--note", action="append", default=[], help="with --render: a line added to the findings")
    parser.add_argument("--ablate", action="store_true",
                        help="per-step cost of the worker's distributed pieces; added to the existing train.json/md")
    parser.add_argument("--child", choices=("bare", "steps", "ray", "raymat", "rayfile", "ablate"),
                        help=argparse.SUPPRESS)
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
        elif args.child == "ablate":
            result = ablation_arm(prepared, args.n)
        elif args.child == "steps":
            result = steps_arm(prepared, args.n, args.epochs, profile_dir / "steps.pstats" if args.profile else None)
        else:
            result = ray_arm(prepared, args.n, args.epochs, args.work / "runs" / f"{args.child}-{args.n}w",
                             profile_dir / f"ray-{args.n}w.pyspy.txt" if args.profile else None,
                             materialize=args.child == "raymat",
                             shuffle_buffer=0 if args.child == "rayfile" else None)
        args.child_out.write_text(json.dumps(result))
        return

    if args.render:
        render(args.out, args.earlier, args.earlier_note, args.note)
        return
    if args.ablate:
        ensure_dataset(args.work, args.reviews)
        result = run_child(args, "ablate", 1, args.work / "result-ablate-1.json")
        result.update(date=dt.datetime.now().isoformat(timespec="seconds"), load_average_at_end=os.getloadavg(),
                      command=" ".join(["python benchmarks/train.py", *map(shlex.quote, sys.argv[1:])]))
        report = json.loads((args.out / "train.json").read_text())
        report["step_ablation"] = result
        (args.out / "train.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "train.md").write_text(to_markdown(report))
        print(to_markdown(report))
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
            f"Ray Train, {n} worker(s), file order (train.shuffle_buffer=0)" if arm == "rayfile" else
            f"Ray Train, {n} worker(s), datasets materialized first (experiment)")
        rows.append({"arm": label, "kind": arm, "n": int(n), "threads": threads, **summarize(result["history"]),
                     **result})
    add_ratios(rows)
    machine["load_average_at_end"] = os.getloadavg()
    report = {"machine": machine, "settings": {
        "command": command, "reviews": args.reviews, "epochs": args.epochs, "batch_size": BATCH_SIZE,
        "train_rows": meta["splits"]["train"], "tables": meta["tables"], "embedding_dim": 16,
        "prepared": str(prepared.relative_to(ROOT) if prepared.is_relative_to(ROOT) else prepared)},
        "results": rows}
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


def add_ratios(rows: list[dict]) -> None:
    """Each arm against the bare loop with the same torch threads (2 workers x 1 thread: the 2-thread loop)."""
    for row in rows:
        bare = next((r for r in rows if r["kind"] == "bare" and r["threads"] == row["threads"]), None)
        if row["kind"].startswith("ray") and row["n"] == 2:
            bare = next((r for r in rows if r["kind"] == "bare" and r["n"] == 2), bare)
        if bare is not None and row is not bare:
            row["ratio_vs_bare"] = row["samples_per_s_mean_epochs_2plus"] / bare["samples_per_s_mean_epochs_2plus"]
            row["ratio_best_vs_bare"] = row["samples_per_s_best_epoch_2plus"] / bare["samples_per_s_best_epoch_2plus"]


def render(out: Path, earlier: list[Path], notes: list[str], extra: list[str]) -> None:
    """Rewrite train.md (and the ratios in train.json) from train.json; optionally note earlier runs."""
    report = json.loads((out / "train.json").read_text())
    report.pop("verdict", None)
    if extra:
        report["notes"] = extra
    add_ratios(report["results"])
    if earlier:
        report["earlier_runs"] = []
    for path, note in zip(earlier, notes + [""] * len(earlier)):
        previous = json.loads(path.read_text())
        add_ratios(previous["results"])
        machine = previous["machine"]
        report["earlier_runs"].append({"date": machine["date"], "note": note, "results": previous["results"],
                                       **{k: machine[k] for k in ("load_average_at_start", "load_average_at_end")}})
    (out / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "train.md").write_text(to_markdown(report))
    print(to_markdown(report))


def verdict(rows: list[dict]) -> list[str]:
    one = next((r for r in rows if r["kind"] == "ray" and r["n"] == 1 and "ratio_vs_bare" in r), None)
    if one is None:
        return []
    met = lambda ratio: "meets" if ratio >= TARGET_RATIO else "MISSES"  # noqa: E731
    return [f"Target: Ray Train with 1 worker >= {TARGET_RATIO}x the bare loop at the same torch threads "
            f"({one['threads']}): {one['ratio_vs_bare']:.2f}x on the mean of epochs >= 2 ({met(one['ratio_vs_bare'])} "
            f"it), {one['ratio_best_vs_bare']:.2f}x on the best epoch ({met(one['ratio_best_vs_bare'])} it)."]


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
