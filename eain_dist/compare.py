"""`eain compare`: the paper's comparison (its Table 1 and Figure 4) on one prepared dataset.

Every model, and with `--ablations` EAIN without each of its blocks, is trained by the same
`train()` (the same Ray Train path, sharded tables and all) on the same prepared data, with the
same epochs, early stopping, optimizer and seed. Only `model.*` differs between the runs, and
the train settings a model is given in `compare.model_train` (MF's learning-rate decay).

    <compare.output>/
      <variant>/        each run's directory (config.yaml, metrics.json, curves.png, checkpoints/);
                        <variant>-seed<s>/ with compare.seeds > 1 (means ± std in the table)
      results.md        the table: test AUC, gAUC, logloss, valid AUC, epochs, samples/s, parameters
      results.json      the same numbers, the per-epoch history of every run and the settings
      curves.png        training loss, validation AUC and validation logloss of every run

W&B: each run is logged by its own rank 0 under the group `compare.name`; a last run of that
group (job type `compare`) holds the table and the figure.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from eain_dist.config import Config, ConfigError, dump_run_yaml, load_config, to_dict, train_for_model
from eain_dist.model.config import MODEL_NAMES

BASELINES = ("lr", "mf", "dnn", "din")
# EAIN without one block each: (variant name, the switch turned off).
ABLATIONS = (
    ("eain-no-din-attention", "use_din_attention"),
    ("eain-no-mask-block", "use_mask_block"),
    ("eain-no-senet", "use_senet"),
    ("eain-no-paim", "use_paim"),
)


@dataclass(frozen=True)
class Variant:
    name: str  # run directory and W&B run name
    model: str
    switched_off: str | None = None  # an EAIN block switch set to false (ablation)


@dataclass
class CompareResult:
    rows: list[dict]  # one per variant, in run order
    output: Path


def variants(models: list[str], ablations: bool) -> list[Variant]:
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise ConfigError(f"--models: unknown model {unknown[0]!r}; choose from {','.join(MODEL_NAMES)}"
                          if unknown else "--models: give at least one model")
    chosen = [Variant(name=m, model=m) for m in dict.fromkeys(models)]
    if ablations:
        chosen += [Variant(name=name, model="eain", switched_off=switch) for name, switch in ABLATIONS]
    return chosen


def seeds(config: Config) -> list[int | None]:
    """train.seed, train.seed + 1, ... for compare.seeds > 1; [None] (the config's own seed, the
    run directory named after the variant alone) for one."""
    if config.compare.seeds == 1:
        return [None]
    return [config.train.seed + k for k in range(config.compare.seeds)]


def variant_config(config: Config, variant: Variant, seed: int | None = None) -> Config:
    """The shared config with this variant's model (and seed), its own run directory and W&B name."""
    model = dataclasses.replace(config.model, name=variant.model)
    if variant.switched_off:
        model = dataclasses.replace(model, **{variant.switched_off: False})
    name = variant.name if seed is None else f"{variant.name}-seed{seed}"
    train = dataclasses.replace(train_for_model(config, variant.model), run_dir=str(Path(config.compare.output) / name),
                                storage_path=_storage_for(config, name),
                                seed=config.train.seed if seed is None else seed)
    wandb = dataclasses.replace(config.wandb, group=config.wandb.group or config.compare.name)
    return dataclasses.replace(config, model=model, train=train, wandb=wandb)


def _storage_for(config: Config, run_name: str) -> str | None:
    storage = config.train.storage_path
    return None if storage is None else f"{storage.rstrip('/')}/{config.compare.name}/{run_name}"


