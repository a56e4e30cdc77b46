"""The project's models beside an established CTR library (FuxiCTR) on the same rows.

Splits a quality gap into "data preparation" and "model + training recipe":

1. the reference protocol's rows (DIN / BARS leave-last-out, ../shared/peers/prepare_reference.py);
2. `eain prepare`'s own rows of the same reviews (configs/grocery.yaml by default), and the same
   without Skive-Above (what the paper's negative dropping costs);
3. the reference rows converted into the prepared-dataset contract (../shared/peers/to_project_format.py);
4. FuxiCTR 2.3.10 (DNN, DIN, LR) on the reference rows, in its own venv (created under --work
   unless --fuxictr-python names one), once per seed;
5. `eain compare --seeds N` (Ray Train, sharded tables, the config's recipe) on the reference
   rows, on `eain prepare`'s rows and on those without Skive-Above;
6. one table: test AUC mean ± std over the seeds (each run selected on validation AUC only),
   with the targets of issue 10 checked.

    python benchmarks/peer_parity.py                        # Grocery, 3 seeds (about 3 h on 2 cores)
    python benchmarks/peer_parity.py --seeds 1 --models dnn,eain --skive-models ''   # a quick look

Every step is skipped when its output is already there (finished compare runs are reused with
--resume), so an interrupted run carries on. Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
GROCERY = ROOT.parent / "shared" / "data" / "grocery"
RESULTS = Path(__file__).parent / "results"
FUXICTR_MODELS = {"dnn": "DNN", "din": "DIN", "lr": "LR"}  # the project's name -> FuxiCTR's
FUXICTR_SEEDS = (2019, 2020, 2021)
ROWS = ("reference", "prepared", "prepared_no_skive")


def run(command: list, log: Path) -> None:
    """A step of the benchmark, its output in `log` (the tail is shown if it fails)."""
    print("$", " ".join(str(c) for c in command), flush=True)
    with open(log, "w") as out:
        done = subprocess.run([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step failed ({done.returncode}), see {log}:\n{log.read_text()[-3000:]}")


def eain(*args: str) -> list[str]:
    return [sys.executable, "-m", "eain_dist.cli", *args]


def reference_rows(args, work: Path) -> Path:
    out = work / "reference"
    if not (out / "stats.json").exists():
        run([sys.executable, PEERS / "prepare_reference.py", args.source, "--meta", args.meta, "--out-dir", out,
             "--seed", "2024", "--max-len", "50", "--neg", "1"], work / "reference.log")
    return out


def prepared_rows(args, work: Path, skive_above: bool) -> Path:
    out = work / ("prepared" if skive_above else "prepared-no-skive")
    if not (out / "meta.json").exists():
        run(eain("prepare", "--config", args.config, "--set", f"data.output={out}",
                 *rows_settings("prepared" if skive_above else "prepared_no_skive")), work / f"{out.name}.log")
    return out


def rows_settings(rows: str) -> list[str]:
    """The sampling settings that made a set of rows: `eain compare` re-prepares a dataset whose
    data or sampling settings differ from its own, so it must be given the same ones."""
    return ["--set", "sampling.skive_above=false"] if rows == "prepared_no_skive" else []


def converted_rows(reference: Path, template: Path, work: Path) -> Path:
    out = work / "reference-project"
    if not (out / "meta.json").exists():
        run([sys.executable, PEERS / "to_project_format.py", reference, out, "--template", template / "meta.json"],
            work / "convert.log")
    return out


def fuxictr_python(args, work: Path) -> Path:
    """FuxiCTR needs polars<2 (the project's tests use polars 2): a venv of its own."""
    if args.fuxictr_python:
        return Path(args.fuxictr_python)
    venv = work / "venv-fx"
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", venv], work / "venv-fx.log")
        run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], work / "venv-fx-torch.log")
        run([python, "-m", "pip", "install", "-q", "-r", PEERS / "requirements.txt"], work / "venv-fx-deps.log")
    return python


