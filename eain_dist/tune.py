"""`eain tune`: a Ray Tune search over the trainer, ASHA on a per-epoch validation metric.

Ray 2.60 runs Ray Train V2, where a `Tuner` no longer takes a `TorchTrainer`: each trial is a
driver function (`_run_trial`) that builds the trial's Config and calls the project's `train()`
with Tune's `TuneReportCallback`, which forwards every epoch's `ray.train.report` (valid / test
AUC, gAUC, logloss, the checkpoint path) to Tune.

    <tune.output>/
      <tune.name>/          Tune's experiment state; `eain tune --resume` continues it
      trials/<trial_id>/    each trial's run directory (config.yaml, metrics.json, checkpoints/, ray/)
      best.yaml             the best trial's config: `eain train --config <tune.output>/best.yaml`
      best.json             its searched values, metrics at its best epoch, checkpoint, run directory
      results.csv / .md     every trial at its best epoch, best first
      wandb/                one W&B run per trial (group = tune.name), offline without an API key
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.air.integrations.wandb import WandbLoggerCallback

from eain_dist.config import Config, ConfigError, TrainConfig, TuneConfig, dump_yaml, load_config_dict, to_dict

# Metrics a trial may be selected on; every epoch reports them. Never a test metric: choosing
# hyper-parameters on the test split would leak it into the reported result.
SELECTION_METRICS = ("valid_auc", "valid_gauc", "valid_logloss")
TABLE_METRICS = ("valid_auc", "valid_gauc", "valid_logloss", "test_auc", "test_gauc", "test_logloss")
# A trial changes only what `train()` reads: the model, the training knobs and which prepared
# dataset (the history length is fixed by the prepared dataset: one dataset per length).
TUNABLE_PREFIXES = ("model.", "train.")
TUNABLE_KEYS = ("data.output",)
SET_PER_TRIAL = ("train.run_dir", "train.storage_path")
# Ray Data's read tasks ask for a whole CPU each: a trial whose workers hold every CPU waits
# forever for its own input, so each trial is counted with one spare CPU.
DATA_CPUS_PER_TRIAL = 1.0
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives the head node 1 of it


@dataclass
class SearchResult:
    experiment: str  # Tune's experiment path (what `Tuner.restore` reads)
    interrupted: bool  # stopped before every trial finished: resume with `--resume`
    rows: list[dict]  # one per trial at its best epoch, best first
    best: dict | None  # best.json's content; None when interrupted or no trial reported


# --- The search space: YAML specs -> Tune domains, validated against the Config ---------------

def _bounds(spec: dict) -> list:
    return [float(spec["lower"]), float(spec["upper"])]


# type -> (the keys its spec takes, its Tune domain, the extreme values it can draw)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], Callable, Callable]] = {
    "loguniform": (("lower", "upper"), lambda s: tune.loguniform(s["lower"], s["upper"]), _bounds),
    "uniform": (("lower", "upper"), lambda s: tune.uniform(s["lower"], s["upper"]), _bounds),
    "randint": (("lower", "upper"), lambda s: tune.randint(s["lower"], s["upper"]),  # upper exclusive
                lambda s: [int(s["lower"]), int(s["upper"]) - 1]),
    "choice": (("values",), lambda s: tune.choice(list(s["values"])), lambda s: list(s["values"])),
}


def validate_search_space(config: Config) -> None:
    """Every key is a tunable config path; every value a trial can draw makes a valid Config."""
    if config.tune.metric not in SELECTION_METRICS:
        raise ConfigError(f"tune.metric must be one of {', '.join(SELECTION_METRICS)}, got {config.tune.metric!r}")
    space = config.tune.search_space
    if not space:
        raise ConfigError("tune.search_space is empty: give at least one key, e.g. "
                          "train.lr: {type: loguniform, lower: 1.0e-4, upper: 1.0e-2}")
    base = to_dict(config)
    for key, spec in space.items():
        _check_tunable(key)
        for value in _extremes(key, spec):
            try:
                load_config_dict(with_values(base, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"tune.search_space.{key}: value {value!r} is not valid ({exc})") from None


def _check_tunable(key: str) -> None:
    if key in SET_PER_TRIAL:
        raise ConfigError(f"tune.search_space.{key}: set by the search for each trial, not tunable")
    if key == "data.max_history":
        raise ConfigError("tune.search_space.data.max_history: the history length is fixed by the prepared "
                          "dataset; prepare one dataset per length and search over data.output")
    if not (key.startswith(TUNABLE_PREFIXES) or key in TUNABLE_KEYS):
        raise ConfigError(f"tune.search_space.{key}: a trial only changes model.*, train.* and data.output")


def _extremes(key: str, spec: dict) -> list:
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"tune.search_space.{key}: type must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
    wanted = DISTRIBUTIONS[kind][0]
    given = set(spec) - {"type"}
    if given != set(wanted):
        raise ConfigError(f"tune.search_space.{key}: a {kind} takes {', '.join(wanted)}, "
                          f"got {', '.join(sorted(given))}")
    if kind == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"tune.search_space.{key}: choice values must be a non-empty list")
    else:
        _check_range(key, kind, spec)
    return DISTRIBUTIONS[kind][2](spec)


def _check_range(key: str, kind: str, spec: dict) -> None:
    lower, upper = spec["lower"], spec["upper"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lower, upper))
    if not numbers or not lower < upper:
        raise ConfigError(f"tune.search_space.{key}: needs numbers lower < upper, got {lower!r}, {upper!r}")
    if kind == "randint" and not all(isinstance(v, int) for v in (lower, upper)):
        raise ConfigError(f"tune.search_space.{key}: randint bounds must be integers")
    if kind == "loguniform" and lower <= 0:
        raise ConfigError(f"tune.search_space.{key}: loguniform needs lower > 0")


def param_space(config: Config) -> dict[str, Any]:
    """Tune domains keyed by config path, e.g. {"train.lr": tune.loguniform(1e-4, 1e-2)}."""
    return {key: DISTRIBUTIONS[spec["type"]][1](spec) for key, spec in config.tune.search_space.items()}


def with_values(tree: dict, values: dict[str, Any]) -> dict:
    """A copy of a config tree (`to_dict`) with `section.key` paths set to new values."""
    tree = copy.deepcopy(tree)
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})  # an unknown section is reported by the Config
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {section} is not a config section")
        node[leaf] = value
    return tree


# --- Resources -------------------------------------------------------------------------------

def derived_concurrency(train: TrainConfig, resources: dict[str, float]) -> int:
    """Trials that fit side by side in `resources` (e.g. `ray.cluster_resources()`), at least 1.

    Only counts what is up now: on an autoscaling cluster set `tune.max_concurrent` instead.
    """
    cpus_per_trial = train.num_workers * train.cpus_per_worker + DATA_CPUS_PER_TRIAL
    fits = int(resources.get("CPU", 0) // cpus_per_trial)
    if train.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // train.num_workers))
    return max(fits, 1)


# --- One trial -------------------------------------------------------------------------------

def _run_trial(params: dict, *, base: dict, trials_dir: str, search: str) -> None:
    """Tune's driver function: this trial's Config, trained by the project's `train()`."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from eain_dist.train.trainer import train

    trial_id = tune.get_context().get_trial_id()
    tree = with_values(base, params)
    tree["train"]["run_dir"] = f"{trials_dir}/{trial_id}"
    tree["wandb"]["mode"] = "disabled"  # the search logs one W&B run per trial (WandbLoggerCallback)
    # The same Train run name on every attempt of this trial: a trial restarted by
    # `Tuner.restore` resumes its run from the last checkpoint instead of from scratch.
    train(load_config_dict(tree), callbacks=[TuneReportCallback()], ray_run_name=f"{search}-{trial_id}")


