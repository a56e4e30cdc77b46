"""`eain score` of a 1M-row split against the model's forward-only rate in one process (CPU).

Setup (CPU-heavy, not timed; run it under /work/tools/heavy), once:
    generated 2023-format reviews -> `eain prepare` (benchmarks/train_data.py's dataset: history 50,
    1 uniform negative) -> the first --rows rows of its train split as the input folder (4 files)
    -> `eain train` 1 epoch of EAIN (default config, dim 16, 1 worker): the run that is scored.

Arms (timed; run under /work/tools/quiet), each a fresh process, back to back (ARMS):
- forward only: one process, no Ray. The run's model with gathered tables
  (`eain_dist.serve.tables`); the input's first FORWARD_ROWS rows read and converted by
  `to_tensors` into batches *before* the clock starts; timed: `model(batch).logits` and the
  sigmoid, under torch.inference_mode, torch.set_num_threads(T): T = 2 with batches of 1,024 (the
  reference), T = 1, and T = 2 with batches of 4,096 (what serve.batch_size's default costs).
- eain score: the command as a user runs it (`eain score --run ... --input ... --output ...`),
  a private local Ray instance on this machine's 2 CPUs, default serve settings (2 actors x 1
  thread, batches of 1,024). Its rows/s is its own: rows / seconds of Ray Data's execution (read,
  score, write); the command's wall time (Python and Ray start-up, checkpoint gathering, the
  move into place) is reported beside it. Peak memory: the largest sum of PSS over the process
  tree (driver, Ray's processes, actors, read and write tasks), sampled every 0.2 s.

The ratio: eain score rows/s / forward-only rows/s with 2 threads, batch 1,024 (the whole machine
in one process). Target: >= 0.7.

    /work/tools/heavy python benchmarks/score.py --setup
    /work/tools/quiet python benchmarks/score.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from itertools import islice
from pathlib import Path

from common import ROOT, machine_info, write_results
from train_data import ensure_dataset, parquet_batches

EAIN = Path(sys.executable).parent / "eain"
TARGET_RATIO = 0.7
FILES = 4
# Side by side, in this order: the reference (the whole machine in one process, serve.batch_size),
# eain score, one thread, and the reference at a 4x larger batch (what serve.batch_size costs).
ARMS = ("forward-2-1024", "score", "forward-1-1024", "forward-2-4096")
FORWARD_ROWS = 262_144  # the forward-only arms time the first rows of the input: a steady rate, a short run


def setup(work: Path, reviews: int, rows: int) -> None:
    prepared = ensure_dataset(work, reviews)
    source = input_folder(work, rows)
    if not (source / "DONE").exists():
        write_input(prepared / "train", source, rows)
    run = work / "run"
    if not (run / "checkpoints" / "BEST").exists():
        subprocess.run([str(EAIN), "train", "--set", f"data.output={prepared}", "--set", "data.max_history=50",
                        "--set", f"train.run_dir={run}", "--set", "train.epochs=1", "--set", "wandb.mode=disabled",
                        "--set", "ray.num_cpus=2"], check=True, cwd=ROOT)


def input_folder(work: Path, rows: int) -> Path:
    return work / f"input-{rows}"


def write_input(split: Path, target: Path, rows: int) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(split)
    if table.num_rows < rows:
        raise SystemExit(f"{split} has {table.num_rows:,} rows, fewer than --rows {rows:,}: raise --reviews")
    target.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // FILES)
    for number, start in enumerate(range(0, rows, per_file)):
        pq.write_table(table.slice(start, min(per_file, rows - start)), target / f"part-{number}.parquet")
    (target / "DONE").write_text(json.dumps({"rows": rows, "split": str(split)}))


# ----------------------------------------------------------------------------- arms


def forward_arm(work: Path, rows: int, threads: int, batch_size: int) -> dict:
    """One process, no Ray: the model's forward pass over pre-converted batches of the first rows."""
    import torch

    from eain_dist.data.loader import to_tensors
    from eain_dist.serve.tables import load_run, local_model

    torch.set_num_threads(threads)
    run = load_run(work / "run")
    model = local_model(run.config, run.meta, run.state)
    source = input_folder(work, rows)
    first_rows = islice(parquet_batches(source.parent, source.name, batch_size), FORWARD_ROWS // batch_size)
    batches = [to_tensors(table, run.meta["max_history"]) for table in first_rows]
    with torch.inference_mode():  # warm-up: one batch
        torch.sigmoid(model(batches[0]).logits)
        started = time.perf_counter()
        for batch in batches:
            torch.sigmoid(model(batch).logits)
        seconds = time.perf_counter() - started
    scored = sum(len(b["label"]) for b in batches)
    return {"arm": f"forward only, one process, {threads} thread(s), batch {batch_size:,}", "threads": threads,
            "batch_size": batch_size, "rows": scored, "seconds": seconds, "rows_per_s": scored / seconds}


def score_arm(work: Path, rows: int) -> dict:
    output = work / "scored"
    command = [str(EAIN), "score", "--run", str(work / "run"), "--input", str(input_folder(work, rows)),
               "--output", str(output)]
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    peak = PeakMemory(process.pid)
    peak.start()
    if process.wait() != 0:
        raise SystemExit(f"eain score failed with status {process.returncode}")
    wall = time.perf_counter() - started
    peak.stop()
    summary = json.loads((output / "_SUCCESS").read_text())
    return {"arm": "eain score (Ray Data, actor pool)", "rows": summary["rows"], "seconds": summary["seconds"],
            "rows_per_s": summary["rows_per_s"], "wall_seconds": wall, "wall_rows_per_s": summary["rows"] / wall,
            "actors": summary["actors"], "actor_seconds": summary["actor_seconds"],
            "peak_pss_gib": peak.peak_bytes / 2**30}


class PeakMemory(threading.Thread):
    """The largest sum of PSS (proportional set size: shared pages split between their users, so
    Ray's object store is counted once) over a process and all its descendants."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_bytes, self.running = root, 0, True

    def run(self) -> None:
        while self.running:
            self.peak_bytes = max(self.peak_bytes, sum(_pss(pid) for pid in _tree(self.root)))
            time.sleep(0.2)

    def stop(self) -> None:
        self.running = False
        self.join()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- report


def run_child(args: argparse.Namespace, arm: str) -> dict:
    out = args.work / f"arm-{arm}.json"
    command = [sys.executable, __file__, "--child", arm, "--work", str(args.work), "--rows", str(args.rows),
               "--reviews", str(args.reviews), "--child-out", str(out)]
    load = os.getloadavg()[0]
    subprocess.run(command, check=True, cwd=ROOT)
    return {**json.loads(out.read_text()), "load_average_1m_before": load}


def to_markdown(report: dict) -> str:
    m, rows = report["machine"], report["results"]
    forward = rows[0]
    score = next(r for r in rows if "wall_seconds" in r)
    ratio = score["rows_per_s"] / forward["rows_per_s"]
    lines = [
        "# `eain score` throughput against the model's forward-only rate (CPU)", "",
        f"Date {m['date']}, eain_dist at {m['code']}. Machine: {m['processor']}, {m['cpu_count']} CPUs, "
        f"{m['memory_gib']} GiB, torch {m['torch']}, Ray {m['ray']}, pyarrow {m['pyarrow']}, Python {m['python']}.", "",
        f"Command: `{report['command']}` (the setup: `{report['setup_command']}`).", "",
        f"Input: the first {report['rows']:,} rows of the train split of {report['reviews']:,} generated 2023-format "
        f"reviews prepared by `eain prepare` (history 50), in {FILES} Parquet files. Model: EAIN, default config "
        "(dim 16), trained 1 epoch by `eain train`. eain score with its defaults (serve.batch_size 1,024 rows, "
        "one actor per CPU); the forward-only arms time the first "
        f"{FORWARD_ROWS:,} rows of the same input.", "",
        "| arm | rows | seconds | rows/s | vs forward only, 2 threads, batch 1,024 | load before |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['arm']} | {row['rows']:,} | {row['seconds']:.1f} | {row['rows_per_s']:,.0f} | "
                     f"{row['rows_per_s'] / forward['rows_per_s']:.2f}x | {row['load_average_1m_before']:.2f} |")
    actor = score["actor_seconds"]
    busy = actor["inputs"] + actor["model"]
    lines += [
        "",
        f"**eain score / forward-only (2 threads) = {ratio:.2f}x** (target >= {TARGET_RATIO}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}). eain score's rows/s is over Ray Data's execution "
        f"({score['seconds']:.1f} s: read, score, write); the whole command took {score['wall_seconds']:.1f} s "
        f"({score['wall_rows_per_s']:,.0f} rows/s, {score['wall_rows_per_s'] / forward['rows_per_s']:.2f}x), "
        "Python and Ray start-up and the checkpoint's gathering included.",
        "",
        f"Where the actors' time went ({score['actors']} actors, summed): mapping and checking the input and "
        f"`to_tensors` {actor['inputs']:.1f} s, the model (forward, sigmoid, output columns) {actor['model']:.1f} s; "
        f"{busy / (score['actors'] * score['seconds']):.0%} of the actors' {score['actors']} x "
        f"{score['seconds']:.1f} s was spent in these calls (the rest: waiting for blocks, Ray Data's scheduling).",
        "",
        f"Peak memory of the whole process tree of `eain score` (sum of PSS): {score['peak_pss_gib']:.2f} GiB.",
        "",
        f"Load average (1 min) at the start: {m['load_average_at_start'][0]:.2f}, at the end: "
        f"{report['load_average_at_end'][0]:.2f}.",
    ]
    return "\n".join(lines + [""] + [f"- {note}" for note in report.get("notes", [])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="generate, prepare, write the input, train (heavy)")
    parser.add_argument("--reviews", type=int, default=1_400_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "score")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--child", choices=ARMS)
    parser.add_argument("--child-out", type=Path)
    args = parser.parse_args()
    if args.setup:
        setup(args.work, args.reviews, args.rows)
        return
    if args.child:
        if args.child == "score":
            result = score_arm(args.work, args.rows)
        else:  # forward-<threads>-<batch size>
            _, threads, batch_size = args.child.split("-")
            result = forward_arm(args.work, args.rows, int(threads), int(batch_size))
        args.child_out.write_text(json.dumps(result))
        return
    machine = machine_info("torch", "ray", "pyarrow")
    results = [run_child(args, arm) for arm in ARMS]
    report = {"machine": machine, "results": results, "rows": args.rows, "reviews": args.reviews,
              "command": "/work/tools/quiet python benchmarks/score.py",
              "setup_command": "/work/tools/heavy python benchmarks/score.py --setup",
              "load_average_at_end": os.getloadavg(), "notes": args.note}
    markdown = to_markdown(report)
    write_results("score", report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
