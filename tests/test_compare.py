"""`eain compare`: every model through the same Ray Train path on one prepared dataset."""

from __future__ import annotations

import json
import struct

import pytest
from model_helpers import fake_meta

from eain_dist.cli import main
from eain_dist.compare import (
    ABLATIONS, Variant, parameter_count, results_table, seeds, summarize_variant, variant_config, variants,
)
from eain_dist.config import ConfigError, load_config

MODELS = ["lr", "mf", "din", "eain"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_model_is_a_one_line_error(capsys):
    code, _, err = run_cli(capsys, "compare", "--models", "lr,xgboost", "--set", "data.source=unused")
    assert code == 2
    assert "xgboost" in err and "lr,mf,dnn,din,eain" in err and err.strip().count("\n") == 0


def test_ablations_switch_off_one_block_each_and_nothing_else():
    config = load_config(overrides=["compare.output=out", "model.dropout=0.2"])
    chosen = variants(["eain"], ablations=True)
    assert [v.name for v in chosen] == ["eain"] + [name for name, _ in ABLATIONS]
    full = variant_config(config, chosen[0])
    for variant, (_, switch) in zip(chosen[1:], ABLATIONS, strict=True):
        ablated = variant_config(config, variant)
        assert getattr(ablated.model, switch) is False
        assert ablated.train.run_dir == f"out/{variant.name}" and ablated.wandb.group == "eain-compare"
        # Everything but the switch (and the run's own directory) is the full model's config.
        assert ablated.model == type(full.model)(**{**vars(full.model), switch: False})
        assert ablated.train == type(full.train)(**{**vars(full.train), "run_dir": ablated.train.run_dir})


def test_a_model_gets_its_own_train_settings_and_the_others_the_shared_ones():
    config = load_config(overrides=["compare.output=out", "train.lr=0.002", "compare.model_train.mf.lr_decay=0.5",
                                    "compare.model_train.mf.epochs=7"])
    mf, dnn = variant_config(config, Variant("mf", "mf")).train, variant_config(config, Variant("dnn", "dnn")).train
    assert (mf.lr_decay, mf.epochs, mf.lr) == (0.5, 7, 0.002)  # its settings on top of the shared train
    assert dnn == type(dnn)(**{**vars(config.train), "run_dir": "out/dnn"})


@pytest.mark.parametrize("setting, message", [
    ("compare.model_train.mf.lr_decay=2", "compare.model_train.mf: train.lr_decay must be in"),
    ("compare.model_train.mf.lr_dekay=0.1", "unknown config key compare.model_train.mf.lr_dekay"),
    ("compare.model_train.svm.lr_decay=0.1", "compare.model_train: unknown model 'svm'"),
])
def test_bad_per_model_train_settings_are_one_line_errors(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[setting])


def _fake_metrics(test_auc: float, valid_auc: float, best_epoch: int) -> dict:
    history = [{"epoch": e, "samples_per_s": 1000.0 * e, "valid_auc": valid_auc, "valid_logloss": 0.6}
               for e in range(1, best_epoch + 2)]
    return {"test": {"auc": test_auc, "gauc": test_auc - 0.05, "logloss": 0.6},
            "valid": {"auc": valid_auc, "gauc": valid_auc - 0.05, "logloss": 0.6},
            "train": {"best_epoch": best_epoch, "epochs": best_epoch + 1}, "history": history, "loss_curve": []}


def test_several_seeds_are_averaged_with_their_spread_and_paired_margins():
    config = load_config(overrides=["compare.output=out", "compare.seeds=3", "train.seed=5"])
    assert seeds(config) == [5, 6, 7]
    seeded = variant_config(config, Variant(name="eain", model="eain"), seed=6)
    assert seeded.train.seed == 6 and seeded.train.run_dir == "out/eain-seed6"
    assert seeds(load_config()) == [None]  # one seed: the run directory is the variant's own name

    params = {"embedding": 10, "dense": 5, "total": 15}
    eain_aucs, din_aucs = [0.70, 0.69, 0.71], [0.68, 0.685, 0.69]
    rows = [summarize_variant(Variant(name=name, model=name),
                              [(seed, _fake_metrics(auc, auc + 0.04, 2)) for seed, auc in zip([5, 6, 7], aucs)], params)
            for name, aucs in (("din", din_aucs), ("eain", eain_aucs))]
    eain = rows[1]
    mean = sum(eain_aucs) / 3
    std = (sum((a - mean) ** 2 for a in eain_aucs) / 2) ** 0.5  # sample standard deviation
    assert eain["test"]["auc"] == pytest.approx(mean) and eain["test_auc_std"] == pytest.approx(std)
    assert eain["valid"]["auc"] == pytest.approx(mean + 0.04)
    assert [s["seed"] for s in eain["seeds"]] == [5, 6, 7]
    assert eain["samples_per_s"] == 2500.0  # median of epochs 2 and 3 (2,000 and 3,000), every seed
    table = results_table(rows, config)
    assert f"| eain | {mean:.4f} ± {std:.4f} |" in table and "| 2,2,2 / 3,3,3 |" in table
    assert "mean of 3 seeds (train.seed 5, 6, 7)" in table
    paired = ", ".join(f"{e - d:+.4f}" for e, d in zip(eain_aucs, din_aucs))
    assert f"EAIN − best baseline (din): {mean - sum(din_aucs) / 3:+.4f} test AUC" in table
    assert f"test AUC per seed: {paired})" in table


def test_parameter_count_matches_the_built_model():
    """Counted on the meta device (allocates nothing) == the real model's parameters."""
    from eain_dist.model.registry import build_model

    meta = fake_meta(users=500, items=300, categories=8, max_history=20)
    config = load_config()
    for variant in variants(["lr", "mf", "dnn", "din", "eain"], ablations=True):
        model_config = variant_config(config, variant)
        real = build_model(model_config.model, meta)
        counted = parameter_count(model_config, meta)
        assert counted["total"] == sum(p.numel() for p in real.parameters())
        assert counted["embedding"] == sum(t.weight.numel() for t in real.embeddings.tables.values())


@pytest.fixture(scope="module")
def sequential_data(tmp_path_factory):
    """Generated reviews whose users follow item-to-item successions and drifting interests."""
    from eain_dist.data.synthetic import generate

    folder = tmp_path_factory.mktemp("compare")
    generate(str(folder / "raw"), users=800, items=300, reviews=16_000, categories=8, seed=11, files=1)
    return folder


@pytest.mark.slow
def test_compare_trains_every_model_and_sequence_models_win(sequential_data, tmp_path, capsys, ray_local):
    output = tmp_path / "compare"
    settings = ["--set", f"data.source={sequential_data / 'raw/reviews'}", "--set",
                f"data.meta={sequential_data / 'raw/meta'}", "--set", "data.format=amazon2023",
                "--set", f"data.output={tmp_path / 'prepared'}", "--set", "data.max_history=20",
                "--set", f"compare.output={output}", "--set", "train.epochs=6", "--set", "train.batch_size=256",
                "--set", "wandb.mode=offline"]
    code, out, err = run_cli(capsys, "compare", "--models", ",".join(MODELS), *settings)
    assert code == 0, err

    results = json.loads((output / "results.json").read_text())
    rows = {row["variant"]: row for row in results["runs"]}
    assert list(rows) == MODELS
    table = (output / "results.md").read_text()
    for name in MODELS:
        # Each row is that run's own metrics.json, trained through the same trainer.
        metrics = json.loads((output / name / "metrics.json").read_text())
        assert metrics["model"] == name and rows[name]["test"] == metrics["test"]
        assert f"| {name} | {metrics['test']['auc']:.4f} | {metrics['test']['gauc']:.4f} |" in table
        assert rows[name]["epochs"] == len(metrics["history"]) <= 6
    # The sequence-aware models beat the ones that ignore the history, on data with sequences.
    # (DIN's rise comes in epochs 3-4 here: 6 epochs leave it room; seeds 0-2 gave 0.82-0.83 vs MF's 0.77.)
    assert min(rows["din"]["test"]["auc"], rows["eain"]["test"]["auc"]) > max(
        rows["lr"]["test"]["auc"], rows["mf"]["test"]["auc"])
    best_baseline = max(("lr", "mf", "din"), key=lambda m: rows[m]["test"]["auc"])
    margin = rows["eain"]["test"]["auc"] - rows[best_baseline]["test"]["auc"]
    assert f"EAIN − best baseline ({best_baseline}): {margin:+.4f} test AUC" in table
    width, height = _png_size(output / "curves.png")
    assert width > 3 * height > 1200  # three panels side by side

    # W&B (offline): one run per model and the table's run, all in one group.
    from wandb_records import read_run, read_run_info

    files = sorted(output.glob("**/offline-run-*/run-*.wandb"))
    infos = [read_run_info(path) for path in files]
    assert sorted(info["name"] for info in infos) == sorted(MODELS + ["eain-compare-table"])
    assert {info["group"] for info in infos} == {"eain-compare"}
    table_run = next(path for path, info in zip(files, infos) if info["job_type"] == "compare")
    _, summary = read_run(table_run)
    assert summary["eain_margin_test_auc"] == pytest.approx(margin)

    # --resume reuses the finished runs of an unchanged config instead of training them again.
    before = {name: (output / name / "metrics.json").stat().st_mtime_ns for name in MODELS}
    code, out, err = run_cli(capsys, "compare", "--models", "mf,lr", "--resume", *settings)
    assert code == 0, err
    assert "mf: reusing the finished run" in out and "lr: reusing the finished run" in out
    assert {name: (output / name / "metrics.json").stat().st_mtime_ns for name in MODELS} == before
    assert [row["variant"] for row in json.loads((output / "results.json").read_text())["runs"]] == ["mf", "lr"]


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])