def fuxictr_runs(args, reference: Path, work: Path) -> list[dict]:
    models = [FUXICTR_MODELS[m] for m in args.models if m in FUXICTR_MODELS]
    if not models or args.skip_fuxictr:
        return []
    python, runs = fuxictr_python(args, work), []
    for seed in FUXICTR_SEEDS[: args.fuxictr_seeds or args.seeds]:
        out = work / f"fuxictr-seed{seed}.jsonl"
        done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        if sorted(r["model"] for r in done) != sorted(models):
            run([python, PEERS / "run_fuxictr.py", "--data-dir", reference, "--work-dir", work / "fuxictr",
                 "--out", out, "--models", ",".join(models), "--epochs", "30", "--seed", str(seed)],
                work / f"fuxictr-seed{seed}.log")
            done = [json.loads(line) for line in out.read_text().splitlines()]
        runs += done
    return runs


def project_runs(args, data: Path, rows: str, models: list[str], work: Path, seeds: int) -> list[dict]:
    """`eain compare --seeds N` on one set of rows; its results.json rows (one per model, every seed)."""
    if not models:
        return []
    # Paths relative to the checkout (every step runs there): a run's config.yaml, which
    # --resume compares, then does not depend on where the checkout lies.
    output, data = os.path.relpath(work / f"compare-{rows}", ROOT), os.path.relpath(data, ROOT)
    run(eain("compare", "--config", args.config, "--models", ",".join(models), "--seeds", str(seeds),
             "--resume", "--set", f"data.output={data}", "--set", f"compare.output={output}", *rows_settings(rows),
             "--set", f"compare.name=peer-parity-{rows}", *sum((["--set", s] for s in args.set), [])),
        work / f"compare-{rows}.log")
    return json.loads((ROOT / output / "results.json").read_text())["runs"]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def summarize(fuxictr: list[dict], project: dict[str, list[dict]]) -> dict:
    """model -> column -> {test, valid}: mean, std, n and the per-seed values."""
    table: dict[str, dict] = {}
    for model, name in FUXICTR_MODELS.items():
        runs = [r for r in fuxictr if r["model"] == name]
        if runs:
            table.setdefault(model, {})["fuxictr"] = {"test": spread([r["test_auc"] for r in runs]),
                                                      "valid": spread([r["best_valid_auc"] for r in runs]),
                                                      "epochs": [r["epochs_run"] for r in runs]}
    for rows, results in project.items():
        for row in results:
            table.setdefault(row["model"], {})[rows] = {
                "test": spread([s["test"]["auc"] for s in row["seeds"]]),
                "valid": spread([s["valid"]["auc"] for s in row["seeds"]]),
                "epochs": [s["epochs"] for s in row["seeds"]]}
    return table


def targets(table: dict) -> list[tuple[str, bool | None, str]]:
    """Issue 10's targets: (what, met or None when not measured, the figures)."""
    def mean(model, column):
        return table.get(model, {}).get(column, {}).get("test", {}).get("mean")

    checks = []
    fx_dnn, ours_dnn = mean("dnn", "fuxictr"), mean("dnn", "reference")
    if fx_dnn and ours_dnn:
        checks.append(("DNN >= FuxiCTR's DNN - 0.005 (same rows)", ours_dnn >= fx_dnn - 0.005,
                       f"{ours_dnn:.4f} vs {fx_dnn:.4f}"))
    fx_best = max((mean(m, "fuxictr") or 0.0) for m in FUXICTR_MODELS)
    eain_ref = mean("eain", "reference")
    if fx_best and eain_ref:
        checks.append(("EAIN >= best FuxiCTR model + 0.01 (same rows)", eain_ref >= fx_best + 0.01,
                       f"{eain_ref:.4f} vs {fx_best:.4f}"))
    order = [m for m in ("eain", "din", "dnn", "mf", "lr") if mean(m, "reference")]
    if len(order) > 1:
        values = [mean(m, "reference") for m in order]
        checks.append((f"order {' > '.join(order)} (reference rows)", all(a > b for a, b in zip(values, values[1:])),
                       ", ".join(f"{m} {v:.4f}" for m, v in zip(order, values))))
    for model in table:
        ref, ours = mean(model, "reference"), mean(model, "prepared")
        if ref and ours:
            checks.append((f"{model}: eain prepare's rows within 0.01 of the reference rows", abs(ours - ref) <= 0.01,
                           f"{ours:.4f} vs {ref:.4f}"))
    return checks


def cell(entry: dict | None, key: str = "test") -> str:
    if not entry:
        return "—"
    value = entry[key]
    return f"{value['mean']:.4f} ± {value['std']:.4f} ({value['n']})" if value["n"] > 1 else f"{value['mean']:.4f}"


