"""Hyper-parameter sweep on a prepared dataset, selected on validation AUC only.

How EAIN's Grocery settings were chosen (benchmarks/results/compare-tuning.md). Each variant is
one process that trains with the worker's own pieces (`eain_dist.train.worker`: sharded tables
with row-wise Adagrad, DDP, `train_step`, exact `evaluate`) in a 1-rank gloo group, without Ray:
the same model and optimizer code as `eain train`, at a fraction of the start-up cost, so that
dozens of variants fit on 2 cores. The training rows are re-shuffled every epoch (as
`train.shuffle_buffer` does); early stopping on validation AUC as in `eain train`. Test metrics
are recorded at the best validation epoch and never used to choose.

    python benchmarks/sweep.py --config configs/grocery.yaml \\
        --variant eain:model.name=eain --variant din:model.name=din \\
        --variant eain-d32:model.name=eain,model.embedding_dim=32 [--parallel 2] [--name compare-tuning]

Writes benchmarks/results/<name>.json and .md (variants sorted by validation AUC).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


def train_one(config_path: str, overrides: list[str]) -> dict:
    """One variant, in this process (torch at 1 thread): per-epoch metrics and the best epoch."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist

    from train_arms import single_process_group  # beside this file

    from eain_dist.config import load_config
    from eain_dist.train.evaluation import evaluate
    from eain_dist.train.worker import build_worker, synchronized_batches, train_step

    single_process_group(threads=1)
    config = load_config(config_path, overrides)
    output = Path(config.data.output)
    meta = json.loads((output / "meta.json").read_text())
    splits = {name: pq.read_table(output / name) for name in ("train", "valid", "test")}
    worker = build_worker(config, meta, torch.device("cpu"))
    rng = np.random.default_rng(config.train.seed)

    def chunks(table, size):
        return (table.slice(start, size) for start in range(0, table.num_rows, size))

    history, best, since_best = [], None, 0
    for epoch in range(1, config.train.epochs + 1):
        shuffled = splits["train"].take(rng.permutation(splits["train"].num_rows))
        started = time.time()
        losses = [train_step(worker, batch)
                  for batch in synchronized_batches(chunks(shuffled, config.train.batch_size), worker)]
        seconds = time.time() - started
        valid = evaluate(worker, chunks(splits["valid"], config.train.eval_batch_size))
        test = evaluate(worker, chunks(splits["test"], config.train.eval_batch_size))
        history.append({"epoch": epoch, "train_loss": float(np.nanmean(losses)), "seconds": seconds,
                        **{f"valid_{k}": v for k, v in valid.items()}, **{f"test_{k}": v for k, v in test.items()}})
        if best is None or valid["auc"] > best["valid_auc"]:
            best, since_best = history[-1], 0
        else:
            since_best += 1
            if since_best >= config.train.early_stopping_patience:
                break
    dist.destroy_process_group()
    return {"overrides": overrides, "best": best, "history": history}


def run_variant(args, tag: str, overrides: list[str]) -> dict:
    command = [sys.executable, __file__, "--one", args.config, *overrides]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {tag} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    best = result["best"]
    print(f"{tag}: valid AUC {best['valid_auc']:.4f} test AUC {best['test_auc']:.4f} (epoch {best['epoch']})",
          flush=True)
    return {"tag": tag, **result}


def render(name: str, config: str, runs: list[dict]) -> str:
    lines = [f"# {name}", "",
             f"`python benchmarks/sweep.py --config {config} ...`: one process per variant, selected on",
             "validation AUC only (test AUC at the best validation epoch, shown, never used to choose).", "",
             "| variant | settings | valid AUC | test AUC | test gAUC | best epoch |",
             "|---|---|---:|---:|---:|---:|"]
    for run in sorted(runs, key=lambda r: -r["best"]["valid_auc"]):
        best = run["best"]
        lines.append(f"| {run['tag']} | `{' '.join(run['overrides'])}` | {best['valid_auc']:.4f} | "
                     f"{best['test_auc']:.4f} | {best['test_gauc']:.4f} | {best['epoch']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/grocery.yaml")
    parser.add_argument("--variant", action="append", default=[], metavar="TAG:KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--name", default="compare-tuning")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant here
    args, overrides = parser.parse_known_args()
    if args.one:
        print(json.dumps(train_one(args.one, overrides)))
        return
    variants = [(tag, [o for o in settings.split(",") if o]) for tag, _, settings in
                (v.partition(":") for v in args.variant)]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda variant: run_variant(args, *variant), variants))
    write_results(args.name, {"config": args.config, "runs": runs}, render(args.name, args.config, runs))


if __name__ == "__main__":
    main()
