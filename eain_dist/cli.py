"""The `eain` command. Every user error ends in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from eain_dist.config import Config, ConfigError, load_config
from eain_dist.data.errors import InputError

EXIT_USER_ERROR = 2
DEFAULT_CACHE = Path(".cache/eain")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("eain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors may arrive wrapped by Ray: find the cause
        user_error = _user_error(exc)
        if user_error is None:
            raise
        print(f"eain {args.command}: {user_error}", file=sys.stderr)
        return EXIT_USER_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eain", description="EAIN on Amazon reviews, on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write synthetic 2023-format reviews + metadata")
    generate.add_argument("--out", required=True)
    generate.add_argument("--users", type=int, default=None)
    generate.add_argument("--items", type=int, default=None)
    generate.add_argument("--reviews", type=int, default=None)
    generate.add_argument("--categories", type=int, default=None)
    generate.add_argument("--files", type=int, default=None)
    generate.add_argument("--seed", type=int, default=None)
    generate.set_defaults(handler=_generate)

    prepare = commands.add_parser("prepare", help="raw reviews -> prepared dataset (Ray tasks, or threads for a local input that fits)")
    _config_arguments(prepare, required=False)
    prepare.set_defaults(handler=_prepare)

    train = commands.add_parser("train", help="train a model on a prepared dataset (Ray Train)")
    _config_arguments(train, required=False)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="exact metrics of a run's best checkpoint")
    evaluate.add_argument("--run", required=True, help="a run directory written by `eain train`")
    evaluate.add_argument("--split", default="test", choices=("train", "valid", "test"))
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of the run's config (e.g. train.num_workers=2)")
    evaluate.set_defaults(handler=_evaluate)

    tune = commands.add_parser("tune", help="a Ray Tune search over the trainer (ASHA, W&B)")
    _config_arguments(tune, required=False)
    tune.add_argument("--resume", action="store_true",
                      help="continue the interrupted search in tune.output (same as tune.resume=true)")
    tune.set_defaults(handler=_tune)

    compare = commands.add_parser("compare", help="the paper's table: every model (and ablations) on one dataset")
    _config_arguments(compare, required=False)
    compare.add_argument("--models", default=None, metavar="LIST",
                         help="comma-separated, from lr,mf,dnn,din,eain (default: compare.models)")
    compare.add_argument("--ablations", action="store_true",
                         help="also EAIN without each of DIN attention, MaskBlock, SE-Net, PAIM")
    compare.add_argument("--seeds", type=int, default=None, metavar="N",
                         help="train each model N times (train.seed, +1, ...): means ± std (default: compare.seeds)")
    compare.add_argument("--resume", action="store_true",
                         help="reuse the finished runs in compare.output whose config is unchanged")
    compare.set_defaults(handler=_compare)

    score = commands.add_parser("score", help="score Parquet rows with a run's best checkpoint (Ray Data) -> Parquet")
    score.add_argument("--run", required=True, help="a run directory written by `eain train`")
    score.add_argument("--input", required=True, help="Parquet file or folder: a prepared split, or raw-id rows")
    score.add_argument("--output", default=None, help="Parquet folder, local or s3:// (default: <run>/scores/<input>)")
    score.add_argument("--ids", default="auto", choices=("auto", "raw", "index"),
                       help="raw ids (mapped through the run's vocabularies) or table indices; auto: by item's type")
    _run_overrides(score)
    score.set_defaults(handler=_score)

    recommend = commands.add_parser("recommend", help="each user's top-K items among popular candidates -> Parquet")
    recommend.add_argument("--run", required=True, help="a run directory written by `eain train`")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="Parquet (column user) or text file (one id per line) of raw user ids")
    who.add_argument("--all", action="store_true", help="every user of the run's prepared dataset")
    recommend.add_argument("--top-k", type=int, default=None, help="items per user (serve.top_k)")
    recommend.add_argument("--candidates", type=int, default=None,
                           help="the N most popular items the user has not reviewed (serve.candidates)")
    recommend.add_argument("--at", type=int, default=None,
                           help="request time, unix seconds (serve.at; default: the latest interaction in the data)")
    recommend.add_argument("--output", default=None, help="Parquet folder (default: <run>/recommendations)")
    _run_overrides(recommend)
    recommend.set_defaults(handler=_recommend)

    export = commands.add_parser("export", help="one model directory: safetensors, config, vocabularies, meta")
    export.add_argument("--run", required=True, help="a run directory written by `eain train`")
    export.add_argument("--out", required=True, help="the model directory to write (local or s3://)")
    _run_overrides(export)
    export.set_defaults(handler=_export)

    run = commands.add_parser("run", help="the main job: generate (if needed) -> prepare -> train -> evaluate")
    _config_arguments(run, required=False)
    run.set_defaults(handler=_run)
    return parser


def _config_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--config", required=required, help="YAML file (configs/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set data.max_history=20")


def _run_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the run's config (e.g. serve.actors=2, serve.use_gpu=true)")


def _user_error(exc: BaseException) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConfigError, InputError)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _generate(args) -> int:
    from eain_dist.data.synthetic import generate

    defaults = Config().generate
    params = {name: getattr(args, name) if getattr(args, name) is not None else getattr(defaults, name)
              for name in ("users", "items", "reviews", "categories", "files", "seed")}
    summary = generate(args.out, **params)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _prepare(args) -> int:
    config = load_config(args.config, args.set)
    _prepare_and_report(config)
    return 0


def _prepare_and_report(config: Config):
    from eain_dist.data.pipeline import prepare

    if not config.data.source:
        raise ConfigError("data.source is empty: give the raw review files (path, glob, directory or s3:// URL)")
    result = prepare(config)  # starts Ray only if data.executor chooses Ray
    _print_summary(result)
    return result


def _train(args) -> int:
    from eain_dist.runtime import init_ray
    from eain_dist.train.trainer import read_meta, results_table, train

    config = load_config(args.config, args.set)
    read_meta(config)  # a missing or outdated prepared dataset is a one-line error before Ray starts
    init_ray(config.ray)
    result = train(config)
    print(f"\nrun directory: {result.run_dir}\n{results_table(result.metrics)}")
    return 0


def _evaluate(args) -> int:
    from eain_dist.runtime import init_ray
    from eain_dist.train.trainer import evaluate_run

    config = load_config(Path(args.run) / "config.yaml", args.set) if (Path(args.run) / "config.yaml").exists() else None
    init_ray(config.ray if config else Config().ray)
    values = evaluate_run(args.run, args.split, args.set)
    print(json.dumps({args.split: values}, indent=2))
    return 0


def _run_config(args, extra: list[str] = ()) -> Config:
    """The run's config with --set overrides; starts Ray with its ray section."""
    from eain_dist.runtime import init_ray

    config_file = Path(args.run) / "config.yaml"
    if not config_file.is_file():
        raise InputError(f"{args.run} is not a run directory of `eain train` (no config.yaml)")
    config = load_config(config_file, [*args.set, *extra])
    init_ray(config.ray)
    return config


