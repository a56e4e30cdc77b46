"""The `eain` command as a user runs it: real data end to end, and every failure in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from eain_dist.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_prepare_real_grocery_reviews(tmp_path, capsys, shared_data, ray_local):
    output = tmp_path / "grocery"
    code, out, err = run_cli(capsys, "prepare", "--config", str(ROOT / "configs" / "grocery.yaml"),
                             "--set", f"data.source={shared_data / 'grocery' / 'interactions.tsv'}",
                             "--set", f"data.meta={shared_data / 'grocery' / 'item_meta.tsv'}",
                             "--set", f"data.output={output}")
    assert code == 0, err
    meta = json.loads((output / "meta.json").read_text())
    with open(shared_data / "grocery" / "interactions.tsv") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    per_user: dict[str, set] = {}
    for user, item, _ in rows:
        per_user.setdefault(user, set()).add(item)
    eligible = {u for u, items in per_user.items() if len(items) >= 3}
    assert meta["counts"]["read"] == {"records": len(rows), "rejects": 0, "tasks": 1,
                                      "most_tasks_on_one_file_at_once": 1}
    assert meta["tables"]["user"] == len(eligible) + 1
    assert meta["splits"]["test"] == meta["splits"]["valid"] == 2 * len(eligible)  # 1 positive + 1 negative
    test = pq.read_table(output / "test")
    assert test.num_rows == meta["splits"]["test"]
    assert (test["category"].to_numpy() > 0).any()  # categories joined from item_meta.tsv
    assert "test impressions" in out


def test_unknown_config_key_is_one_line(capsys):
    code, _, err = run_cli(capsys, "prepare", "--set", "data.max_histroy=3", "--set", "data.source=x")
    assert code == 2
    assert err.strip().count("\n") == 0 and "data.max_histroy" in err


def test_train_on_a_dataset_of_an_older_schema_is_one_line(tmp_path, capsys):
    from eain_dist.data.pipeline import SCHEMA_VERSION

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION - 1, "splits": {}}))
    code, _, err = run_cli(capsys, "train", "--set", f"data.output={tmp_path / 'old'}")
    assert code == 2 and err.strip().count("\n") == 0
    assert f"schema_version {SCHEMA_VERSION - 1}" in err and "eain prepare" in err


def test_exponent_floats_are_floats_not_strings():
    """PyYAML (YAML 1.1) reads `1e-3` as a string; a user typing it on --set means a float."""
    from eain_dist.config import ConfigError, load_config

    config = load_config(None, ["model.l2=1e-3", "train.lr=2E-4", "train.embedding_lr=0.05"])
    assert (config.model.l2, config.train.lr, config.train.embedding_lr) == (1e-3, 2e-4, 0.05)
    with pytest.raises(ConfigError, match="model.l2: expected float, got 'e-3'"):
        load_config(None, ["model.l2=e-3"])


def test_missing_source_names_it(tmp_path, capsys, ray_local):
    code, _, err = run_cli(capsys, "prepare", "--set", f"data.source={tmp_path}/nope/*.jsonl.gz",
                           "--set", f"data.output={tmp_path}/out")
    assert code == 2
    assert "nope" in err and err.strip().count("\n") == 0


def _write_reviews(path: Path, good: int, bad: int) -> None:
    lines = [json.dumps({"user_id": f"u{i % 40}", "parent_asin": f"i{i % 97}", "timestamp": 1_600_000_000_000 + i * 1000,
                         "rating": 5.0}) for i in range(good)]
    for k in range(bad):
        lines.insert(10 + k * 7, '{"user_id": "broken", "parent_asin": ')
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("executor", ["ray", "threads"])
def test_too_many_malformed_records_fail_with_file_line_and_samples(tmp_path, capsys, ray_local, executor):
    source = tmp_path / "reviews.jsonl"
    _write_reviews(source, good=400, bad=30)
    code, _, err = run_cli(capsys, "prepare", "--set", f"data.source={source}", "--set", "data.format=amazon2023",
                           "--set", f"data.output={tmp_path}/out", "--set", "data.max_reject_fraction=0.01",
                           "--set", f"data.executor={executor}")
    assert code == 2
    assert "30 of 430 records malformed" in err and "reviews.jsonl line 11" in err
    samples = [json.loads(line) for line in (tmp_path / "out" / "rejects" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 20 and all(s["reason"] == "malformed_json" for s in samples)


def test_malformed_records_within_the_limit_are_counted_not_lost(tmp_path, capsys, ray_local):
    source = tmp_path / "reviews.jsonl"
    _write_reviews(source, good=400, bad=3)
    code, _, err = run_cli(capsys, "prepare", "--set", f"data.source={source}", "--set", "data.format=auto",
                           "--set", f"data.output={tmp_path}/out")
    assert code == 0, err
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["counts"]["read"] == {"records": 403, "rejects": 3, "tasks": 1, "most_tasks_on_one_file_at_once": 1}
    assert meta["rejects"]["by_file"] == {str(source): {"malformed_json": 3}}
    assert meta["counts"]["dedupe"]["rows_in"] == 400


@pytest.mark.slow
def test_eain_run_from_a_fresh_process_prepares_in_process_then_starts_ray(tmp_path):
    """The README's main job as a user runs it: no Ray before it; prepare runs in process, then
    `eain run` starts Ray itself for training and evaluation."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    small = ["--set", "generate.reviews=3000", "--set", "generate.users=300", "--set", "generate.items=200",
             "--set", "train.epochs=1", "--set", "wandb.mode=disabled", "--set", "ray.num_cpus=2"]
    done = subprocess.run([sys.executable, "-m", "eain_dist.cli", "run", *small], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(in process)" in done.stdout
    metrics = json.loads((tmp_path / "runs/default/metrics.json").read_text())
    assert f"AUC {metrics['test']['auc']:.4f}" in done.stdout


@pytest.mark.slow
def test_eain_run_main_job(tmp_path, capsys, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)
    small = ["--set", "generate.reviews=6000", "--set", "generate.users=500", "--set", "generate.items=300",
             "--set", "train.epochs=1", "--set", "wandb.mode=disabled"]
    code, out, err = run_cli(capsys, "run", *small)
    assert code == 0, err
    assert "generating a synthetic" in out and "train impressions" in out
    meta = json.loads((tmp_path / ".cache/eain/prepared/default/meta.json").read_text())
    assert meta["counts"]["read"]["records"] == 6000
    metrics = json.loads((tmp_path / "runs/default/metrics.json").read_text())
    assert f"test |   {metrics['test']['auc']:.4f}" in out
    # `eain evaluate` of the best checkpoint reproduces the run's test metrics exactly.
    assert f"AUC {metrics['test']['auc']:.4f}, gAUC {metrics['test']['gauc']:.4f}" in out
    assert (tmp_path / "runs/default/curves.png").exists() and (tmp_path / "runs/default/config.yaml").exists()


def test_run_generates_the_synthetic_dataset_once(tmp_path, capsys, monkeypatch):
    from eain_dist.cli import _with_synthetic_source
    from eain_dist.config import load_config

    monkeypatch.chdir(tmp_path)
    config = load_config(overrides=["generate.reviews=500", "generate.users=50", "generate.items=40"])
    first = _with_synthetic_source(config)
    assert "generating" in capsys.readouterr().out
    second = _with_synthetic_source(config)
    assert "using the synthetic dataset cached" in capsys.readouterr().out
    assert first.data.source == second.data.source and first.data.format == "amazon2023"


def test_local_ray_binds_loopback(ray_local):
    assert {node["NodeManagerAddress"] for node in ray_local.nodes()} == {"127.0.0.1"}


def test_default_yaml_spells_out_the_embedded_default():
    from eain_dist.config import Config, load_config

    assert load_config(ROOT / "configs" / "default.yaml") == Config()


def test_a_dataset_is_current_wherever_it_was_written_but_not_after_a_sampling_change():
    from eain_dist.cli import _preparation_settings
    from eain_dist.config import load_config, to_dict

    made = to_dict(load_config(overrides=["data.output=/abs/work/prepared"]))
    assert _preparation_settings(made) == _preparation_settings(to_dict(load_config(overrides=["data.output=work/prepared"])))
    assert _preparation_settings(made) != _preparation_settings(to_dict(load_config(
        overrides=["data.output=/abs/work/prepared", "sampling.skive_above=true"])))