def _trial_dirname(trial) -> str:
    return trial.trial_id  # the default name repeats every searched value and gets truncated


# --- The search ------------------------------------------------------------------------------

def run_search(config: Config, resume: bool = False, log=print) -> SearchResult:
    """Run (or, with `resume`, continue) the search of `config.tune`; Ray must be initialised.

    Writes the results table, and best.yaml and best.json unless the search was interrupted.
    """
    validate_search_space(config)
    config = _with_absolute_paths(config)  # trials run with the trial directory as their cwd
    _check_prepared(config)
    output = config.tune.output
    experiment = f"{output}/{config.tune.name}"
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, base=to_dict(config), trials_dir=f"{output}/trials", search=config.tune.name),
        # The driver only waits on its TorchTrainer (whose workers ask for their own resources):
        # no CPU, and on the head node, so that every trial's run directory lands beside the
        # experiment on a cluster too.
        {"CPU": 0, HEAD_NODE_RESOURCE: 0.001})
    wandb_callbacks = _wandb_callbacks(config)
    if tune.Tuner.can_restore(experiment):
        if not (resume or config.tune.resume):
            raise ConfigError(f"a search already exists in {experiment}: pass --resume (or tune.resume=true) "
                              "to continue it, or choose another tune.name or tune.output")
        log(f"tune: resuming {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(config, trainable, ray.cluster_resources(), wandb_callbacks, log)
    grid = tuner.fit()
    return _summarise(config, experiment, grid, log)


def _check_prepared(config: Config) -> None:
    """Every dataset a trial may train on is prepared: fail now, not in every trial."""
    from eain_dist.train.trainer import read_meta

    spec = config.tune.search_space.get("data.output")
    for output in spec["values"] if spec else [config.data.output]:
        read_meta(load_config_dict(with_values(to_dict(config), {"data.output": output})))


def _new_tuner(config: Config, trainable, resources: dict, callbacks: list, log):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    search = config.tune
    concurrency = search.max_concurrent or derived_concurrency(config.train, resources)
    scheduler = _scheduler(search, config.train.epochs)
    log(f"tune: {search.num_samples} trial(s), {concurrency} at a time, {search.metric} ({search.mode}), "
        f"{type(scheduler).__name__}, experiment {search.output}/{search.name}")
    Path(search.output).mkdir(parents=True, exist_ok=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            # The limit goes to the generator: Tune ignores `max_concurrent_trials` when it is
            # given a BasicVariantGenerator (the seeded random search).
            num_samples=search.num_samples,
            search_alg=BasicVariantGenerator(random_state=search.seed, max_concurrent=concurrency),
            scheduler=scheduler,
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=search.name, storage_path=search.output, callbacks=callbacks),
    )