def _score(args) -> int:
    from eain_dist.serve.scoring import score

    _run_config(args)
    result = score(args.run, args.input, args.output, args.set, ids=args.ids)
    unknown = ", ".join(f"{name} {n:,}" for name, n in result.unknown.items()) or "none"
    print(f"scored {result.rows:,} rows in {result.seconds:.1f} s ({result.rows_per_s:,.0f} rows/s, "
          f"{result.actors} actor(s)) -> {result.output}\nunknown ids (scored as 0): {unknown}")
    return 0


def _recommend(args) -> int:
    from eain_dist.serve.recommend import recommend

    extra = [f"serve.{key}={value}" for key, value in
             (("top_k", args.top_k), ("candidates", args.candidates), ("at", args.at)) if value is not None]
    _run_config(args, extra)
    result = recommend(args.run, None if args.all else args.users, args.output, [*args.set, *extra])
    print(f"ranked {result.pairs:,} (user, item) pairs for {result.users:,} users in {result.seconds:.1f} s "
          f"({result.pairs_per_s:,.0f} pairs/s, {result.actors} actor(s)) -> {result.output}\n"
          f"users without a history (got the most popular items): {result.cold_users:,}")
    return 0


def _export(args) -> int:
    from eain_dist.serve.export import export

    export(args.run, args.out, args.set)
    return 0


def _tune(args) -> int:
    from eain_dist.runtime import init_ray
    from eain_dist.tune import results_table, run_search, validate_search_space

    config = load_config(args.config, args.set)
    validate_search_space(config)  # before Ray starts: a bad search space is a one-line error
    init_ray(config.ray)
    result = run_search(config, resume=args.resume)
    print(f"\n{results_table(result.rows)}")
    if result.interrupted:
        return 130
    best = result.best
    print(f"\nbest trial {best['trial_id']}: {best['metric']} {best[best['metric']]:.4f} at epoch {best['epoch']}\n"
          f"  config:     {config.tune.output}/best.yaml\n  checkpoint: {best['checkpoint']}")
    return 0


