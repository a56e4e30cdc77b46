"""`eain recommend`: each user's top-K items among candidates, scored by a run's model on Ray Data.

What a recommendation uses (the choices, in one place):

- history: the user's current history, i.e. the history of their latest positive impression in
  the prepared splits (the test positive: the L interactions before it) followed by that
  interaction itself (and any others at the same latest time and history), cut to the last
  `data.max_history`. So the latest interactions, held out for evaluation, are part of it.
- candidates: the `serve.candidates` most popular items the user has not reviewed. Popularity
  is the number of users who reviewed the item in the prepared data (positives and histories of
  every split), ties by item index; "reviewed" is every item of the user's positives and
  histories.
- context: `hour` and `weekday` of the request time `serve.at` (`--at`; default the latest
  interaction in the prepared data, the data's "now"); `gap` is the log2 bucket of the time from
  the user's own latest interaction to that request time, as in training.
- the target item's `category` is the one the prepared data gives the item.
- users without a history (an id not in the vocabulary, or one that has no positive): user 0,
  an empty history, counted and reported; they get the most popular items, ranked by the model.

    prepared splits (positives) --repartition by user--> per-user history, reviewed items
        -> item popularity and category (small, on the driver)
        -> map_batches(TopKRecommender, actors): per batch of users, candidates scored in chunks
           of serve.batch_size pairs (memory per actor: users_per_batch x candidates pairs at most)
        -> Parquet (user, rank, item, score)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
import torch

from eain_dist.config import Config
from eain_dist.data import context
from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for, pyarrow_filesystem
from eain_dist.data.loader import to_device, to_tensors
from eain_dist.serve.features import left_padded, fixed_lists
from eain_dist.serve.ids import Vocabulary, load_vocabularies
from eain_dist.serve.output import StagedOutput
from eain_dist.serve.replicas import (
    IO_TASK_CPUS, ActorPool, SharedModel, Tally, actor_pool, device_for, run_and_check,
)
from eain_dist.serve.tables import load_run

BATCHES_PER_TASK = 4  # batches of serve.users_per_batch users per actor task
POSITIVE_COLUMNS = ["user", "item", "category", "hist_item", "hist_category", "hist_len", "timestamp", "label"]


@dataclass
class RecommendResult:
    output: str
    users: int
    cold_users: int  # without a history: unknown ids, or no positive in the prepared data
    pairs: int  # (user, candidate) pairs scored
    seconds: float  # scoring and writing (Ray Data's execution of the ranking)
    actors: int
    at: int

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class Catalogue:
    """Items as candidates: by popularity, with their categories (arrays over item indices)."""

    popular: np.ndarray  # item indices, most popular first (only items somebody reviewed)
    category: np.ndarray  # category index of every item index


def recommend(run_dir: str, users: str | None, output: str | None = None, overrides: list[str] | None = None,
              log=print) -> RecommendResult:
    """Top-K of every user (`users` None) or of the users listed in `users` into `output`."""
    run = load_run(run_dir, overrides)
    config, meta = run.config, run.meta
    output = output or str(Path(run_dir) / "recommendations")
    vocabularies = load_vocabularies(config.data.output, meta, config.data.s3, ["user", "item"])
    wanted = _read_user_ids(users, config) if users is not None else None
    histories = user_histories(config, meta)
    catalogue, latest = _catalogue(histories, meta)
    at = config.serve.at if config.serve.at is not None else latest
    requests, cold = _requests(histories, wanted, vocabularies["user"], meta["max_history"])
    requests = _in_short_tasks(requests.materialize(), config.serve.users_per_batch)
    pool = actor_pool(config)
    tally = Tally.remote()
    ranked = requests.map_batches(
        TopKRecommender, batch_size=config.serve.users_per_batch, batch_format="pyarrow",
        fn_constructor_kwargs={"model": SharedModel.put(run), "catalogue": [ray.put(catalogue)],
                               "item_vocabulary": [ray.put(vocabularies["item"])], "config": config, "at": at,
                               "pool": pool, "tally": tally},
        **pool.map_batches_args())
    log(f"recommend: top {config.serve.top_k} of {config.serve.candidates} candidates for "
        f"{'every user' if users is None else users} with {pool.actors} actor(s), request time {at}")
    with StagedOutput(output, config.data.s3) as staging:
        started = time.time()
        arrow_fs, path = staging.arrow()
        counts = run_and_check(lambda: ranked.write_parquet(
            path, filesystem=arrow_fs, ray_remote_args={"num_cpus": IO_TASK_CPUS}), tally)
        result = RecommendResult(output, counts.get("users", 0), cold, counts.get("pairs", 0), time.time() - started,
                                 pool.actors, at)
        staging.commit({"command": "recommend", "run": str(run_dir), "checkpoint": run.checkpoint,
                        "users": result.users, "cold_users": cold, "pairs": result.pairs, "seconds": result.seconds,
                        "pairs_per_s": result.pairs_per_s, "top_k": config.serve.top_k,
                        "candidates": config.serve.candidates, "at": at, "actors": pool.actors})
    return result


class TopKRecommender:
    """One model replica ranking the candidates of a batch of users."""

    def __init__(self, model: SharedModel, catalogue: list, item_vocabulary: list, config: Config, at: int,
                 pool: ActorPool, tally) -> None:
        self.device = device_for(pool)
        self.model = model.build(self.device)
        self.catalogue: Catalogue = ray.get(catalogue[0])
        self.items: Vocabulary = ray.get(item_vocabulary[0])
        self.serve, self.at, self.tally = config.serve, at, tally
        self.max_history = model.meta["max_history"]

    def __call__(self, users: pa.Table) -> pa.Table:
        candidates = [self._candidates(reviewed) for reviewed in users["reviewed"].to_pylist()]
        pairs = candidate_pairs(users, candidates, self.catalogue.category, self.at, self.max_history)
        logits = self._logits(pairs)
        ranked = top_k(logits, [len(c) for c in candidates], self.serve.top_k)  # positions into pairs
        ray.get(self.tally.add.remote({"users": users.num_rows, "pairs": pairs.num_rows}))
        owner = np.repeat(np.arange(users.num_rows), [len(r) for r in ranked])
        flat = np.concatenate([np.zeros(0, np.int64), *ranked])
        ranks = np.concatenate([np.zeros(0, np.int32), *(np.arange(1, len(r) + 1, dtype=np.int32) for r in ranked)])
        items = pairs["item"].to_numpy()[flat]
        return pa.table({
            "user": users["raw_user"].take(pa.array(owner)),
            "rank": pa.array(ranks),
            "item": self.items.raw_ids(items).cast(pa.string()),
            "score": pa.array(torch.sigmoid(torch.from_numpy(logits[flat])).numpy()),
        })

    def _candidates(self, reviewed: list[int]) -> np.ndarray:
        """The serve.candidates most popular items not in `reviewed`."""
        popular = self.catalogue.popular[: self.serve.candidates + len(reviewed)]
        return popular[~np.isin(popular, reviewed)][: self.serve.candidates]

    def _logits(self, pairs: pa.Table) -> np.ndarray:
        parts = []
        for start in range(0, pairs.num_rows, self.serve.batch_size):  # bounded memory per model call
            tensors = to_device(to_tensors(pairs.slice(start, self.serve.batch_size), self.max_history), self.device)
            with torch.inference_mode():
                parts.append(self.model(tensors).logits.float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def candidate_pairs(users: pa.Table, candidates: list[np.ndarray], item_category: np.ndarray, at: int,
                    max_history: int) -> pa.Table:
    """One row per (user, candidate) with every column `to_tensors` reads: the model's input."""
    counts = np.array([len(c) for c in candidates], np.int64)
    owner = np.repeat(np.arange(users.num_rows), counts)
    items = np.concatenate(candidates).astype(np.int64) if len(candidates) else np.zeros(0, np.int64)
    hist_len = users["hist_len"].to_numpy().astype(np.int64)
    last_time = pc.fill_null(users["last_time"], 0).to_numpy().astype(np.int64)
    gap = context.gap_bucket(np.full(len(hist_len), at) - last_time, hist_len > 0)
    rows = len(items)
    return pa.table({
        "label": pa.array(np.zeros(rows, np.float32)),
        "user": pa.array(users["user"].to_numpy()[owner]),
        "item": pa.array(items),
        "category": pa.array(item_category[items].astype(np.int64)),
        "hour": pa.array(np.full(rows, context.hour_of_day(np.int64(at)), np.int64)),
        "weekday": pa.array(np.full(rows, context.day_of_week(np.int64(at)), np.int64)),
        "gap": pa.array(gap[owner].astype(np.int64)),
        "hist_item": fixed_lists(_matrix(users["hist_item"], max_history)[owner]),
        "hist_category": fixed_lists(_matrix(users["hist_category"], max_history)[owner]),
        "hist_len": pa.array(hist_len[owner].astype(np.int32)),
        "request_id": pa.array(owner.astype(np.int64)),
        "position": pa.array(np.zeros(rows, np.int32)),
        "timestamp": pa.array(np.full(rows, at, np.int64)),
    })