def _scheduler(search: TuneConfig, epochs: int):
    """ASHA with its rungs (grace_period x reduction_factor^k) before the last epoch.

    A stop at the last epoch would gain nothing and cost the trial its run directory: a stopped
    trial's driver is killed before `train()` returns. Time is the trainer's "epoch", not Tune's
    iteration count, which restarts when an interrupted trial resumes.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    last_rung = epochs - 1
    if search.grace_period > last_rung:
        return FIFOScheduler()  # no epoch left at which to stop a trial early
    return ASHAScheduler(time_attr="epoch", metric=search.metric, mode=search.mode, max_t=last_rung,
                         grace_period=search.grace_period, reduction_factor=search.reduction_factor,
                         stop_last_trials=False)


def _wandb_callbacks(config: Config) -> list:
    """One W&B run per trial, logged from this process; [] when W&B is disabled.

    Also on a resumed search (whose callbacks Tune restores itself): Ray's callback looks for an
    API key unless WANDB_MODE says offline, so WANDB_MODE is pinned to what `auto` resolved.
    """
    from eain_dist.train.tracking import wandb_mode

    mode = wandb_mode(config.wandb)
    os.environ["WANDB_MODE"] = mode
    if mode == "disabled":
        return []
    directory = Path(config.tune.output) / "wandb"
    directory.mkdir(parents=True, exist_ok=True)
    return [_WandbCallback(project=config.wandb.project, entity=config.wandb.entity, group=config.tune.name,
                           mode=mode, dir=str(directory))]


class _WandbCallback(WandbLoggerCallback):
    """Ray's WandbLoggerCallback, which also ends the W&B runs of trials an interruption left
    running: Ray's own waits for them (they never get an end-of-trial) for `upload_timeout`,
    30 minutes, before the interrupted search can exit."""

    def on_experiment_end(self, trials, **info):
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial=trial)
        super().on_experiment_end(trials, **info)


def _with_absolute_paths(config: Config) -> Config:
    tree = to_dict(config)
    tree["data"]["output"] = _absolute(tree["data"]["output"])
    tree["tune"]["output"] = _absolute(tree["tune"]["output"])
    if tree["train"]["storage_path"]:
        tree["train"]["storage_path"] = _absolute(tree["train"]["storage_path"])
    datasets = tree["tune"]["search_space"].get("data.output")
    if datasets:
        datasets["values"] = [_absolute(path) for path in datasets["values"]]
    return load_config_dict(tree)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


# --- Results ---------------------------------------------------------------------------------

def _summarise(config: Config, experiment: str, grid, log) -> SearchResult:
    search = config.tune
    unfinished = _unfinished_trials(experiment)
    trials_dir = Path(search.output) / "trials"
    rows = sorted((_trial_row(result, unfinished, trials_dir) for result in grid),
                  key=lambda row: _sort_key(row, search.metric, search.mode))
    result = SearchResult(experiment, bool(unfinished), rows, best=None)
    _write_table(Path(search.output), rows)
    if unfinished:
        log(f"tune: interrupted with {len(unfinished)} trial(s) unfinished; continue with `eain tune --resume` "
            "and the same config")
        return result
    reported = [row for row in rows if row.get(search.metric) is not None]
    if not reported:
        raise RuntimeError(f"no trial of {experiment} reported {search.metric}: see the trials' errors above")
    result.best = _write_best(config, reported[0])
    return result


def _unfinished_trials(experiment: str) -> set[str]:
    """Trials the saved experiment state holds as neither finished nor failed.

    Read from disk: at an interruption Tune saves the state (running trials stay resumable) and
    then stops the running trials, which marks them terminated in the results in memory.
    """
    analysis = tune.ExperimentAnalysis(experiment)
    return {trial.trial_id for trial in analysis.trials if trial.status not in ("TERMINATED", "ERROR")}


def _trial_row(result, unfinished: set[str], trials_dir: Path) -> dict:
    """A trial at its best epoch by the trainer's own rule (best validation AUC: the epoch its
    early stopping and kept checkpoints go by), with that epoch's metrics and checkpoint."""
    trial_id = Path(result.path).name
    status = "error" if result.error else "unfinished" if trial_id in unfinished else "done"
    row = {"trial_id": trial_id, "status": status, "params": dict(result.config)}
    epochs = _epochs(result, trials_dir / trial_id)
    if not epochs:
        return row
    best = max(epochs, key=lambda epoch: epoch["valid_auc"])  # the first best, as the trainer's
    row.update({"epochs": int(max(epoch["epoch"] for epoch in epochs)), "best_epoch": int(best["epoch"]),
                "checkpoint": best.get("checkpoint"), **{name: float(best[name]) for name in TABLE_METRICS}})
    return row


