"""Typed configuration: keyword-only dataclasses, YAML files and `--set a.b=c` overrides.

The dataclass defaults *are* the embedded default (`configs/default.yaml` spells them out).
Unknown keys anywhere are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eain_dist.model.config import MODEL_NAMES, ModelConfig, validate_model_config


class ConfigError(ValueError):
    """A user error in a config file or override; the message is one line."""


@dataclass(kw_only=True)
class S3Config:
    # Any S3-compatible store (MinIO, moto, Ceph); None = AWS. Credentials never live here:
    # they come from the standard AWS chain (env vars, ~/.aws, instance profile).
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False


@dataclass(kw_only=True)
class DataConfig:
    source: str | list[str] = ""  # path, glob, directory or URL; a list is allowed
    format: str = "auto"  # auto, amazon2014, amazon2018, amazon2023, ratings_csv, interactions_tsv
    meta: str | list[str] | None = None  # item metadata, optional
    output: str = ".cache/eain/prepared/default"
    max_history: int = 50
    # Histories of equal-timestamp reviews: input_order = every review earlier in the user's
    # (timestamp, input position) order (the reference protocol); strict_time = only reviews of
    # an earlier timestamp (same-time reviews share one history).
    history_ties: str = "input_order"
    min_user_count: int = 3  # leave-last-out needs at least 3 interactions (DESIGN.md)
    min_item_count: int = 1
    k_core: bool = False  # repeat the min-count filters until both hold at once
    vocab: str = "exact"  # exact (frequency-ordered, saved) or hashed (fixed buckets)
    user_buckets: int = 1 << 22  # hashed mode only
    item_buckets: int = 1 << 22
    category_buckets: int = 1 << 12
    max_reject_fraction: float = 0.01  # fail the run when more of the input is malformed
    reject_samples: int = 20  # malformed records kept per (file, reason) under rejects/
    rows_per_partition: int = 1_000_000  # user partitions are sized to fit one worker's memory
    num_partitions: int = 0  # 0 = derived from the input size
    rows_per_file: int = 500_000
    # Input is read by tasks of about this many uncompressed bytes: a larger plain file in byte
    # ranges, a larger gzip file inflated once and parsed in chunks of this size by many tasks.
    part_bytes: int = 256 << 20
    # Where prepare's tasks run: ray (Ray tasks; on a cluster, or for inputs larger than one
    # machine holds), threads (a thread pool in this process: no Ray start, nothing copied), or
    # auto: threads when no Ray cluster is given, Ray is not already running and the input fits
    # this machine's memory (eain_dist/data/tasks.py), else ray.
    executor: str = "auto"
    s3: S3Config = field(default_factory=S3Config)


@dataclass(kw_only=True)
class SamplingConfig:
    negatives: int = 1  # sampled negatives per positive
    strategy: str = "uniform"  # uniform or popularity
    popularity_power: float = 0.75  # popularity strategy: p(item) ~ count ** power (word2vec)
    # Training split: drop negatives placed after a request's last positive (EAIN's paper). Off by
    # default: with sampled negatives on review data a negative's position is drawn at random, so
    # "after the last positive" says nothing; on Grocery it dropped 41% of the training negatives
    # and cost DNN 0.024 test AUC (benchmarks/results/peer-parity.md). Turn it on for real
    # impression logs or to reproduce the paper's preparation.
    skive_above: bool = False
    session_gap_s: int = 3600  # a user's interactions closer than this share a request
    seed: int = 42


@dataclass(kw_only=True)
class GenerateConfig:
    users: int = 4_000
    items: int = 2_000
    reviews: int = 60_000
    categories: int = 24
    seed: int = 7
    files: int = 2


@dataclass(kw_only=True)
class TrainConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # An upper bound: early stopping on validation AUC ends a run (the recipe peaks near epoch
    # 10-20 on Grocery and on the generated data; row-wise Adagrad's steps shrink by themselves).
    epochs: int = 40
    batch_size: int = 1024  # per worker
    eval_batch_size: int = 4096
    lr: float = 1e-3  # Adam on the dense part (and replicated tables)
    embedding_optimizer: str = "adagrad"  # row-wise optimizer of sharded tables: adagrad or adam
    embedding_lr: float = 0.05
    sharded_tables: list[str] = field(default_factory=lambda: ["user", "item"])  # the rest replicated
    # Evaluations without a better validation AUC before training stops; 0 = never stop early.
    early_stopping_patience: int = 3
    # Factor on every learning rate (dense and row-wise) after each evaluation without a better
    # validation AUC (FuxiCTR's reduce-on-plateau is 0.1); 1.0 = a constant rate. On Grocery it
    # hurt DNN (0.755 against 0.777 test AUC) and helped MF (benchmarks/results/recipe-experiments.md).
    lr_decay: float = 1.0
    # 0 = evaluate the valid split once per epoch; N > 0 = also every N optimizer steps (early
    # stopping, the best checkpoint and metrics.json's history then work per evaluation).
    eval_every_steps: int = 0
    seed: int = 0
    prefetch_batches: int = 2
    # The training rows' order, every epoch anew: files (the split's files in a new order, then
    # the local buffer below), global (Ray Data's random_shuffle of all rows: a full shuffle per
    # epoch), none (file order, the same every epoch; the local buffer still applies).
    shuffle: str = "files"
    # Rows in Ray Data's local shuffle buffer (prepare already shuffles rows once within each
    # file); 0 = no buffer.
    shuffle_buffer: int = 100_000
    log_every_steps: int = 50
    run_dir: str = "runs/default"
    storage_path: str | None = None  # Ray Train storage (local path or s3://); None = <run_dir>/ray
    max_failures: int = 2  # worker failures to recover from (restart from the last checkpoint)
    # Testing aid: [epoch, step] makes the last rank of the first attempt die at that step
    # (0-based) of that epoch (1-based), as a crashed worker would. Empty = never.
    inject_fault: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class WandbConfig:
    project: str = "eain-dist"
    entity: str | None = None
    group: str | None = None
    mode: str = "auto"  # auto (online with an API key, else offline), online, offline, disabled


@dataclass(kw_only=True)
class RayConfig:
    address: str | None = None  # None or "local" = single-node; else a cluster ("auto", ray://...)
    num_cpus: int | None = None  # local mode only


@dataclass(kw_only=True)
class TuneConfig:
    """`eain tune`: a Ray Tune search over the trainer (eain_dist/tune.py, configs/tune.yaml)."""

    name: str = "eain-search"  # Tune's experiment folder under `output`, and the W&B group
    output: str = "runs/tune"  # experiment state, one run directory per trial, best.yaml, results
    num_samples: int = 8  # trials drawn from the search space
    max_concurrent: int = 0  # 0 = derived: cluster CPUs (and GPUs) / what one trial needs
    metric: str = "valid_auc"  # valid_auc, valid_gauc or valid_logloss: ASHA's and the ranking's
    mode: str = "max"  # max or min
    grace_period: int = 1  # ASHA: epochs every trial runs before it may be stopped
    reduction_factor: int = 3  # ASHA: the best 1/reduction_factor of a rung go on
    seed: int | None = 0  # random-search sampling; None = a different draw each time
    resume: bool = False  # continue the interrupted search in `output` (or `eain tune --resume`)
    # config key -> distribution, e.g. `train.lr: {type: loguniform, lower: 1.0e-4, upper: 1.0e-2}`;
    # types: loguniform, uniform (lower, upper), randint (lower, upper exclusive), choice (values).
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(kw_only=True)
class CompareConfig:
    """`eain compare`: every model on one prepared dataset (eain_dist/compare.py)."""

    name: str = "eain-compare"  # the W&B group of the runs (unless wandb.group is set)
    output: str = "runs/compare"  # one run directory per model, results.md / .json, curves.png
    models: list[str] = field(default_factory=lambda: ["lr", "mf", "dnn", "din", "eain"])
    ablations: bool = False  # also EAIN without each of DIN attention, MaskBlock, SE-Net, PAIM
    seeds: int = 1  # runs per model, with train.seed, train.seed + 1, ...: the table shows means ± std
    # Per model, train.* settings of its own (chosen on validation AUC, recipe-experiments.md):
    # MF, whose every signal sits in two tables, gains from reduce-on-plateau (valid AUC 0.698
    # against 0.636 with a constant rate) while DNN loses; every other model uses `train` as is.
    model_train: dict[str, dict[str, Any]] = field(default_factory=lambda: {"mf": {"lr_decay": 0.1}})


@dataclass(kw_only=True)
class ServeConfig:
    """`eain score` / `eain recommend`: using a trained run (eain_dist/serve/)."""

    # Rows per model call (score), (user, candidate) pairs per call (recommend): what bounds an
    # actor's activation memory (EAIN at dim 32: about 0.5 GiB at 1024, 2 GiB at 4096).
    batch_size: int = 1024
    actors: int = 0  # model replicas in Ray Data's actor pool; 0 = one per CPU (per GPU with use_gpu)
    use_gpu: bool = False  # one GPU per actor
    top_k: int = 10  # recommend: items per user
    candidates: int = 1000  # recommend: the most popular items the user has not reviewed
    users_per_batch: int = 16  # recommend: users per actor call (memory: x candidates x history)
    at: int | None = None  # recommend: request time (unix s) for hour / weekday / gap; None = latest in data
    # score with raw ids: fail when more than this fraction of user or item ids is not in the
    # run's vocabulary (the input was made for another dataset); unknown ids score as id 0.
    max_unknown_fraction: float = 0.5


@dataclass(kw_only=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


FORMATS = ("auto", "amazon2014", "amazon2018", "amazon2023", "ratings_csv", "interactions_tsv")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then `key.path=value` overrides; validated."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    for item in overrides or []:
        _apply_override(tree, item)
    config = _build(Config, tree, prefix="")
    validate(config)
    return config


def load_config_dict(tree: dict[str, Any]) -> Config:
    """A Config from `to_dict`'s output (as shipped to Ray workers), validated the same way."""
    config = _build(Config, tree, prefix="")
    validate(config)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# The sections a training run reads (generate, tune and compare belong to the commands around it).
