"""benchmarks/train.py's report: the table, the targets, where each Ray Train epoch's time goes."""

from __future__ import annotations

import pstats
import statistics
from collections import Counter
from pathlib import Path

from train_ablation import ablation_table
from train_data import BATCH_SIZE, PREPARE_SETTINGS

TARGET_RATIO = 0.9  # Ray Train, 1 worker >= 0.9 x the bare loop at the same torch threads
TARGET_SAMPLES_PER_S = 15_000  # Ray Train, 1 worker, EAIN at dim 16, end to end


def summarize(history: list[dict]) -> dict:
    steady = [h["samples_per_s"] for h in history if h["epoch"] >= 2] or [history[-1]["samples_per_s"]]
    return {"samples_per_s_mean_epochs_2plus": statistics.mean(steady), "samples_per_s_best_epoch_2plus": max(steady),
            "epochs_used": [h["epoch"] for h in history if h["epoch"] >= 2]}



def add_ratios(rows: list[dict]) -> None:
    """Each arm against the bare loop with the same torch threads (2 workers x 1 thread: the 2-thread loop)."""
    for row in rows:
        bare = next((r for r in rows if r["kind"] == "bare" and r["threads"] == row["threads"]), None)
        if row["kind"].startswith("ray") and row["n"] == 2:
            bare = next((r for r in rows if r["kind"] == "bare" and r["n"] == 2), bare)
        if bare is not None and row is not bare:
            row["ratio_vs_bare"] = row["samples_per_s_mean_epochs_2plus"] / bare["samples_per_s_mean_epochs_2plus"]
            row["ratio_best_vs_bare"] = row["samples_per_s_best_epoch_2plus"] / bare["samples_per_s_best_epoch_2plus"]




def verdict(rows: list[dict]) -> list[str]:
    one = next((r for r in rows if r["kind"] == "ray" and r["n"] == 1 and "ratio_vs_bare" in r), None)
    if one is None:
        return []
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    rate = one["samples_per_s_mean_epochs_2plus"]
    return [f"- Target: Ray Train with 1 worker >= {TARGET_RATIO}x the bare loop at the same torch threads "
            f"({one['threads']}): {one['ratio_vs_bare']:.2f}x on the mean of epochs >= 2 "
            f"({met(one['ratio_vs_bare'] >= TARGET_RATIO)}), {one['ratio_best_vs_bare']:.2f}x on the best epoch.",
            f"- Target: >= {TARGET_SAMPLES_PER_S:,} samples/s: {rate:,.0f} ({met(rate >= TARGET_SAMPLES_PER_S)})."]


def to_markdown(report: dict) -> str:
    m, s, rows = report["machine"], report["settings"], report["results"]
    lines = [
        "# EAIN training throughput: Ray Train vs a bare PyTorch loop (CPU)", "",
        f"Date {m['date']}, eain_dist at {m.get('code', 'unknown')}. Machine: {m['processor']}, {m['cpu_count']} "
        f"CPUs, {m['memory_gib']} GiB, torch {m['torch']}, Ray {m['ray']}, pyarrow {m['pyarrow']}, "
        f"Python {m['python']}.", "",
        f"Command: `{s['command']}`", "",
        f"Data: {s['reviews']:,} synthetic 2023-format reviews (`eain generate`), `eain prepare` with "
        f"{', '.join(PREPARE_SETTINGS)} -> {s['train_rows']:,} training impressions (tables {s['tables']}, mean "
        f"history length {s.get('mean_hist_len', float('nan')):.1f} of 50). Model: EAIN, default config (dim "
        f"{s['embedding_dim']}), batch {s['batch_size']} per worker, {s['epochs']} epochs per arm, each arm a fresh "
        "process.", "",
        "samples/s = training samples / seconds of the training part of an epoch (reading + conversion + steps; "
        "Ray start-up, evaluation and checkpoints excluded). Epoch 1 is warm-up: 'mean' is the mean of epochs >= 2, "
        "'best' the best of them. For Ray Train it is the trainer's own per-epoch `samples_per_s` (metrics.json).", "",
        f"1-minute load average {m['load_average_at_start'][0]:.1f} at the start, {m['load_average_at_end'][0]:.1f} "
        "at the end (2 cores; run under /work/tools/quiet); before each arm in the table.", "",
        *results_table(rows), "", *verdict(rows), "",
    ]
    for row in rows:
        lines += worker_lines(row)
    for r in rows:
        if r["kind"] == "bare":
            steady = [h for h in r["history"] if h["epoch"] >= 2] or r["history"]
            data = statistics.mean(h["data_fraction"] for h in steady)
            step_ms = statistics.mean(1000 * h["seconds"] * (1 - h["data_fraction"]) / -(-h["samples"] // BATCH_SIZE)
                                      for h in steady)
            lines.append(f"- {r['arm']}: reading Parquet + to_tensors {data:.1%} of the epoch, the step "
                         f"{1 - data:.1%} ({step_ms:.0f} ms/step).")
    if "step_ablation" in report:
        lines += ["", *ablation_table(report["step_ablation"])]
    lines += ["", *[f"- {note}" for note in report.get("notes", [])], ""]
    return "\n".join(lines)


def worker_lines(row: dict) -> list[str]:
    """Threads, rows per rank and the breakdown of each Ray Train worker's epochs."""
    if not row.get("workers"):
        return []
    facts = "; ".join(f"rank {w['rank']}: torch threads {w['torch_threads']}, OMP_NUM_THREADS "
                      f"{w['OMP_NUM_THREADS']}" for w in row["workers"])
    per_rank = row["history"][-1].get("samples_per_rank")
    lines = [f"- {row['arm']}: {facts}; rows per rank in the last epoch {per_rank}; whole run incl. start-up and "
             f"evaluation {row['wall_s_including_startup_and_eval']:.0f} s."]
    for w in row["workers"]:
        b = epoch_breakdown(w)
        lines.append(f"  - rank {w['rank']}, where an epoch's training span goes (epochs >= 2): train_step "
                     f"{b['train_step']:.1%} ({b['train_step_ms']:.0f} ms/step), waiting for Ray Data's next "
                     f"batch {b['ray_data_wait']:.1%} (of which the epoch's first batch {b['first_batch']:.1%}, "
                     f"{b['first_batch_s']:.1f} s), to_tensors {b['to_tensors']:.1%}, any_rank (incl. waiting for "
                     f"the other ranks) {b['any_rank']:.1%}, other {b['other']:.1%}.")
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



def print_profiles(directory: Path) -> None:
    pieces = directory / "worker.pstats"
    if pieces.exists():
        print("\n== cProfile of the worker arm's last epoch (cumulative, top 35) ==")
        pstats.Stats(str(pieces)).sort_stats("cumulative").print_stats(35)
        print("== by own time (top 25) ==")
        pstats.Stats(str(pieces)).sort_stats("tottime").print_stats(25)
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

