"""`eain train` on the driver: datasets, the TorchTrainer, and the run directory.

    <train.run_dir>/config.yaml    the fully resolved config (the sections a run reads)
    <train.run_dir>/metrics.json   valid / test metrics (at the best evaluation), throughput, rows per rank
    <train.run_dir>/curves.png     training loss and validation AUC
    <train.run_dir>/checkpoints/   BEST and LATEST: pointers to checkpoints in Ray's storage
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from eain_dist.config import Config, dump_run_yaml, load_config, to_dict
from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for
from eain_dist.data.pipeline import SCHEMA_VERSION
from eain_dist.runtime import is_local
from eain_dist.train.data import SPLITS, EqualSharesDataConfig, datasets
from eain_dist.train.loop import evaluate_loop_per_worker, train_loop_per_worker
from eain_dist.train.tracking import plot_curves


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    checkpoint_path: str | None


def read_meta(config: Config) -> dict:
    """The prepared dataset's meta.json; an InputError unless it is of this version's schema."""
    fs, path = filesystem_for(config.data.output, config.data.s3)
    if not fs.exists(f"{path}/meta.json"):
        raise InputError(f"{config.data.output}/meta.json not found: run `eain prepare` first (data.output)")
    with fs.open(f"{path}/meta.json") as handle:
        meta = json.load(handle)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{config.data.output} was prepared with schema_version {meta.get('schema_version')}, "
                         f"this eain reads {SCHEMA_VERSION}: run `eain prepare` again")
    return meta


def train(config: Config, log=print, callbacks: list | None = None, ray_run_name: str | None = None) -> TrainResult:
    """`callbacks`: Ray Train callbacks (Tune's TuneReportCallback). `ray_run_name`: a name that
    already has state in Ray's storage resumes that run from its latest checkpoint (a Tune trial
    restarted after an interruption); None = a fresh run."""
    meta = read_meta(config)
    run_dir = Path(config.train.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "fault-injected").unlink(missing_ok=True)
    (run_dir / "metrics.json").unlink(missing_ok=True)  # present only once this run has finished
    (run_dir / "config.yaml").write_text(dump_run_yaml(config))
    # A fresh Ray run name unless the caller resumes one: Ray Train resumes a run whose name has state.
    ray_run_name = ray_run_name or f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "meta": meta, "run_dir": str(run_dir),
                           "run_name": run_dir.name},
        scaling_config=ray.train.ScalingConfig(num_workers=config.train.num_workers, use_gpu=config.train.use_gpu,
                                               resources_per_worker=_worker_resources(config)),
        run_config=ray.train.RunConfig(
            name=ray_run_name, storage_path=config.train.storage_path or str(run_dir / "ray"), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(  # see loop._report
                num_to_keep=2, checkpoint_score_attribute="selection_rank", checkpoint_score_order="max")),
        datasets=datasets(config, meta),
        dataset_config=EqualSharesDataConfig(),
    )
    log(f"train: {config.model.name} on {config.data.output} with {config.train.num_workers} worker(s)")
    result = trainer.fit()
    return _write_run_dir(run_dir, config, result)


def _worker_resources(config: Config) -> dict:
    cpus = config.train.cpus_per_worker
    if is_local(config.ray):
        # Ray Data's read tasks need CPU left over on a small machine, or the workers wait for
        # their first batch forever: keep one CPU free (half of one on a 1-CPU machine).
        available = ray.cluster_resources().get("CPU", 1)
        cpus = min(cpus, max(available - 1, 0.5) / config.train.num_workers)
    return {"CPU": cpus, **({"GPU": 1} if config.train.use_gpu else {})}


def _write_run_dir(run_dir: Path, config: Config, result) -> TrainResult:
    state = result.return_value
    best = state["history"][state["best_evaluation"] - 1]
    last = ([h for h in state["history"] if h["epoch_done"]] or state["history"])[-1]  # the last whole epoch
    metrics = {
        "valid": {k: best[f"valid_{k}"] for k in ("auc", "gauc", "logloss")},
        "test": {k: best[f"test_{k}"] for k in ("auc", "gauc", "logloss")},
        "train": {"samples_per_s": last["samples_per_s"], "epochs": state["epoch"], "steps": state["steps"],
                  "best_epoch": best["epoch"], "best_steps": best["steps"], "best_evaluation": state["best_evaluation"],
                  "restarts": state["restarts"], "samples_per_rank": last["samples_per_rank"]},
        "world_size": config.train.num_workers,
        "model": config.model.name,
        "history": state["history"],  # one row per evaluation
        "loss_curve": state["loss_curve"],  # [step, mean training loss of the last log_every_steps]
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(state["history"], [tuple(p) for p in state["loss_curve"]], str(run_dir / "curves.png"))
    best_checkpoint = next(c for c, m in result.best_checkpoints if m["evaluation"] == state["best_evaluation"])
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "BEST").write_text(f"{best_checkpoint.path}\n")
    (run_dir / "checkpoints" / "LATEST").write_text(f"{result.checkpoint.path}\n")
    return TrainResult(run_dir, metrics, best_checkpoint.path)


def evaluate_run(run_dir: str, split: str, config_overrides: list[str] | None = None, log=print) -> dict:
    """Metrics of a finished run's best checkpoint on one split, with the same sharded workers."""
    run = Path(run_dir)
    if not (run / "checkpoints" / "BEST").exists():
        raise InputError(f"{run_dir} is not a finished run directory (no checkpoints/BEST)")
    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    config = load_config(run / "config.yaml", config_overrides)
    meta = read_meta(config)
    trainer = TorchTrainer(
        evaluate_loop_per_worker,
        train_loop_config={"config": to_dict(config), "meta": meta, "split": split,
                           "checkpoint": (run / "checkpoints" / "BEST").read_text().strip()},
        scaling_config=ray.train.ScalingConfig(num_workers=config.train.num_workers, use_gpu=config.train.use_gpu,
                                               resources_per_worker=_worker_resources(config)),
        run_config=ray.train.RunConfig(name=f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}",
                                       storage_path=config.train.storage_path or str(run.resolve() / "ray")),
        datasets=datasets(config, meta, (split,), training=False),
        dataset_config=EqualSharesDataConfig(),
    )
    log(f"evaluate: {run_dir} on {split} with {config.train.num_workers} worker(s)")
    return trainer.fit().return_value


def results_table(metrics: dict) -> str:
    rows = [("split", "AUC", "gAUC", "logloss")]
    rows += [(split, f"{metrics[split]['auc']:.4f}", f"{metrics[split]['gauc']:.4f}", f"{metrics[split]['logloss']:.4f}")
             for split in ("valid", "test")]
    lines = [" | ".join(f"{c:>8}" for c in row) for row in rows]
    train = metrics["train"]
    lines.append(f"model {metrics['model']}, {metrics['world_size']} worker(s), {train['epochs']} epoch(s), "
                 f"best epoch {train['best_epoch']}, {train['samples_per_s']:,.0f} samples/s")
    return "\n".join(lines)

