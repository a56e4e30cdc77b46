"""Where a 1-worker training step's time goes, without Ray: the bare step beside the worker's
`train_step` with its distributed pieces switched off one at a time (benchmarks/train.py --ablate)."""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path

from train_arms import bare_step, single_process_group
from train_data import parquet_batches


def ablation_arm(prepared: Path, threads: int, batches: int = 20, rounds: int = 7) -> dict:
    """ms per training step of the bare step and of the worker's `train_step` with its distributed
    pieces switched off one at a time (1-process gloo group, pre-converted batches, variants interleaved
    round by round so that a burst of load hits them all)."""
    import torch
    import torch.distributed as dist

    import eain_dist.train.worker as worker_module
    from eain_dist.config import Config
    from eain_dist.data.loader import to_tensors
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
        bare_step(model, adam, batch, config.model)

    def worker_variant(ddp: bool, any_rank: bool):
        worker = worker_module.build_worker(config, meta, torch.device("cpu"))
        if not ddp:
            worker.ddp = worker.model  # the step calls worker.ddp(batch)

        def step(batch):
            if any_rank:
                worker_module.any_rank(True, worker.device)
            worker_module.train_step(worker, batch)
        return step

    # One rank serves its sharded rows locally (no all-to-all at world size 1).
    variants = {
        "bare loop step (local tables, Adam on all)": bare,
        "worker train_step + any_rank (as in the loop)": worker_variant(True, True),
        "  without DDP": worker_variant(False, True),
        "  without any_rank": worker_variant(True, False),
        "  without DDP and any_rank": worker_variant(False, False),
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
        variants["worker train_step + any_rank (as in the loop)"](batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    top = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in stats.stats.items()), reverse=True)[:12]
    dist.destroy_process_group()
    return {"torch_threads": torch.get_num_threads(), "batches": batches, "rounds": rounds,
            "variants": [{"variant": name, "ms_per_step_median": statistics.median(wall[name]),
                          "ms_per_step_min": min(wall[name]), "cpu_ms_per_step_median": statistics.median(cpu[name])}
                         for name in variants],
            "profile_tottime_ms_per_step": [{"function": f, "ms": 1000 * t / batches} for t, f in top]}



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
    lines += ["", f"cProfile of the worker's `train_step` + any_rank, own time in ms/step: {top}."]
    return lines



def _function_name(label: str) -> str:
    """cProfile's "~:<method 'run_backward' of ...>" -> "run_backward"; "file.py:name" stays."""
    if label.startswith("~:") and "'" in label:
        return label.split("'")[1]
    if label.startswith("~:<built-in method "):
        return label.removeprefix("~:<built-in method ").rstrip(">")
    return label