def _compare(args) -> int:
    from eain_dist.compare import load_compare_config, run_comparison
    from eain_dist.runtime import init_ray

    config, chosen = load_compare_config(args.config, args.set, args.models, args.ablations, args.seeds)
    if not config.data.source:
        config = _with_synthetic_source(config)
    init_ray(config.ray)
    _prepare_unless_current(config)
    result = run_comparison(config, chosen, resume=args.resume)
    print(f"\n{(result.output / 'results.md').read_text()}\nwritten: {result.output}/results.md, results.json, "
          f"curves.png")
    return 0


def _prepare_unless_current(config: Config) -> None:
    """Prepare data.output unless it was prepared from the same data and sampling settings, or
    was not written by `eain prepare` at all (a dataset converted into the contract is never
    overwritten)."""
    from eain_dist.config import to_dict
    from eain_dist.data.fs import filesystem_for

    from eain_dist.data.pipeline import SCHEMA_VERSION

    fs, path = filesystem_for(config.data.output, config.data.s3)
    if fs.exists(f"{path}/meta.json"):
        with fs.open(f"{path}/meta.json") as handle:
            meta = json.load(handle)
        if "fingerprint" not in meta.get("sources", {}):  # e.g. the peer's rows, converted
            print(f"using the prepared dataset {config.data.output} as it is (not written by eain prepare)")
            return
        if meta.get("schema_version") == SCHEMA_VERSION and (
                _preparation_settings(meta.get("config", {})) == _preparation_settings(to_dict(config))):
            print(f"using the prepared dataset {config.data.output} (same data and sampling settings)")
            return
    _prepare_and_report(config)


def _preparation_settings(config: dict) -> tuple:
    """What makes a prepared dataset: the data and sampling sections, less where it was written
    (the same dataset named by a relative or an absolute path is the same dataset) and where its
    tasks ran (every executor writes the same rows)."""
    data = {key: value for key, value in config.get("data", {}).items() if key not in ("output", "executor")}
    return data, config.get("sampling")


def _run(args) -> int:
    """The main job. Without --config: a synthetic dataset in the cache, prepared and trained locally."""
    from eain_dist.runtime import init_ray
    from eain_dist.train.trainer import evaluate_run, results_table, train

    config = load_config(args.config, args.set)
    if not config.data.source:
        config = _with_synthetic_source(config)
    _prepare_and_report(config)  # in process when the input fits: Ray starts after, for training
    init_ray(config.ray)
    result = train(config)
    print(f"\nrun directory: {result.run_dir}\n{results_table(result.metrics)}")
    test = evaluate_run(str(result.run_dir), "test")
    print(f"evaluate (best checkpoint, test split): AUC {test['auc']:.4f}, gAUC {test['gauc']:.4f}, "
          f"logloss {test['logloss']:.4f}")
    return 0


def _with_synthetic_source(config: Config) -> Config:
    from eain_dist.data.synthetic import generate

    params = dataclasses.asdict(config.generate)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = DEFAULT_CACHE / f"synthetic-{key}"
    if not (folder / "DONE").exists():
        print(f"run: generating a synthetic Amazon-2023-format dataset in {folder}")
        generate(str(folder), **params)
        (folder / "DONE").write_text("ok\n")
    else:
        print(f"run: using the synthetic dataset cached in {folder}")
    data = dataclasses.replace(config.data, source=str(folder / "reviews"), meta=str(folder / "meta"),
                               format="amazon2023")
    return dataclasses.replace(config, data=data)


def _print_summary(result) -> None:
    meta = result.meta
    counts = meta["counts"]
    rows = [
        ("records read", counts["read"]["records"]),
        ("malformed (rejected)", counts["read"]["rejects"]),
        ("duplicate (user, item) dropped", counts.get("dedupe", {}).get("duplicates", 0)),
        ("users kept", counts.get("min_user_count", {}).get("users_kept", 0)),
        ("users dropped (< min_user_count)", counts.get("min_user_count", {}).get("users_dropped", 0)),
        ("items (vocabulary)", meta["tables"]["item"] - 1),
        ("negatives dropped by Skive-Above", counts.get("skive_above", {}).get("negatives_dropped", 0)),
        *((f"{name} impressions", n) for name, n in meta["splits"].items()),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nprepared dataset: {result.output}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12,}")
    print(f"  {'seconds':<{width}}  {result.seconds:>12.1f}  ({result.reviews_per_s:,.0f} reviews/s)")


if __name__ == "__main__":
    sys.exit(main())
