"""`eain score`: a run's best checkpoint over Parquet rows, on Ray Data, into Parquet.

    read_parquet(input)                      read tasks (I/O)
      -> map_batches(BatchScorer, actors)    each actor builds the model once; per batch: ids
                                             mapped and checked, `to_tensors`, forward
      -> write_parquet(staging)              write tasks, in parallel; moved into place at the end

Output: `user`, `item` (raw ids), `score` (sigmoid of the logit, float32), `logit` (float32, what
`eain evaluate` ranks by), then the input's other columns (`label`, `request_id`, `timestamp`, ...).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray
import ray.data
import torch

from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for, pyarrow_filesystem
from eain_dist.data.loader import to_device, to_tensors
from eain_dist.serve.features import InputPlan, model_input, plan_input, row_ids
from eain_dist.serve.ids import load_vocabularies
from eain_dist.serve.output import StagedOutput
from eain_dist.serve.replicas import (
    IO_TASK_CPUS, ActorPool, SharedModel, Tally, actor_pool, device_for, run_and_check,
)
from eain_dist.serve.tables import RunModel, load_run


@dataclass
class ScoreResult:
    output: str
    rows: int
    seconds: float  # reading, scoring and writing (Ray Data's execution), not start-up
    actors: int
    unknown: dict[str, int]  # feature -> ids not in the vocabulary (scored as 0)

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


class BatchScorer:
    """One model replica: built once per actor, then called with one Arrow batch at a time."""

    def __init__(self, model: SharedModel, plan: InputPlan, vocabularies: list, pool: ActorPool, tally) -> None:
        self.device = device_for(pool)
        self.model = model.build(self.device)
        self.plan, self.vocabularies, self.tally = plan, ray.get(vocabularies[0]), tally
        self.stopped = False  # a user error was met (here or in another actor): skip the work left

    def __call__(self, batch: pa.Table) -> pa.Table:
        try:
            return self._score(batch.slice(0, 0) if self.stopped else batch)
        except InputError as exc:
            ray.get(self.tally.fail.remote(str(exc)))
            self.stopped = True
            return self._score(batch.slice(0, 0))

    def _score(self, batch: pa.Table) -> pa.Table:
        clock = time.perf_counter()
        inputs, unknown = model_input(batch, self.plan, self.vocabularies)
        ids = row_ids(batch, self.plan, self.vocabularies)
        tensors = to_device(to_tensors(inputs, self.plan.max_history), self.device)
        prepared = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(tensors).logits.float()
            scores = torch.sigmoid(logits)  # as steps.evaluate: a float32 sigmoid of the logits
        columns = {**ids, "score": pa.array(scores.cpu().numpy()), "logit": pa.array(logits.cpu().numpy())}
        scored = time.perf_counter()
        columns.update({name: batch[name] for name in self.plan.carried})
        # Where an actor's time goes (microseconds), for the summary: inputs, the model.
        self.stopped = ray.get(self.tally.add.remote({"rows": batch.num_rows, **unknown,
                                                      "us_inputs": 1e6 * (prepared - clock),
                                                      "us_model": 1e6 * (scored - prepared)}))
        return pa.table(columns)


def score(run_dir: str, source: str, output: str | None = None, overrides: list[str] | None = None,
          ids: str = "auto", log=print) -> ScoreResult:
    """Score every row of `source` (Parquet file or folder, local or s3://) into `output`."""
    run = load_run(run_dir, overrides)
    config = run.config
    output = output or str(Path(run_dir) / "scores" / Path(source.rstrip("/")).name)
    dataset = _read_input(source, run)
    plan = plan_input(dataset.schema(fetch_if_missing=True).base_schema, source, config, run.meta, ids)
    if plan.mode == "index":
        _check_same_dataset(source, run)
    vocabularies = load_vocabularies(config.data.output, run.meta, config.data.s3, plan.vocab_tables)
    pool = actor_pool(config)
    tally = Tally.remote()
    scored = dataset.map_batches(
        BatchScorer, batch_size=config.serve.batch_size, batch_format="pyarrow",
        fn_constructor_kwargs={"model": SharedModel.put(run), "plan": plan, "vocabularies": [ray.put(vocabularies)],
                               "pool": pool, "tally": tally},
        **pool.map_batches_args())
    log(f"score: {source} with the {config.model.name} model of {run_dir} ({plan.mode} ids), {pool.actors} actor(s)")
    with StagedOutput(output, config.data.s3) as staging:
        started = time.time()
        arrow_fs, path = staging.arrow()
        counts = run_and_check(lambda: scored.write_parquet(
            path, filesystem=arrow_fs, ray_remote_args={"num_cpus": IO_TASK_CPUS}), tally)
        seconds = time.time() - started
        actor_us = {key: counts.pop(key, 0) for key in ("us_inputs", "us_model")}
        result = ScoreResult(output, counts.pop("rows", 0), seconds, pool.actors, counts)
        _check_unknown(result, config.serve.max_unknown_fraction, config.data.output)
        staging.commit({"command": "score", "run": str(run_dir), "checkpoint": run.checkpoint, "input": source,
                        "ids": plan.mode, "rows": result.rows, "seconds": seconds, "rows_per_s": result.rows_per_s,
                        "actors": pool.actors, "unknown_ids": result.unknown,
                        "actor_seconds": {"inputs": actor_us["us_inputs"] / 1e6, "model": actor_us["us_model"] / 1e6}})
    return result


def _read_input(source: str, run: RunModel) -> ray.data.Dataset:
    fs, path = filesystem_for(source, run.config.data.s3)
    if not fs.exists(path):
        raise InputError(f"--input {source}: no such file or folder")
    arrow_fs, arrow_path = pyarrow_filesystem(source, run.config.data.s3)
    try:
        return ray.data.read_parquet(arrow_path, filesystem=arrow_fs, num_cpus=IO_TASK_CPUS)
    except (OSError, ValueError) as exc:
        raise InputError(f"--input {source}: not readable as Parquet ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]})") from None


def _check_same_dataset(source: str, run: RunModel) -> None:
    """A split of a prepared dataset (its folder has meta.json) must be of the run's dataset."""
    fs, path = filesystem_for(source.rstrip("/"), run.config.data.s3)
    parent = path.rsplit("/", 1)[0]
    if not fs.exists(f"{parent}/meta.json"):
        return
    with fs.open(f"{parent}/meta.json") as handle:
        theirs = json.load(handle)
    ours = run.meta
    if theirs.get("tables") != ours["tables"] or theirs.get("sources") != ours.get("sources"):
        raise InputError(f"--input {source} is a split of the prepared dataset {parent}, made from other data than "
                         f"the run's ({run.config.data.output}): its table indices mean other ids")


def _check_unknown(result: ScoreResult, limit: float, vocab_root: str) -> None:
    for name in ("user", "item"):
        unknown = result.unknown.get(name, 0)
        if result.rows and unknown > limit * result.rows:
            raise InputError(f"{unknown:,} of {result.rows:,} {name} ids ({unknown / result.rows:.0%}) are not in the "
                             f"run's vocabulary ({vocab_root}/vocab/{name}.parquet): ids of another dataset? "
                             f"(serve.max_unknown_fraction={limit}); nothing was written")

