"""`eain tune`: a search space checked against the Config, derived trial concurrency, and a tiny
search that writes its best trial and, interrupted like Ctrl-C, resumes its unfinished trial from
that trial's last checkpoint without rerunning the finished one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from eain_dist.cli import main
from eain_dist.config import ConfigError, TrainConfig, load_config
from eain_dist.tune import (
    TABLE_METRICS,
    _trial_row,
    derived_concurrency,
    param_space,
    run_search,
    validate_search_space,
)

ROOT = Path(__file__).resolve().parents[1]
TUNE_YAML = ROOT / "configs" / "tune.yaml"


def space_config(space: dict, *overrides: str):
    return load_config(overrides=[f"tune.search_space={json.dumps(space)}", *overrides])


def test_search_space_draws_within_its_specs():
    config = space_config({
        "train.lr": {"type": "loguniform", "lower": 1e-4, "upper": 1e-2},
        "model.dropout": {"type": "uniform", "lower": 0.0, "upper": 0.3},
        "model.mask_block_count": {"type": "randint", "lower": 1, "upper": 4},
        "model.mlp_hidden": {"type": "choice", "values": [[64], [200, 80]]},
    })
    validate_search_space(config)
    domains = param_space(config)
    for _ in range(50):
        assert 1e-4 <= domains["train.lr"].sample() <= 1e-2
        assert 0.0 <= domains["model.dropout"].sample() <= 0.3
        assert domains["model.mask_block_count"].sample() in (1, 2, 3)  # upper exclusive
        assert domains["model.mlp_hidden"].sample() in ([64], [200, 80])


@pytest.mark.parametrize("space, message", [
    ({"model.embeding_dim": {"type": "choice", "values": [8]}}, "unknown config key model.embeding_dim"),
    ({"data.max_history": {"type": "choice", "values": [20, 50]}}, "search over data.output"),
    ({"sampling.negatives": {"type": "choice", "values": [1, 4]}}, "only changes model.*, train.* and data.output"),
    ({"train.run_dir": {"type": "choice", "values": ["a"]}}, "set by the search"),
    ({"model.embedding_dim": {"type": "uniform", "lower": 8, "upper": 32}}, "model.embedding_dim: expected int"),
    ({"model.dropout": {"type": "uniform", "lower": 0.0, "upper": 1.5}}, "model.dropout must be in [0, 1)"),
    ({"train.lr": {"type": "loguniform", "lower": 0.0, "upper": 0.1}}, "loguniform needs lower > 0"),
    ({"train.lr": {"type": "loguniform", "lower": 1e-3}}, "a loguniform takes lower, upper"),
    ({"train.lr": {"type": "normal", "mean": 0.0}}, "type must be one of"),
    ({"model.use_senet": {"type": "choice", "values": []}}, "non-empty list"),
    ({}, "tune.search_space is empty"),
])
def test_a_bad_search_space_names_the_key_and_the_reason(space, message):
    with pytest.raises(ConfigError) as error:
        validate_search_space(space_config(space))
    assert message in str(error.value)


def test_tune_section_rejects_unknown_keys_and_test_metrics():
    with pytest.raises(ConfigError, match="unknown config key tune.num_sample"):
        load_config(overrides=["tune.num_sample=3"])
    with pytest.raises(ConfigError, match="tune.metric must be one of"):
        validate_search_space(space_config({"train.lr": {"type": "choice", "values": [0.01]}}, "tune.metric=test_auc"))


def test_shipped_search_covers_the_model_and_training_knobs():
    config = load_config(TUNE_YAML)
    validate_search_space(config)
    keys = set(config.tune.search_space)
    assert {"train.lr", "model.embedding_dim", "model.l2", "model.dropout", "model.mask_block_hidden",
            "model.cross_layers", "model.use_mask_block", "model.use_paim"} <= keys


def test_concurrency_is_what_fits_beside_each_trials_data_cpu():
    one_worker = TrainConfig(num_workers=1, cpus_per_worker=1.0)
    assert derived_concurrency(one_worker, {"CPU": 2}) == 1  # 1 worker CPU + 1 for Ray Data each
    assert derived_concurrency(one_worker, {"CPU": 16}) == 8
    assert derived_concurrency(TrainConfig(num_workers=4, cpus_per_worker=3.0), {"CPU": 64}) == 4
    assert derived_concurrency(TrainConfig(num_workers=2, use_gpu=True), {"CPU": 64, "GPU": 4}) == 2
    assert derived_concurrency(one_worker, {"CPU": 0}) == 1  # an autoscaling cluster before it scales


def test_eain_tune_with_a_bad_space_is_one_line(capsys):
    space = json.dumps({"data.max_history": {"type": "choice", "values": [20]}})
    assert main(["tune", "--set", f"tune.search_space={space}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eain tune: tune.search_space.data.max_history") and err.count("\n") == 1


def _tune_result(path: Path, reported: list[dict]):
    """What Ray Tune hands back for a trial: its directory, config, error and reported epochs."""
    import pandas as pd

    return SimpleNamespace(path=str(path), error=None, config={"train.lr": 0.01},
                           metrics_dataframe=pd.DataFrame(reported) if reported else None)


def _epoch(epoch: int, auc: float, checkpoint: str | None = None) -> dict:
    metrics = {name: auc for name in TABLE_METRICS}
    return {"epoch": epoch, **metrics, **({"checkpoint_path": checkpoint} if checkpoint else {})}


def test_a_trial_counts_with_its_best_epoch_even_where_tune_missed_reports(tmp_path):
    # Finished: the run directory has every epoch, though Tune only saw the first.
    finished = tmp_path / "trials" / "a_00000"
    (finished / "checkpoints").mkdir(parents=True)
    (finished / "checkpoints" / "BEST").write_text("/ckpt/epoch-2\n")
    (finished / "metrics.json").write_text(json.dumps({"history": [_epoch(1, 0.70), _epoch(2, 0.80), _epoch(3, 0.75)]}))
    row = _trial_row(_tune_result(finished, [_epoch(1, 0.70, "/ckpt/epoch-1")]), set(), tmp_path / "trials")
    assert (row["best_epoch"], row["valid_auc"], row["checkpoint"], row["epochs"]) == (2, 0.80, "/ckpt/epoch-2", 3)
    # Stopped early by ASHA (no run directory): what Tune received.
    stopped = _tune_result(tmp_path / "trials" / "a_00001", [_epoch(1, 0.72, "/c1"), _epoch(2, 0.71, "/c2")])
    row = _trial_row(stopped, set(), tmp_path / "trials")
    assert (row["status"], row["best_epoch"], row["valid_auc"], row["checkpoint"]) == ("done", 1, 0.72, "/c1")
    # Interrupted before its first report.
    row = _trial_row(_tune_result(tmp_path / "trials" / "a_00002", []), {"a_00002"}, tmp_path / "trials")
    assert row["status"] == "unfinished" and "valid_auc" not in row


# --- End to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_local) -> Path:
    from eain_dist.data.pipeline import prepare
    from eain_dist.data.synthetic import generate

    root = tmp_path_factory.mktemp("tune-data")
    generate(str(root / "raw"), users=300, items=150, reviews=3000, categories=6, files=1, seed=3)
    prepare(load_config(overrides=[f"data.source={root}/raw/reviews", f"data.meta={root}/raw/meta",
                                   "data.format=amazon2023", f"data.output={root}/prepared", "data.max_history=8"]),
            log=lambda *_: None)
    return root / "prepared"


def tiny(prepared: Path, output: Path) -> list[str]:
    """configs/tune.yaml, shrunk: 2 trials of 2 epochs, one at a time on 2 CPUs."""
    return [f"data.output={prepared}", f"tune.output={output}", "tune.num_samples=2", "train.epochs=2",
            "ray.num_cpus=2", "model.mlp_hidden=[32]", "model.attention_hidden=[16]", "wandb.mode=disabled"]


def tiny_search(prepared: Path, output: Path) -> list[str]:
    return ["tune", "--config", str(TUNE_YAML), *(arg for item in tiny(prepared, output) for arg in ("--set", item))]


def eain(*args: str, log: Path) -> subprocess.Popen:
    """`eain` in a process of its own (own Ray instance), as a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "eain_dist.cli", *args], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"eain exited early ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def train_snapshots(output: Path) -> list[Path]:
    """One per trial whose Ray Train run has reported at least one checkpoint."""
    return list(output.glob("trials/*/ray/*/checkpoint_manager_snapshot.json"))


