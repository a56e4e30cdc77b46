"""The arms of benchmarks/train.py, each run in a child process: bare loop, worker pieces, Ray Train."""

from __future__ import annotations

import cProfile
import json
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from common import free_port
from train_data import BATCH_SIZE, parquet_batches


def bare_arm(prepared: Path, threads: int, epochs: int) -> dict:
    """Plain single-process PyTorch: local tables, Adam on everything."""
    import torch

    from eain_dist.config import Config
    from eain_dist.data.loader import to_tensors
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
            bare_step(model, optimizer, batch, config.model)
            samples += len(batch["label"])
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
                        "data_fraction": data_s / seconds})
        print(f"bare {threads} thread(s) epoch {epoch}: {samples / seconds:,.0f} samples/s", flush=True)
    return {"torch_threads": torch.get_num_threads(), "history": history}


def bare_step(model, optimizer, batch: dict, model_config) -> None:
    """One plain PyTorch training step: forward, `ctr_loss`, backward, the optimizer."""
    from eain_dist.model.loss import ctr_loss

    model.train()
    out = model(batch)
    loss, bce = ctr_loss(out.logits, batch["label"], model, l2=model_config.l2,
                         embedding_l2=model_config.embedding_l2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    float(bce.detach())


def single_process_group(threads: int) -> None:
    """A 1-rank gloo group on a free loopback port, torch at `threads` threads: what the worker's
    pieces (eain_dist.train.worker) need to run without Ray."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def worker_arm(prepared: Path, threads: int, epochs: int, profile_to: Path | None = None) -> dict:
    """The Ray worker's pieces (eain_dist.train.worker) in a 1-process gloo group, without Ray."""
    import torch
    import torch.distributed as dist

    from eain_dist.config import Config
    from eain_dist.train.worker import build_worker, synchronized_batches, train_step

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
        print(f"worker {threads} thread(s) epoch {epoch}: {samples / seconds:,.0f} samples/s", flush=True)
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
    import eain_dist.train.worker as worker_module

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

    def train_epoch(worker, state, *args, **kwargs):
        timers.clear()
        started = time.perf_counter()
        original_epoch(worker, state, *args, **kwargs)
        span = time.perf_counter() - started - timers.get("evaluation", 0.0)
        epochs.append({"epoch": len(epochs) + 1, "span_s": span, **timers,
                       "samples_per_s": state.history[-1]["samples_per_s"]})
        Path(loop_config["run_dir"], f"worker-rank{rank}-epochs.json").write_text(json.dumps(epochs))

    original_batches, original_epoch = loop.synchronized_batches, loop._train_epoch
    loop.train_step = timed("train_step", loop.train_step)
    loop._evaluate_and_report = timed("evaluation", loop._evaluate_and_report)  # kept out of the span
    loop.synchronized_batches, loop._train_epoch = synchronized_batches, train_epoch
    worker_module.any_rank = timed("any_rank", worker_module.any_rank)  # called inside synchronized_batches
    worker_module.to_tensors = timed("to_tensors", worker_module.to_tensors)
    return loop.train_loop_per_worker(loop_config)



def ray_arm(prepared: Path, workers: int, epochs: int, run_dir: Path, py_spy_to: Path | None = None,
            overrides: tuple[str, ...] = ()) -> dict:
    """`eain_dist.train.trainer.train` on a private local Ray instance, with config `overrides`."""
    import ray

    import eain_dist.train.trainer as trainer
    from eain_dist.config import RayConfig, load_config
    from eain_dist.runtime import init_ray

    for stale in run_dir.glob("worker-rank*.json"):  # also *-epochs.json
        stale.unlink()
    config = load_config(None, [f"data.output={prepared}", f"train.num_workers={workers}", f"train.epochs={epochs}",
                                f"train.early_stopping_patience={epochs + 1}", f"train.batch_size={BATCH_SIZE}",
                                f"train.run_dir={run_dir}", "wandb.mode=disabled", *overrides])
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
                "valid_auc": h["valid_auc"], "samples_per_rank": h["samples_per_rank"]}
               for h in metrics["history"] if h["epoch_done"]]
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