def top_k(logits: np.ndarray, counts: list[int], k: int) -> list[np.ndarray]:
    """Per user (consecutive runs of `counts` rows): positions of the k highest logits, best first.

    Ties keep the candidates' order (popularity): a stable sort of the negated logits.
    """
    ends = np.cumsum(counts)
    return [start + np.argsort(-logits[start:end], kind="stable")[:k] for start, end in zip(ends - counts, ends)]


def _matrix(column, width: int) -> np.ndarray:
    values = pc.list_flatten(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return values.to_numpy(zero_copy_only=False).astype(np.int64).reshape(-1, width)


# ----------------------------------------------------------------------------- users and items


def user_histories(config: Config, meta: dict) -> ray.data.Dataset:
    """One row per user with a positive: current history, latest time, reviewed items (materialized)."""
    arrow_fs, path = pyarrow_filesystem(config.data.output, config.data.s3)
    splits = [ray.data.read_parquet(f"{path}/{split}", filesystem=arrow_fs, columns=POSITIVE_COLUMNS,
                                    num_cpus=IO_TASK_CPUS) for split in meta["splits"]]
    positives = splits[0].union(*splits[1:]).filter(expr="label == 1")
    partitions = max(2, int(ray.cluster_resources().get("CPU", 1)) * 2)
    return positives.repartition(partitions, keys=["user"]).map_batches(
        _histories_of_partition, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"max_history": meta["max_history"]}).materialize()