RUN_SECTIONS = ("data", "sampling", "model", "train", "wandb", "ray")


def run_config_dict(config: Config) -> dict[str, Any]:
    """The sections of `config` that a training run uses: its config.yaml and W&B config."""
    tree = to_dict(config)
    return {section: tree[section] for section in RUN_SECTIONS}


def dump_run_yaml(config: Config) -> str:
    return yaml.safe_dump(run_config_dict(config), sort_keys=False)


def validate(config: Config) -> None:
    data, sampling = config.data, config.sampling
    _require(data.format in FORMATS, f"data.format must be one of {', '.join(FORMATS)}, got {data.format!r}")
    _require(data.vocab in ("exact", "hashed"), f"data.vocab must be exact or hashed, got {data.vocab!r}")
    _require(data.executor in ("auto", "ray", "threads"),
             f"data.executor must be auto, ray or threads, got {data.executor!r}")
    _require(data.history_ties in ("input_order", "strict_time"),
             f"data.history_ties must be input_order or strict_time, got {data.history_ties!r}")
    _require(data.part_bytes >= 1, f"data.part_bytes must be >= 1, got {data.part_bytes}")
    _require(data.max_history >= 1, "data.max_history must be >= 1")
    _require(data.min_user_count >= 3, "data.min_user_count must be >= 3 (leave-last-out split)")
    _require(0.0 <= data.max_reject_fraction <= 1.0, "data.max_reject_fraction must be in [0, 1]")
    _require(sampling.negatives >= 0, "sampling.negatives must be >= 0")
    _require(sampling.strategy in ("uniform", "popularity"),
             f"sampling.strategy must be uniform or popularity, got {sampling.strategy!r}")
    train = config.train
    _require(train.num_workers >= 1, "train.num_workers must be >= 1")
    _require(train.epochs >= 1 and train.batch_size >= 1, "train.epochs and train.batch_size must be >= 1")
    _require(train.shuffle_buffer >= 0, f"train.shuffle_buffer must be >= 0 (0 = no buffer), got {train.shuffle_buffer}")
    _require(train.shuffle in ("files", "global", "none"),
             f"train.shuffle must be files, global or none, got {train.shuffle!r}")
    _require(train.early_stopping_patience >= 0,
             f"train.early_stopping_patience must be >= 0 (0 = no early stopping), got {train.early_stopping_patience}")
    _require(0.0 < train.lr_decay <= 1.0, f"train.lr_decay must be in (0, 1] (1 = constant rate), got {train.lr_decay}")
    _require(train.eval_every_steps >= 0,
             f"train.eval_every_steps must be >= 0 (0 = once per epoch), got {train.eval_every_steps}")
    _require(train.embedding_optimizer in ("adagrad", "adam"),
             f"train.embedding_optimizer must be adagrad or adam, got {train.embedding_optimizer!r}")
    _require(config.wandb.mode in ("auto", "online", "offline", "disabled"),
             f"wandb.mode must be auto, online, offline or disabled, got {config.wandb.mode!r}")
    _validate_tune(config.tune)
    _require(config.compare.seeds >= 1, f"compare.seeds must be >= 1, got {config.compare.seeds}")
    _validate_model_train(config)
    _require("://" not in config.compare.output,
             f"compare.output must be a local path (runs/...), got {config.compare.output!r}; "
             "put checkpoints on S3 with train.storage_path")
    _validate_serve(config.serve)
    try:
        validate_model_config(config.model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_serve(serve: ServeConfig) -> None:
    for key in ("batch_size", "top_k", "candidates", "users_per_batch"):
        _require(getattr(serve, key) >= 1, f"serve.{key} must be >= 1, got {getattr(serve, key)}")
    _require(serve.top_k <= serve.candidates,
             f"serve.top_k ({serve.top_k}) must be <= serve.candidates ({serve.candidates})")
    _require(serve.actors >= 0, f"serve.actors must be >= 0 (0 = one per CPU or GPU), got {serve.actors}")
    _require(0.0 <= serve.max_unknown_fraction <= 1.0,
             f"serve.max_unknown_fraction must be in [0, 1], got {serve.max_unknown_fraction}")


def train_for_model(config: Config, model: str) -> TrainConfig:
    """The train section model `model` runs with in `eain compare`: `train` with the model's
    `compare.model_train` settings on top."""
    settings = config.compare.model_train.get(model)
    if not settings:
        return config.train
    return _build(TrainConfig, {**to_dict(config.train), **settings}, prefix=f"compare.model_train.{model}.")


def _validate_model_train(config: Config) -> None:
    for model in config.compare.model_train:
        _require(model in MODEL_NAMES,
                 f"compare.model_train: unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
        alone = dataclasses.replace(config.compare, model_train={})
        try:
            validate(dataclasses.replace(config, train=train_for_model(config, model), compare=alone))
        except ConfigError as error:
            raise ConfigError(f"compare.model_train.{model}: {error}") from None


def _validate_tune(tune: TuneConfig) -> None:
    # The search space itself is checked against the whole Config by eain_dist.tune (each value
    # is applied and validated), since that needs a built Config.
    _require(tune.mode in ("max", "min"), f"tune.mode must be max or min, got {tune.mode!r}")
    _require(tune.num_samples >= 1, "tune.num_samples must be >= 1")
    _require(tune.max_concurrent >= 0, "tune.max_concurrent must be >= 0 (0 = derived from the cluster)")
    _require(tune.grace_period >= 1, "tune.grace_period must be >= 1 epoch")
    _require(tune.reduction_factor >= 2, "tune.reduction_factor must be >= 2")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key.path=value, got {item!r}")
    node = tree
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw) if raw != "" else ""


def _build(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in tree.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        coerced = _coerce_scalar(option, value)
        if coerced is not _NO_MATCH:
            return coerced
    raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")


_NO_MATCH = object()
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_UnionType = type(int | None)


def _coerce_scalar(option: Any, value: Any) -> Any:
    origin = typing.get_origin(option)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        (inner, *_) = typing.get_args(option) or (Any,)
        items = [_coerce_scalar(inner, v) for v in value]
        return _NO_MATCH if any(i is _NO_MATCH for i in items) else origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            return _NO_MATCH
        key_type, value_type = typing.get_args(option) or (Any, Any)
        pairs = [(_coerce_scalar(key_type, k), _coerce_scalar(value_type, v)) for k, v in value.items()]
        return _NO_MATCH if any(k is _NO_MATCH or v is _NO_MATCH for k, v in pairs) else dict(pairs)
    if option is Any:
        return value
    if option is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if option is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string: it needs 1.0e-3
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO_MATCH
    if option is str:
        return value if isinstance(value, str) else _NO_MATCH
    if option is type(None):
        return _NO_MATCH
    return _NO_MATCH


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