@pytest.mark.slow
def test_search_writes_its_best_trial_and_resumes_after_an_interruption(prepared, tmp_path, ray_local):
    output = tmp_path / "search"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    process = eain(*tiny_search(prepared, output), log=first_log)
    try:
        # Interrupt (Ctrl-C) once the second trial has checkpointed its first epoch.
        wait_for(lambda: len(train_snapshots(output)) == 2, process, first_log, timeout=400)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=180) == 130, first_log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "2 trial(s), 1 at a time" in first_log.read_text()
    finished = [d for d in (output / "trials").iterdir() if (d / "metrics.json").exists()]
    assert len(finished) == 1 and not (output / "best.json").exists()
    finished_at = (finished[0] / "metrics.json").stat().st_mtime

    resumed = eain(*tiny_search(prepared, output), "--resume", log=second_log)
    assert resumed.wait(timeout=400) == 0, second_log.read_text()[-3000:]

    trials = {d.name: json.loads((d / "metrics.json").read_text()) for d in (output / "trials").iterdir()}
    interrupted = next(name for name in trials if name != finished[0].name)
    assert (finished[0] / "metrics.json").stat().st_mtime == finished_at  # not run again
    # The interrupted trial went on from its last checkpoint (epoch 1, or 2 when it finished that
    # epoch while the search shut down), not from scratch.
    assert trials[interrupted]["train"]["restarts"] == 1
    assert [row["epoch"] for row in trials[interrupted]["history"]] == [1, 2]

    best = json.loads((output / "best.json").read_text())
    best_trial = max(trials, key=lambda name: trials[name]["valid"]["auc"])
    assert best["trial_id"] == best_trial and best["valid_auc"] == pytest.approx(trials[best_trial]["valid"]["auc"])
    assert Path(best["checkpoint"]).is_dir()
    _assert_best_yaml_is_the_best_trials_config(output, best_trial)

    # A finished search restored again runs nothing and selects the same trial.
    again = run_search(load_config(TUNE_YAML, tiny(prepared, output)), resume=True, log=lambda *_: None)
    assert again.best["trial_id"] == best_trial and not again.interrupted
    assert (finished[0] / "metrics.json").stat().st_mtime == finished_at


def _assert_best_yaml_is_the_best_trials_config(output: Path, best_trial: str) -> None:
    space = load_config(TUNE_YAML).tune.search_space
    chosen = load_config(output / "best.yaml")  # a config `eain train --config` takes as it is
    trial = yaml.safe_load((output / "trials" / best_trial / "config.yaml").read_text())
    for key, spec in space.items():
        section, name = key.split(".")
        value = getattr(getattr(chosen, section), name)
        assert value == trial[section][name]
        if spec["type"] == "choice":
            assert value in spec["values"]
        else:
            assert spec["lower"] <= value <= spec["upper"]