def _histories_of_partition(table: pa.Table, *, max_history: int) -> pa.Table:
    """All positives of some users -> one row per user (vectorised over the partition)."""
    user = table["user"].to_numpy()
    timestamp, hist_len = table["timestamp"].to_numpy(), table["hist_len"].to_numpy().astype(np.int64)
    order = np.lexsort((table["item"].to_numpy(), hist_len, timestamp, user))  # a user's latest last
    user, timestamp, hist_len = user[order], timestamp[order], hist_len[order]
    item, category = table["item"].to_numpy()[order], table["category"].to_numpy()[order]
    hist_item = _matrix(table["hist_item"], max_history)[order]
    hist_category = _matrix(table["hist_category"], max_history)[order]
    last = np.r_[user[1:] != user[:-1], True]  # each user's latest row
    last_of_row = np.flatnonzero(last)[np.cumsum(np.r_[0, last[:-1]])]
    # The latest interactions: rows at the user's latest (time, history); their items follow it.
    latest = (timestamp == timestamp[last_of_row]) & (hist_len == hist_len[last_of_row])
    users = user[last]
    current_item = _current_history(hist_item[last], hist_len[last], item[latest], user[latest], users, max_history)
    current_category = _current_history(hist_category[last], hist_len[last], category[latest], user[latest], users,
                                        max_history)
    reviewed, reviewed_category = _reviewed(user, item, category, hist_item, hist_category, hist_len, max_history)
    return pa.table({
        "user": pa.array(users, pa.int64()),
        "hist_item": fixed_lists(current_item[0]),
        "hist_category": fixed_lists(current_category[0]),
        "hist_len": pa.array(current_item[1], pa.int32()),
        "last_time": pa.array(timestamp[last], pa.int64()),
        "reviewed": reviewed,
        "reviewed_category": reviewed_category,  # the category of each reviewed item (for the catalogue)
    })