def run_comparison(config: Config, chosen: list[Variant], *, resume: bool = False, log=print) -> CompareResult:
    """Train every variant in turn (Ray must be up) and write the table, JSON and figure."""
    from eain_dist.train.trainer import read_meta, train

    meta = read_meta(config)
    output = Path(config.compare.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, variant in enumerate(chosen, 1):
        runs = []
        for seed in seeds(config):
            run_config = variant_config(config, variant, seed)
            label = variant.name if seed is None else f"{variant.name} (seed {seed})"
            metrics = _finished_run(run_config) if resume else None
            if metrics is None:
                log(f"compare: [{number}/{len(chosen)}] training {label}")
                metrics = train(run_config, log=log).metrics
            else:
                log(f"compare: [{number}/{len(chosen)}] {label}: reusing the finished run in "
                    f"{run_config.train.run_dir}")
            runs.append((run_config.train.seed, metrics))
        rows.append(summarize_variant(variant, runs, parameter_count(run_config, meta)))
    result = CompareResult(rows=rows, output=output)
    _write_outputs(config, result)
    _log_to_wandb(config, result)
    return result


def _finished_run(config: Config) -> dict | None:
    """metrics.json of an earlier run of exactly this config, else None."""
    run_dir = Path(config.train.run_dir)
    metrics, saved = run_dir / "metrics.json", run_dir / "config.yaml"
    if metrics.exists() and saved.exists() and saved.read_text() == dump_run_yaml(config):
        return json.loads(metrics.read_text())
    return None


def parameter_count(config: Config, meta: dict) -> dict[str, int]:
    """Trainable parameters: embedding rows x widths, and the dense rest (built on the meta
    device, so that sizing a 100M-row table allocates nothing)."""
    import torch

    from eain_dist.model.registry import build_model, model_tables

    embedding = sum(t.num_embeddings * t.embedding_dim for t in model_tables(config.model, meta))
    with torch.device("meta"):
        model = build_model(config.model, meta)
    total = sum(p.numel() for p in model.parameters())
    return {"embedding": embedding, "dense": total - embedding, "total": total}


def summarize_variant(variant: Variant, runs: list[tuple[int, dict]], parameters: dict[str, int]) -> dict:
    """One table row from a variant's runs (seed, metrics.json): metrics averaged over the seeds,
    test AUC's standard deviation across them, each seed's own figures, the first seed's curves."""
    first = runs[0][1]
    # Epoch 1 includes start-up (first reads, warm-up): throughput is the median of later epochs.
    steady = [h["samples_per_s"] for _, m in runs for h in (m["history"][1:] or m["history"])]
    test_aucs = [m["test"]["auc"] for _, m in runs]
    return {
        "variant": variant.name, "model": variant.model, "switched_off": variant.switched_off,
        "test": _mean_metrics([m["test"] for _, m in runs]), "valid": _mean_metrics([m["valid"] for _, m in runs]),
        "test_auc_std": statistics.stdev(test_aucs) if len(runs) > 1 else 0.0,
        "best_epoch": first["train"]["best_epoch"], "epochs": first["train"]["epochs"],
        "samples_per_s": statistics.median(steady), "parameters": parameters,
        "seeds": [{"seed": seed, "test": m["test"], "valid": m["valid"], "best_epoch": m["train"]["best_epoch"],
                   "epochs": m["train"]["epochs"]} for seed, m in runs],
        "history": first["history"], "loss_curve": first.get("loss_curve", []),
    }


def _mean_metrics(per_seed: list[dict]) -> dict:
    return {key: statistics.fmean(values[key] for values in per_seed) for key in per_seed[0]}


# --- Outputs ------------------------------------------------------------------------------------

def _write_outputs(config: Config, result: CompareResult) -> None:
    settings = {"data": config.data.output, "epochs": config.train.epochs,
                "early_stopping_patience": config.train.early_stopping_patience,
                "num_workers": config.train.num_workers, "batch_size": config.train.batch_size,
                "seeds": [config.train.seed + k for k in range(config.compare.seeds)],
                "config": to_dict(config)}
    (result.output / "results.json").write_text(json.dumps({"settings": settings, "runs": result.rows}, indent=2))
    (result.output / "results.md").write_text(results_table(result.rows, config) + "\n")
    plot_comparison(result.rows, str(result.output / "curves.png"))


def results_table(rows: list[dict], config: Config) -> str:
    """Markdown: one line per variant, then EAIN's margin over the best baseline on test AUC.
    With several seeds: means over the seeds, test AUC as mean ± standard deviation, and each
    seed's best epoch / epochs."""
    several = len(rows[0]["seeds"]) > 1 if rows else False
    lines = [
        f"Data: `{config.data.output}`; {config.train.num_workers} worker(s), at most {config.train.epochs} epochs, "
        f"early stopping after {config.train.early_stopping_patience} without a better validation AUC; "
        "test metrics at the best validation epoch"
        + (f"; mean of {len(rows[0]['seeds'])} seeds (train.seed {', '.join(str(s['seed']) for s in rows[0]['seeds'])})."
           if several else "."),
        "",
        "| model | test AUC | test gAUC | test logloss | valid AUC | best epoch / epochs | samples/s | parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        params = row["parameters"]
        auc = f"{row['test']['auc']:.4f}" + (f" ± {row['test_auc_std']:.4f}" if several else "")
        epochs = (f"{','.join(str(s['best_epoch']) for s in row['seeds'])} / "
                  f"{','.join(str(s['epochs']) for s in row['seeds'])}")
        lines.append(
            f"| {row['variant']} | {auc} | {row['test']['gauc']:.4f} | {row['test']['logloss']:.4f} "
            f"| {row['valid']['auc']:.4f} | {epochs} | {row['samples_per_s']:,.0f} "
            f"| {params['total']:,} ({params['dense']:,} dense) |")
    margin = eain_margin(rows)
    if margin is not None:
        line = (f"EAIN − best baseline ({margin['baseline']}): {margin['test_auc']:+.4f} test AUC, "
                f"{margin['valid_auc']:+.4f} valid AUC")
        if several:
            line += f" (mean; test AUC per seed: {', '.join(f'{d:+.4f}' for d in margin['test_auc_per_seed'])})"
        lines += ["", line + "."]
    return "\n".join(lines)


def eain_margin(rows: list[dict]) -> dict | None:
    """EAIN's (mean) test AUC minus the best baseline's (the baseline picked by its test AUC, as
    the paper's table compares them), and the same difference seed by seed; None when either
    side is missing."""
    eain = next((r for r in rows if r["variant"] == "eain"), None)
    baselines = [r for r in rows if r["variant"] in BASELINES]
    if eain is None or not baselines:
        return None
    best = max(baselines, key=lambda r: r["test"]["auc"])
    per_seed = [e["test"]["auc"] - b["test"]["auc"] for e, b in zip(eain["seeds"], best["seeds"], strict=True)]
    return {"baseline": best["variant"], "test_auc": eain["test"]["auc"] - best["test"]["auc"],
            "valid_auc": eain["valid"]["auc"] - best["valid"]["auc"], "test_auc_per_seed": per_seed}


def plot_comparison(rows: list[dict], path: str) -> None:
    """Figure 4's panels for every variant (its first seed): training loss by step, validation
    AUC and logloss by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss, auc, logloss) = plt.subplots(1, 3, figsize=(15, 4.2))
    for row in rows:
        style = {"label": row["variant"], "linestyle": "--" if row["switched_off"] else "-"}
        if row["loss_curve"]:
            steps, values = zip(*row["loss_curve"])
            loss.plot(steps, values, **style)
        epochs = [h["epoch"] for h in row["history"]]
        auc.plot(epochs, [h["valid_auc"] for h in row["history"]], marker="o", **style)
        logloss.plot(epochs, [h["valid_logloss"] for h in row["history"]], marker="o", **style)
    loss.set(title="training loss (BCE)", xlabel="step", ylabel="loss")
    auc.set(title="validation AUC", xlabel="epoch", ylabel="AUC")
    logloss.set(title="validation logloss", xlabel="epoch", ylabel="logloss")
    figure.tight_layout(rect=(0, 0, 0.85, 1))  # the legend gets the right edge, clear of the curves
    figure.legend(*auc.get_legend_handles_labels(), loc="center right", fontsize="small")
    figure.savefig(path, dpi=110, bbox_inches="tight")  # "tight": the whole legend, however long the names
    plt.close(figure)


def _log_to_wandb(config: Config, result: CompareResult) -> None:
    """One more run in the group: the table and the figure (the runs themselves log their curves)."""
    from eain_dist.train.tracking import wandb_mode

    mode = wandb_mode(config.wandb)
    if mode == "disabled":
        return
    import wandb

    columns = ["model", "test_auc", "test_auc_std", "test_gauc", "test_logloss", "valid_auc", "best_epoch", "epochs",
               "samples_per_s", "parameters", "seeds"]
    table = wandb.Table(columns=columns, data=[
        [r["variant"], r["test"]["auc"], r["test_auc_std"], r["test"]["gauc"], r["test"]["logloss"], r["valid"]["auc"],
         r["best_epoch"], r["epochs"], r["samples_per_s"], r["parameters"]["total"], len(r["seeds"])]
        for r in result.rows])
    run = wandb.init(project=config.wandb.project, entity=config.wandb.entity,
                     group=config.wandb.group or config.compare.name, name=f"{config.compare.name}-table",
                     job_type="compare", config=to_dict(config), mode=mode, dir=str(result.output),
                     reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))
    run.log({"comparison": table, "curves": wandb.Image(str(result.output / "curves.png"))})
    margin = eain_margin(result.rows)
    if margin is not None:
        run.summary.update({"eain_margin_test_auc": margin["test_auc"], "best_baseline": margin["baseline"]})
    run.finish()


def load_compare_config(path: str | None, overrides: list[str], models: str | None,
                        ablations: bool, seed_count: int | None = None) -> tuple[Config, list[Variant]]:
    """The CLI's view: --models / --ablations / --seeds override the config's compare section."""
    config = load_config(path, overrides + ([f"compare.seeds={seed_count}"] if seed_count is not None else []))
    names = [m.strip() for m in models.split(",") if m.strip()] if models is not None else config.compare.models
    return config, variants(names, ablations or config.compare.ablations)