def _epochs(result, run_dir: Path) -> list[dict]:
    """Every epoch's metrics and checkpoint: from the run directory when `train()` finished, else
    from what Tune received (a trial stopped early, failed or interrupted).

    The run directory comes first because Tune can miss a trial's last reports: a trial that
    ends its final epoch while the search is interrupted resumes with nothing left to train.
    """
    if (run_dir / "metrics.json").exists():
        best_checkpoint = (run_dir / "checkpoints" / "BEST").read_text().strip()
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        best_epoch = max(history, key=lambda epoch: epoch["valid_auc"])["epoch"]
        return [{**epoch, "checkpoint": best_checkpoint if epoch["epoch"] == best_epoch else None}
                for epoch in history]
    reported = result.metrics_dataframe
    if reported is None or "valid_auc" not in reported:
        return []
    reported = reported.dropna(subset=["valid_auc"]).rename(columns={"checkpoint_path": "checkpoint"})
    return reported.to_dict("records")


def _sort_key(row: dict, metric: str, mode: str) -> float:
    value = row.get(metric)
    if value is None or math.isnan(value):
        return math.inf  # trials without a result go last
    return -value if mode == "max" else value


def _write_best(config: Config, row: dict) -> dict:
    output = Path(config.tune.output)
    best = {"search": config.tune.name, "metric": config.tune.metric, "trial_id": row["trial_id"],
            "params": row["params"], "epoch": row["best_epoch"], "checkpoint": row["checkpoint"],
            "run_dir": str(output / "trials" / row["trial_id"]),
            **{name: row[name] for name in TABLE_METRICS if name in row}}
    (output / "best.json").write_text(json.dumps(best, indent=2, default=str))
    tree = with_values(to_dict(config), row["params"])
    tree["train"]["run_dir"] = str(output / "best-run")  # retraining leaves the trial's own run alone
    header = (f"# Best trial {row['trial_id']} of search {config.tune.name}: {config.tune.metric} "
              f"{row[config.tune.metric]:.4f} at epoch {row['best_epoch']}\n"
              f"# checkpoint: {row['checkpoint']}\n"
              f"# retrain: eain train --config {output / 'best.yaml'}\n")
    (output / "best.yaml").write_text(header + dump_yaml(load_config_dict(tree)))
    return best


def _write_table(output: Path, rows: list[dict]) -> None:
    import pandas as pd

    flat = [{"trial_id": row["trial_id"], **{k: v for k, v in row.items() if k not in ("trial_id", "params")},
             **row["params"]} for row in rows]
    pd.DataFrame(flat).to_csv(output / "results.csv", index=False)
    (output / "results.md").write_text(results_table(rows) + "\n")


def results_table(rows: list[dict]) -> str:
    """Markdown: one line per trial at its best epoch, best first, with its searched values."""
    keys = list(rows[0]["params"]) if rows else []
    header = ["trial", "status", "epochs", "best epoch", *TABLE_METRICS[:4], *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["trial_id"], row["status"], row.get("epochs", "-"), row.get("best_epoch", "-"),
                 *(_number(row.get(name)) for name in TABLE_METRICS[:4]), *(_number(row["params"][k]) for k in keys)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