def _current_history(history: np.ndarray, lengths: np.ndarray, latest: np.ndarray, latest_user: np.ndarray,
                     users: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's history (rows x width, right-aligned) followed by their latest items, last `width` kept."""
    real = np.arange(width)[None, :] >= (width - lengths)[:, None]  # users x width
    owner = np.r_[np.repeat(np.arange(len(users)), real.sum(1)), np.searchsorted(users, latest_user)]
    values = np.r_[history[real], latest]
    order = np.argsort(owner, kind="stable")  # per user: the history, then the latest items
    combined = np.bincount(owner, minlength=len(users))
    return left_padded(values[order], combined, width), np.minimum(combined, width)


def _reviewed(user, item, category, hist_item, hist_category, hist_len, width: int) -> tuple[pa.Array, pa.Array]:
    """Every item of a user's positives and histories, one sorted list per user, and their categories."""
    real = np.arange(width)[None, :] >= (width - hist_len)[:, None]
    pair_user = np.r_[user, np.repeat(user, real.sum(1))]
    pair_item = np.r_[item, hist_item[real]]
    pair_category = np.r_[category, hist_category[real]]
    _, first = np.unique(np.stack([pair_user, pair_item], axis=1), axis=0, return_index=True)  # by user, item
    starts = pa.array(np.flatnonzero(np.r_[True, pair_user[first][1:] != pair_user[first][:-1], True]).astype(np.int32))
    return (pa.ListArray.from_arrays(starts, pa.array(pair_item[first], pa.int64())),
            pa.ListArray.from_arrays(starts, pa.array(pair_category[first], pa.int64())))


def _catalogue(histories: ray.data.Dataset, meta: dict) -> tuple[Catalogue, int]:
    """Item popularity (users who reviewed it) and categories; the latest interaction time."""
    items = meta["tables"]["item"]
    popularity = np.zeros(items, np.int64)
    category = np.zeros(items, np.int64)
    latest = 0
    for block in ray.get(histories.to_arrow_refs()):
        reviewed = pc.list_flatten(block["reviewed"]).to_numpy()
        popularity += np.bincount(reviewed, minlength=items)
        category[reviewed] = pc.list_flatten(block["reviewed_category"]).to_numpy()
        latest = max(latest, int(pc.max(block["last_time"]).as_py() or 0))
    popularity[0] = 0  # padding / out of vocabulary: never a candidate
    popular = np.lexsort((np.arange(items), -popularity))
    return Catalogue(popular[popularity[popular] > 0], category), latest


# ----------------------------------------------------------------------------- who asks


def _read_user_ids(users: str, config: Config) -> list[str]:
    """Raw user ids from a Parquet file or folder (column `user`) or a text file (one id per line)."""
    fs, path = filesystem_for(users, config.data.s3)
    if not fs.exists(path):
        raise InputError(f"--users {users}: no such file or folder")
    if fs.isdir(path) or path.endswith(".parquet"):
        arrow_fs, arrow_path = pyarrow_filesystem(users, config.data.s3)
        table = pq.read_table(arrow_path, filesystem=arrow_fs)
        if "user" not in table.column_names:
            raise InputError(f"--users {users}: no column 'user' (columns: {', '.join(table.column_names)})")
        ids = pc.cast(table["user"], pa.string()).to_pylist()
    else:
        with fs.open(path, "r") as handle:
            ids = [line.strip() for line in handle]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise InputError(f"--users {users}: no user ids")
    return ids


def _requests(histories: ray.data.Dataset, wanted: list[str] | None, users: Vocabulary,
              max_history: int) -> tuple[ray.data.Dataset, int]:
    """The users to rank, each named by its raw id (`raw_user`), and how many have no history."""
    histories = histories.drop_columns(["reviewed_category"])
    if wanted is None:
        return histories.map_batches(_named_by_vocabulary, batch_format="pyarrow",
                                     fn_kwargs={"vocabulary": [ray.put(users)]}), 0
    index, _ = users.indices(pa.array(wanted, pa.string()))
    found = histories.map_batches(_named_by_request, batch_format="pyarrow",
                                  fn_kwargs={"index": index, "raw": pa.array(wanted, pa.string())}).materialize()
    with_history = set(found.select_columns(["user"]).to_pandas()["user"]) if found.count() else set()
    cold = [k for k, i in enumerate(index) if i not in with_history]
    if not cold:
        return found, 0
    rows = _cold_rows(index[cold], pa.array([wanted[k] for k in cold], pa.string()), max_history)
    return found.union(ray.data.from_arrow(rows)), len(cold)


def _in_short_tasks(requests: ray.data.Dataset, users_per_batch: int) -> ray.data.Dataset:
    """Blocks of a few batches of users, so that an actor task is short: the actors share the work
    evenly and Ray Data sees steady progress (one task per user partition ran for over 30 minutes
    on Grocery on a loaded machine, and Ray Data stopped it for making no progress)."""
    blocks = math.ceil(requests.count() / (BATCHES_PER_TASK * users_per_batch))
    return requests.repartition(max(1, blocks))


def _named_by_vocabulary(table: pa.Table, *, vocabulary: list) -> pa.Table:
    raw = ray.get(vocabulary[0]).raw_ids(table["user"].to_numpy()).cast(pa.string())
    return table.append_column("raw_user", raw)


def _named_by_request(table: pa.Table, *, index: np.ndarray, raw: pa.Array) -> pa.Table:
    """The rows of the requested users (`index`, not empty), named by the first raw id of each index."""
    requested, first = np.unique(index, return_index=True)
    user = table["user"].to_numpy()
    position = np.minimum(np.searchsorted(requested, user), len(requested) - 1)
    keep = (requested[position] == user) & (user > 0)
    return table.filter(pa.array(keep)).append_column("raw_user", raw.take(pa.array(first[position[keep]])))


def _cold_rows(index: np.ndarray, raw: pa.Array, max_history: int) -> pa.Table:
    """Users without a history: empty history, no reviewed items, no latest time."""
    rows = len(index)
    empty = fixed_lists(np.zeros((rows, max_history), np.int64))
    return pa.table({"user": pa.array(index, pa.int64()), "hist_item": empty, "hist_category": empty,
                     "hist_len": pa.array(np.zeros(rows, np.int32)), "last_time": pa.nulls(rows, pa.int64()),
                     "reviewed": pa.array([[] for _ in range(rows)], pa.list_(pa.int64())), "raw_user": raw})