def to_markdown(report: dict) -> str:
    columns = [("fuxictr", "FuxiCTR 2.3.10, reference rows"), ("reference", "eain, reference rows"),
               ("prepared", "eain, `eain prepare` rows"), ("prepared_no_skive", "eain, prepare rows without Skive-Above")]
    lines = [f"# {report['name']}: the project beside FuxiCTR on the same rows", "",
             f"`{report['command']}` ({report['data']}; seeds per cell: {report['seeds']}; mean ± std (n); each run "
             "stopped and selected on validation AUC only; test AUC at the best validation evaluation).", "",
             "## Test AUC", "", "| model | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for model in ("lr", "mf", "dnn", "din", "eain"):
        if model in report["table"]:
            lines.append(f"| {model} | " + " | ".join(cell(report["table"][model].get(c)) for c, _ in columns) + " |")
    lines += ["", "## Validation AUC (what selects)", "", "| model | " + " | ".join(t for _, t in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for model in ("lr", "mf", "dnn", "din", "eain"):
        if model in report["table"]:
            lines.append(f"| {model} | " + " | ".join(cell(report["table"][model].get(c), "valid") for c, _ in columns)
                         + " |")
    lines += ["", "## Targets (issue 10)", ""]
    lines += [f"- {'met' if met else 'MISSED'}: {what}: {figures}" for what, met, figures in report["targets"]]
    lines += ["", "Settings: " + report["settings"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="peer-parity")
    parser.add_argument("--config", default="configs/grocery.yaml", help="eain's config (data and recipe)")
    parser.add_argument("--source", default=str(GROCERY / "interactions.tsv"), help="reviews for the reference rows")
    parser.add_argument("--meta", default=str(GROCERY / "item_meta.tsv"))
    parser.add_argument("--models", default="lr,mf,dnn,din,eain")
    parser.add_argument("--prepared-models", default=None, help="models trained on prepare's rows (default --models)")
    parser.add_argument("--skive-models", default="dnn,eain", help="also trained on prepare's rows without Skive-Above")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model on the reference rows")
    parser.add_argument("--prepared-seeds", type=int, default=0, help="seeds per model on prepare's rows (0 = --seeds)")
    parser.add_argument("--set", action="append", default=[], help="extra eain overrides, key=value")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "peer-parity"))
    parser.add_argument("--fuxictr-python", default=None, help="a python with fuxictr==2.3.10 and polars<2")
    parser.add_argument("--fuxictr-seeds", type=int, default=0, help="FuxiCTR runs per model (0 = --seeds)")
    parser.add_argument("--skip-fuxictr", action="store_true")
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.prepared_models = args.models if args.prepared_models is None else [
        m for m in args.prepared_models.split(",") if m]
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    reference = reference_rows(args, work)
    prepared = prepared_rows(args, work, skive_above=True)
    no_skive = prepared_rows(args, work, skive_above=False) if args.skive_models else None
    converted = converted_rows(reference, prepared, work)
    fuxictr = fuxictr_runs(args, reference, work)
    skive_models = [m for m in args.skive_models.split(",") if m in args.models]
    prepared_seeds = args.prepared_seeds or args.seeds
    project = {"reference": project_runs(args, converted, "reference", args.models, work, args.seeds),
               "prepared": project_runs(args, prepared, "prepared", args.prepared_models, work, prepared_seeds),
               "prepared_no_skive": project_runs(args, no_skive, "prepared_no_skive", skive_models, work,
                                                 prepared_seeds) if no_skive else []}
    table = summarize(fuxictr, project)
    report = {"name": args.name, "command": "python benchmarks/peer_parity.py " + " ".join(sys.argv[1:]),
              "data": f"{Path(args.source).name} via {args.config}",
              "seeds": f"{args.seeds} on the reference rows, {prepared_seeds} on prepare's rows", "table": table,
              "targets": targets(table), "fuxictr_runs": fuxictr, "project_runs": project,
              "settings": f"eain: {args.config} {' '.join(args.set)} (train.seed 0..{args.seeds - 1}); FuxiCTR: "
                          f"run_fuxictr.py defaults, seeds {', '.join(map(str, FUXICTR_SEEDS[: args.fuxictr_seeds or args.seeds]))}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (RESULTS / f"{args.name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
